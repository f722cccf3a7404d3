// Package runtime runs the pods bound to one node as processes: a pod
// worker per pod creates the sandbox (network namespace, volumes, host
// files), runs the init containers in order, then the containers, each
// supervised with probes, restarts and the kubelet's back-off, and on
// deletion runs preStop, SIGTERM and, after the grace period, SIGKILL.
package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/record"

	"mailwarden/hack/nodeagent/internal/cgroups"
	"mailwarden/hack/nodeagent/internal/envs"
	"mailwarden/hack/nodeagent/internal/images"
	"mailwarden/hack/nodeagent/internal/objcache"
	"mailwarden/hack/nodeagent/internal/podnet"
	"mailwarden/hack/nodeagent/internal/volumes"
)

// Config is what the runtime needs from the node.
type Config struct {
	NodeName    string
	StateDir    string // the node's pods live in <StateDir>/pods/<uid>
	PodinitPath string
	Catalog     *images.Catalog
	Net         *podnet.Network
	Cgroups     *cgroups.Root
	Envs        envs.Sources
	Volumes     volumes.Sources
	DNS         DNSConfig
	HostIP      string
	// Objects caches the Secrets and ConfigMaps pods reference (one watch each).
	Secrets    *objcache.Cache
	ConfigMaps *objcache.Cache
	// Pods reads the API server's view of a pod (the pod informer): conditions
	// that others own (PodScheduled, DisruptionTarget, readiness gates) are
	// kept from it, as the kubelet's status manager keeps them.
	Pods corev1listers.PodLister
	// HideDirs are covered with an empty tmpfs inside every container.
	HideDirs         []string
	Client           kubernetes.Interface
	Recorder         record.EventRecorder
	VolumeSyncPeriod time.Duration
	// BackoffInitial and BackoffMax are the restart back-off (10 s and 5 min in the kubelet).
	BackoffInitial time.Duration
	BackoffMax     time.Duration
}

// Runtime is the node's set of pods.
type Runtime struct {
	cfg      Config
	netReady chan struct{} // closed once cfg.Net is set
	mu       sync.Mutex
	pods     map[string]*Pod
	notify   func(*corev1.Pod)
}

// New returns a runtime; Notify must be set before pods are created.
func New(cfg Config) *Runtime {
	if cfg.BackoffInitial == 0 {
		cfg.BackoffInitial = 10 * time.Second
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = 5 * time.Minute
	}
	if cfg.VolumeSyncPeriod == 0 {
		cfg.VolumeSyncPeriod = 2 * time.Second
	}
	r := &Runtime{cfg: cfg, netReady: make(chan struct{}), pods: map[string]*Pod{}, notify: func(*corev1.Pod) {}}
	if cfg.Net != nil {
		close(r.netReady)
	}
	return r
}

// SetNetwork provides the pod network once the node's pod CIDR is known;
// pods bound before then wait for it.
func (r *Runtime) SetNetwork(nw *podnet.Network) {
	r.mu.Lock()
	r.cfg.Net = nw
	r.mu.Unlock()
	close(r.netReady)
}

// SetNotify registers the callback that receives every pod status change.
func (r *Runtime) SetNotify(f func(*corev1.Pod)) { r.notify = f }

func key(ns, name string) string { return ns + "/" + name }

// Get returns the pod (nil when unknown).
func (r *Runtime) Get(ns, name string) *Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.pods[key(ns, name)]
}

// List returns every pod the runtime knows.
func (r *Runtime) List() []*Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := make([]*Pod, 0, len(r.pods))
	for _, p := range r.pods {
		out = append(out, p)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].key < out[j].key })
	return out
}

// Create starts a pod worker for pod.
func (r *Runtime) Create(pod *corev1.Pod) *Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	k := key(pod.Namespace, pod.Name)
	if p, ok := r.pods[k]; ok && p.uid() == string(pod.UID) {
		return p
	}
	p := newPod(r, pod)
	r.pods[k] = p
	r.watchRefs(pod, true)
	go p.run()
	return p
}

// Update hands a changed pod spec (labels, annotations, deletion) to its worker.
func (r *Runtime) Update(pod *corev1.Pod) {
	if p := r.Get(pod.Namespace, pod.Name); p != nil && p.uid() == string(pod.UID) {
		p.update(pod)
	}
}

// Republish sends the pod's status again: a condition someone else owns
// (a readiness gate) changed, and Ready may follow it.
func (r *Runtime) Republish(pod *corev1.Pod) {
	if p := r.Get(pod.Namespace, pod.Name); p != nil && p.uid() == string(pod.UID) {
		p.mu.Lock()
		p.pod.Status.Conditions = pod.Status.Conditions
		p.mu.Unlock()
		p.publish()
	}
}

