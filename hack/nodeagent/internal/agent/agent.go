// Package agent assembles one node: it registers the Node (labels,
// capacity, addresses, kubelet endpoint, lease) through virtual-kubelet's
// node controller, sets up the pod network once the Node has a pod CIDR,
// runs virtual-kubelet's pod controller over the process runtime, and
// serves the kubelet API over TLS with the kubelet's authentication
// (client certificates, bearer tokens by TokenReview, SubjectAccessReview).
package agent

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"time"

	"github.com/virtual-kubelet/virtual-kubelet/log"
	"github.com/virtual-kubelet/virtual-kubelet/node"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	"github.com/virtual-kubelet/virtual-kubelet/node/nodeutil"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apiserver/pkg/server/dynamiccertificates"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/scheme"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/record"

	"mailwarden/hack/nodeagent/internal/cgroups"
	"mailwarden/hack/nodeagent/internal/envs"
	"mailwarden/hack/nodeagent/internal/images"
	"mailwarden/hack/nodeagent/internal/objcache"
	"mailwarden/hack/nodeagent/internal/podnet"
	"mailwarden/hack/nodeagent/internal/provider"
	"mailwarden/hack/nodeagent/internal/runtime"
	"mailwarden/hack/nodeagent/internal/volumes"
)

// Config is the node's configuration (from flags).
type Config struct {
	Kubeconfig     string
	NodeName       string
	NodeIP         string
	KubeletPort    int
	Labels         map[string]string
	PodCIDR        string
	PodRoutes      []string
	ClusterDNS     []string
	ClusterDomain  string
	StateDir       string
	NamePrefix     string
	PodinitPath    string
	ImageCatalog   string
	APIServerHost  string
	APIServerPort  int
	TLSCert        string
	TLSKey         string
	ClientCA       string
	AuthMode       string // "webhook" or "none"
	CPU            string
	Memory         string
	Pods           string
	HideDirs       []string
	BackoffInitial time.Duration
	BackoffMax     time.Duration
	VolumeSync     time.Duration
	ShutdownGrace  time.Duration
	LeaseDuration  int32
	StatusInterval time.Duration
	Version        string
}

// Validate reports the first bad setting in plain words.
func (c *Config) Validate() error {
	switch {
	case c.Kubeconfig == "":
		return errors.New("--kubeconfig is required")
	case c.NodeName == "":
		return errors.New("--node-name is required")
	case net.ParseIP(c.NodeIP) == nil:
		return fmt.Errorf("--node-ip %q is not an IP address", c.NodeIP)
	case c.StateDir == "" || !filepath.IsAbs(c.StateDir):
		return errors.New("--state-dir must be an absolute path")
	case c.NamePrefix == "" || len(c.NamePrefix) > 6:
		return fmt.Errorf("--name-prefix %q must be 1 to 6 characters (it starts 15-byte interface names)", c.NamePrefix)
	case c.ImageCatalog == "":
		return errors.New("--image-catalog is required (the images this node can run)")
	case c.AuthMode != "webhook" && c.AuthMode != "none":
		return fmt.Errorf("--authentication %q must be webhook or none", c.AuthMode)
	}
	if c.PodCIDR != "" {
		if _, _, err := net.ParseCIDR(c.PodCIDR); err != nil {
			return fmt.Errorf("--pod-cidr: %w", err)
		}
	}
	for _, r := range c.PodRoutes {
		if _, _, err := net.ParseCIDR(r); err != nil {
			return fmt.Errorf("--pod-route: %w", err)
		}
	}
	for _, q := range []string{c.CPU, c.Memory, c.Pods} {
		if _, err := resource.ParseQuantity(q); err != nil {
			return fmt.Errorf("capacity %q: %w", q, err)
		}
	}
	return nil
}

// State is what the agent writes to <state-dir>/agent.json so a launcher can
// kill the node and everything it runs at once.
type State struct {
	PID        int               `json:"pid"`
	NodeName   string            `json:"nodeName"`
	NamePrefix string            `json:"namePrefix"`
	Cgroups    map[string]string `json:"cgroups"`
	NetnsDir   string            `json:"netnsDir"`
}

func cgroupPrefix(namePrefix string) string { return filepath.Join("mw-nodeagent", namePrefix) }

