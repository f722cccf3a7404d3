// Command nodeagent is Mailwarden's process kubelet: one process is one
// Kubernetes Node whose pods run as processes of the machine (see
// docs/node-agent.md). It also serves the cluster DNS.
//
//	nodeagent node [flags]     run a node
//	nodeagent dns [flags]      run the cluster DNS server
//	nodeagent cleanup [flags]  remove what a crashed node left behind
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	vklog "github.com/virtual-kubelet/virtual-kubelet/log"
	logruslogger "github.com/virtual-kubelet/virtual-kubelet/log/logrus"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/klog/v2"

	"mailwarden/hack/nodeagent/internal/agent"
	"mailwarden/hack/nodeagent/internal/dnsserver"
)

// version is the Kubernetes release the agent is built against (set by the build script).
var version = "v1.37.2"

type listFlag []string

func (l *listFlag) String() string     { return strings.Join(*l, ",") }
func (l *listFlag) Set(v string) error { *l = append(*l, v); return nil }

func usage() {
	fmt.Fprintln(os.Stderr, "usage: nodeagent node|dns|cleanup [flags]   (-h after a mode lists its flags)")
	os.Exit(2)
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	var err error
	switch os.Args[1] {
	case "node":
		err = runNode(ctx, os.Args[2:])
	case "dns":
		err = runDNS(ctx, os.Args[2:])
	case "cleanup":
		err = runCleanup(os.Args[2:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "nodeagent:", err)
		os.Exit(1)
	}
}

func runNode(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("node", flag.ExitOnError)
	var c agent.Config
	var labels, routes, dns, hide listFlag
	self, _ := os.Executable()
	fs.StringVar(&c.Kubeconfig, "kubeconfig", "", "kubeconfig of the node's identity (required)")
	fs.StringVar(&c.NodeName, "node-name", "", "the Node's name (required)")
	fs.StringVar(&c.NodeIP, "node-ip", "", "InternalIP of the Node; the kubelet endpoint listens there (required)")
	fs.IntVar(&c.KubeletPort, "kubelet-port", 10250, "port of the kubelet endpoint (TLS)")
	fs.Var(&labels, "label", "a Node label KEY=VALUE (repeatable), e.g. topology.kubernetes.io/zone=zone-a")
	fs.StringVar(&c.PodCIDR, "pod-cidr", "", "pod IP range; default: Node.spec.podCIDR from the controller manager")
	fs.Var(&routes, "pod-route", "a destination CIDR pods can reach (repeatable): cluster CIDR, Service CIDR, host addresses")
	fs.Var(&dns, "cluster-dns", "cluster DNS server IP for pods' resolv.conf (repeatable)")
	fs.StringVar(&c.ClusterDomain, "cluster-domain", "cluster.local", "cluster DNS domain")
	fs.StringVar(&c.StateDir, "state-dir", "", "directory for the node's pods (volumes, logs, layers); absolute (required)")
	fs.StringVar(&c.NamePrefix, "name-prefix", "", "1-6 characters starting this node's netns, veth and cgroup names (required)")
	fs.StringVar(&c.PodinitPath, "podinit", filepath.Join(filepath.Dir(self), "podinit"), "path of the podinit binary")
	fs.StringVar(&c.ImageCatalog, "image-catalog", "", "JSON catalog of the images this node runs (required)")
	fs.StringVar(&c.APIServerHost, "api-server-host", "", "KUBERNETES_SERVICE_HOST for pods (the API server's reachable address; default: the kubernetes Service's ClusterIP)")
	fs.IntVar(&c.APIServerPort, "api-server-port", 6443, "KUBERNETES_SERVICE_PORT for pods when --api-server-host is set")
	fs.StringVar(&c.TLSCert, "tls-cert", "", "serving certificate of the kubelet endpoint (default: self-signed)")
	fs.StringVar(&c.TLSKey, "tls-key", "", "its key")
	fs.StringVar(&c.ClientCA, "client-ca", "", "CA that signs client certificates accepted by the kubelet endpoint")
	fs.StringVar(&c.AuthMode, "authentication", "webhook", "kubelet endpoint auth: webhook (TokenReview/SubjectAccessReview, client certificates) or none")
	fs.StringVar(&c.CPU, "cpu", "16", "CPU capacity and allocatable")
	fs.StringVar(&c.Memory, "memory", "32Gi", "memory capacity and allocatable")
	fs.StringVar(&c.Pods, "pods", "110", "pod capacity")
	fs.Var(&hide, "hide-dir", "host directory hidden from containers (repeatable; the state dir always is)")
	fs.DurationVar(&c.BackoffInitial, "backoff-initial", 10*time.Second, "first container restart back-off")
	fs.DurationVar(&c.BackoffMax, "backoff-max", 5*time.Minute, "longest container restart back-off")
	fs.DurationVar(&c.VolumeSync, "volume-sync-period", 2*time.Second, "how often ConfigMap/Secret/projected volumes are refreshed")
	fs.DurationVar(&c.ShutdownGrace, "shutdown-grace-period", 30*time.Second, "longest grace period given to pods when the agent stops")
	leaseDuration := fs.Int("node-lease-duration", 40, "node lease duration in seconds (renewed every quarter)")
	fs.DurationVar(&c.StatusInterval, "node-status-update-frequency", time.Minute, "how often the Node status is written besides the lease")
	verbosity := fs.Int("v", 0, "log verbosity")
	_ = fs.Parse(args)
	c.LeaseDuration = int32(*leaseDuration)
	c.Version = version
	c.PodRoutes, c.ClusterDNS, c.HideDirs = routes, dns, hide
	c.Labels = map[string]string{}
	for _, l := range labels {
		k, v, ok := strings.Cut(l, "=")
		if !ok {
			return fmt.Errorf("--label %q: want KEY=VALUE", l)
		}
		c.Labels[k] = v
	}
	setVerbosity(*verbosity)
	return agent.Run(ctx, c)
}

// setVerbosity routes virtual-kubelet's and client-go's logs to stderr.
func setVerbosity(v int) {
	fs := flag.NewFlagSet("klog", flag.ContinueOnError)
	klog.InitFlags(fs)
	_ = fs.Set("v", fmt.Sprint(v))
	l := logrus.StandardLogger()
	l.SetLevel(logrus.InfoLevel)
	if v >= 4 {
		l.SetLevel(logrus.DebugLevel)
	}
	vklog.L = logruslogger.FromLogrus(logrus.NewEntry(l))
}

func runDNS(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("dns", flag.ExitOnError)
	kubeconfig := fs.String("kubeconfig", "", "kubeconfig with list/watch of Services and EndpointSlices (required)")
	listen := fs.String("listen", "", "address:port to serve DNS on, UDP and TCP (required), e.g. 10.96.0.10:53")
	zone := fs.String("zone", "cluster.local", "the cluster domain this server answers for")
	ttl := fs.Uint("ttl", 5, "TTL of answers in seconds")
	_ = fs.Parse(args)
	if *kubeconfig == "" || *listen == "" {
		return fmt.Errorf("--kubeconfig and --listen are required")
	}
	cfg, err := clientcmd.BuildConfigFromFlags("", *kubeconfig)
	if err != nil {
		return err
	}
	cfg.UserAgent = "nodeagent-dns"
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	s := dnsserver.New(client, *zone, uint32(*ttl))
	if err := s.Start(ctx); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "dns: serving %s on %s\n", *zone, *listen)
	return s.ListenAndServe(ctx, *listen)
}

func runCleanup(args []string) error {
	fs := flag.NewFlagSet("cleanup", flag.ExitOnError)
	stateDir := fs.String("state-dir", "", "the node's state directory (required)")
	prefix := fs.String("name-prefix", "", "the node's name prefix (required)")
	_ = fs.Parse(args)
	if *stateDir == "" || *prefix == "" {
		return fmt.Errorf("--state-dir and --name-prefix are required")
	}
	return agent.Cleanup(*stateDir, *prefix)
}
