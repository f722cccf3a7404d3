// Package envs computes a container's environment and expanded command line
// the way the kubelet's makeEnvironmentVariables does, at container start
// (so status.podIP is known), with the kubelet's own helpers: envvars for
// the service variables, fieldpath for the downward API, the resource
// helper for resourceFieldRef, and the forked expansion package for $(VAR).
package envs

import (
	"fmt"
	"net"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/util/validation"
	corev1listers "k8s.io/client-go/listers/core/v1"

	"k8s.io/kubernetes/pkg/api/v1/resource"
	"k8s.io/kubernetes/pkg/fieldpath"
	"k8s.io/kubernetes/pkg/kubelet/envvars"
	"k8s.io/kubernetes/third_party/forked/golang/expansion"
	"mailwarden/hack/nodeagent/internal/objcache"
)

// Sources answers the lookups an environment needs.
type Sources struct {
	ConfigMaps      objcache.ConfigMapGetter
	Secrets         objcache.SecretGetter
	Services        corev1listers.ServiceLister
	NodeAllocatable func() corev1.ResourceList
	// APIServerHost/Port, when set, replace the "kubernetes" Service's
	// ClusterIP and port in KUBERNETES_SERVICE_* and KUBERNETES_PORT*: without
	// kube-proxy the ClusterIP is not routable, the API server's address is.
	APIServerHost string
	APIServerPort int
}

// Warning is a non-fatal problem the kubelet reports as an event (an
// optional reference that is missing, invalid envFrom keys).
type Warning struct{ Reason, Message string }

// Result is a container's resolved environment.
type Result struct {
	Env      map[string]string
	Warnings []Warning
}

// Make computes the environment of container c in pod (whose status must
// already carry the pod and host IPs).
func Make(src Sources, pod *corev1.Pod, c *corev1.Container) (*Result, error) {
	res := &Result{Env: map[string]string{}}
	enableServiceLinks := corev1.DefaultEnableServiceLinks
	if pod.Spec.EnableServiceLinks != nil {
		enableServiceLinks = *pod.Spec.EnableServiceLinks
	}
	svcEnv, err := serviceEnv(src, pod.Namespace, enableServiceLinks)
	if err != nil {
		return nil, err
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			optional := ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional
			cm, err := src.ConfigMaps.GetConfigMap(pod.Namespace, ef.ConfigMapRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("couldn't get configMap %s/%s: %w", pod.Namespace, ef.ConfigMapRef.Name, err)
			}
			addFrom(res, ef.Prefix, cm.Data, "ConfigMap "+ef.ConfigMapRef.Name)
		case ef.SecretRef != nil:
			optional := ef.SecretRef.Optional != nil && *ef.SecretRef.Optional
			s, err := src.Secrets.GetSecret(pod.Namespace, ef.SecretRef.Name)
			if err != nil {
				if apierrors.IsNotFound(err) && optional {
					continue
				}
				return nil, fmt.Errorf("couldn't get secret %s/%s: %w", pod.Namespace, ef.SecretRef.Name, err)
			}
			data := make(map[string]string, len(s.Data))
			for k, v := range s.Data {
				data[k] = string(v)
			}
			addFrom(res, ef.Prefix, data, "Secret "+ef.SecretRef.Name)
		}
	}
	mapping := expansion.MappingFuncFor(res.Env, svcEnv)
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			res.Env[e.Name] = expansion.Expand(e.Value, mapping)
			continue
		}
		v, ok, err := valueFrom(src, pod, c, &e)
		if err != nil {
			return nil, err
		}
		if ok {
			res.Env[e.Name] = v
		}
	}
	for k, v := range svcEnv {
		if _, present := res.Env[k]; !present {
			res.Env[k] = v
		}
	}
	return res, nil
}

func addFrom(res *Result, prefix string, data map[string]string, what string) {
	var invalid []string
	for k, v := range data {
		name := prefix + k
		if errs := validation.IsEnvVarName(name); len(errs) != 0 {
			invalid = append(invalid, name)
			continue
		}
		res.Env[name] = v
	}
	if len(invalid) > 0 {
		res.Warnings = append(res.Warnings, Warning{"InvalidEnvironmentVariableNames",
			fmt.Sprintf("Keys [%s] from the EnvFrom %s were skipped since they are considered invalid environment variable names.", strings.Join(invalid, ", "), what)})
	}
}

