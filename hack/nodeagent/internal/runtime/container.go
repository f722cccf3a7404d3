package runtime

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/kubernetes/pkg/probe"

	"mailwarden/hack/nodeagent/internal/envs"
	"mailwarden/hack/nodeagent/internal/images"
	"mailwarden/hack/nodeagent/internal/podinit"
)

// minGraceAfterPreStop is the kubelet's minimum time between a preStop hook
// that used up the grace period and SIGKILL.
const minGraceAfterPreStop = 2 * time.Second

// container is one container of a pod and its successive instances.
type container struct {
	pod    *Pod
	spec   corev1.Container
	isInit bool

	mu          sync.Mutex
	instances   int32 // instances started (or failed to start); restartCount = instances-1
	proc        *process
	procSpec    *podinit.Spec
	instance    int32
	waiting     *corev1.ContainerStateWaiting
	terminated  *corev1.ContainerStateTerminated
	last        *corev1.ContainerStateTerminated
	started     bool // startup probe passed (or none)
	ready       bool
	imageID     string
	containerID string
	backoff     time.Duration
	backoffAt   time.Time // when the back-off was last raised
	stopped     bool      // will not start again
	probeCancel context.CancelFunc
	killReason  string // why the agent killed the current instance (liveness, startup)
	done        chan struct{}
}

func newContainer(p *Pod, spec *corev1.Container, isInit bool) *container {
	return &container{pod: p, spec: *spec.DeepCopy(), isInit: isInit,
		waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}, done: make(chan struct{})}
}

// Name is the container's name.
func (c *container) Name() string { return c.spec.Name }

// runToSuccess runs an init container until it exits 0 (restarting it with
// back-off unless restartPolicy is Never). False means the pod stops here.
func (c *container) runToSuccess() bool {
	for {
		code, ok := c.runOnce(nil)
		if !ok {
			return false
		}
		if code == 0 {
			c.mu.Lock()
			c.stopped = true
			c.mu.Unlock()
			return true
		}
		if c.pod.Spec().Spec.RestartPolicy == corev1.RestartPolicyNever {
			c.pod.mu.Lock()
			c.pod.failed = true
			c.pod.mu.Unlock()
			c.mu.Lock()
			c.stopped = true
			c.mu.Unlock()
			return false
		}
		if !c.backOff() {
			return false
		}
	}
}

// supervise runs a regular container for the pod's lifetime, restarting it
// per restartPolicy. started is closed once the first instance has started.
func (c *container) supervise(started chan struct{}) {
	var once sync.Once
	signalStarted := func() { once.Do(func() { close(started) }) }
	defer signalStarted()
	for {
		code, ok := c.runOnce(signalStarted)
		if !ok {
			return
		}
		policy := c.pod.Spec().Spec.RestartPolicy
		restart := policy == corev1.RestartPolicyAlways || policy == "" ||
			(policy == corev1.RestartPolicyOnFailure && code != 0)
		if !restart {
			c.mu.Lock()
			c.stopped = true
			c.mu.Unlock()
			c.pod.publish()
			return
		}
		if !c.backOff() {
			return
		}
	}
}

// backOff waits out the restart back-off (0 for the first restart, then
// 10 s doubling to 5 min, reset after 10 min without a crash), showing
// CrashLoopBackOff meanwhile. False means the pod is being terminated.
func (c *container) backOff() bool {
	cfg := &c.pod.rt.cfg
	c.mu.Lock()
	now := time.Now()
	if !c.backoffAt.IsZero() && now.Sub(c.backoffAt) > 2*cfg.BackoffMax {
		c.backoff = 0
	}
	wait := c.backoff
	if c.backoff == 0 {
		c.backoff = cfg.BackoffInitial
	} else {
		c.backoff *= 2
		if c.backoff > cfg.BackoffMax {
			c.backoff = cfg.BackoffMax
		}
	}
	c.backoffAt = now
	if wait > 0 {
		pod := c.pod.Spec()
		c.waiting = &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", wait, c.spec.Name, pod.Name, pod.Namespace, pod.UID)}
		c.terminated = nil
	}
	c.mu.Unlock()
	if wait == 0 {
		return c.pod.ctx.Err() == nil
	}
	c.pod.publish()
	c.pod.eventf(corev1.EventTypeWarning, "BackOff", "Back-off restarting failed container %s in pod %s", c.spec.Name, c.pod.key)
	select {
	case <-c.pod.ctx.Done():
		return false
	case <-time.After(wait):
		return true
	}
}

