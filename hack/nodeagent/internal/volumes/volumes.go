// Package volumes lays out a pod's volumes on the node as the kubelet does:
// ConfigMap, Secret, projected and downwardAPI volumes are written with the
// kubelet's own AtomicWriter (timestamped directory, "..data" symlink swapped
// atomically, user-visible symlinks), from payloads built by the kubelet's
// own payload functions; emptyDir is a directory or, with medium Memory, a
// tmpfs. Sync rewrites the projections so updates reach running pods.
package volumes

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	utilerrors "k8s.io/apimachinery/pkg/util/errors"
	"k8s.io/client-go/kubernetes"

	"k8s.io/kubernetes/pkg/volume"
	"k8s.io/kubernetes/pkg/volume/configmap"
	"k8s.io/kubernetes/pkg/volume/downwardapi"
	"k8s.io/kubernetes/pkg/volume/secret"
	volumeutil "k8s.io/kubernetes/pkg/volume/util"
	"mailwarden/hack/nodeagent/internal/objcache"

	"golang.org/x/sys/unix"
)

// Sources is where volume contents come from.
type Sources struct {
	ConfigMaps objcache.ConfigMapGetter
	Secrets    objcache.SecretGetter
	// Client requests service account tokens (TokenRequest API).
	Client kubernetes.Interface
	// NodeAllocatable answers resourceFieldRef items whose container has no limit.
	NodeAllocatable func() corev1.ResourceList
}

// nodeHost gives downwardapi.CollectData the one VolumeHost method it calls
// (GetNodeAllocatable, for resourceFieldRef without a limit). The embedded
// interface is nil: any other method would panic, and CollectData at the
// pinned release calls none.
type nodeHost struct {
	volume.VolumeHost
	allocatable func() corev1.ResourceList
}

func (h nodeHost) GetNodeAllocatable() (corev1.ResourceList, error) {
	return h.allocatable(), nil
}

// Manager holds one pod's volumes under dir/<volume name>.
type Manager struct {
	src Sources
	dir string

	mu     sync.Mutex
	pod    *corev1.Pod
	tokens map[string]*authenticationv1.TokenRequest // by volume/source index
	tmpfs  []string
	// host directories of persistentVolumeClaim volumes (the bound volume's path)
	persistent map[string]string
}

// New returns the volume manager of pod; volumes live under dir.
func New(src Sources, dir string, pod *corev1.Pod) *Manager {
	return &Manager{src: src, dir: dir, pod: pod.DeepCopy(), tokens: map[string]*authenticationv1.TokenRequest{},
		persistent: map[string]string{}}
}

// Path is the host directory of the named volume: for a persistentVolumeClaim
// the bound PersistentVolume's directory (known once SetUp succeeded).
func (m *Manager) Path(name string) string {
	m.mu.Lock()
	defer m.mu.Unlock()
	if p, ok := m.persistent[name]; ok {
		return p
	}
	return filepath.Join(m.dir, name)
}

// UpdatePod replaces the pod the downward API reads (labels, annotations).
func (m *Manager) UpdatePod(pod *corev1.Pod) {
	m.mu.Lock()
	m.pod = pod.DeepCopy()
	m.mu.Unlock()
}

// SetUp creates every volume. A referenced ConfigMap or Secret that is
// missing (and not optional) is an error naming it, as the kubelet's
// FailedMount event does; the caller retries.
func (m *Manager) SetUp(ctx context.Context) error {
	m.mu.Lock()
	pod := m.pod
	m.mu.Unlock()
	var errs []error
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if err := m.setUpOne(ctx, pod, v); err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// Sync refreshes the projected contents (ConfigMap and Secret updates,
// labels and annotations, token rotation). Unchanged payloads write nothing.
func (m *Manager) Sync(ctx context.Context) error {
	m.mu.Lock()
	pod := m.pod
	m.mu.Unlock()
	var errs []error
	for i := range pod.Spec.Volumes {
		v := &pod.Spec.Volumes[i]
		if v.EmptyDir != nil || v.PersistentVolumeClaim != nil {
			continue // nothing projected: set up once
		}
		if err := m.setUpOne(ctx, pod, v); err != nil {
			errs = append(errs, fmt.Errorf("volume %q: %w", v.Name, err))
		}
	}
	return errors.Join(errs...)
}

// TearDown unmounts tmpfs volumes and removes every volume directory.
func (m *Manager) TearDown() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	var errs []error
	for _, p := range m.tmpfs {
		if err := unix.Unmount(p, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
			errs = append(errs, err)
		}
	}
	m.tmpfs = nil
	if err := os.RemoveAll(m.dir); err != nil {
		errs = append(errs, err)
	}
	return errors.Join(errs...)
}

