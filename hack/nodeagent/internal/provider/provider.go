// Package provider connects the process runtime to virtual-kubelet: the pod
// lifecycle calls, status notifications, and the kubelet HTTP API handlers
// (logs, exec, port-forward, /stats/summary, /metrics/resource).
package provider

import (
	"context"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/virtual-kubelet/virtual-kubelet/errdefs"
	"github.com/virtual-kubelet/virtual-kubelet/node/api"
	corev1 "k8s.io/api/core/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"

	"mailwarden/hack/nodeagent/internal/runtime"
)

// Provider implements virtual-kubelet's Provider and PodNotifier.
type Provider struct {
	rt       *runtime.Runtime
	nodeName string
	started  time.Time
	// SelfUsage reports the agent's own CPU and memory (node figures add it).
	mu sync.Mutex
}

// New returns the provider of rt.
func New(rt *runtime.Runtime, nodeName string) *Provider {
	return &Provider{rt: rt, nodeName: nodeName, started: time.Now()}
}

// CreatePod starts the pod's worker.
func (p *Provider) CreatePod(ctx context.Context, pod *corev1.Pod) error {
	if pod.DeletionTimestamp != nil {
		return nil
	}
	p.rt.Create(pod)
	return nil
}

// UpdatePod passes label, annotation and readiness-gate changes on.
func (p *Provider) UpdatePod(ctx context.Context, pod *corev1.Pod) error {
	if p.rt.Get(pod.Namespace, pod.Name) == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	p.rt.Update(pod)
	return nil
}

// DeletePod starts the graceful termination and returns at once; the final
// status follows through NotifyPods and the pod object is then removed.
func (p *Provider) DeletePod(ctx context.Context, pod *corev1.Pod) error {
	if !p.rt.Delete(pod) {
		return errdefs.NotFoundf("pod %s/%s is not on this node", pod.Namespace, pod.Name)
	}
	return nil
}

// GetPod returns the pod with its current status.
func (p *Provider) GetPod(ctx context.Context, namespace, name string) (*corev1.Pod, error) {
	rp := p.rt.Get(namespace, name)
	if rp == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, name)
	}
	return rp.Status(), nil
}

// GetPodStatus returns the pod's current status.
func (p *Provider) GetPodStatus(ctx context.Context, namespace, name string) (*corev1.PodStatus, error) {
	pod, err := p.GetPod(ctx, namespace, name)
	if err != nil {
		return nil, err
	}
	return &pod.Status, nil
}

// GetPods lists the pods the runtime runs.
func (p *Provider) GetPods(ctx context.Context) ([]*corev1.Pod, error) {
	var out []*corev1.Pod
	for _, rp := range p.rt.List() {
		out = append(out, rp.Status())
	}
	return out, nil
}

// NotifyPods registers the status callback of the pod controller.
func (p *Provider) NotifyPods(ctx context.Context, cb func(*corev1.Pod)) {
	p.rt.SetNotify(cb)
}

// GetContainerLogs streams a container's log (kubectl logs).
func (p *Provider) GetContainerLogs(ctx context.Context, namespace, podName, containerName string, opts api.ContainerLogOpts) (io.ReadCloser, error) {
	rp := p.rt.Get(namespace, podName)
	if rp == nil {
		return nil, errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	c := rp.Container(containerName)
	if c == nil {
		return nil, errdefs.NotFoundf("container %q is not in pod %s/%s", containerName, namespace, podName)
	}
	path, done, err := c.LogPath(opts.Previous)
	if err != nil {
		return nil, errdefs.AsNotFound(err)
	}
	pr, pw := io.Pipe()
	go func() {
		err := runtime.StreamLog(ctx, path, runtime.LogOptions{Tail: opts.Tail, LimitBytes: opts.LimitBytes,
			Timestamps: opts.Timestamps, SinceSeconds: opts.SinceSeconds, SinceTime: opts.SinceTime, Follow: opts.Follow}, pw, done)
		pw.CloseWithError(err)
	}()
	return pr, nil
}

// RunInContainer runs a command in a container (kubectl exec, without a TTY).
func (p *Provider) RunInContainer(ctx context.Context, namespace, podName, containerName string, cmd []string, attach api.AttachIO) error {
	rp := p.rt.Get(namespace, podName)
	if rp == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	c := rp.Container(containerName)
	if c == nil {
		return errdefs.NotFoundf("container %q is not in pod %s/%s", containerName, namespace, podName)
	}
	var stdin io.Reader
	if attach.Stdin() != nil {
		stdin = attach.Stdin()
	}
	var stdout, stderr io.Writer = io.Discard, io.Discard
	if attach.Stdout() != nil {
		stdout = attach.Stdout()
		defer attach.Stdout().Close()
	}
	if attach.Stderr() != nil {
		stderr = attach.Stderr()
		defer attach.Stderr().Close()
	}
	code, err := c.ExecStream(ctx, cmd, stdin, stdout, stderr)
	if err != nil {
		return err
	}
	if code != 0 {
		return exitError{code}
	}
	return nil
}

// exitError carries a command's exit code to the exec stream (kubectl exits with it).
type exitError struct{ code int }

func (e exitError) Error() string   { return fmt.Sprintf("command terminated with exit code %d", e.code) }
func (e exitError) String() string  { return e.Error() }
func (e exitError) Exited() bool    { return true }
func (e exitError) ExitStatus() int { return e.code }

// AttachToContainer is not supported: containers have no attachable stdin/TTY.
func (p *Provider) AttachToContainer(ctx context.Context, namespace, podName, containerName string, attach api.AttachIO) error {
	return errdefs.InvalidInput("attach is not supported by the process node agent (use exec or logs)")
}

// PortForward connects the stream to the pod's port (kubectl port-forward).
func (p *Provider) PortForward(ctx context.Context, namespace, podName string, port int32, stream io.ReadWriteCloser) error {
	rp := p.rt.Get(namespace, podName)
	if rp == nil {
		return errdefs.NotFoundf("pod %s/%s is not on this node", namespace, podName)
	}
	ip := rp.PodIP()
	if ip == "" {
		return fmt.Errorf("pod %s/%s has no IP yet", namespace, podName)
	}
	conn, err := net.DialTimeout("tcp", net.JoinHostPort(ip, strconv.Itoa(int(port))), 5*time.Second)
	if err != nil {
		return err
	}
	defer conn.Close()
	defer stream.Close()
	errc := make(chan error, 2)
	go func() { _, err := io.Copy(conn, stream); errc <- err }()
	go func() { _, err := io.Copy(stream, conn); errc <- err }()
	select {
	case err = <-errc:
	case <-ctx.Done():
	}
	return err
}

// GetStatsSummary is the kubelet's /stats/summary for this node's pods.
func (p *Provider) GetStatsSummary(ctx context.Context) (*statsv1alpha1.Summary, error) {
	return p.summary(), nil
}

// GetMetricsResource is the kubelet's /metrics/resource (metrics-server's source).
func (p *Provider) GetMetricsResource(ctx context.Context) ([]*dto.MetricFamily, error) {
	return p.metricFamilies(), nil
}