// runOnce starts one instance and waits for it to end. ok is false when the
// pod is being terminated (the instance, if any, was stopped by terminate).
func (c *container) runOnce(onStarted func()) (code int32, ok bool) {
	if c.pod.ctx.Err() != nil {
		return 0, false
	}
	proc, err := c.start()
	if err != nil {
		var se *startError
		if errors.As(err, &se) {
			// The runtime's StartError: a terminated instance with exit code 128.
			now := metav1.Now()
			c.mu.Lock()
			c.last = c.lastOrTerminated()
			c.terminated = &corev1.ContainerStateTerminated{ExitCode: 128, Reason: "StartError", Message: se.msg,
				StartedAt: metav1.NewTime(time.Unix(0, 0)), FinishedAt: now, ContainerID: c.containerID}
			c.waiting = nil
			c.instances++
			c.mu.Unlock()
			c.pod.eventf(corev1.EventTypeWarning, "Failed", "Error: %s", se.msg)
			c.pod.publish()
			return 128, true
		}
		// A configuration or image problem: wait and retry (kubelet's sync loop).
		c.pod.publish()
		// Let ErrImagePull be seen before the back-off state replaces it.
		select {
		case <-c.pod.ctx.Done():
			return 0, false
		case <-time.After(time.Second):
		}
		c.mu.Lock()
		if c.waiting != nil && c.waiting.Reason == "ErrImagePull" {
			// As the kubelet: the retry waits as ImagePullBackOff.
			c.waiting = &corev1.ContainerStateWaiting{Reason: "ImagePullBackOff",
				Message: fmt.Sprintf("Back-off pulling image %q: %s", c.spec.Image, c.waiting.Message)}
		}
		c.mu.Unlock()
		c.pod.publish()
		select {
		case <-c.pod.ctx.Done():
			return 0, false
		case <-time.After(c.retryDelay()):
			return c.runOnce(onStarted)
		}
	}
	c.pod.eventf(corev1.EventTypeNormal, "Started", "Started container %s", c.spec.Name)
	if h := c.spec.Lifecycle; h != nil && h.PostStart != nil && !c.isInit {
		if err := c.runHook(c.pod.ctx, h.PostStart, time.Duration(c.gracePeriod())*time.Second); err != nil {
			c.pod.eventf(corev1.EventTypeWarning, "FailedPostStartHook", "PostStartHook failed: %v", err)
			c.mu.Lock()
			c.killReason = "FailedPostStartHook"
			c.mu.Unlock()
			c.stop(time.Duration(c.gracePeriod())*time.Second, nil)
		}
	}
	if onStarted != nil {
		onStarted()
	}
	if !c.isInit {
		c.startProbes(proc)
	}
	c.pod.publish()
	select {
	case <-proc.done:
	case <-c.pod.ctx.Done():
		// Terminating: stop this instance within the pod's grace period.
		until, hurry := c.pod.graceDeadline()
		c.stop(time.Until(until), hurry)
	}
	c.stopProbes()
	c.recordExit(proc)
	c.pod.publish()
	if c.pod.ctx.Err() != nil {
		return proc.exit.code, false
	}
	return proc.exit.code, true
}

func (c *container) retryDelay() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	d := c.backoff
	if d == 0 {
		d = c.pod.rt.cfg.BackoffInitial
		c.backoff = d
	} else if d < c.pod.rt.cfg.BackoffMax {
		c.backoff *= 2
	}
	return d
}

func (c *container) lastOrTerminated() *corev1.ContainerStateTerminated {
	if c.terminated != nil {
		return c.terminated
	}
	return c.last
}