func (m *Manager) setUpOne(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) error {
	dir := m.Path(v.Name)
	fsGroup := podFSGroup(pod)
	switch {
	case v.EmptyDir != nil:
		return m.emptyDir(dir, v.EmptyDir, fsGroup)
	case v.ConfigMap != nil:
		src := v.ConfigMap
		optional := src.Optional != nil && *src.Optional
		cm, err := m.src.ConfigMaps.GetConfigMap(pod.Namespace, src.Name)
		if err != nil {
			if !(apierrors.IsNotFound(err) && optional) {
				return fmt.Errorf("configmap %q: %w", src.Name, err)
			}
			cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: src.Name}}
		}
		payload, err := configmap.MakePayload(src.Items, cm, modeOrDefault(src.DefaultMode), nil, optional)
		if err != nil {
			return err
		}
		return write(dir, payload, fsGroup, true)
	case v.Secret != nil:
		src := v.Secret
		optional := src.Optional != nil && *src.Optional
		s, err := m.src.Secrets.GetSecret(pod.Namespace, src.SecretName)
		if err != nil {
			if !(apierrors.IsNotFound(err) && optional) {
				return fmt.Errorf("secret %q: %w", src.SecretName, err)
			}
			s = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: src.SecretName}}
		}
		payload, err := secret.MakePayload(src.Items, s, modeOrDefault(src.DefaultMode), nil, optional)
		if err != nil {
			return err
		}
		return write(dir, payload, fsGroup, true)
	case v.DownwardAPI != nil:
		payload, err := downwardapi.CollectData(v.DownwardAPI.Items, pod, nodeHost{allocatable: m.src.NodeAllocatable}, modeOrDefault(v.DownwardAPI.DefaultMode), nil)
		if err != nil {
			return err
		}
		return write(dir, payload, fsGroup, true)
	case v.Projected != nil:
		payload, err := m.projected(ctx, pod, v)
		if err != nil {
			return err
		}
		return write(dir, payload, fsGroup, true)
	case v.HostPath != nil:
		return nil // mounted straight from the host path
	case v.PersistentVolumeClaim != nil:
		path, err := m.persistentPath(ctx, pod, v)
		if err != nil {
			return err
		}
		m.mu.Lock()
		m.persistent[v.Name] = path
		m.mu.Unlock()
		return nil
	default:
		return fmt.Errorf("this node agent does not support the volume's type (supported: emptyDir, configMap, secret, projected, downwardAPI, hostPath, persistentVolumeClaim of a local or hostPath volume)")
	}
}

func (m *Manager) emptyDir(dir string, src *corev1.EmptyDirVolumeSource, fsGroup *int64) error {
	if _, err := os.Stat(dir); err == nil {
		return nil
	}
	if err := os.MkdirAll(dir, 0o777); err != nil {
		return err
	}
	if src.Medium == corev1.StorageMediumMemory {
		opts := "mode=1777"
		if src.SizeLimit != nil && !src.SizeLimit.IsZero() {
			opts += fmt.Sprintf(",size=%d", src.SizeLimit.Value())
		}
		if err := unix.Mount("tmpfs", dir, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, opts); err != nil {
			return fmt.Errorf("mounting tmpfs: %w", err)
		}
		m.mu.Lock()
		m.tmpfs = append(m.tmpfs, dir)
		m.mu.Unlock()
	}
	// As the kubelet's emptyDir: world-writable so any uid in the pod can write.
	if err := os.Chmod(dir, 0o777); err != nil {
		return err
	}
	if fsGroup != nil {
		if err := os.Chown(dir, -1, int(*fsGroup)); err != nil {
			return err
		}
		return os.Chmod(dir, 0o777|os.ModeSetgid)
	}
	return nil
}