// Delete starts the graceful termination of the pod (idempotent; a shorter
// grace period than the one in progress shortens it).
func (r *Runtime) Delete(pod *corev1.Pod) bool {
	p := r.Get(pod.Namespace, pod.Name)
	if p == nil || (pod.UID != "" && p.uid() != string(pod.UID)) {
		return false
	}
	grace := int64(corev1.DefaultTerminationGracePeriodSeconds)
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		grace = *pod.Spec.TerminationGracePeriodSeconds
	}
	if pod.DeletionGracePeriodSeconds != nil {
		grace = *pod.DeletionGracePeriodSeconds
	}
	p.terminate(time.Duration(grace)*time.Second, true)
	return true
}

func (r *Runtime) forget(p *Pod) {
	r.mu.Lock()
	if r.pods[p.key] == p {
		delete(r.pods, p.key)
	}
	r.mu.Unlock()
	r.watchRefs(p.Spec(), false)
}

// watchRefs starts (or stops) the watches of the objects pod references.
func (r *Runtime) watchRefs(pod *corev1.Pod, start bool) {
	if r.cfg.Secrets == nil || r.cfg.ConfigMaps == nil {
		return
	}
	secrets, cms := objcache.Refs(pod)
	for _, n := range secrets {
		if start {
			r.cfg.Secrets.Register(pod.Namespace, n)
		} else {
			r.cfg.Secrets.Unregister(pod.Namespace, n)
		}
	}
	for _, n := range cms {
		if start {
			r.cfg.ConfigMaps.Register(pod.Namespace, n)
		} else {
			r.cfg.ConfigMaps.Unregister(pod.Namespace, n)
		}
	}
}

// StopAll terminates every pod gracefully (agent shutdown) and waits.
func (r *Runtime) StopAll(maxGrace time.Duration) {
	var wg sync.WaitGroup
	for _, p := range r.List() {
		wg.Add(1)
		go func(p *Pod) {
			defer wg.Done()
			// As the kubelet's graceful node shutdown reports it.
			p.mu.Lock()
			p.reason, p.message = "Terminated", "Pod was terminated in response to imminent node shutdown."
			grace := maxGrace
			if g := p.pod.Spec.TerminationGracePeriodSeconds; g != nil && time.Duration(*g)*time.Second < grace {
				grace = time.Duration(*g) * time.Second
			}
			p.mu.Unlock()
			p.terminate(grace, false)
			<-p.finished
		}(p)
	}
	wg.Wait()
}

// Pod is one pod's worker state.
type Pod struct {
	rt  *Runtime
	key string
	dir string

	pubMu     sync.Mutex
	mu        sync.Mutex
	pod       *corev1.Pod
	startTime metav1.Time
	sandbox   *podnet.Sandbox
	vols      *volumes.Manager
	cg        *cgroups.Group
	init      []*container
	ctrs      []*container
	sandboxOK bool
	initDone  bool
	failed    bool // an init container failed for good
	reason    string
	message   string
	terminal  bool // every container finished for good (or the pod was deleted)
	conds     map[corev1.PodConditionType]*corev1.PodCondition

	ctx        context.Context // ends when the pod is being terminated
	cancel     context.CancelFunc
	deleting   bool
	graceUntil time.Time
	hurry      chan struct{} // closed when the grace period was shortened
	finished   chan struct{} // closed when everything is torn down
	fromAPI    bool          // deleted through the API: remove the object at the end
}

func newPod(r *Runtime, pod *corev1.Pod) *Pod {
	ctx, cancel := context.WithCancel(context.Background())
	p := &Pod{
		rt:        r,
		key:       key(pod.Namespace, pod.Name),
		dir:       filepath.Join(r.cfg.StateDir, "pods", string(pod.UID)),
		pod:       pod.DeepCopy(),
		startTime: metav1.Now(),
		conds:     map[corev1.PodConditionType]*corev1.PodCondition{},
		ctx:       ctx,
		cancel:    cancel,
		hurry:     make(chan struct{}),
		finished:  make(chan struct{}),
	}
	for i := range pod.Spec.InitContainers {
		p.init = append(p.init, newContainer(p, &pod.Spec.InitContainers[i], true))
	}
	for i := range pod.Spec.Containers {
		p.ctrs = append(p.ctrs, newContainer(p, &pod.Spec.Containers[i], false))
	}
	return p
}

func (p *Pod) uid() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return string(p.pod.UID)
}

// Spec returns a copy of the pod as last given to the worker.
func (p *Pod) Spec() *corev1.Pod {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.pod.DeepCopy()
}