// recordExit turns the ended instance into the terminated state.
func (c *container) recordExit(proc *process) {
	<-proc.done
	proc.logs.Close()
	dir := instanceDir(c.pod.dir, c.spec.Name, c.instance)
	t := &corev1.ContainerStateTerminated{
		ExitCode:    proc.exit.code,
		Signal:      int32(proc.exit.signal),
		StartedAt:   metav1.NewTime(proc.startedAt),
		FinishedAt:  metav1.NewTime(proc.exit.finishedAt),
		ContainerID: c.containerID,
	}
	switch {
	case proc.exit.oomKilled:
		t.Reason = "OOMKilled"
	case proc.exit.code == 0:
		t.Reason = "Completed"
	default:
		t.Reason = "Error"
	}
	t.Message = readTerminationMessage(filepath.Join(dir, "termination-log"))
	if t.Message == "" && t.ExitCode != 0 && c.spec.TerminationMessagePolicy == corev1.TerminationMessageFallbackToLogsOnError {
		t.Message = tailLog(c.logPath(c.instance), 80, 2048)
	}
	c.mu.Lock()
	c.proc = nil
	c.terminated = t
	c.waiting = nil
	c.ready = false
	c.started = false
	c.mu.Unlock()
	if t.Reason == "OOMKilled" {
		c.pod.eventf(corev1.EventTypeWarning, "OOMKilled", "Container %s was killed by the OOM killer (memory limit %s)", c.spec.Name, c.spec.Resources.Limits.Memory())
	}
	// Only the writable layer goes; the log stays for `kubectl logs --previous`.
	_ = UnmountAll(filepath.Join(dir, "layer"))
	_ = os.RemoveAll(filepath.Join(dir, "layer"))
}

func (c *container) logPath(instance int32) string {
	return filepath.Join(c.pod.dir, "logs", c.spec.Name, fmt.Sprintf("%d.log", instance))
}

// LogPath returns the log of the current (previous=false) or previous instance.
func (c *container) LogPath(previous bool) (string, <-chan struct{}, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := c.instance
	if previous {
		if n == 0 {
			return "", nil, fmt.Errorf("previous terminated container %q in pod %q not found", c.spec.Name, c.pod.key)
		}
		n--
	}
	done := make(chan struct{})
	if c.proc != nil && !previous {
		done = c.proc.done
	} else {
		close(done)
	}
	p := c.logPath(n)
	if _, err := os.Stat(p); err != nil {
		return "", nil, fmt.Errorf("container %q in pod %q has no log yet", c.spec.Name, c.pod.key)
	}
	return p, done, nil
}