// projected mirrors the kubelet's projected volume collectData for the
// source kinds a pod of ours uses (secret, configMap, downwardAPI,
// serviceAccountToken).
func (m *Manager) projected(ctx context.Context, pod *corev1.Pod, v *corev1.Volume) (map[string]volumeutil.FileProjection, error) {
	src := v.Projected
	if src.DefaultMode == nil {
		mode := corev1.ProjectedVolumeSourceDefaultMode
		src = src.DeepCopy()
		src.DefaultMode = &mode
	}
	fsUser := FsUserFrom(pod)
	fsGroup := podFSGroup(pod)
	var errlist []error
	payload := map[string]volumeutil.FileProjection{}
	for i, s := range src.Sources {
		switch {
		case s.Secret != nil:
			optional := s.Secret.Optional != nil && *s.Secret.Optional
			sec, err := m.src.Secrets.GetSecret(pod.Namespace, s.Secret.Name)
			if err != nil {
				if !(apierrors.IsNotFound(err) && optional) {
					errlist = append(errlist, fmt.Errorf("secret %q: %w", s.Secret.Name, err))
					continue
				}
				sec = &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: s.Secret.Name}}
			}
			p, err := secret.MakePayload(s.Secret.Items, sec, src.DefaultMode, src.DefaultUser, optional)
			if err != nil {
				errlist = append(errlist, err)
				continue
			}
			for k, f := range p {
				payload[k] = f
			}
		case s.ConfigMap != nil:
			optional := s.ConfigMap.Optional != nil && *s.ConfigMap.Optional
			cm, err := m.src.ConfigMaps.GetConfigMap(pod.Namespace, s.ConfigMap.Name)
			if err != nil {
				if !(apierrors.IsNotFound(err) && optional) {
					errlist = append(errlist, fmt.Errorf("configmap %q: %w", s.ConfigMap.Name, err))
					continue
				}
				cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: pod.Namespace, Name: s.ConfigMap.Name}}
			}
			p, err := configmap.MakePayload(s.ConfigMap.Items, cm, src.DefaultMode, src.DefaultUser, optional)
			if err != nil {
				errlist = append(errlist, err)
				continue
			}
			for k, f := range p {
				payload[k] = f
			}
		case s.DownwardAPI != nil:
			p, err := downwardapi.CollectData(s.DownwardAPI.Items, pod, nodeHost{allocatable: m.src.NodeAllocatable}, src.DefaultMode, src.DefaultUser)
			if err != nil {
				errlist = append(errlist, err)
				continue
			}
			for k, f := range p {
				payload[k] = f
			}
		case s.ServiceAccountToken != nil:
			tp := s.ServiceAccountToken
			user := fsUser
			if src.DefaultUser != nil {
				user = src.DefaultUser
			}
			if tp.User != nil {
				user = tp.User
			}
			mode := *src.DefaultMode
			if user != nil || fsGroup != nil {
				mode = 0o600
			}
			tok, err := m.token(ctx, pod, fmt.Sprintf("%s/%d", v.Name, i), tp)
			if err != nil {
				errlist = append(errlist, err)
				continue
			}
			payload[tp.Path] = volumeutil.FileProjection{Data: []byte(tok), Mode: mode, FsUser: user}
		default:
			errlist = append(errlist, fmt.Errorf("projected source %d: only secret, configMap, downwardAPI and serviceAccountToken are supported", i))
		}
	}
	return payload, utilerrors.NewAggregate(errlist)
}

