package runtime

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/record"
	"k8s.io/utils/ptr"

	"mailwarden/hack/nodeagent/internal/cgroups"
	"mailwarden/hack/nodeagent/internal/envs"
	"mailwarden/hack/nodeagent/internal/images"
	"mailwarden/hack/nodeagent/internal/podnet"
	"mailwarden/hack/nodeagent/internal/volumes"
)

// These tests run real pods (namespaces, cgroups, podinit) without an API
// server: they need root, as the node agent does.

type objects struct {
	mu      sync.Mutex
	cms     map[string]*corev1.ConfigMap
	secrets map[string]*corev1.Secret
}

func (o *objects) GetConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if cm, ok := o.cms[ns+"/"+name]; ok {
		return cm.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("configmaps"), name)
}

func (o *objects) GetSecret(ns, name string) (*corev1.Secret, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if s, ok := o.secrets[ns+"/"+name]; ok {
		return s.DeepCopy(), nil
	}
	return nil, apierrors.NewNotFound(corev1.Resource("secrets"), name)
}

func (o *objects) set(cm *corev1.ConfigMap) {
	o.mu.Lock()
	o.cms[cm.Namespace+"/"+cm.Name] = cm
	o.mu.Unlock()
}

type harness struct {
	t      *testing.T
	rt     *Runtime
	objs   *objects
	mu     sync.Mutex
	last   map[string]*corev1.Pod
	events *record.FakeRecorder
}

func newHarness(t *testing.T) *harness {
	if os.Geteuid() != 0 {
		t.Skip("needs root (network namespaces, cgroups, mounts), as the node agent does")
	}
	// podinit must stay visible inside containers (exec runs it there); the
	// state directory is hidden from them.
	podinitBin := filepath.Join(t.TempDir(), "podinit")
	dir := t.TempDir()
	build := exec.Command("go", "build", "-o", podinitBin, "mailwarden/hack/nodeagent/cmd/podinit")
	build.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("building podinit: %v\n%s", err, out)
	}
	prefix := fmt.Sprintf("t%04x", os.Getpid()&0xffff)
	// Ranges of this test process only: two runs at once (two checkouts) must not share pod IPs.
	slot := os.Getpid() % 250
	_, cidr, _ := net.ParseCIDR(fmt.Sprintf("10.199.%d.0/24", slot))
	// The host's address towards the pods (the node IP in the agent).
	hostSrc := fmt.Sprintf("10.198.%d.1", slot)
	if out, err := exec.Command("ip", "addr", "replace", hostSrc+"/32", "dev", "lo").CombinedOutput(); err != nil {
		t.Fatalf("adding %s to lo: %v %s", hostSrc, err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "addr", "del", hostSrc+"/32", "dev", "lo").Run() })
	_, back, _ := net.ParseCIDR(hostSrc + "/32")
	nw, err := podnet.New(podnet.Config{PodCIDR: cidr, Prefix: prefix, HostSrc: net.ParseIP(hostSrc), Routes: []*net.IPNet{back}})
	if err != nil {
		t.Fatal(err)
	}
	cg, err := cgroups.Open(filepath.Join("mw-nodeagent-test", prefix))
	if err != nil {
		t.Fatal(err)
	}
	objs := &objects{cms: map[string]*corev1.ConfigMap{}, secrets: map[string]*corev1.Secret{}}
	svcs := corev1listers.NewServiceLister(cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc}))
	alloc := func() corev1.ResourceList {
		return corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("4"), corev1.ResourceMemory: resource.MustParse("8Gi")}
	}
	h := &harness{t: t, objs: objs, last: map[string]*corev1.Pod{}, events: record.NewFakeRecorder(1000)}
	h.rt = New(Config{
		NodeName:       "node-test",
		StateDir:       filepath.Join(dir, "state"),
		PodinitPath:    podinitBin,
		Catalog:        &images.Catalog{Images: []images.Image{{Names: []string{"test"}, Entrypoint: []string{"/usr/bin/python3"}, Env: map[string]string{"PATH": "/usr/local/bin:/usr/bin:/bin"}}}},
		Net:            nw,
		Cgroups:        cg,
		Envs:           envs.Sources{ConfigMaps: objs, Secrets: objs, Services: svcs, NodeAllocatable: alloc},
		Volumes:        volumes.Sources{ConfigMaps: objs, Secrets: objs, NodeAllocatable: alloc},
		DNS:            DNSConfig{Nameservers: []string{"10.96.0.10"}, ClusterDomain: "cluster.local"},
		HostIP:         "10.201.0.11",
		HideDirs:       []string{dir},
		Recorder:       h.events,
		BackoffInitial: time.Second,
		BackoffMax:     4 * time.Second,
	})
	h.rt.SetNotify(func(p *corev1.Pod) {
		h.mu.Lock()
		h.last[p.Name] = p
		h.mu.Unlock()
	})
	t.Cleanup(func() {
		h.rt.StopAll(5 * time.Second)
		_ = cg.AsGroup().Kill(5 * time.Second)
		_ = cg.AsGroup().Remove()
		_ = podnet.CleanupPrefix(prefix)
		_ = UnmountAll(dir)
	})
	return h
}