// start creates and starts a new instance. Errors other than *startError
// leave the container waiting with the kubelet's reason.
func (c *container) start() (*process, error) {
	cfg := &c.pod.rt.cfg
	pod := c.pod.Spec()
	c.pod.mu.Lock()
	sb := c.pod.sandbox
	vols := c.pod.vols
	c.pod.mu.Unlock()

	img, err := cfg.Catalog.Resolve(c.spec.Image)
	if err != nil {
		c.setWaiting("ErrImagePull", err.Error())
		c.pod.eventf(corev1.EventTypeWarning, "Failed", "Failed to pull image %q: %v", c.spec.Image, err)
		return nil, err
	}
	pod.Status.PodIP = sb.IP.String()
	pod.Status.PodIPs = []corev1.PodIP{{IP: sb.IP.String()}}
	pod.Status.HostIP = cfg.HostIP
	pod.Status.HostIPs = hostIPs(cfg.HostIP)
	spec, warnings, err := c.buildSpec(pod, img, vols.Path)
	for _, w := range warnings {
		c.pod.event(corev1.EventTypeWarning, w.Reason, w.Message)
	}
	if err != nil {
		c.setWaiting("CreateContainerConfigError", err.Error())
		c.pod.eventf(corev1.EventTypeWarning, "Failed", "Error: %v", err)
		return nil, err
	}

	c.mu.Lock()
	n := c.instances
	c.instance = n
	c.containerID = fmt.Sprintf("process://%s/%s/%d", pod.UID, c.spec.Name, n)
	c.mu.Unlock()

	dir := instanceDir(c.pod.dir, c.spec.Name, n)
	_ = UnmountAll(dir)
	_ = os.RemoveAll(dir)
	if err := os.MkdirAll(filepath.Join(dir, "layer"), 0o700); err != nil {
		return nil, &startError{err.Error()}
	}
	if err := os.MkdirAll(filepath.Dir(c.logPath(n)), 0o755); err != nil {
		return nil, &startError{err.Error()}
	}
	termLog := filepath.Join(dir, "termination-log")
	if err := os.WriteFile(termLog, nil, 0o666); err != nil {
		return nil, &startError{err.Error()}
	}
	_ = os.Chmod(termLog, 0o666)
	spec.LayerDir = filepath.Join(dir, "layer")
	spec.TerminationLog = termLog
	spec.TerminationLogPath = c.spec.TerminationMessagePath
	spec.DevShm = filepath.Join(c.pod.dir, "shm")
	spec.NetNS = sb.NetNSPath
	spec.Hostname = hostname(pod)
	spec.HideDirs = cfg.HideDirs

	cg, err := cfg.Cgroups.Group(filepath.Join("pod"+string(pod.UID), fmt.Sprintf("%s_%d", c.spec.Name, n)))
	if err != nil {
		return nil, &startError{err.Error()}
	}
	if lim, ok := c.spec.Resources.Limits[corev1.ResourceMemory]; ok {
		if err := cg.SetMemoryLimit(lim.Value()); err != nil {
			return nil, &startError{err.Error()}
		}
	}
	spec.Cgroups = cg.Paths()
	specPath := filepath.Join(dir, "spec.json")
	if err := spec.Write(specPath); err != nil {
		return nil, &startError{err.Error()}
	}
	logs, err := newLogWriter(c.logPath(n))
	if err != nil {
		return nil, &startError{err.Error()}
	}
	proc, err := startProcess(cfg.PodinitPath, specPath, cg, logs)
	if err != nil {
		logs.Close()
		_ = cg.Remove()
		return nil, err
	}
	go func() {
		<-proc.done
		_ = cg.Remove()
	}()
	c.mu.Lock()
	c.proc = proc
	c.procSpec = spec
	c.waiting = nil
	if c.terminated != nil {
		c.last = c.terminated
		c.terminated = nil
	}
	c.instances = n + 1
	c.started = c.spec.StartupProbe == nil
	c.ready = false
	c.imageID = "process://" + strings.Join(img.Entrypoint, " ")
	c.killReason = ""
	c.mu.Unlock()
	return proc, nil
}

func (c *container) setWaiting(reason, msg string) {
	c.mu.Lock()
	c.waiting = &corev1.ContainerStateWaiting{Reason: reason, Message: msg}
	if c.terminated != nil {
		c.last = c.terminated
		c.terminated = nil
	}
	c.mu.Unlock()
}