func (p *Pod) update(pod *corev1.Pod) {
	p.mu.Lock()
	p.pod.Labels = pod.Labels
	p.pod.Annotations = pod.Annotations
	p.pod.Status.Conditions = pod.Status.Conditions
	vols := p.vols
	p.mu.Unlock()
	if vols != nil {
		vols.UpdatePod(pod)
	}
	p.publish()
}

func (p *Pod) event(typ, reason, msg string) {
	if p.rt.cfg.Recorder != nil {
		p.mu.Lock()
		ref := p.pod.DeepCopy()
		p.mu.Unlock()
		p.rt.cfg.Recorder.Event(ref, typ, reason, msg)
	}
}

func (p *Pod) eventf(typ, reason, format string, args ...any) {
	p.event(typ, reason, fmt.Sprintf(format, args...))
}

// publish sends the current status to the pod controller. Snapshot and
// delivery happen under one lock, so a later snapshot is never overtaken by
// an earlier one (the pod controller keeps the last status it was given).
func (p *Pod) publish() {
	p.pubMu.Lock()
	defer p.pubMu.Unlock()
	p.rt.notify(p.Status())
}

// run is the pod worker.
func (p *Pod) run() {
	defer close(p.finished)
	p.publish()
	if err := p.setUpSandbox(); err != nil {
		// Only a termination interrupts sandbox creation for good.
		p.finish()
		return
	}
	if !p.runInitContainers() {
		p.finish()
		return
	}
	var wg sync.WaitGroup
	for _, c := range p.ctrs {
		// Containers start in order: the next starts once this one has been
		// started (and its postStart hook has run), as the kubelet does.
		started := make(chan struct{})
		wg.Add(1)
		go func(c *container) {
			defer wg.Done()
			c.supervise(started)
		}(c)
		select {
		case <-started:
		case <-p.ctx.Done():
		}
	}
	wg.Wait()
	p.finish()
}

// setUpSandbox creates the pod's directory, cgroup, network and volumes,
// retrying what can succeed later (a ConfigMap created after the pod).
func (p *Pod) setUpSandbox() error {
	cfg := &p.rt.cfg
	pod := p.Spec()
	for _, d := range []string{p.dir, filepath.Join(p.dir, "logs"), filepath.Join(p.dir, "containers"), filepath.Join(p.dir, "shm")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return p.sandboxFailed("FailedCreatePodSandBox", err)
		}
	}
	select {
	case <-p.rt.netReady:
	case <-p.ctx.Done():
		return p.ctx.Err()
	}
	if pod.Spec.HostNetwork {
		p.event(corev1.EventTypeWarning, "HostNetworkUnsupported",
			"hostNetwork is not supported by the process node agent: the pod gets its own network namespace")
	}
	cg, err := cfg.Cgroups.Group("pod" + string(pod.UID))
	if err != nil {
		return p.sandboxFailed("FailedCreatePodSandBox", err)
	}
	sb, err := cfg.Net.Create(string(pod.UID))
	if err != nil {
		return p.sandboxFailed("FailedCreatePodSandBox", err)
	}
	p.mu.Lock()
	p.cg = cg
	p.sandbox = sb
	p.pod.Status.PodIP = sb.IP.String()
	p.mu.Unlock()
	if err := writeHostFiles(p.dir, pod, sb.IP.String(), cfg.DNS); err != nil {
		return p.sandboxFailed("FailedCreatePodSandBox", err)
	}
	shmSize := "64m"
	if err := mountTmpfs(filepath.Join(p.dir, "shm"), "mode=1777,size="+shmSize); err != nil {
		return p.sandboxFailed("FailedCreatePodSandBox", err)
	}
	vols := volumes.New(cfg.Volumes, filepath.Join(p.dir, "volumes"), pod)
	p.mu.Lock()
	p.vols = vols
	p.sandboxOK = true
	p.mu.Unlock()
	p.publish()
	lastMsg := ""
	for {
		err := vols.SetUp(p.ctx)
		if err == nil {
			break
		}
		if err.Error() != lastMsg {
			lastMsg = err.Error()
			p.event(corev1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed: "+lastMsg)
		}
		select {
		case <-p.ctx.Done():
			return p.ctx.Err()
		case <-time.After(2 * time.Second):
		}
	}
	go p.syncVolumes(vols)
	return nil
}

func (p *Pod) sandboxFailed(reason string, err error) error {
	p.eventf(corev1.EventTypeWarning, reason, "Failed to create pod sandbox: %v", err)
	p.mu.Lock()
	p.reason, p.message = "", err.Error()
	p.mu.Unlock()
	p.publish()
	// Wait for deletion: the pod cannot run on this node.
	<-p.ctx.Done()
	return err
}

