package runtime

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/kubernetes/pkg/probe"
	grpcprobe "k8s.io/kubernetes/pkg/probe/grpc"
	httpprobe "k8s.io/kubernetes/pkg/probe/http"
	tcpprobe "k8s.io/kubernetes/pkg/probe/tcp"
)

// The kubelet's own probers, shared by every probe of the node. Probes
// connect from the host namespace to the pod IP, as the kubelet's do; the
// routed pod network makes every pod IP reachable from the host.
var (
	httpProber = httpprobe.New(false)
	grpcProber = grpcprobe.New()
	tcpProber  = tcpprobe.New()
)

type probeKind string

const (
	startupProbe   probeKind = "Startup"
	readinessProbe probeKind = "Readiness"
	livenessProbe  probeKind = "Liveness"
)

// runProbe performs one probe attempt. execFn runs a command in the
// container and returns its combined output and exit code.
func runProbe(ctx context.Context, p *corev1.Probe, c *corev1.Container, podIP string,
	execFn func(ctx context.Context, argv []string) ([]byte, int, error)) (probe.Result, string, error) {
	timeout := time.Duration(p.TimeoutSeconds) * time.Second
	if timeout <= 0 {
		timeout = time.Second
	}
	switch {
	case p.Exec != nil:
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		out, code, err := execFn(ctx, p.Exec.Command)
		if ctx.Err() == context.DeadlineExceeded {
			return probe.Failure, fmt.Sprintf("command timed out after %s", timeout), nil
		}
		if err != nil {
			return probe.Unknown, "", err
		}
		if code != 0 {
			return probe.Failure, string(out), nil
		}
		return probe.Success, string(out), nil
	case p.HTTPGet != nil:
		req, err := httpprobe.NewRequestForHTTPGetAction(p.HTTPGet, c, podIP, "probe")
		if err != nil {
			return probe.Unknown, "", err
		}
		return httpProber.Probe(req, timeout)
	case p.TCPSocket != nil:
		port, err := probe.ResolveContainerPort(p.TCPSocket.Port, c)
		if err != nil {
			return probe.Unknown, "", err
		}
		host := p.TCPSocket.Host
		if host == "" {
			host = podIP
		}
		return tcpProber.Probe(host, port, timeout)
	case p.GRPC != nil:
		service := ""
		if p.GRPC.Service != nil {
			service = *p.GRPC.Service
		}
		return grpcProber.Probe(podIP, service, int(p.GRPC.Port), timeout, grpcprobe.ProbeOptions{})
	}
	return probe.Unknown, "", fmt.Errorf("probe has no handler")
}

// prober runs one probe of a container on its period and reports each
// change of the thresholded result.
type prober struct {
	kind     probeKind
	spec     *corev1.Probe
	onChange func(ok bool, output string)
	attempt  func(ctx context.Context) (probe.Result, string, error)
}

// run probes until ctx ends. initial is the result before the first attempt
// (false for startup and readiness, true for liveness).
func (pr *prober) run(ctx context.Context, initial bool) {
	period := time.Duration(pr.spec.PeriodSeconds) * time.Second
	if period <= 0 {
		period = 10 * time.Second
	}
	success := int(pr.spec.SuccessThreshold)
	if success <= 0 {
		success = 1
	}
	failure := int(pr.spec.FailureThreshold)
	if failure <= 0 {
		failure = 3
	}
	if d := time.Duration(pr.spec.InitialDelaySeconds) * time.Second; d > 0 {
		select {
		case <-ctx.Done():
			return
		case <-time.After(d):
		}
	}
	state := initial
	var okRun, failRun int
	t := time.NewTicker(period)
	defer t.Stop()
	for {
		res, out, err := pr.attempt(ctx)
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			out = err.Error()
		}
		if res == probe.Success || res == probe.Warning {
			okRun++
			failRun = 0
		} else {
			failRun++
			okRun = 0
		}
		switch {
		case !state && okRun >= success:
			state = true
			pr.onChange(true, out)
		case state && failRun >= failure:
			state = false
			pr.onChange(false, out)
		case !state && failRun > 0 && failRun%failure == 0:
			// Still failing: report again (a failing startup or liveness probe acts on it).
			pr.onChange(false, out)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// hookHTTP performs an httpGet lifecycle handler against the pod.
func hookHTTP(ctx context.Context, h *corev1.HTTPGetAction, c *corev1.Container, podIP string, timeout time.Duration) error {
	req, err := httpprobe.NewRequestForHTTPGetAction(h, c, podIP, "lifecycle")
	if err != nil {
		return err
	}
	res, out, err := httpProber.Probe(req.WithContext(ctx), timeout)
	if err != nil {
		return err
	}
	if res != probe.Success && res != probe.Warning {
		return fmt.Errorf("HTTP lifecycle hook %s failed: %s", req.URL, out)
	}
	return nil
}

// limitedBuffer keeps the first n bytes written (probe and hook output).
type limitedBuffer struct {
	bytes.Buffer
	n int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	if room := b.n - b.Len(); room > 0 {
		if len(p) > room {
			b.Buffer.Write(p[:room])
		} else {
			b.Buffer.Write(p)
		}
	}
	return len(p), nil
}

func hostPort(ip string, port int) string { return net.JoinHostPort(ip, strconv.Itoa(port)) }