// buildSpec computes the podinit spec: argv, env, identity, working
// directory and mounts.
func (c *container) buildSpec(pod *corev1.Pod, img *images.Image, volPath func(string) string) (*podinit.Spec, []envs.Warning, error) {
	cfg := &c.pod.rt.cfg
	res, err := envs.Make(cfg.Envs, pod, &c.spec)
	if err != nil {
		return nil, nil, err
	}
	env := map[string]string{}
	for k, v := range img.Env {
		env[k] = v
	}
	env["HOSTNAME"] = hostname(pod)
	for k, v := range res.Env {
		env[k] = v
	}
	argv := img.Argv(envs.ExpandArgs(c.spec.Command, res.Env), envs.ExpandArgs(c.spec.Args, res.Env))
	s := &podinit.Spec{Args: argv, WorkingDir: c.spec.WorkingDir, TraversePaths: img.Paths}
	if s.WorkingDir == "" {
		s.WorkingDir = img.WorkingDir
	}
	keys := make([]string, 0, len(env))
	for k := range env {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		s.Env = append(s.Env, k+"="+env[k])
	}
	uid, gid, err := c.identity(pod, img)
	if err != nil {
		return nil, res.Warnings, err
	}
	s.UID, s.GID = uint32(uid), uint32(gid)
	if psc := pod.Spec.SecurityContext; psc != nil {
		if psc.FSGroup != nil {
			s.Groups = append(s.Groups, uint32(*psc.FSGroup))
		}
		for _, g := range psc.SupplementalGroups {
			s.Groups = append(s.Groups, uint32(g))
		}
	}
	if sc := c.spec.SecurityContext; sc != nil && sc.ReadOnlyRootFilesystem != nil {
		s.ReadOnlyRoot = *sc.ReadOnlyRootFilesystem
	}
	volumes := map[string]*corev1.Volume{}
	for i := range pod.Spec.Volumes {
		volumes[pod.Spec.Volumes[i].Name] = &pod.Spec.Volumes[i]
	}
	mounts := []podinit.Mount{
		{Source: filepath.Join(c.pod.dir, "etc-hosts"), Target: "/etc/hosts"},
		{Source: filepath.Join(c.pod.dir, "resolv.conf"), Target: "/etc/resolv.conf"},
		{Source: filepath.Join(c.pod.dir, "hostname"), Target: "/etc/hostname"},
	}
	for _, vm := range c.spec.VolumeMounts {
		v, ok := volumes[vm.Name]
		if !ok {
			return nil, res.Warnings, fmt.Errorf("volume mount %q refers to no volume of the pod", vm.Name)
		}
		src := volPath(vm.Name)
		if v.HostPath != nil {
			src = v.HostPath.Path
		}
		sub := vm.SubPath
		if vm.SubPathExpr != "" {
			sub = envs.ExpandArgs([]string{vm.SubPathExpr}, res.Env)[0]
		}
		if sub != "" {
			if filepath.IsAbs(sub) || strings.Contains(filepath.Clean(sub), "..") {
				return nil, res.Warnings, fmt.Errorf("subPath %q must be a relative path without '..'", sub)
			}
			src = filepath.Join(src, sub)
			if _, err := os.Stat(src); os.IsNotExist(err) && v.EmptyDir != nil {
				_ = os.MkdirAll(src, 0o777)
			}
		}
		readOnly := vm.ReadOnly || (v.PersistentVolumeClaim != nil && v.PersistentVolumeClaim.ReadOnly)
		mounts = append(mounts, podinit.Mount{Source: src, Target: vm.MountPath, ReadOnly: readOnly})
	}
	s.Mounts = mounts
	return s, res.Warnings, nil
}

// identity resolves the uid and gid: securityContext (container over pod),
// else the image's USER, else root; runAsNonRoot is enforced as the kubelet does.
func (c *container) identity(pod *corev1.Pod, img *images.Image) (int64, int64, error) {
	iu, ig, _ := img.IDs()
	var uid, gid *int64
	nonRoot := false
	if psc := pod.Spec.SecurityContext; psc != nil {
		uid, gid = psc.RunAsUser, psc.RunAsGroup
		nonRoot = psc.RunAsNonRoot != nil && *psc.RunAsNonRoot
	}
	if sc := c.spec.SecurityContext; sc != nil {
		if sc.RunAsUser != nil {
			uid = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			gid = sc.RunAsGroup
		}
		if sc.RunAsNonRoot != nil {
			nonRoot = *sc.RunAsNonRoot
		}
	}
	if uid == nil {
		uid = iu
	}
	if gid == nil {
		gid = ig
	}
	u, g := int64(0), int64(0)
	if uid != nil {
		u = *uid
	}
	if gid != nil {
		g = *gid
	}
	if nonRoot && u == 0 {
		if uid == nil {
			return 0, 0, fmt.Errorf("container has runAsNonRoot and image will run as root (pod: %q, container: %s)", pod.Name, c.spec.Name)
		}
		return 0, 0, fmt.Errorf("container's runAsUser breaks non-root policy (pod: %q, container: %s)", pod.Name, c.spec.Name)
	}
	return u, g, nil
}

func (c *container) gracePeriod() int64 {
	pod := c.pod.Spec()
	if pod.Spec.TerminationGracePeriodSeconds != nil {
		return *pod.Spec.TerminationGracePeriodSeconds
	}
	return corev1.DefaultTerminationGracePeriodSeconds
}

