// Package objcache keeps the Secrets and ConfigMaps the node's pods use, one
// single-object watch each (fieldSelector metadata.name), like the kubelet's
// "Watch" change-detection strategy. A node identity may read only the
// objects its pods reference (Node authorizer), so nothing is listed
// cluster-wide; an update reaches the cache, hence the pod's volume, within
// the watch latency.
package objcache

import (
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// ConfigMapGetter reads a ConfigMap; a missing one is a NotFound error.
type ConfigMapGetter interface {
	GetConfigMap(namespace, name string) (*corev1.ConfigMap, error)
}

// SecretGetter reads a Secret; a missing one is a NotFound error.
type SecretGetter interface {
	GetSecret(namespace, name string) (*corev1.Secret, error)
}

type entry struct {
	informer cache.SharedIndexInformer
	stop     chan struct{}
	refs     int
}

// Cache watches referenced objects of one kind.
type Cache struct {
	client   kubernetes.Interface
	resource string // "secrets" or "configmaps"
	obj      runtime.Object
	gr       schema.GroupResource
	mu       sync.Mutex
	entries  map[string]*entry
	// SyncTimeout bounds how long Get waits for a new watch's first list.
	SyncTimeout time.Duration
}

// NewSecrets returns a Secret cache.
func NewSecrets(c kubernetes.Interface) *Cache {
	return &Cache{client: c, resource: "secrets", obj: &corev1.Secret{}, gr: corev1.Resource("secrets"),
		entries: map[string]*entry{}, SyncTimeout: 10 * time.Second}
}

// NewConfigMaps returns a ConfigMap cache.
func NewConfigMaps(c kubernetes.Interface) *Cache {
	return &Cache{client: c, resource: "configmaps", obj: &corev1.ConfigMap{}, gr: corev1.Resource("configmaps"),
		entries: map[string]*entry{}, SyncTimeout: 10 * time.Second}
}

func k(ns, name string) string { return ns + "/" + name }

// Register starts (or shares) the watch of ns/name.
func (c *Cache) Register(ns, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.entries[k(ns, name)]; ok {
		e.refs++
		return
	}
	lw := cache.NewListWatchFromClient(c.client.CoreV1().RESTClient(), c.resource, ns,
		fields.OneTermEqualSelector("metadata.name", name))
	inf := cache.NewSharedIndexInformer(lw, c.obj, 0, cache.Indexers{})
	e := &entry{informer: inf, stop: make(chan struct{}), refs: 1}
	c.entries[k(ns, name)] = e
	go inf.Run(e.stop)
}

// Unregister drops one reference; the last stops the watch.
func (c *Cache) Unregister(ns, name string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[k(ns, name)]
	if !ok {
		return
	}
	e.refs--
	if e.refs <= 0 {
		close(e.stop)
		delete(c.entries, k(ns, name))
	}
}

func (c *Cache) get(ns, name string) (runtime.Object, error) {
	c.mu.Lock()
	e, ok := c.entries[k(ns, name)]
	c.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%s %s/%s is not referenced by any pod of this node", c.resource, ns, name)
	}
	if !e.informer.HasSynced() {
		deadline := time.Now().Add(c.SyncTimeout)
		for !e.informer.HasSynced() {
			if time.Now().After(deadline) {
				return nil, fmt.Errorf("timed out reading %s %s/%s from the API server", c.resource, ns, name)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	obj, exists, err := e.informer.GetStore().GetByKey(k(ns, name))
	if err != nil {
		return nil, err
	}
	if !exists {
		return nil, apierrors.NewNotFound(c.gr, name)
	}
	return obj.(runtime.Object), nil
}

// GetSecret implements SecretGetter.
func (c *Cache) GetSecret(ns, name string) (*corev1.Secret, error) {
	o, err := c.get(ns, name)
	if err != nil {
		return nil, err
	}
	return o.(*corev1.Secret), nil
}

// GetConfigMap implements ConfigMapGetter.
func (c *Cache) GetConfigMap(ns, name string) (*corev1.ConfigMap, error) {
	o, err := c.get(ns, name)
	if err != nil {
		return nil, err
	}
	return o.(*corev1.ConfigMap), nil
}

// Refs lists the Secrets and ConfigMaps a pod references (volumes, env, envFrom).
func Refs(pod *corev1.Pod) (secrets, configMaps []string) {
	seenS, seenC := map[string]bool{}, map[string]bool{}
	addS := func(n string) {
		if n != "" && !seenS[n] {
			seenS[n] = true
			secrets = append(secrets, n)
		}
	}
	addC := func(n string) {
		if n != "" && !seenC[n] {
			seenC[n] = true
			configMaps = append(configMaps, n)
		}
	}
	for _, v := range pod.Spec.Volumes {
		switch {
		case v.Secret != nil:
			addS(v.Secret.SecretName)
		case v.ConfigMap != nil:
			addC(v.ConfigMap.Name)
		case v.Projected != nil:
			for _, s := range v.Projected.Sources {
				if s.Secret != nil {
					addS(s.Secret.Name)
				}
				if s.ConfigMap != nil {
					addC(s.ConfigMap.Name)
				}
			}
		}
	}
	visit := func(cs []corev1.Container) {
		for _, c := range cs {
			for _, e := range c.EnvFrom {
				if e.SecretRef != nil {
					addS(e.SecretRef.Name)
				}
				if e.ConfigMapRef != nil {
					addC(e.ConfigMapRef.Name)
				}
			}
			for _, e := range c.Env {
				if e.ValueFrom == nil {
					continue
				}
				if e.ValueFrom.SecretKeyRef != nil {
					addS(e.ValueFrom.SecretKeyRef.Name)
				}
				if e.ValueFrom.ConfigMapKeyRef != nil {
					addC(e.ValueFrom.ConfigMapKeyRef.Name)
				}
			}
		}
	}
	visit(pod.Spec.InitContainers)
	visit(pod.Spec.Containers)
	return secrets, configMaps
}