func (h *harness) status(name string) *corev1.Pod {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.last[name]
}

func (h *harness) waitFor(name, what string, timeout time.Duration, ok func(*corev1.Pod) bool) *corev1.Pod {
	h.t.Helper()
	deadline := time.Now().Add(timeout)
	for time.Now().Before(deadline) {
		if p := h.status(name); p != nil && ok(p) {
			return p
		}
		time.Sleep(50 * time.Millisecond)
	}
	for len(h.events.Events) > 0 {
		h.t.Log(<-h.events.Events)
	}
	h.t.Fatalf("pod %s: %s not reached in %s; last status: %+v", name, what, timeout, h.status(name).Status)
	return nil
}

func isReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

func testPod(name string, restart corev1.RestartPolicy, script string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "prod", UID: types.UID(name + "-uid"), Labels: map[string]string{"app": name}},
		Spec: corev1.PodSpec{
			NodeName:                      "node-test",
			RestartPolicy:                 restart,
			TerminationGracePeriodSeconds: ptr.To(int64(5)),
			Containers: []corev1.Container{{
				Name: "main", Image: "test:1", Args: []string{"-u", "-c", script},
				TerminationMessagePath: "/dev/termination-log",
			}},
		},
	}
}

const server = `
import http.server, os, signal, sys, time
def term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("POD_IP=" + os.environ.get("POD_IP", ""), "APP=" + os.environ.get("APP", ""), flush=True)
print("HOSTNAME=" + open("/etc/hostname").read().strip(), flush=True)
print("CONFIG=" + open("/config/greeting").read(), flush=True)
http.server.HTTPServer(("", 8080), http.server.SimpleHTTPRequestHandler).serve_forever()
`