// Cleanup kills every process, network namespace, veth and mount a previous
// run of this node left behind.
func Cleanup(stateDir, namePrefix string) error {
	var errs []error
	if root, err := cgroups.Open(cgroupPrefix(namePrefix)); err == nil {
		g := root.AsGroup()
		if err := g.Kill(10 * time.Second); err != nil {
			errs = append(errs, err)
		}
		_ = g.Remove()
	} else {
		errs = append(errs, err)
	}
	if err := podnet.CleanupPrefix(namePrefix); err != nil {
		errs = append(errs, err)
	}
	pods := filepath.Join(stateDir, "pods")
	_ = runtime.UnmountAll(pods)
	if err := os.RemoveAll(pods); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

// nodeProvider reports the node's status changes to the node controller.
type nodeProvider struct {
	mu   sync.Mutex
	node *corev1.Node
	cb   func(*corev1.Node)
}

func (n *nodeProvider) Ping(context.Context) error { return nil }

func (n *nodeProvider) NotifyNodeStatus(_ context.Context, cb func(*corev1.Node)) {
	n.mu.Lock()
	n.cb = cb
	n.mu.Unlock()
}

func (n *nodeProvider) setReady(ready bool, reason, msg string) {
	n.mu.Lock()
	status := corev1.ConditionFalse
	if ready {
		status = corev1.ConditionTrue
	}
	for i := range n.node.Status.Conditions {
		c := &n.node.Status.Conditions[i]
		if c.Type == corev1.NodeReady && (c.Status != status || c.Reason != reason) {
			c.Status, c.Reason, c.Message = status, reason, msg
			c.LastTransitionTime = metav1.Now()
		}
	}
	cp := n.node.DeepCopy()
	cb := n.cb
	n.mu.Unlock()
	if cb != nil {
		cb(cp)
	}
}

func conditions(now metav1.Time) []corev1.NodeCondition {
	c := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	return []corev1.NodeCondition{
		c(corev1.NodeReady, corev1.ConditionFalse, "NetworkNotReady", "waiting for the node's pod CIDR"),
		c(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
		c(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
		c(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
	}
}

func (c *Config) nodeObject() *corev1.Node {
	now := metav1.Now()
	lbl := map[string]string{
		"kubernetes.io/hostname": c.NodeName,
		"kubernetes.io/os":       "linux",
		"kubernetes.io/arch":     "amd64",
		"beta.kubernetes.io/os":  "linux",
	}
	for k, v := range c.Labels {
		lbl[k] = v
	}
	res := corev1.ResourceList{
		corev1.ResourceCPU:              resource.MustParse(c.CPU),
		corev1.ResourceMemory:           resource.MustParse(c.Memory),
		corev1.ResourcePods:             resource.MustParse(c.Pods),
		corev1.ResourceEphemeralStorage: resource.MustParse("100Gi"),
	}
	n := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: c.NodeName, Labels: lbl},
		Spec:       corev1.NodeSpec{PodCIDR: c.PodCIDR},
		Status: corev1.NodeStatus{
			Capacity:    res,
			Allocatable: res.DeepCopy(),
			Conditions:  conditions(now),
			Addresses: []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: c.NodeIP},
				{Type: corev1.NodeHostName, Address: c.NodeName},
			},
			DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: int32(c.KubeletPort)}},
			NodeInfo: corev1.NodeSystemInfo{
				KubeletVersion:          c.Version,
				KubeProxyVersion:        "",
				OperatingSystem:         "linux",
				Architecture:            "amd64",
				ContainerRuntimeVersion: "process://nodeagent",
				OSImage:                 "mailwarden process node agent",
			},
		},
	}
	if c.PodCIDR != "" {
		n.Spec.PodCIDRs = []string{c.PodCIDR}
	}
	return n
}

