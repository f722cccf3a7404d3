package runtime

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strings"

	corev1 "k8s.io/api/core/v1"
)

// DNSConfig is the cluster DNS a pod's resolv.conf points at.
type DNSConfig struct {
	Nameservers   []string
	ClusterDomain string // "cluster.local"
}

// resolvConf renders the pod's /etc/resolv.conf as the kubelet does for
// dnsPolicy ClusterFirst (search <ns>.svc.<domain> svc.<domain> <domain>,
// ndots:5), merged with spec.dnsConfig. dnsPolicy Default and None use only
// dnsConfig (there is no host resolver to inherit: the machine reaches no
// outside DNS).
func resolvConf(pod *corev1.Pod, dns DNSConfig) []byte {
	var servers, searches []string
	opts := []string{}
	policy := pod.Spec.DNSPolicy
	if policy == "" || policy == corev1.DNSClusterFirst || policy == corev1.DNSClusterFirstWithHostNet {
		servers = append(servers, dns.Nameservers...)
		d := dns.ClusterDomain
		searches = []string{pod.Namespace + ".svc." + d, "svc." + d, d}
		opts = append(opts, "ndots:5")
	}
	if c := pod.Spec.DNSConfig; c != nil {
		servers = appendNew(servers, c.Nameservers...)
		searches = appendNew(searches, c.Searches...)
		for _, o := range c.Options {
			opt := o.Name
			if o.Value != nil {
				opt += ":" + *o.Value
			}
			opts = mergeOption(opts, opt)
		}
	}
	var b bytes.Buffer
	if len(searches) > 0 {
		fmt.Fprintf(&b, "search %s\n", strings.Join(searches, " "))
	}
	for _, s := range servers {
		fmt.Fprintf(&b, "nameserver %s\n", s)
	}
	if len(opts) > 0 {
		fmt.Fprintf(&b, "options %s\n", strings.Join(opts, " "))
	}
	return b.Bytes()
}

func appendNew(list []string, add ...string) []string {
	for _, a := range add {
		found := false
		for _, x := range list {
			found = found || x == a
		}
		if !found {
			list = append(list, a)
		}
	}
	return list
}

// mergeOption replaces an option of the same name (ndots:2 overrides ndots:5).
func mergeOption(opts []string, opt string) []string {
	name := strings.SplitN(opt, ":", 2)[0]
	for i, o := range opts {
		if strings.SplitN(o, ":", 2)[0] == name {
			opts[i] = opt
			return opts
		}
	}
	return append(opts, opt)
}

// hostname is the pod's hostname (spec.hostname or the pod name, cut at 63).
func hostname(pod *corev1.Pod) string {
	h := pod.Spec.Hostname
	if h == "" {
		h = pod.Name
	}
	if len(h) > 63 {
		h = strings.TrimRight(h[:63], "-.")
	}
	return h
}

// hostsFile renders /etc/hosts as the kubelet's managed hosts file.
func hostsFile(pod *corev1.Pod, podIP string, domain string) []byte {
	var b bytes.Buffer
	b.WriteString("# Kubernetes-managed hosts file.\n")
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	b.WriteString("fe00::0\tip6-localnet\nfe00::0\tip6-mcastprefix\nfe00::1\tip6-allnodes\nfe00::2\tip6-allrouters\n")
	h := hostname(pod)
	if pod.Spec.Subdomain != "" {
		fqdn := fmt.Sprintf("%s.%s.%s.svc.%s", h, pod.Spec.Subdomain, pod.Namespace, domain)
		fmt.Fprintf(&b, "%s\t%s\t%s\n", podIP, fqdn, h)
	} else {
		fmt.Fprintf(&b, "%s\t%s\n", podIP, h)
	}
	if len(pod.Spec.HostAliases) > 0 {
		b.WriteString("\n# Entries added by HostAliases.\n")
		for _, a := range pod.Spec.HostAliases {
			fmt.Fprintf(&b, "%s\t%s\n", a.IP, strings.Join(a.Hostnames, "\t"))
		}
	}
	return b.Bytes()
}

// writeHostFiles writes etc-hosts, resolv.conf and hostname into dir.
func writeHostFiles(dir string, pod *corev1.Pod, podIP string, dns DNSConfig) error {
	files := map[string][]byte{
		"etc-hosts":   hostsFile(pod, podIP, dns.ClusterDomain),
		"resolv.conf": resolvConf(pod, dns),
		"hostname":    []byte(hostname(pod) + "\n"),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
