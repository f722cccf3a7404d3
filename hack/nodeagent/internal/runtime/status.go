package runtime

import (
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"

	"golang.org/x/sys/unix"
)

// containerStatus is the container's status as the kubelet reports it.
func (c *container) status() corev1.ContainerStatus {
	c.mu.Lock()
	defer c.mu.Unlock()
	restarts := c.instances - 1
	if restarts < 0 {
		restarts = 0
	}
	st := corev1.ContainerStatus{
		Name:         c.spec.Name,
		Image:        c.spec.Image,
		ImageID:      c.imageID,
		RestartCount: restarts,
		Ready:        c.ready && c.proc != nil && !c.proc.exited(),
		ContainerID:  c.containerID,
	}
	if c.last != nil {
		st.LastTerminationState.Terminated = c.last.DeepCopy()
	}
	switch {
	case c.proc != nil:
		st.State.Running = &corev1.ContainerStateRunning{StartedAt: metav1.NewTime(c.proc.startedAt)}
		st.Started = ptr.To(c.started)
	case c.terminated != nil:
		st.State.Terminated = c.terminated.DeepCopy()
		st.Started = ptr.To(false)
	case c.waiting != nil:
		st.State.Waiting = c.waiting.DeepCopy()
		st.Started = ptr.To(false)
	default:
		st.State.Waiting = &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}
		st.Started = ptr.To(false)
	}
	return st
}

// Status is the pod's status as the kubelet computes it (phase,
// conditions, container statuses, IPs), keeping the fields others own
// (PodScheduled, readiness-gate conditions, QoS class).
func (p *Pod) Status() *corev1.Pod {
	p.mu.Lock()
	pod := p.pod.DeepCopy()
	sandboxOK, initDone, failed, terminal := p.sandboxOK, p.initDone, p.failed, p.terminal
	podIP := ""
	if p.sandbox != nil {
		podIP = p.sandbox.IP.String()
	}
	reason, message := p.reason, p.message
	p.mu.Unlock()

	if lister := p.rt.cfg.Pods; lister != nil {
		if api, err := lister.Pods(pod.Namespace).Get(pod.Name); err == nil && api.UID == pod.UID {
			pod.Status.Conditions = foreignConditions(api.Status.Conditions)
		}
	}
	st := &pod.Status
	st.ObservedGeneration = pod.Generation
	st.StartTime = &p.startTime
	st.HostIP = p.rt.cfg.HostIP
	st.HostIPs = hostIPs(p.rt.cfg.HostIP)
	if podIP != "" && !terminal {
		st.PodIP = podIP
		st.PodIPs = []corev1.PodIP{{IP: podIP}}
	} else if terminal {
		// The kubelet keeps the IP on a finished pod; the address is free again.
		st.PodIP = podIP
		if podIP != "" {
			st.PodIPs = []corev1.PodIP{{IP: podIP}}
		}
	}
	st.Reason, st.Message = reason, message

	st.InitContainerStatuses = nil
	for _, c := range p.init {
		cs := c.status()
		if !initDone && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ContainerCreating" && !sandboxOK {
			cs.State.Waiting.Reason = "PodInitializing"
		}
		st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
	}
	st.ContainerStatuses = nil
	for _, c := range p.ctrs {
		cs := c.status()
		if len(p.init) > 0 && !initDone && cs.State.Waiting != nil && cs.State.Waiting.Reason == "ContainerCreating" {
			cs.State.Waiting.Reason = "PodInitializing"
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
	}

	st.Phase = phase(pod, initDone, failed, terminal)

	allReady := len(st.ContainerStatuses) > 0
	for _, cs := range st.ContainerStatuses {
		allReady = allReady && cs.Ready
	}
	if st.Phase == corev1.PodSucceeded || st.Phase == corev1.PodFailed {
		allReady = false
	}
	gatesOK := true
	for _, g := range pod.Spec.ReadinessGates {
		found := false
		for _, cond := range st.Conditions {
			if cond.Type == g.ConditionType {
				found = cond.Status == corev1.ConditionTrue
			}
		}
		gatesOK = gatesOK && found
	}
	p.setCondition(st, corev1.PodReadyToStartContainers, sandboxOK && !terminal, "")
	p.setCondition(st, corev1.PodInitialized, initDone || len(p.init) == 0, reasonIf(!initDone && len(p.init) > 0, "ContainersNotInitialized"))
	p.setCondition(st, corev1.ContainersReady, allReady, reasonIf(!allReady, "ContainersNotReady"))
	ready := allReady && gatesOK
	readyReason := ""
	if !allReady {
		readyReason = "ContainersNotReady"
	} else if !gatesOK {
		readyReason = "ReadinessGatesNotReady"
	}
	p.setCondition(st, corev1.PodReady, ready, readyReason)
	return pod
}