// stop runs preStop, sends SIGTERM, and SIGKILLs the container's cgroup when
// grace runs out (or hurry is closed).
func (c *container) stop(grace time.Duration, hurry <-chan struct{}) {
	c.mu.Lock()
	proc := c.proc
	c.mu.Unlock()
	if proc == nil || proc.exited() {
		return
	}
	deadline := time.Now().Add(grace)
	if h := c.spec.Lifecycle; h != nil && h.PreStop != nil && !c.isInit {
		ctx, cancel := context.WithDeadline(context.Background(), deadline)
		hookDone := make(chan error, 1)
		go func() { hookDone <- c.runHook(ctx, h.PreStop, grace) }()
		select {
		case err := <-hookDone:
			if err != nil {
				c.pod.eventf(corev1.EventTypeWarning, "FailedPreStopHook", "PreStopHook failed: %v", err)
			}
		case <-proc.done:
		case <-hurry:
		case <-ctx.Done():
		}
		cancel()
		if time.Until(deadline) < minGraceAfterPreStop {
			deadline = time.Now().Add(minGraceAfterPreStop)
		}
	}
	proc.signal(syscall.SIGTERM)
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-proc.done:
		return
	case <-t.C:
	case <-hurry:
	}
	_ = proc.cg.Kill(10 * time.Second)
	<-proc.done
}

// runHook executes a lifecycle handler (exec, httpGet, sleep).
func (c *container) runHook(ctx context.Context, h *corev1.LifecycleHandler, timeout time.Duration) error {
	switch {
	case h.Sleep != nil:
		select {
		case <-ctx.Done():
		case <-time.After(time.Duration(h.Sleep.Seconds) * time.Second):
		}
		return nil
	case h.Exec != nil:
		out, code, err := c.Exec(ctx, h.Exec.Command)
		if err != nil {
			return err
		}
		if code != 0 {
			return fmt.Errorf("command %q exited with %d: %s", h.Exec.Command, code, strings.TrimSpace(string(out)))
		}
		return nil
	case h.HTTPGet != nil:
		return hookHTTP(ctx, h.HTTPGet, &c.spec, c.pod.PodIP(), timeout)
	case h.TCPSocket != nil:
		return fmt.Errorf("tcpSocket lifecycle handlers are deprecated and not run")
	}
	return nil
}

// Exec runs argv in the running container and returns its combined output
// (first 10 KiB, like the kubelet's probe output cap) and exit code.
func (c *container) Exec(ctx context.Context, argv []string) ([]byte, int, error) {
	c.mu.Lock()
	proc, spec := c.proc, c.procSpec
	c.mu.Unlock()
	if proc == nil || proc.exited() {
		return nil, -1, fmt.Errorf("container %q is not running", c.spec.Name)
	}
	out := &limitedBuffer{n: 10 * 1024}
	h, err := execInContainer(c.pod.rt.cfg.PodinitPath, spec, proc.pid, c.pod.dir, argv, nil, out, out)
	if err != nil {
		return nil, -1, err
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- h.Wait() }()
	select {
	case err = <-waitErr:
	case <-ctx.Done():
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-waitErr
		return out.Bytes(), -1, ctx.Err()
	}
	if h.cmd.ProcessState != nil {
		return out.Bytes(), h.cmd.ProcessState.ExitCode(), nil
	}
	return out.Bytes(), -1, err
}

// ExecStream runs argv in the running container with the given streams (kubectl exec).
func (c *container) ExecStream(ctx context.Context, argv []string, stdin interface{ Read([]byte) (int, error) },
	stdout, stderr interface{ Write([]byte) (int, error) }) (int, error) {
	c.mu.Lock()
	proc, spec := c.proc, c.procSpec
	c.mu.Unlock()
	if proc == nil || proc.exited() {
		return -1, fmt.Errorf("container %q is not running", c.spec.Name)
	}
	h, err := execInContainer(c.pod.rt.cfg.PodinitPath, spec, proc.pid, c.pod.dir, argv, stdin, stdout, stderr)
	if err != nil {
		return -1, err
	}
	waitErr := make(chan error, 1)
	go func() { waitErr <- h.Wait() }()
	select {
	case <-waitErr:
	case <-ctx.Done():
		_ = syscall.Kill(-h.cmd.Process.Pid, syscall.SIGKILL)
		<-waitErr
	}
	if h.cmd.ProcessState != nil {
		return h.cmd.ProcessState.ExitCode(), nil
	}
	return -1, ctx.Err()
}