func TestPodRunsProbesAndTerminatesGracefully(t *testing.T) {
	h := newHarness(t)
	h.objs.set(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "prod"}, Data: map[string]string{"greeting": "hello"}})
	pod := testPod("web", corev1.RestartPolicyAlways, server)
	c := &pod.Spec.Containers[0]
	c.Env = []corev1.EnvVar{
		{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
		{Name: "APP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['app']"}}},
	}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/", Port: intstr.FromInt32(8080)}}, PeriodSeconds: 1}
	c.Lifecycle = &corev1.Lifecycle{PreStop: &corev1.LifecycleHandler{Sleep: &corev1.SleepAction{Seconds: 1}}}
	// /var/run is a symlink to /run: the mount must land in the container's /run.
	c.VolumeMounts = []corev1.VolumeMount{{Name: "config", MountPath: "/config", ReadOnly: true},
		{Name: "config", MountPath: "/var/run/mw-test-cfg", ReadOnly: true}}
	c.SecurityContext = &corev1.SecurityContext{ReadOnlyRootFilesystem: ptr.To(true), RunAsUser: ptr.To(int64(65532))}
	pod.Spec.Volumes = []corev1.Volume{{Name: "config", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}}}

	start := time.Now()
	p := h.rt.Create(pod)
	st := h.waitFor("web", "Ready", 30*time.Second, isReady)
	t.Logf("Ready after %s", time.Since(start))
	if st.Status.Phase != corev1.PodRunning || st.Status.PodIP == "" {
		t.Fatalf("status: %+v", st.Status)
	}
	ctr := p.Container("main")
	logPath, done, err := ctr.LogPath(false)
	if err != nil {
		t.Fatal(err)
	}
	var logBuf syncBuffer
	followed := make(chan struct{})
	go func() {
		_ = StreamLog(context.Background(), logPath, LogOptions{Follow: true}, &logBuf, done)
		close(followed)
	}()
	out, code, err := ctr.Exec(context.Background(), []string{"/bin/sh", "-c", "id -u; cat /config/greeting; cat /var/run/mw-test-cfg/greeting; touch /x 2>&1 || true"})
	if err != nil || code != 0 {
		t.Fatalf("exec: %v %d %s", err, code, out)
	}
	if _, err := os.Stat("/run/mw-test-cfg"); err == nil {
		t.Fatalf("a mount point was created on the host's /run")
	}
	if s := string(out); !strings.HasPrefix(s, "65532\nhellohello") || !strings.Contains(s, "Read-only file system") {
		t.Fatalf("exec output %q: want uid 65532, the ConfigMap's data and a read-only root", s)
	}

	// A ConfigMap update swaps ..data while the pod runs.
	h.objs.set(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "cfg", Namespace: "prod"}, Data: map[string]string{"greeting": "bonjour"}})
	if err := p.vols.Sync(context.Background()); err != nil {
		t.Fatal(err)
	}
	out, _, _ = ctr.Exec(context.Background(), []string{"/bin/cat", "/config/greeting"})
	if string(out) != "bonjour" {
		t.Fatalf("after the update the file reads %q", out)
	}

	del := pod.DeepCopy()
	del.DeletionGracePeriodSeconds = ptr.To(int64(5))
	t0 := time.Now()
	h.rt.Delete(del)
	<-p.finished
	took := time.Since(t0)
	<-followed
	logs := logBuf.String()
	for _, want := range []string{"POD_IP=" + st.Status.PodIP, "APP=web", "HOSTNAME=web", "CONFIG=hello", "got SIGTERM"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}
	if took < time.Second || took > 5*time.Second {
		t.Fatalf("termination took %s: want preStop (1 s) then a prompt exit on SIGTERM", took)
	}
	final := h.status("web")
	term := final.Status.ContainerStatuses[0].State.Terminated
	if term == nil || term.ExitCode != 0 {
		t.Fatalf("final state: %+v", final.Status.ContainerStatuses[0].State)
	}
}

func TestCrashLoopBackOff(t *testing.T) {
	h := newHarness(t)
	pod := testPod("crash", corev1.RestartPolicyAlways, "import sys; print('dying'); sys.exit(3)")
	h.rt.Create(pod)
	st := h.waitFor("crash", "two restarts", 30*time.Second, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 2
	})
	cs := st.Status.ContainerStatuses[0]
	if cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ExitCode != 3 {
		t.Fatalf("lastState: %+v", cs.LastTerminationState)
	}
	h.waitFor("crash", "CrashLoopBackOff", 10*time.Second, func(p *corev1.Pod) bool {
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "CrashLoopBackOff"
	})
}

