package provider

import (
	"os"
	"strconv"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	statsv1alpha1 "k8s.io/kubelet/pkg/apis/stats/v1alpha1"
	"k8s.io/utils/ptr"

	"mailwarden/hack/nodeagent/internal/runtime"
)

// The node's usage is its pods' usage plus the agent's own (all of a
// "node" that runs on this machine); the machine's other processes are not
// this node's.

type podUsage struct {
	namespace, name, uid string
	ctrs                 []runtime.ContainerUsage
}

func (p *Provider) collect() []podUsage {
	var out []podUsage
	for _, rp := range p.rt.List() {
		pod := rp.Spec()
		out = append(out, podUsage{namespace: pod.Namespace, name: pod.Name, uid: string(pod.UID), ctrs: rp.Usage()})
	}
	return out
}

// selfUsage reads the agent's own CPU time (ns) and RSS from /proc.
func selfUsage() (cpuNanos, rss uint64) {
	b, err := os.ReadFile("/proc/self/stat")
	if err == nil {
		s := string(b)
		if i := strings.LastIndexByte(s, ')'); i > 0 {
			f := strings.Fields(s[i+2:])
			if len(f) > 22 {
				ut, _ := strconv.ParseUint(f[11], 10, 64)
				st, _ := strconv.ParseUint(f[12], 10, 64)
				// USER_HZ is 100 on Linux.
				cpuNanos = (ut + st) * uint64(time.Second/100)
				pages, _ := strconv.ParseUint(f[21], 10, 64)
				rss = pages * uint64(os.Getpagesize())
			}
		}
	}
	return cpuNanos, rss
}

func gauge(name, help string, typ dto.MetricType) *dto.MetricFamily {
	return &dto.MetricFamily{Name: ptr.To(name), Help: ptr.To(help), Type: &typ}
}

func labels(kv ...string) []*dto.LabelPair {
	var out []*dto.LabelPair
	for i := 0; i+1 < len(kv); i += 2 {
		out = append(out, &dto.LabelPair{Name: ptr.To(kv[i]), Value: ptr.To(kv[i+1])})
	}
	return out
}

func (p *Provider) metricFamilies() []*dto.MetricFamily {
	now := time.Now()
	ts := ptr.To(now.UnixMilli())
	pods := p.collect()
	counter, g := dto.MetricType_COUNTER, dto.MetricType_GAUGE
	nodeCPU := gauge("node_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the node in core-seconds", counter)
	nodeMem := gauge("node_memory_working_set_bytes", "[STABLE] Current working set of the node in bytes", g)
	cCPU := gauge("container_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the container in core-seconds", counter)
	cMem := gauge("container_memory_working_set_bytes", "[STABLE] Current working set of the container in bytes", g)
	cStart := gauge("container_start_time_seconds", "[STABLE] Start time of the container since unix epoch in seconds", g)
	pCPU := gauge("pod_cpu_usage_seconds_total", "[STABLE] Cumulative cpu time consumed by the pod in core-seconds", counter)
	pMem := gauge("pod_memory_working_set_bytes", "[STABLE] Current working set of the pod in bytes", g)
	scrapeErr := gauge("scrape_error", "[ALPHA] 1 if there was an error while getting container metrics, 0 otherwise", g)
	resScrapeErr := gauge("resource_scrape_error", "[STABLE] 1 if there was an error while getting container metrics, 0 otherwise", g)

	selfCPU, selfRSS := selfUsage()
	var totCPU, totMem uint64 = selfCPU, selfRSS
	for _, pu := range pods {
		var podCPU, podMem uint64
		for _, c := range pu.ctrs {
			l := labels("container", c.Name, "namespace", pu.namespace, "pod", pu.name)
			cCPU.Metric = append(cCPU.Metric, &dto.Metric{Label: l, Counter: &dto.Counter{Value: ptr.To(float64(c.Usage.CPUNanos) / 1e9)}, TimestampMs: ts})
			cMem.Metric = append(cMem.Metric, &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: ptr.To(float64(c.Usage.WorkingSetBytes))}, TimestampMs: ts})
			cStart.Metric = append(cStart.Metric, &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: ptr.To(float64(c.StartedAt.UnixNano()) / 1e9)}, TimestampMs: ts})
			podCPU += c.Usage.CPUNanos
			podMem += c.Usage.WorkingSetBytes
		}
		if len(pu.ctrs) == 0 {
			continue
		}
		l := labels("namespace", pu.namespace, "pod", pu.name)
		pCPU.Metric = append(pCPU.Metric, &dto.Metric{Label: l, Counter: &dto.Counter{Value: ptr.To(float64(podCPU) / 1e9)}, TimestampMs: ts})
		pMem.Metric = append(pMem.Metric, &dto.Metric{Label: l, Gauge: &dto.Gauge{Value: ptr.To(float64(podMem))}, TimestampMs: ts})
		totCPU += podCPU
		totMem += podMem
	}
	nodeCPU.Metric = []*dto.Metric{{Counter: &dto.Counter{Value: ptr.To(float64(totCPU) / 1e9)}, TimestampMs: ts}}
	nodeMem.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: ptr.To(float64(totMem))}, TimestampMs: ts}}
	scrapeErr.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: ptr.To(0.0)}}}
	resScrapeErr.Metric = []*dto.Metric{{Gauge: &dto.Gauge{Value: ptr.To(0.0)}}}
	out := []*dto.MetricFamily{cCPU, cMem, cStart, nodeCPU, nodeMem, pCPU, pMem, resScrapeErr, scrapeErr}
	var kept []*dto.MetricFamily
	for _, f := range out {
		if len(f.Metric) > 0 {
			kept = append(kept, f)
		}
	}
	return kept
}

func (p *Provider) summary() *statsv1alpha1.Summary {
	now := metav1.Now()
	pods := p.collect()
	selfCPU, selfRSS := selfUsage()
	totCPU, totMem := selfCPU, selfRSS
	sum := &statsv1alpha1.Summary{}
	for _, pu := range pods {
		ps := statsv1alpha1.PodStats{PodRef: statsv1alpha1.PodReference{Name: pu.name, Namespace: pu.namespace, UID: pu.uid}, StartTime: now}
		var podCPU, podMem uint64
		for _, c := range pu.ctrs {
			cs := statsv1alpha1.ContainerStats{Name: c.Name, StartTime: metav1.NewTime(c.StartedAt),
				CPU:    &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(c.Usage.CPUNanos)},
				Memory: &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(c.Usage.WorkingSetBytes), UsageBytes: ptr.To(c.Usage.MemoryBytes), RSSBytes: ptr.To(c.Usage.RSSBytes)}}
			ps.Containers = append(ps.Containers, cs)
			podCPU += c.Usage.CPUNanos
			podMem += c.Usage.WorkingSetBytes
		}
		ps.CPU = &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(podCPU)}
		ps.Memory = &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(podMem)}
		sum.Pods = append(sum.Pods, ps)
		totCPU += podCPU
		totMem += podMem
	}
	sum.Node = statsv1alpha1.NodeStats{NodeName: p.nodeName, StartTime: metav1.NewTime(p.started),
		CPU:    &statsv1alpha1.CPUStats{Time: now, UsageCoreNanoSeconds: ptr.To(totCPU)},
		Memory: &statsv1alpha1.MemoryStats{Time: now, WorkingSetBytes: ptr.To(totMem)}}
	return sum
}