// startProbes starts the startup, readiness and liveness workers of an instance.
func (c *container) startProbes(proc *process) {
	ctx, cancel := context.WithCancel(c.pod.ctx)
	c.mu.Lock()
	c.probeCancel = cancel
	c.mu.Unlock()
	podIP := c.pod.PodIP()
	attempt := func(p *corev1.Probe) func(ctx context.Context) (probe.Result, string, error) {
		return func(ctx context.Context) (probe.Result, string, error) {
			return runProbe(ctx, p, &c.spec, podIP, c.Exec)
		}
	}
	startedCh := make(chan struct{})
	if c.spec.StartupProbe == nil {
		close(startedCh)
	} else {
		sp := &prober{kind: startupProbe, spec: c.spec.StartupProbe, attempt: attempt(c.spec.StartupProbe)}
		sctx, scancel := context.WithCancel(ctx)
		sp.onChange = func(ok bool, out string) {
			if ok {
				c.mu.Lock()
				c.started = true
				c.mu.Unlock()
				scancel()
				close(startedCh)
				c.pod.publish()
				return
			}
			c.pod.eventf(corev1.EventTypeWarning, "Unhealthy", "Startup probe failed: %s", strings.TrimSpace(out))
			c.killForProbe(proc, "startup")
		}
		go sp.run(sctx, false)
	}
	if rp := c.spec.ReadinessProbe; rp != nil {
		pr := &prober{kind: readinessProbe, spec: rp, attempt: attempt(rp)}
		pr.onChange = func(ok bool, out string) {
			c.mu.Lock()
			changed := c.ready != ok
			c.ready = ok
			c.mu.Unlock()
			if !ok {
				c.pod.eventf(corev1.EventTypeWarning, "Unhealthy", "Readiness probe failed: %s", strings.TrimSpace(out))
			}
			if changed {
				c.pod.publish()
			}
		}
		go func() {
			select {
			case <-startedCh:
				pr.run(ctx, false)
			case <-ctx.Done():
			}
		}()
	} else {
		go func() {
			select {
			case <-startedCh:
				c.mu.Lock()
				c.ready = true
				c.mu.Unlock()
				c.pod.publish()
			case <-ctx.Done():
			}
		}()
	}
	if lp := c.spec.LivenessProbe; lp != nil {
		pr := &prober{kind: livenessProbe, spec: lp, attempt: attempt(lp)}
		pr.onChange = func(ok bool, out string) {
			if ok {
				return
			}
			c.pod.eventf(corev1.EventTypeWarning, "Unhealthy", "Liveness probe failed: %s", strings.TrimSpace(out))
			c.killForProbe(proc, "liveness")
		}
		go func() {
			select {
			case <-startedCh:
				pr.run(ctx, true)
			case <-ctx.Done():
			}
		}()
	}
}

// killForProbe stops an instance whose liveness or startup probe failed; the
// supervisor then restarts it per restartPolicy.
func (c *container) killForProbe(proc *process, which string) {
	c.mu.Lock()
	if c.killReason != "" {
		c.mu.Unlock()
		return
	}
	c.killReason = which
	c.ready = false
	c.mu.Unlock()
	c.pod.eventf(corev1.EventTypeNormal, "Killing", "Container %s failed %s probe, will be restarted", c.spec.Name, which)
	c.stopProbes()
	go c.stop(time.Duration(c.gracePeriod())*time.Second, nil)
}

func (c *container) stopProbes() {
	c.mu.Lock()
	cancel := c.probeCancel
	c.probeCancel = nil
	c.mu.Unlock()
	if cancel != nil {
		cancel()
	}
}

// stopForGood marks the container as never starting again (pod teardown):
// one that never ran shows a terminated state, as the kubelet reports.
func (c *container) stopForGood() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.stopped = true
	if c.proc == nil && c.terminated == nil {
		reason := "ContainerStatusUnknown"
		msg := "The container could not be located when the pod was terminated"
		if c.waiting != nil && c.waiting.Reason != "ContainerCreating" && c.waiting.Reason != "PodInitializing" {
			msg = c.waiting.Message
		}
		if c.last != nil {
			c.terminated = c.last.DeepCopy()
			c.last = c.last.DeepCopy()
		} else {
			c.terminated = &corev1.ContainerStateTerminated{ExitCode: 137, Reason: reason, Message: msg, FinishedAt: metav1.Now()}
		}
		c.waiting = nil
	}
}

// Process returns the running instance (nil when none runs).
func (c *container) Process() *process {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.proc
}
