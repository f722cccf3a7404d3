// Package dnsserver is the cluster's DNS: an authoritative server for the
// cluster zone fed by Service and EndpointSlice informers, answering as
// CoreDNS's kubernetes plugin does for the names pods use:
//
//	<svc>.<ns>.svc.<zone>            A/AAAA: the ClusterIP; headless: the ready endpoints
//	<ep>.<svc>.<ns>.svc.<zone>       A/AAAA of one endpoint (hostname or dashed IP)
//	_<port>._<proto>.<svc>.<ns>.svc.<zone>  SRV for named ports
//	<a-b-c-d>.<ns>.pod.<zone>        A (the "pods insecure" mode)
//	ExternalName Services            CNAME
//
// Names under the zone that do not exist get NXDOMAIN, existing names
// without records of the asked type NOERROR with no answer (NODATA), both
// with the zone's SOA. Anything outside the zone is REFUSED: there is no
// forwarding (the machine reaches no outside DNS).
package dnsserver

import (
	"context"
	"fmt"
	"net"
	"sort"
	"strings"
	"time"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
)

// Server answers for one cluster zone.
type Server struct {
	zone      string // "cluster.local." (fqdn, lower case)
	ttl       uint32
	services  corev1listers.ServiceLister
	slices    discoverylisters.EndpointSliceLister
	synced    []cache.InformerSynced
	factory   informers.SharedInformerFactory
	startedAt time.Time
}

// New returns a server for zone fed from client.
func New(client kubernetes.Interface, zone string, ttl uint32) *Server {
	f := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svc := f.Core().V1().Services()
	eps := f.Discovery().V1().EndpointSlices()
	return &Server{
		zone:     dns.Fqdn(strings.ToLower(zone)),
		ttl:      ttl,
		services: svc.Lister(),
		slices:   eps.Lister(),
		synced:   []cache.InformerSynced{svc.Informer().HasSynced, eps.Informer().HasSynced},
		factory:  f,
	}
}

// NewFromListers builds a server on existing listers (tests).
func NewFromListers(zone string, ttl uint32, s corev1listers.ServiceLister, e discoverylisters.EndpointSliceLister) *Server {
	return &Server{zone: dns.Fqdn(strings.ToLower(zone)), ttl: ttl, services: s, slices: e}
}

// Start runs the informers and waits for their first sync.
func (s *Server) Start(ctx context.Context) error {
	s.factory.Start(ctx.Done())
	if !cache.WaitForCacheSync(ctx.Done(), s.synced...) {
		return fmt.Errorf("DNS: informers did not sync")
	}
	s.startedAt = time.Now()
	return nil
}

// ListenAndServe serves UDP and TCP on addr until ctx ends.
func (s *Server) ListenAndServe(ctx context.Context, addr string) error {
	udp := &dns.Server{Addr: addr, Net: "udp", Handler: s, ReusePort: false}
	tcp := &dns.Server{Addr: addr, Net: "tcp", Handler: s}
	errc := make(chan error, 2)
	go func() { errc <- udp.ListenAndServe() }()
	go func() { errc <- tcp.ListenAndServe() }()
	select {
	case <-ctx.Done():
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		return nil
	case err := <-errc:
		_ = udp.Shutdown()
		_ = tcp.Shutdown()
		return err
	}
}

// ServeDNS implements dns.Handler.
func (s *Server) ServeDNS(w dns.ResponseWriter, req *dns.Msg) {
	m := s.Answer(req)
	_ = w.WriteMsg(m)
}