func TestOOMKilled(t *testing.T) {
	h := newHarness(t)
	pod := testPod("hog", corev1.RestartPolicyNever, "x = bytearray(400 * 1024 * 1024); print(len(x))")
	pod.Spec.Containers[0].Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("64Mi")}
	h.rt.Create(pod)
	st := h.waitFor("hog", "Failed", 30*time.Second, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodFailed })
	term := st.Status.ContainerStatuses[0].State.Terminated
	if term == nil || term.Reason != "OOMKilled" || term.ExitCode != 137 {
		t.Fatalf("terminated: %+v", term)
	}
}

func TestJobSucceedsAndUnknownImageWaits(t *testing.T) {
	h := newHarness(t)
	h.rt.Create(testPod("job", corev1.RestartPolicyNever, "print('done')"))
	h.waitFor("job", "Succeeded", 30*time.Second, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	bad := testPod("bad", corev1.RestartPolicyAlways, "pass")
	bad.Spec.Containers[0].Image = "docker.io/library/nginx:1.27"
	h.rt.Create(bad)
	st := h.waitFor("bad", "ErrImagePull", 10*time.Second, func(p *corev1.Pod) bool {
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "ErrImagePull"
	})
	if msg := st.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "not available on this node") {
		t.Fatalf("message %q", msg)
	}
	h.waitFor("bad", "ImagePullBackOff", 10*time.Second, func(p *corev1.Pod) bool {
		w := p.Status.ContainerStatuses[0].State.Waiting
		return w != nil && w.Reason == "ImagePullBackOff"
	})
}

type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func TestLivenessFailureRestartsTheContainer(t *testing.T) {
	h := newHarness(t)
	// Alive for about two seconds (its own writable layer has /tmp/alive), then not.
	pod := testPod("live", corev1.RestartPolicyAlways,
		"import os, time\nopen('/tmp/alive', 'w').close()\ntime.sleep(2)\nos.remove('/tmp/alive')\ntime.sleep(3600)")
	pod.Spec.Containers[0].LivenessProbe = &corev1.Probe{
		ProbeHandler:  corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/test", "-f", "/tmp/alive"}}},
		PeriodSeconds: 1, FailureThreshold: 2}
	h.rt.Create(pod)
	st := h.waitFor("live", "a restart after the liveness probe failed", 30*time.Second, func(p *corev1.Pod) bool {
		return len(p.Status.ContainerStatuses) == 1 && p.Status.ContainerStatuses[0].RestartCount >= 1 &&
			p.Status.ContainerStatuses[0].State.Running != nil
	})
	last := st.Status.ContainerStatuses[0].LastTerminationState.Terminated
	if last == nil || last.ExitCode != 128+15 {
		t.Fatalf("last state %+v: want the SIGTERM exit (143)", last)
	}
	found := false
	for len(h.events.Events) > 0 {
		if e := <-h.events.Events; strings.Contains(e, "Liveness probe failed") {
			found = true
		}
	}
	if !found {
		t.Fatal("no Unhealthy event for the liveness probe")
	}
}

