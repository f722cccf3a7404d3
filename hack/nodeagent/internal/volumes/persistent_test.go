package volumes

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/utils/ptr"
)

func claimPod(fsGroup *int64) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "p", UID: "pod-uid"},
		Spec: corev1.PodSpec{
			SecurityContext: &corev1.PodSecurityContext{FSGroup: fsGroup},
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{
				PersistentVolumeClaim: &corev1.PersistentVolumeClaimVolumeSource{ClaimName: "claim"}}}},
		},
	}
}

func boundPair(source corev1.PersistentVolumeSource) (*corev1.PersistentVolumeClaim, *corev1.PersistentVolume) {
	claim := &corev1.PersistentVolumeClaim{
		ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "claim", UID: types.UID("claim-uid")},
		Spec:       corev1.PersistentVolumeClaimSpec{VolumeName: "pv-1"},
		Status:     corev1.PersistentVolumeClaimStatus{Phase: corev1.ClaimBound},
	}
	pv := &corev1.PersistentVolume{
		ObjectMeta: metav1.ObjectMeta{Name: "pv-1"},
		Spec: corev1.PersistentVolumeSpec{
			PersistentVolumeSource: source,
			ClaimRef:               &corev1.ObjectReference{Namespace: "ns", Name: "claim", UID: claim.UID},
		},
	}
	return claim, pv
}

func TestClaimOfALocalVolumeMountsItsDirectoryOwnedByTheFSGroup(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("changing group ownership needs root, as the node agent has")
	}
	dir := t.TempDir()
	data := filepath.Join(dir, "pv")
	if err := os.MkdirAll(filepath.Join(data, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	claim, pv := boundPair(corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: data}})
	m := New(Sources{Client: fake.NewClientset(claim, pv)}, filepath.Join(dir, "volumes"), claimPod(ptr.To[int64](65532)))
	if err := m.SetUp(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := m.Path("data"); got != data {
		t.Fatalf("Path(data) = %q, want the volume's directory %q", got, data)
	}
	for _, p := range []string{data, filepath.Join(data, "sub")} {
		info, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		st := info.Sys().(*syscall.Stat_t)
		if st.Gid != 65532 || info.Mode()&os.ModeSetgid == 0 || info.Mode().Perm()&0o070 != 0o070 {
			t.Fatalf("%s: gid %d mode %v; want group 65532, setgid, group rwx (kubelet's fsGroup rule)", p, st.Gid, info.Mode())
		}
	}
}

func TestClaimThatIsNotBoundOrOfAnotherTypeIsAMountError(t *testing.T) {
	dir := t.TempDir()
	claim, pv := boundPair(corev1.PersistentVolumeSource{Local: &corev1.LocalVolumeSource{Path: dir}})
	claim.Status.Phase = corev1.ClaimPending
	claim.Spec.VolumeName = ""
	m := New(Sources{Client: fake.NewClientset(claim, pv)}, filepath.Join(dir, "v"), claimPod(nil))
	if err := m.SetUp(context.Background()); err == nil || !strings.Contains(err.Error(), `persistentvolumeclaim "claim" is not bound`) {
		t.Fatalf("unbound claim: got %v", err)
	}

	claim, pv = boundPair(corev1.PersistentVolumeSource{NFS: &corev1.NFSVolumeSource{Server: "x", Path: "/"}})
	m = New(Sources{Client: fake.NewClientset(claim, pv)}, filepath.Join(dir, "v"), claimPod(nil))
	if err := m.SetUp(context.Background()); err == nil || !strings.Contains(err.Error(), "only local and hostPath") {
		t.Fatalf("nfs volume: got %v", err)
	}

	m = New(Sources{Client: fake.NewClientset()}, filepath.Join(dir, "v"), claimPod(nil))
	if err := m.SetUp(context.Background()); err == nil || !strings.Contains(err.Error(), `persistentvolumeclaim "claim"`) {
		t.Fatalf("missing claim: got %v", err)
	}
}