// Answer computes the reply to req.
func (s *Server) Answer(req *dns.Msg) *dns.Msg {
	m := new(dns.Msg)
	m.SetReply(req)
	m.Authoritative = true
	m.RecursionAvailable = false
	if len(req.Question) != 1 {
		m.Rcode = dns.RcodeFormatError
		return m
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	if q.Qclass != dns.ClassINET {
		m.Rcode = dns.RcodeRefused
		return m
	}
	if !dns.IsSubDomain(s.zone, name) {
		m.Rcode = dns.RcodeRefused
		m.Authoritative = false
		return m
	}
	rrs, exists := s.lookup(name, q.Qtype)
	switch {
	case len(rrs) > 0:
		m.Answer = rrs
	case exists:
		m.Ns = []dns.RR{s.soa()}
	default:
		m.Rcode = dns.RcodeNameError
		m.Ns = []dns.RR{s.soa()}
	}
	return m
}

func (s *Server) soa() dns.RR {
	return &dns.SOA{
		Hdr:     dns.RR_Header{Name: s.zone, Rrtype: dns.TypeSOA, Class: dns.ClassINET, Ttl: s.ttl},
		Ns:      "ns.dns." + s.zone,
		Mbox:    "hostmaster." + s.zone,
		Serial:  uint32(time.Now().Unix()),
		Refresh: 7200, Retry: 1800, Expire: 86400, Minttl: s.ttl,
	}
}

func (s *Server) hdr(name string, t uint16) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: s.ttl}
}

// addrRRs returns A or AAAA records of ips for name, per qtype.
func (s *Server) addrRRs(name string, qtype uint16, ips []string) []dns.RR {
	var out []dns.RR
	for _, ipStr := range ips {
		ip := net.ParseIP(ipStr)
		if ip == nil {
			continue
		}
		if v4 := ip.To4(); v4 != nil {
			if qtype == dns.TypeA || qtype == dns.TypeANY {
				out = append(out, &dns.A{Hdr: s.hdr(name, dns.TypeA), A: v4})
			}
		} else if qtype == dns.TypeAAAA || qtype == dns.TypeANY {
			out = append(out, &dns.AAAA{Hdr: s.hdr(name, dns.TypeAAAA), AAAA: ip})
		}
	}
	return out
}

// lookup returns the records for name and whether the name exists at all.
func (s *Server) lookup(name string, qtype uint16) ([]dns.RR, bool) {
	rel := strings.TrimSuffix(strings.TrimSuffix(name, s.zone), ".")
	if rel == "" {
		if qtype == dns.TypeSOA {
			return []dns.RR{s.soa()}, true
		}
		return nil, true
	}
	labels := dns.SplitDomainName(rel)
	n := len(labels)
	switch {
	case labels[n-1] == "svc":
		return s.lookupSvc(name, qtype, labels[:n-1])
	case labels[n-1] == "pod" && n == 3:
		ip := strings.ReplaceAll(labels[0], "-", ".")
		if net.ParseIP(ip) == nil {
			ip = strings.ReplaceAll(labels[0], "-", ":")
		}
		if net.ParseIP(ip) == nil {
			return nil, false
		}
		return s.addrRRs(name, qtype, []string{ip}), true
	case (labels[n-1] == "svc" || labels[n-1] == "pod") && n < 3:
		return nil, true // an empty non-terminal (<ns>.svc.<zone>)
	}
	return nil, false
}

// lookupSvc answers names under svc.<zone>; parts are the labels before "svc".
func (s *Server) lookupSvc(name string, qtype uint16, parts []string) ([]dns.RR, bool) {
	switch len(parts) {
	case 0, 1:
		// svc.<zone> or <ns>.svc.<zone>: empty non-terminals when a Service exists there.
		return nil, len(parts) == 0 || s.namespaceHasServices(parts[0])
	case 2:
		return s.serviceRecords(name, qtype, parts[1], parts[0])
	case 3:
		// <endpoint>.<svc>.<ns>
		return s.endpointRecords(name, qtype, parts[2], parts[1], parts[0])
	case 4:
		// _<port>._<proto>.<svc>.<ns>
		if !strings.HasPrefix(parts[0], "_") || !strings.HasPrefix(parts[1], "_") {
			return nil, false
		}
		return s.srvRecords(name, qtype, parts[3], parts[2], parts[0][1:], parts[1][1:])
	}
	return nil, false
}

func (s *Server) namespaceHasServices(ns string) bool {
	l, err := s.services.Services(ns).List(labels.Everything())
	return err == nil && len(l) > 0
}

func (s *Server) service(ns, name string) *corev1.Service {
	svc, err := s.services.Services(ns).Get(name)
	if err != nil {
		return nil
	}
	return svc
}

func headless(svc *corev1.Service) bool {
	return svc.Spec.ClusterIP == corev1.ClusterIPNone
}

// endpoint is one address behind a headless Service.
type endpoint struct {
	ip       string
	hostname string
}

