// Package podnet gives each pod a network namespace wired to the host by a
// veth pair, routed (no bridge): the pod side holds the pod IP as a /32 and
// reaches everything through a link-local gateway whose neighbour entry is
// the host veth's MAC; the host side holds a /32 route to the pod IP. Every
// packet between pods, or between the host and a pod, is routed by the host's
// (root) network namespace, as in Calico's design. Pods get routes only to
// the cluster's own ranges, never a default route, so nothing a pod sends can
// leave the machine.
package podnet

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Gateway is the link-local next hop pods route through. It is not assigned
// anywhere: the pod has a permanent neighbour entry mapping it to the host
// veth's MAC, so no proxy ARP is involved.
var Gateway = net.IPv4(169, 254, 1, 1)

// NetnsDir is where named network namespaces are bind-mounted (as by `ip netns`).
const NetnsDir = "/run/netns"

// Config is a node's pod network.
type Config struct {
	// PodCIDR is the node's range (Node.spec.podCIDR); pod IPs come from it.
	PodCIDR *net.IPNet
	// Routes are the destinations a pod can reach (cluster CIDR, service CIDR,
	// the host addresses of the API server, DNS and nodes).
	Routes []*net.IPNet
	// HostSrc is the source address the host uses towards its pods (the
	// node's own IP): pods must have a route back to it (include it in Routes).
	HostSrc net.IP
	// Prefix starts every netns and veth name of this node, so a node's
	// leftovers are found (and only its own) after a crash.
	Prefix string
	// MTU of the veth pair (default 1500).
	MTU int
}

// Sandbox is one pod's network.
type Sandbox struct {
	NetNSName string
	NetNSPath string
	HostVeth  string
	IP        net.IP
}

// Network allocates pod IPs and creates and removes sandboxes for one node.
type Network struct {
	cfg  Config
	mu   sync.Mutex
	used map[string]bool
	next int // rotating cursor: a freed IP is not handed out again at once
}

// New returns the node's network. It enables IPv4 forwarding in the host
// namespace (pod-to-pod packets are forwarded there).
func New(cfg Config) (*Network, error) {
	if cfg.PodCIDR == nil || cfg.PodCIDR.IP.To4() == nil {
		return nil, fmt.Errorf("an IPv4 pod CIDR is required")
	}
	if cfg.MTU == 0 {
		cfg.MTU = 1500
	}
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1"), 0); err != nil {
		return nil, fmt.Errorf("enabling IPv4 forwarding: %w", err)
	}
	return &Network{cfg: cfg, used: map[string]bool{}}, nil
}

func ipAt(n *net.IPNet, i int) net.IP {
	base := n.IP.To4()
	v := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	v += uint32(i)
	return net.IPv4(byte(v>>24), byte(v>>16), byte(v>>8), byte(v))
}

// allocate returns a free pod IP (never the network, .1 or broadcast address).
func (nw *Network) allocate() (net.IP, error) {
	nw.mu.Lock()
	defer nw.mu.Unlock()
	ones, bits := nw.cfg.PodCIDR.Mask.Size()
	size := 1 << (bits - ones)
	for k := 0; k < size; k++ {
		i := 2 + (nw.next+k)%(size-3)
		ip := ipAt(nw.cfg.PodCIDR, i)
		if !nw.used[ip.String()] {
			nw.used[ip.String()] = true
			nw.next = i - 1
			return ip, nil
		}
	}
	return nil, fmt.Errorf("pod CIDR %s is exhausted", nw.cfg.PodCIDR)
}

func (nw *Network) release(ip net.IP) {
	nw.mu.Lock()
	delete(nw.used, ip.String())
	nw.mu.Unlock()
}

// Names derives a sandbox's netns and host veth names from the pod UID.
// Interface names are limited to 15 bytes.
func (nw *Network) Names(podUID string) (nsName, veth string) {
	h := sha256.Sum256([]byte(nw.cfg.Prefix + "/" + podUID))
	short := hex.EncodeToString(h[:])
	vethPrefix := nw.cfg.Prefix
	if len(vethPrefix) > 6 {
		vethPrefix = vethPrefix[:6]
	}
	return nw.cfg.Prefix + "-" + podUID, vethPrefix + short[:15-len(vethPrefix)]
}

// Create makes the pod's namespace, veth pair, address and routes.
func (nw *Network) Create(podUID string) (*Sandbox, error) {
	ip, err := nw.allocate()
	if err != nil {
		return nil, err
	}
	nsName, vethName := nw.Names(podUID)
	sb := &Sandbox{NetNSName: nsName, NetNSPath: filepath.Join(NetnsDir, nsName), HostVeth: vethName, IP: ip}
	if err := nw.setup(sb); err != nil {
		_ = nw.Delete(sb)
		return nil, err
	}
	return sb, nil
}

// newNamedNS creates a named network namespace without leaving the calling
// goroutine's thread in it.
func newNamedNS(name string) (netns.NsHandle, error) {
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return -1, err
	}
	defer orig.Close()
	ns, err := netns.NewNamed(name)
	if serr := netns.Set(orig); serr != nil {
		// The thread is stuck in the pod's namespace: keep it locked so the
		// runtime discards it when this goroutine ends.
		return -1, fmt.Errorf("returning to the host namespace: %w", serr)
	}
	runtime.UnlockOSThread()
	return ns, err
}

