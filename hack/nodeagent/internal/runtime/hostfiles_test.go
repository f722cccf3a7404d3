package runtime

import (
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
)

func TestResolvConfClusterFirst(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "prod"}}
	got := string(resolvConf(pod, DNSConfig{Nameservers: []string{"10.96.0.10"}, ClusterDomain: "cluster.local"}))
	want := "search prod.svc.cluster.local svc.cluster.local cluster.local\nnameserver 10.96.0.10\noptions ndots:5\n"
	if got != want {
		t.Fatalf("resolv.conf:\n%s\nwant:\n%s", got, want)
	}
	pod.Spec.DNSConfig = &corev1.PodDNSConfig{Options: []corev1.PodDNSConfigOption{{Name: "ndots", Value: ptr.To("2")}}}
	if got := string(resolvConf(pod, DNSConfig{Nameservers: []string{"10.96.0.10"}, ClusterDomain: "cluster.local"})); !strings.Contains(got, "options ndots:2\n") {
		t.Fatalf("dnsConfig option must override ndots: %s", got)
	}
}

func TestHostsFileWithSubdomain(t *testing.T) {
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "filter-0", Namespace: "prod"},
		Spec: corev1.PodSpec{Hostname: "filter-0", Subdomain: "filter"}}
	got := string(hostsFile(pod, "10.244.1.5", "cluster.local"))
	if !strings.Contains(got, "10.244.1.5\tfilter-0.filter.prod.svc.cluster.local\tfilter-0\n") {
		t.Fatalf("hosts:\n%s", got)
	}
}

func TestPhase(t *testing.T) {
	running := corev1.ContainerStatus{State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{}}}
	done0 := corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 0}}}
	done1 := corev1.ContainerStatus{State: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}}
	backoff := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "CrashLoopBackOff"}},
		LastTerminationState: corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{ExitCode: 1}}}
	creating := corev1.ContainerStatus{State: corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}}}
	cases := []struct {
		policy   corev1.RestartPolicy
		statuses []corev1.ContainerStatus
		terminal bool
		want     corev1.PodPhase
	}{
		{corev1.RestartPolicyAlways, []corev1.ContainerStatus{running}, false, corev1.PodRunning},
		{corev1.RestartPolicyAlways, []corev1.ContainerStatus{creating}, false, corev1.PodPending},
		{corev1.RestartPolicyAlways, []corev1.ContainerStatus{backoff}, false, corev1.PodRunning},
		{corev1.RestartPolicyNever, []corev1.ContainerStatus{done0}, false, corev1.PodSucceeded},
		{corev1.RestartPolicyNever, []corev1.ContainerStatus{done1}, false, corev1.PodFailed},
		{corev1.RestartPolicyOnFailure, []corev1.ContainerStatus{done0}, false, corev1.PodSucceeded},
		{corev1.RestartPolicyOnFailure, []corev1.ContainerStatus{backoff}, false, corev1.PodRunning},
		{corev1.RestartPolicyAlways, []corev1.ContainerStatus{done1}, true, corev1.PodFailed},
	}
	for i, c := range cases {
		pod := &corev1.Pod{Spec: corev1.PodSpec{RestartPolicy: c.policy}, Status: corev1.PodStatus{ContainerStatuses: c.statuses}}
		if got := phase(pod, true, false, c.terminal); got != c.want {
			t.Errorf("case %d: phase %s, want %s", i, got, c.want)
		}
	}
}