func (e endpoint) label() string {
	if e.hostname != "" {
		return e.hostname
	}
	return strings.NewReplacer(".", "-", ":", "-").Replace(e.ip)
}

// endpoints lists the ready (or, with publishNotReadyAddresses, all)
// addresses of the Service's EndpointSlices, and the named ports.
func (s *Server) endpoints(svc *corev1.Service) ([]endpoint, map[string]discoveryv1.EndpointPort) {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: svc.Name})
	slices, err := s.slices.EndpointSlices(svc.Namespace).List(sel)
	if err != nil {
		return nil, nil
	}
	seen := map[string]bool{}
	var out []endpoint
	ports := map[string]discoveryv1.EndpointPort{}
	for _, sl := range slices {
		for _, p := range sl.Ports {
			if p.Name != nil && *p.Name != "" && p.Port != nil {
				ports[*p.Name] = p
			}
		}
		for _, ep := range sl.Endpoints {
			ready := ep.Conditions.Ready == nil || *ep.Conditions.Ready
			if !ready && !svc.Spec.PublishNotReadyAddresses {
				continue
			}
			for _, a := range ep.Addresses {
				if seen[a] {
					continue
				}
				seen[a] = true
				e := endpoint{ip: a}
				if ep.Hostname != nil {
					e.hostname = *ep.Hostname
				}
				out = append(out, e)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ip < out[j].ip })
	return out, ports
}

func (s *Server) serviceRecords(name string, qtype uint16, ns, svcName string) ([]dns.RR, bool) {
	svc := s.service(ns, svcName)
	if svc == nil {
		return nil, false
	}
	if svc.Spec.Type == corev1.ServiceTypeExternalName {
		target := dns.Fqdn(svc.Spec.ExternalName)
		return []dns.RR{&dns.CNAME{Hdr: s.hdr(name, dns.TypeCNAME), Target: target}}, true
	}
	if !headless(svc) {
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		return s.addrRRs(name, qtype, ips), true
	}
	eps, _ := s.endpoints(svc)
	ips := make([]string, 0, len(eps))
	for _, e := range eps {
		ips = append(ips, e.ip)
	}
	return s.addrRRs(name, qtype, ips), true
}

func (s *Server) endpointRecords(name string, qtype uint16, ns, svcName, label string) ([]dns.RR, bool) {
	svc := s.service(ns, svcName)
	if svc == nil || !headless(svc) {
		return nil, false
	}
	eps, _ := s.endpoints(svc)
	var ips []string
	for _, e := range eps {
		if e.label() == label {
			ips = append(ips, e.ip)
		}
	}
	if len(ips) == 0 {
		return nil, false
	}
	return s.addrRRs(name, qtype, ips), true
}

func (s *Server) srvRecords(name string, qtype uint16, ns, svcName, port, proto string) ([]dns.RR, bool) {
	svc := s.service(ns, svcName)
	if svc == nil {
		return nil, false
	}
	var portNum int32
	found := false
	for _, p := range svc.Spec.Ports {
		if strings.EqualFold(p.Name, port) && strings.EqualFold(string(p.Protocol), proto) {
			portNum, found = p.Port, true
		}
	}
	if !found {
		return nil, false
	}
	if qtype != dns.TypeSRV && qtype != dns.TypeANY {
		return nil, true
	}
	svcFQDN := fmt.Sprintf("%s.%s.svc.%s", svcName, ns, s.zone)
	if !headless(svc) {
		return []dns.RR{&dns.SRV{Hdr: s.hdr(name, dns.TypeSRV), Priority: 0, Weight: 100, Port: uint16(portNum), Target: svcFQDN}}, true
	}
	eps, ports := s.endpoints(svc)
	if p, ok := ports[port]; ok && p.Port != nil {
		portNum = *p.Port
	}
	var out []dns.RR
	w := uint16(100)
	if len(eps) > 0 {
		w = uint16(100 / len(eps))
		if w == 0 {
			w = 1
		}
	}
	for _, e := range eps {
		out = append(out, &dns.SRV{Hdr: s.hdr(name, dns.TypeSRV), Priority: 0, Weight: w, Port: uint16(portNum),
			Target: e.label() + "." + svcFQDN})
	}
	return out, true
}