func (nw *Network) setup(sb *Sandbox) error {
	ns, err := newNamedNS(sb.NetNSName)
	if err != nil {
		return fmt.Errorf("creating network namespace %s: %w", sb.NetNSName, err)
	}
	defer ns.Close()
	tmpPeer := "p" + sb.HostVeth[1:]
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: sb.HostVeth, MTU: nw.cfg.MTU},
		PeerName:      tmpPeer,
		PeerNamespace: netlink.NsFd(int(ns)),
	}
	if err := netlink.LinkAdd(veth); err != nil {
		return fmt.Errorf("creating veth %s: %w", sb.HostVeth, err)
	}
	host, err := netlink.LinkByName(sb.HostVeth)
	if err != nil {
		return err
	}
	// The kernel must not answer for other addresses or send redirects; the
	// host side carries no address of its own.
	_ = os.WriteFile(fmt.Sprintf("/proc/sys/net/ipv4/conf/%s/rp_filter", sb.HostVeth), []byte("0"), 0)
	if err := netlink.LinkSetUp(host); err != nil {
		return fmt.Errorf("bringing up %s: %w", sb.HostVeth, err)
	}
	hostMAC := host.Attrs().HardwareAddr

	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return err
	}
	defer h.Close()
	peer, err := h.LinkByName(tmpPeer)
	if err != nil {
		return err
	}
	if err := h.LinkSetName(peer, "eth0"); err != nil {
		return err
	}
	if lo, err := h.LinkByName("lo"); err == nil {
		if err := h.LinkSetUp(lo); err != nil {
			return err
		}
	}
	addr := &netlink.Addr{IPNet: &net.IPNet{IP: sb.IP, Mask: net.CIDRMask(32, 32)}}
	if err := h.AddrAdd(peer, addr); err != nil {
		return fmt.Errorf("adding %s to the pod: %w", sb.IP, err)
	}
	if err := h.LinkSetUp(peer); err != nil {
		return err
	}
	gwNet := &net.IPNet{IP: Gateway, Mask: net.CIDRMask(32, 32)}
	if err := h.RouteAdd(&netlink.Route{LinkIndex: peer.Attrs().Index, Dst: gwNet, Scope: netlink.SCOPE_LINK}); err != nil {
		return fmt.Errorf("adding the gateway route: %w", err)
	}
	if err := h.NeighAdd(&netlink.Neigh{LinkIndex: peer.Attrs().Index, IP: Gateway, HardwareAddr: hostMAC,
		State: netlink.NUD_PERMANENT, Family: netlink.FAMILY_V4}); err != nil {
		return fmt.Errorf("adding the gateway neighbour: %w", err)
	}
	for _, dst := range nw.cfg.Routes {
		r := &netlink.Route{LinkIndex: peer.Attrs().Index, Dst: dst, Gw: Gateway, Src: sb.IP}
		if err := h.RouteAdd(r); err != nil {
			return fmt.Errorf("adding the route to %s: %w", dst, err)
		}
	}
	hostRoute := &netlink.Route{LinkIndex: host.Attrs().Index, Dst: addr.IPNet, Scope: netlink.SCOPE_LINK, Src: nw.cfg.HostSrc}
	if err := netlink.RouteReplace(hostRoute); err != nil {
		return fmt.Errorf("adding the host route to %s: %w", sb.IP, err)
	}
	return nil
}

// Delete removes the sandbox's veth (the pair goes with it), its namespace and
// host route, and releases its IP. Missing pieces are not errors.
func (nw *Network) Delete(sb *Sandbox) error {
	var errs []error
	if l, err := netlink.LinkByName(sb.HostVeth); err == nil {
		if err := netlink.LinkDel(l); err != nil {
			errs = append(errs, fmt.Errorf("deleting %s: %w", sb.HostVeth, err))
		}
	}
	if err := netns.DeleteNamed(sb.NetNSName); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("deleting netns %s: %w", sb.NetNSName, err))
	}
	if sb.IP != nil {
		nw.release(sb.IP)
	}
	return errors.Join(errs...)
}

// Adopt marks ip as used (a sandbox that survived a restart of the agent).
func (nw *Network) Adopt(ip net.IP) {
	nw.mu.Lock()
	nw.used[ip.String()] = true
	nw.mu.Unlock()
}

// CleanupPrefix removes every netns and veth whose name starts with the
// node's prefix: what a crashed run of the same node left behind.
func CleanupPrefix(prefix string) error {
	var errs []error
	entries, _ := os.ReadDir(NetnsDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), prefix+"-") {
			if err := netns.DeleteNamed(e.Name()); err != nil {
				errs = append(errs, err)
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	vp := prefix
	if len(vp) > 6 {
		vp = vp[:6]
	}
	for _, l := range links {
		if _, ok := l.(*netlink.Veth); ok && strings.HasPrefix(l.Attrs().Name, vp) {
			if err := netlink.LinkDel(l); err != nil {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