// syncVolumes refreshes the projected volumes until the pod terminates.
func (p *Pod) syncVolumes(vols *volumes.Manager) {
	t := time.NewTicker(p.rt.cfg.VolumeSyncPeriod)
	defer t.Stop()
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-t.C:
			if err := vols.Sync(p.ctx); err != nil && p.ctx.Err() == nil {
				p.event(corev1.EventTypeWarning, "FailedMount", "MountVolume.SetUp failed: "+err.Error())
			}
		}
	}
}

// runInitContainers runs the init containers one after the other, each to
// success. It returns false when the pod cannot go on (failed or deleted).
func (p *Pod) runInitContainers() bool {
	for _, c := range p.init {
		if !c.runToSuccess() {
			return false
		}
	}
	p.mu.Lock()
	p.initDone = true
	p.mu.Unlock()
	p.publish()
	return true
}

// terminate stops the pod within grace: preStop, SIGTERM, SIGKILL.
func (p *Pod) terminate(grace time.Duration, fromAPI bool) {
	p.mu.Lock()
	until := time.Now().Add(grace)
	if p.deleting {
		if until.Before(p.graceUntil) {
			p.graceUntil = until
			select {
			case <-p.hurry:
			default:
				close(p.hurry)
			}
		}
		p.fromAPI = p.fromAPI || fromAPI
		p.mu.Unlock()
		return
	}
	p.deleting = true
	p.graceUntil = until
	p.fromAPI = fromAPI
	p.mu.Unlock()
	p.cancel()
	go func() {
		<-p.finished
		p.rt.forget(p)
	}()
}

// graceDeadline is when the pod's grace period ends.
func (p *Pod) graceDeadline() (time.Time, <-chan struct{}) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.graceUntil, p.hurry
}

// finish tears the sandbox down once every container has stopped, publishes
// the final status and, for a pod deleted through the API, removes the
// object (the kubelet's final delete with grace period 0).
func (p *Pod) finish() {
	for _, c := range append(append([]*container{}, p.init...), p.ctrs...) {
		c.stopForGood()
	}
	p.mu.Lock()
	p.terminal = true
	sb, vols, cg := p.sandbox, p.vols, p.cg
	deleting, fromAPI := p.deleting, p.fromAPI
	pod := p.pod.DeepCopy()
	p.mu.Unlock()
	if cg != nil {
		_ = cg.Kill(10 * time.Second)
		_ = cg.Remove()
	}
	if sb != nil {
		if err := p.rt.cfg.Net.Delete(sb); err != nil {
			p.eventf(corev1.EventTypeWarning, "FailedKillPod", "tearing down the pod network: %v", err)
		}
	}
	if vols != nil {
		_ = vols.TearDown()
	}
	UnmountAll(p.dir)
	p.publish()
	if deleting && fromAPI {
		p.deleteObject(pod)
	}
	if deleting {
		_ = os.RemoveAll(p.dir)
	}
}

// deleteObject removes the pod from the API server once it has stopped.
func (p *Pod) deleteObject(pod *corev1.Pod) {
	if p.rt.cfg.Client == nil {
		return
	}
	// Give the pod controller a moment to write the final status first.
	time.Sleep(300 * time.Millisecond)
	zero := int64(0)
	opts := metav1.DeleteOptions{GracePeriodSeconds: &zero, Preconditions: metav1.NewUIDPreconditions(string(pod.UID))}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	_ = p.rt.cfg.Client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, opts)
}

// PodIP returns the pod's IP ("" before the sandbox exists).
func (p *Pod) PodIP() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.sandbox == nil {
		return ""
	}
	return p.sandbox.IP.String()
}

// Dir is the pod's directory on the node.
func (p *Pod) Dir() string { return p.dir }

// Container finds a container (init or regular) by name.
func (p *Pod) Container(name string) *container {
	for _, c := range append(append([]*container{}, p.init...), p.ctrs...) {
		if c.spec.Name == name {
			return c
		}
	}
	return nil
}

// Containers lists the pod's containers (init first).
func (p *Pod) Containers() []*container {
	return append(append([]*container{}, p.init...), p.ctrs...)
}

func hostIPs(ip string) []corev1.HostIP {
	if net.ParseIP(ip) == nil {
		return nil
	}
	return []corev1.HostIP{{IP: ip}}
}

// ContainerUsage is one running container's resource usage.
type ContainerUsage struct {
	Name      string
	StartedAt time.Time
	Usage     cgroups.Usage
}

// Usage reads the CPU and memory of the pod's running containers.
func (p *Pod) Usage() []ContainerUsage {
	var out []ContainerUsage
	for _, c := range p.Containers() {
		proc := c.Process()
		if proc == nil || proc.exited() {
			continue
		}
		u, err := proc.cg.Usage()
		if err != nil {
			continue
		}
		out = append(out, ContainerUsage{Name: c.Name(), StartedAt: proc.startedAt, Usage: u})
	}
	return out
}