// token returns a valid token for the projection, requesting a new one when
// none is cached or the cached one is older than 80% of its lifetime or
// 24 hours (the kubelet's token manager rule).
func (m *Manager) token(ctx context.Context, pod *corev1.Pod, key string, tp *corev1.ServiceAccountTokenProjection) (string, error) {
	m.mu.Lock()
	tr := m.tokens[key]
	m.mu.Unlock()
	if tr != nil && !needsRefresh(tr, time.Now()) {
		return tr.Status.Token, nil
	}
	var auds []string
	if tp.Audience != "" {
		auds = []string{tp.Audience}
	}
	req := &authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{
		Audiences:         auds,
		ExpirationSeconds: tp.ExpirationSeconds,
		BoundObjectRef:    &authenticationv1.BoundObjectReference{APIVersion: "v1", Kind: "Pod", Name: pod.Name, UID: pod.UID},
	}}
	sa := pod.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	out, err := m.src.Client.CoreV1().ServiceAccounts(pod.Namespace).CreateToken(cctx, sa, req, metav1.CreateOptions{})
	if err != nil {
		if tr != nil && time.Now().Before(tr.Status.ExpirationTimestamp.Time) {
			return tr.Status.Token, nil // keep serving the still-valid token
		}
		return "", fmt.Errorf("requesting a token for service account %s/%s: %w", pod.Namespace, sa, err)
	}
	// Remember when it was issued: the refresh rule needs the lifetime.
	if out.Annotations == nil {
		out.Annotations = map[string]string{}
	}
	out.Annotations[issuedAtKey] = time.Now().Format(time.RFC3339Nano)
	m.mu.Lock()
	m.tokens[key] = out
	m.mu.Unlock()
	return out.Status.Token, nil
}

const issuedAtKey = "nodeagent.mailwarden.io/issued-at"

func needsRefresh(tr *authenticationv1.TokenRequest, now time.Time) bool {
	issued, err := time.Parse(time.RFC3339Nano, tr.Annotations[issuedAtKey])
	if err != nil {
		return true
	}
	exp := tr.Status.ExpirationTimestamp.Time
	ttl := exp.Sub(issued)
	if now.After(issued.Add(ttl * 8 / 10)) {
		return true
	}
	return now.After(issued.Add(24 * time.Hour))
}

// write projects payload into dir with the kubelet's AtomicWriter; with an
// fsGroup, files and directories become group-owned and group-readable as
// the kubelet's SetVolumeOwnership makes them.
func write(dir string, payload map[string]volumeutil.FileProjection, fsGroup *int64, readOnly bool) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	w, err := volumeutil.NewAtomicWriter(dir, dir)
	if err != nil {
		return err
	}
	var setPerms func(string) error
	if fsGroup != nil {
		setPerms = func(sub string) error { return setOwnership(filepath.Join(dir, sub), *fsGroup, readOnly) }
	}
	return w.Write(payload, setPerms)
}

func setOwnership(root string, gid int64, readOnly bool) error {
	return filepath.Walk(root, func(p string, info os.FileInfo, err error) error {
		if err != nil {
			return err
		}
		if info.Mode()&os.ModeSymlink != 0 {
			return nil
		}
		if err := os.Lchown(p, -1, int(gid)); err != nil {
			return err
		}
		mask := os.FileMode(0o660)
		if readOnly {
			mask = 0o440
		}
		if info.IsDir() {
			mask |= os.ModeSetgid | 0o110
		}
		return os.Chmod(p, info.Mode()|mask)
	})
}

// modeOrDefault is the API server's defaulting (0644) for a pod that was
// not defaulted (every volume source's DefaultMode is the same 0644).
func modeOrDefault(m *int32) *int32 {
	if m != nil {
		return m
	}
	d := corev1.ConfigMapVolumeSourceDefaultMode
	return &d
}

func podFSGroup(pod *corev1.Pod) *int64 {
	if pod.Spec.SecurityContext != nil {
		return pod.Spec.SecurityContext.FSGroup
	}
	return nil
}

// FsUserFrom returns the uid every container of the pod runs as, when they
// all run as the same explicit uid (the kubelet's FsUserFrom).
func FsUserFrom(pod *corev1.Pod) *int64 {
	var uid *int64
	first := true
	check := func(c *corev1.Container) bool {
		var u *int64
		if pod.Spec.SecurityContext != nil {
			u = pod.Spec.SecurityContext.RunAsUser
		}
		if c.SecurityContext != nil && c.SecurityContext.RunAsUser != nil {
			u = c.SecurityContext.RunAsUser
		}
		if u == nil {
			return false
		}
		if first {
			uid, first = u, false
			return true
		}
		return *uid == *u
	}
	for i := range pod.Spec.InitContainers {
		if !check(&pod.Spec.InitContainers[i]) {
			return nil
		}
	}
	for i := range pod.Spec.Containers {
		if !check(&pod.Spec.Containers[i]) {
			return nil
		}
	}
	return uid
}