func TestInitContainersEnvAndFSGroup(t *testing.T) {
	h := newHarness(t)
	h.objs.secrets["prod/creds"] = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "creds", Namespace: "prod"},
		Data: map[string][]byte{"password": []byte("s3cret")}}
	pod := testPod("env", corev1.RestartPolicyNever, `
import os
print("PASSWORD=" + os.environ["PASSWORD"])
print("MEM_MI=" + os.environ["MEM_MI"])
print("CPU_LIMIT=" + os.environ["CPU_LIMIT"])
print("GREETING=" + os.environ["GREETING"])
print("SEEN=" + open("/work/order").read().strip())
st = os.stat("/secret/password")
print("SECRET_GID=%d MODE=%o" % (st.st_gid, st.st_mode & 0o777))
print("GROUPS=" + ",".join(map(str, sorted(os.getgroups()))))
`)
	pod.Spec.SecurityContext = &corev1.PodSecurityContext{RunAsUser: ptr.To(int64(1234)), FSGroup: ptr.To(int64(4321))}
	c := &pod.Spec.Containers[0]
	c.Resources.Limits = corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("256Mi")}
	c.Env = []corev1.EnvVar{
		{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "creds"}, Key: "password"}}},
		{Name: "MEM_MI", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{
			Resource: "limits.memory", Divisor: resource.MustParse("1Mi")}}},
		// No CPU limit: the node's allocatable, as the kubelet.
		{Name: "CPU_LIMIT", ValueFrom: &corev1.EnvVarSource{ResourceFieldRef: &corev1.ResourceFieldSelector{Resource: "limits.cpu"}}},
		{Name: "NAME", Value: "world"},
		{Name: "GREETING", Value: "hello $(NAME)"},
		{Name: "OPTIONAL", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{
			LocalObjectReference: corev1.LocalObjectReference{Name: "absent"}, Key: "k", Optional: ptr.To(true)}}},
	}
	c.VolumeMounts = []corev1.VolumeMount{{Name: "work", MountPath: "/work"}, {Name: "secret", MountPath: "/secret"}}
	pod.Spec.Volumes = []corev1.Volume{
		{Name: "work", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}},
		{Name: "secret", VolumeSource: corev1.VolumeSource{Secret: &corev1.SecretVolumeSource{SecretName: "creds", DefaultMode: ptr.To(int32(0o400))}}},
	}
	initC := func(name string) corev1.Container {
		return corev1.Container{Name: name, Image: "test", Args: []string{"-c", "open('/work/order', 'a').write('" + name + " ')"},
			VolumeMounts: []corev1.VolumeMount{{Name: "work", MountPath: "/work"}}}
	}
	pod.Spec.InitContainers = []corev1.Container{initC("first"), initC("second")}
	p := h.rt.Create(pod)
	h.waitFor("env", "Succeeded", 30*time.Second, func(p *corev1.Pod) bool { return p.Status.Phase == corev1.PodSucceeded })
	path, _, err := p.Container("main").LogPath(false)
	if err != nil {
		t.Fatal(err)
	}
	var out strings.Builder
	if err := StreamLog(context.Background(), path, LogOptions{}, &out, nil); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"PASSWORD=s3cret", "MEM_MI=256", "CPU_LIMIT=4", "GREETING=hello world",
		"SEEN=first second", "SECRET_GID=4321 MODE=440", "GROUPS=4321"} {
		if !strings.Contains(out.String(), want+"\n") {
			t.Errorf("log lacks %q:\n%s", want, out.String())
		}
	}
}

func TestStartupProbeHoldsReadinessThenGatesIt(t *testing.T) {
	h := newHarness(t)
	// Listens only after 2 s: the startup probe fails until then, and readiness
	// (which would pass at once: it is an exec of `true`) must wait for it.
	pod := testPod("slow", corev1.RestartPolicyAlways,
		"import socket, time\ntime.sleep(2)\ns = socket.socket()\ns.bind(('', 8080))\ns.listen()\ntime.sleep(3600)")
	c := &pod.Spec.Containers[0]
	c.StartupProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8080)}},
		PeriodSeconds: 1, FailureThreshold: 10}
	c.ReadinessProbe = &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"/bin/true"}}}, PeriodSeconds: 1}
	start := time.Now()
	h.rt.Create(pod)
	h.waitFor("slow", "Running, not started", 10*time.Second, func(p *corev1.Pod) bool {
		cs := p.Status.ContainerStatuses
		return len(cs) == 1 && cs[0].State.Running != nil && cs[0].Started != nil && !*cs[0].Started && !cs[0].Ready
	})
	h.waitFor("slow", "Ready", 15*time.Second, isReady)
	if took := time.Since(start); took < 2*time.Second {
		t.Fatalf("Ready after %s, before the startup probe could pass", took)
	}
	if st := h.status("slow").Status.ContainerStatuses[0]; st.Started == nil || !*st.Started || st.RestartCount != 0 {
		t.Fatalf("status %+v", st)
	}
}