// kubeletConditions are the pod conditions the kubelet (this runtime) owns.
var kubeletConditions = map[corev1.PodConditionType]bool{
	corev1.PodReadyToStartContainers: true, corev1.PodInitialized: true,
	corev1.ContainersReady: true, corev1.PodReady: true,
}

// foreignConditions keeps the conditions others own (PodScheduled,
// DisruptionTarget, readiness gates).
func foreignConditions(conds []corev1.PodCondition) []corev1.PodCondition {
	var out []corev1.PodCondition
	for _, c := range conds {
		if !kubeletConditions[c.Type] {
			out = append(out, c)
		}
	}
	return out
}

// ForeignConditionsChanged reports whether a pod update changed a condition
// the runtime does not own.
func ForeignConditionsChanged(old, cur *corev1.Pod) bool {
	a, b := foreignConditions(old.Status.Conditions), foreignConditions(cur.Status.Conditions)
	if len(a) != len(b) {
		return true
	}
	for i := range a {
		if a[i].Type != b[i].Type || a[i].Status != b[i].Status {
			return true
		}
	}
	return false
}

func reasonIf(cond bool, reason string) string {
	if cond {
		return reason
	}
	return ""
}

// setCondition sets one of the conditions the kubelet owns, keeping its
// transition time unless the status changes.
func (p *Pod) setCondition(st *corev1.PodStatus, t corev1.PodConditionType, ok bool, reason string) {
	status := corev1.ConditionFalse
	if ok {
		status = corev1.ConditionTrue
	}
	p.mu.Lock()
	prev := p.conds[t]
	if prev == nil || prev.Status != status || prev.Reason != reason {
		prev = &corev1.PodCondition{Type: t, Status: status, Reason: reason, LastTransitionTime: metav1.Now()}
		p.conds[t] = prev
	}
	cond := *prev
	p.mu.Unlock()
	for i := range st.Conditions {
		if st.Conditions[i].Type == t {
			st.Conditions[i] = cond
			return
		}
	}
	st.Conditions = append(st.Conditions, cond)
}

// phase is the kubelet's getPhase.
func phase(pod *corev1.Pod, initDone, initFailed, terminal bool) corev1.PodPhase {
	if initFailed {
		return corev1.PodFailed
	}
	statuses := pod.Status.ContainerStatuses
	if !initDone && len(pod.Spec.InitContainers) > 0 {
		if terminal {
			return corev1.PodFailed
		}
		return corev1.PodPending
	}
	var running, waiting, stopped, succeeded int
	for _, cs := range statuses {
		switch {
		case cs.State.Running != nil:
			running++
		case cs.State.Terminated != nil:
			stopped++
			if cs.State.Terminated.ExitCode == 0 {
				succeeded++
			}
		case cs.State.Waiting != nil:
			if cs.LastTerminationState.Terminated != nil {
				stopped++
			} else {
				waiting++
			}
		}
	}
	policy := pod.Spec.RestartPolicy
	switch {
	case terminal && running == 0 && waiting == 0:
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		return corev1.PodFailed
	case waiting > 0:
		return corev1.PodPending
	case running > 0:
		return corev1.PodRunning
	case stopped > 0:
		if policy == corev1.RestartPolicyAlways || policy == "" {
			return corev1.PodRunning
		}
		if stopped == succeeded {
			return corev1.PodSucceeded
		}
		if policy == corev1.RestartPolicyNever {
			return corev1.PodFailed
		}
		return corev1.PodRunning
	}
	return corev1.PodPending
}

// mountTmpfs mounts a tmpfs at dir unless one is there.
func mountTmpfs(dir, opts string) error {
	if isMountPoint(dir) {
		return nil
	}
	return unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts)
}

func isMountPoint(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && f[4] == dir {
			return true
		}
	}
	return false
}

// UnmountAll detaches every mount at or below dir (deepest first).
func UnmountAll(dir string) error {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var mps []string
	prefix := filepath.Clean(dir)
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) > 4 && (f[4] == prefix || strings.HasPrefix(f[4], prefix+"/")) {
			mps = append(mps, f[4])
		}
	}
	for i := len(mps) - 1; i >= 0; i-- {
		_ = unix.Unmount(mps[i], unix.MNT_DETACH)
	}
	return nil
}