// Run runs the node until ctx ends, then stops its pods gracefully.
func Run(ctx context.Context, c Config) error {
	if err := c.Validate(); err != nil {
		return err
	}
	catalog, err := images.Load(c.ImageCatalog)
	if err != nil {
		return err
	}
	restCfg, err := clientcmd.BuildConfigFromFlags("", c.Kubeconfig)
	if err != nil {
		return fmt.Errorf("reading %s: %w", c.Kubeconfig, err)
	}
	restCfg.QPS, restCfg.Burst = 50, 100
	restCfg.UserAgent = "nodeagent/" + c.NodeName
	client, err := kubernetes.NewForConfig(restCfg)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(c.StateDir, 0o700); err != nil {
		return err
	}
	if err := Cleanup(c.StateDir, c.NamePrefix); err != nil {
		log.G(ctx).WithError(err).Warn("cleaning up a previous run")
	}
	cg, err := cgroups.Open(cgroupPrefix(c.NamePrefix))
	if err != nil {
		return err
	}
	st := State{PID: os.Getpid(), NodeName: c.NodeName, NamePrefix: c.NamePrefix, Cgroups: cg.Dirs(), NetnsDir: podnet.NetnsDir}
	if b, err := json.Marshal(st); err == nil {
		_ = os.WriteFile(filepath.Join(c.StateDir, "agent.json"), b, 0o600)
	}

	nodeObj := c.nodeObject()
	np := &nodeProvider{node: nodeObj.DeepCopy()}
	nc, err := node.NewNodeController(np, nodeObj, client.CoreV1().Nodes(),
		node.WithNodeEnableLeaseV1(nodeutil.NodeLeaseV1Client(client), c.LeaseDuration),
		node.WithNodeStatusUpdateInterval(c.StatusInterval))
	if err != nil {
		return err
	}

	eb := record.NewBroadcaster()
	eb.StartRecordingToSink(&corev1client.EventSinkImpl{Interface: client.CoreV1().Events(corev1.NamespaceAll)})
	defer eb.Shutdown()
	recorder := eb.NewRecorder(scheme.Scheme, corev1.EventSource{Component: "kubelet", Host: c.NodeName})

	podFactory := informers.NewSharedInformerFactoryWithOptions(client, time.Minute, nodeutil.PodInformerFilter(c.NodeName))
	podInformer := podFactory.Core().V1().Pods()
	svcFactory := informers.NewSharedInformerFactory(client, 10*time.Minute)
	svcInformer := svcFactory.Core().V1().Services()
	// The pod controller insists on ConfigMap and Secret informers for its
	// own env resolution, which is skipped here: these are never started (a
	// node may not list Secrets); objcache watches the referenced objects.
	idle := informers.NewSharedInformerFactory(client, 0)

	secrets, configMaps := objcache.NewSecrets(client), objcache.NewConfigMaps(client)
	allocatable := func() corev1.ResourceList { return nodeObj.Status.Allocatable.DeepCopy() }
	hide := append([]string{c.StateDir}, c.HideDirs...)
	rtCfg := runtime.Config{
		NodeName:    c.NodeName,
		StateDir:    c.StateDir,
		PodinitPath: c.PodinitPath,
		Catalog:     catalog,
		Cgroups:     cg,
		Envs: envs.Sources{ConfigMaps: configMaps, Secrets: secrets, Services: svcInformer.Lister(),
			NodeAllocatable: allocatable, APIServerHost: c.APIServerHost, APIServerPort: c.APIServerPort},
		Volumes:          volumes.Sources{ConfigMaps: configMaps, Secrets: secrets, Client: client, NodeAllocatable: allocatable},
		DNS:              runtime.DNSConfig{Nameservers: c.ClusterDNS, ClusterDomain: c.ClusterDomain},
		HostIP:           c.NodeIP,
		Secrets:          secrets,
		ConfigMaps:       configMaps,
		HideDirs:         hide,
		Client:           client,
		Recorder:         recorder,
		VolumeSyncPeriod: c.VolumeSync,
		BackoffInitial:   c.BackoffInitial,
		BackoffMax:       c.BackoffMax,
	}
	rtCfg.Pods = podInformer.Lister()
	rt := runtime.New(rtCfg)
	// virtual-kubelet hands over spec changes only; a readiness gate's
	// condition is a status change by someone else, and Ready depends on it.
	_, err = podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		UpdateFunc: func(oldObj, newObj any) {
			o, ok1 := oldObj.(*corev1.Pod)
			n, ok2 := newObj.(*corev1.Pod)
			if ok1 && ok2 && runtime.ForeignConditionsChanged(o, n) {
				go rt.Republish(n)
			}
		},
	})
	if err != nil {
		return err
	}
	prov := provider.New(rt, c.NodeName)

	pc, err := node.NewPodController(node.PodControllerConfig{
		PodClient:                 client.CoreV1(),
		PodInformer:               podInformer,
		EventRecorder:             recorder,
		Provider:                  prov,
		ConfigMapInformer:         idle.Core().V1().ConfigMaps(),
		SecretInformer:            idle.Core().V1().Secrets(),
		ServiceInformer:           svcInformer,
		SkipDownwardAPIResolution: true,
	})
	if err != nil {
		return err
	}

	srv, err := c.httpServer(client, prov)
	if err != nil {
		return err
	}
	ln, err := net.Listen("tcp", net.JoinHostPort(c.NodeIP, strconv.Itoa(c.KubeletPort)))
	if err != nil {
		return fmt.Errorf("kubelet endpoint: %w", err)
	}
	go func() { _ = srv.ServeTLS(ln, "", "") }()
	defer srv.Close()

	runCtx, cancel := context.WithCancel(context.Background())
	defer cancel()
	podFactory.Start(runCtx.Done())
	svcFactory.Start(runCtx.Done())
	pcErr := make(chan error, 1)
	go func() { pcErr <- pc.Run(runCtx, 4) }()
	select {
	case <-pc.Ready():
	case err := <-pcErr:
		return fmt.Errorf("pod controller: %w", err)
	case <-ctx.Done():
		return nil
	}
	ncErr := make(chan error, 1)
	go func() { ncErr <- nc.Run(runCtx) }()
	select {
	case <-nc.Ready():
	case err := <-ncErr:
		return fmt.Errorf("node controller: %w", err)
	case <-ctx.Done():
		return nil
	}

	netReady := make(chan error, 1)
	go func() { netReady <- c.setUpNetwork(runCtx, client, rt, np) }()

	select {
	case <-ctx.Done():
	case err := <-netReady:
		if err != nil {
			return err
		}
		select {
		case <-ctx.Done():
		case err := <-pcErr:
			return fmt.Errorf("pod controller: %w", err)
		case err := <-ncErr:
			return fmt.Errorf("node controller: %w", err)
		}
	case err := <-pcErr:
		return fmt.Errorf("pod controller: %w", err)
	case err := <-ncErr:
		return fmt.Errorf("node controller: %w", err)
	}
	// Graceful shutdown: every pod goes through preStop/SIGTERM/grace, its
	// final status (Failed, "Terminated") reaches the API server, then we exit.
	log.G(ctx).Info("stopping pods")
	rt.StopAll(c.ShutdownGrace)
	time.Sleep(time.Second)
	return nil
}