func valueFrom(src Sources, pod *corev1.Pod, c *corev1.Container, e *corev1.EnvVar) (string, bool, error) {
	vf := e.ValueFrom
	switch {
	case vf.FieldRef != nil:
		v, err := podFieldValue(vf.FieldRef, pod)
		return v, err == nil, err
	case vf.ResourceFieldRef != nil:
		fs := vf.ResourceFieldRef.DeepCopy()
		name := fs.ContainerName
		if name == "" {
			name = c.Name
		}
		v, err := resource.ExtractResourceValueByContainerNameAndNodeAllocatable(fs, pod, name, src.NodeAllocatable())
		return v, err == nil, err
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm, err := src.ConfigMaps.GetConfigMap(pod.Namespace, ref.Name)
		if err != nil {
			if optional && apierrors.IsNotFound(err) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("couldn't get configMap %s/%s: %w", pod.Namespace, ref.Name, err)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("couldn't find key %v in ConfigMap %v/%v", ref.Key, pod.Namespace, ref.Name)
		}
		return v, true, nil
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		s, err := src.Secrets.GetSecret(pod.Namespace, ref.Name)
		if err != nil {
			if optional && apierrors.IsNotFound(err) {
				return "", false, nil
			}
			return "", false, fmt.Errorf("couldn't get secret %s/%s: %w", pod.Namespace, ref.Name, err)
		}
		v, ok := s.Data[ref.Key]
		if !ok {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("couldn't find key %v in Secret %v/%v", ref.Key, pod.Namespace, ref.Name)
		}
		return string(v), true, nil
	}
	return "", false, fmt.Errorf("env %q: unsupported valueFrom (fieldRef, resourceFieldRef, configMapKeyRef and secretKeyRef are)", e.Name)
}

// podFieldValue is the kubelet's podFieldSelectorRuntimeValue.
func podFieldValue(fs *corev1.ObjectFieldSelector, pod *corev1.Pod) (string, error) {
	switch fs.FieldPath {
	case "spec.nodeName":
		return pod.Spec.NodeName, nil
	case "spec.serviceAccountName":
		return pod.Spec.ServiceAccountName, nil
	case "status.hostIP":
		return pod.Status.HostIP, nil
	case "status.hostIPs":
		return joinIPs(pod.Status.HostIPs), nil
	case "status.podIP":
		return pod.Status.PodIP, nil
	case "status.podIPs":
		ips := make([]string, 0, len(pod.Status.PodIPs))
		for _, ip := range pod.Status.PodIPs {
			ips = append(ips, ip.IP)
		}
		return strings.Join(ips, ","), nil
	}
	return fieldpath.ExtractFieldPathAsString(pod, fs.FieldPath)
}

func joinIPs(ips []corev1.HostIP) string {
	out := make([]string, 0, len(ips))
	for _, ip := range ips {
		out = append(out, ip.IP)
	}
	return strings.Join(out, ",")
}

// serviceEnv is the kubelet's getServiceEnvVarMap: the "kubernetes" Service
// of the default namespace always, the pod's namespace's Services when
// service links are enabled.
func serviceEnv(src Sources, ns string, enableServiceLinks bool) (map[string]string, error) {
	services, err := src.Services.List(labels.Everything())
	if err != nil {
		return nil, err
	}
	byName := map[string]*corev1.Service{}
	for _, s := range services {
		if s.Spec.ClusterIP == "" || s.Spec.ClusterIP == corev1.ClusterIPNone {
			continue
		}
		if s.Namespace == "default" && s.Name == "kubernetes" {
			if _, ok := byName[s.Name]; !ok {
				byName[s.Name] = apiServerView(src, s)
			}
		} else if s.Namespace == ns && enableServiceLinks {
			byName[s.Name] = s
		}
	}
	list := make([]*corev1.Service, 0, len(byName))
	for _, s := range byName {
		list = append(list, s)
	}
	out := map[string]string{}
	for _, e := range envvars.FromServices(list) {
		out[e.Name] = e.Value
	}
	return out, nil
}

// apiServerView rewrites the kubernetes Service to the API server's real
// address when one is configured.
func apiServerView(src Sources, s *corev1.Service) *corev1.Service {
	if src.APIServerHost == "" || net.ParseIP(src.APIServerHost) == nil {
		return s
	}
	c := s.DeepCopy()
	c.Spec.ClusterIP = src.APIServerHost
	c.Spec.ClusterIPs = []string{src.APIServerHost}
	for i := range c.Spec.Ports {
		if c.Spec.Ports[i].Name == "https" && src.APIServerPort > 0 {
			c.Spec.Ports[i].Port = int32(src.APIServerPort)
		}
	}
	return c
}

// ExpandArgs expands $(VAR) in command and args with the container's env,
// as the kubelet's ExpandContainerCommandAndArgs.
func ExpandArgs(list []string, env map[string]string) []string {
	mapping := expansion.MappingFuncFor(env)
	out := make([]string, len(list))
	for i, s := range list {
		out[i] = expansion.Expand(s, mapping)
	}
	return out
}
