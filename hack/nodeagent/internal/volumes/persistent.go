package volumes

import (
	"context"
	"fmt"
	"os"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"k8s.io/kubernetes/pkg/volume"
)

// persistentPath resolves a persistentVolumeClaim volume to the host
// directory of the PersistentVolume bound to the claim, as the kubelet's
// volume manager does before it mounts: the claim must be Bound (the real
// PV controller binds it; with WaitForFirstConsumer the scheduler picked
// the volume for this node first), and the volume must be one a single
// machine can serve: `local` or `hostPath`. Like the kubelet's local volume
// plugin (and unlike hostPath), a local volume is made group-owned by the
// pod's fsGroup, so non-root pods can write to it.
func (m *Manager) persistentPath(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (string, error) {
	if m.src.Client == nil {
		return "", fmt.Errorf("persistentVolumeClaim volumes need an API client")
	}
	claimName := v.PersistentVolumeClaim.ClaimName
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	claim, err := m.src.Client.CoreV1().PersistentVolumeClaims(pod.Namespace).Get(cctx, claimName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("persistentvolumeclaim %q: %w", claimName, err)
	}
	if claim.DeletionTimestamp != nil {
		return "", fmt.Errorf("persistentvolumeclaim %q is being deleted", claimName)
	}
	if claim.Status.Phase != corev1.ClaimBound || claim.Spec.VolumeName == "" {
		return "", fmt.Errorf("persistentvolumeclaim %q is not bound", claimName)
	}
	pv, err := m.src.Client.CoreV1().PersistentVolumes().Get(cctx, claim.Spec.VolumeName, metav1.GetOptions{})
	if err != nil {
		return "", fmt.Errorf("persistentvolume %q of claim %q: %w", claim.Spec.VolumeName, claimName, err)
	}
	if ref := pv.Spec.ClaimRef; ref == nil || ref.UID != claim.UID {
		return "", fmt.Errorf("persistentvolume %q is not bound to claim %q", pv.Name, claimName)
	}
	readOnly := v.PersistentVolumeClaim.ReadOnly
	var path string
	switch {
	case pv.Spec.Local != nil:
		path = pv.Spec.Local.Path
	case pv.Spec.HostPath != nil:
		path = pv.Spec.HostPath.Path
	default:
		return "", fmt.Errorf("persistentvolume %q: this node agent mounts only local and hostPath persistent volumes", pv.Name)
	}
	info, err := os.Stat(path)
	if err != nil {
		return "", fmt.Errorf("persistentvolume %q: %w", pv.Name, err)
	}
	if !info.IsDir() {
		return "", fmt.Errorf("persistentvolume %q: %s is not a directory", pv.Name, path)
	}
	if pv.Spec.Local != nil && !readOnly {
		var policy *corev1.PodFSGroupChangePolicy
		if pod.Spec.SecurityContext != nil {
			policy = pod.Spec.SecurityContext.FSGroupChangePolicy
		}
		// The kubelet's own ownership change (recursive, or only on a root
		// mismatch with OnRootMismatch).
		owner := volume.NewVolumeOwnership(attributesOnly{readOnly: readOnly}, path, podFSGroup(pod), policy, nil)
		if err := owner.ChangePermissions(); err != nil {
			return "", fmt.Errorf("persistentvolume %q: setting fsGroup ownership: %w", pv.Name, err)
		}
	}
	return path, nil
}

// attributesOnly gives the kubelet's VolumeOwnership the one Mounter method
// it calls (GetAttributes). The embedded interface is nil: any other call
// would panic, and ChangePermissions at the pinned release makes none.
type attributesOnly struct {
	volume.Mounter
	readOnly bool
}

func (a attributesOnly) GetAttributes() volume.Attributes {
	return volume.Attributes{ReadOnly: a.readOnly, Managed: true}
}