// setUpNetwork waits for the pod CIDR (flag or Node.spec.podCIDR from the
// controller manager's IPAM), creates the pod network and marks the node Ready.
func (c *Config) setUpNetwork(ctx context.Context, client kubernetes.Interface, rt *runtime.Runtime, np *nodeProvider) error {
	cidr := c.PodCIDR
	for cidr == "" {
		n, err := client.CoreV1().Nodes().Get(ctx, c.NodeName, metav1.GetOptions{})
		if err == nil && n.Spec.PodCIDR != "" {
			cidr = n.Spec.PodCIDR
			break
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	_, podNet, err := net.ParseCIDR(cidr)
	if err != nil {
		return fmt.Errorf("pod CIDR %q: %w", cidr, err)
	}
	var routes []*net.IPNet
	for _, r := range append([]string{}, c.PodRoutes...) {
		_, n, _ := net.ParseCIDR(r)
		routes = append(routes, n)
	}
	nw, err := podnet.New(podnet.Config{PodCIDR: podNet, Routes: routes, Prefix: c.NamePrefix, HostSrc: net.ParseIP(c.NodeIP)})
	if err != nil {
		return err
	}
	rt.SetNetwork(nw)
	np.setReady(true, "KubeletReady", "kubelet is posting ready status")
	return nil
}

func (c *Config) httpServer(client kubernetes.Interface, prov *provider.Provider) (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/", api.PodHandler(api.PodHandlerConfig{
		RunInContainer:    prov.RunInContainer,
		AttachToContainer: prov.AttachToContainer,
		GetContainerLogs:  prov.GetContainerLogs,
		GetPods:           prov.GetPods,
		GetPodsFromKubernetes: func(ctx context.Context) ([]*corev1.Pod, error) {
			return prov.GetPods(ctx)
		},
		GetStatsSummary:       prov.GetStatsSummary,
		GetMetricsResource:    prov.GetMetricsResource,
		PortForward:           prov.PortForward,
		StreamIdleTimeout:     4 * time.Hour,
		StreamCreationTimeout: 30 * time.Second,
	}, false))
	var handler http.Handler = mux
	if c.AuthMode == "webhook" {
		auth, err := nodeutil.WebhookAuth(client, c.NodeName, func(wc *nodeutil.WebhookAuthConfig) error {
			if c.ClientCA == "" {
				return nil
			}
			ca, err := dynamiccertificates.NewDynamicCAContentFromFile("client-ca", c.ClientCA)
			if err != nil {
				return err
			}
			wc.AuthnConfig.ClientCertificateCAContentProvider = ca
			return nil
		})
		if err != nil {
			return nil, err
		}
		handler = nodeutil.WithAuth(auth, mux)
	}
	healthz := http.NewServeMux()
	healthz.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("ok")) })
	healthz.Handle("/", handler)

	cert, err := c.servingCert()
	if err != nil {
		return nil, err
	}
	tlsCfg := &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}, ClientAuth: tls.RequestClientCert}
	return &http.Server{Handler: healthz, TLSConfig: tlsCfg, ReadHeaderTimeout: 30 * time.Second}, nil
}

func (c *Config) servingCert() (tls.Certificate, error) {
	if c.TLSCert != "" {
		return tls.LoadX509KeyPair(c.TLSCert, c.TLSKey)
	}
	return selfSigned(c.NodeName, c.NodeIP)
}
