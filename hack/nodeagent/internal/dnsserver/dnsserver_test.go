package dnsserver

import (
	"net"
	"sort"
	"testing"

	"github.com/miekg/dns"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	"k8s.io/client-go/tools/cache"
	"k8s.io/utils/ptr"
)

func fixture(t *testing.T) *Server {
	t.Helper()
	svcIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	epIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	add := func(idx cache.Indexer, o interface{}) {
		if err := idx.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	add(svcIdx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "prod"},
		Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.20", ClusterIPs: []string{"10.96.0.20"},
			Ports: []corev1.ServicePort{{Name: "http", Protocol: corev1.ProtocolTCP, Port: 80}}}})
	add(svcIdx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "filter", Namespace: "prod"},
		Spec: corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone,
			Ports: []corev1.ServicePort{{Name: "grpc", Protocol: corev1.ProtocolTCP, Port: 50051}}}})
	add(svcIdx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "ext", Namespace: "prod"},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeExternalName, ExternalName: "mail.example.org"}})
	add(epIdx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "filter-abc", Namespace: "prod", Labels: map[string]string{discoveryv1.LabelServiceName: "filter"}},
		Ports:      []discoveryv1.EndpointPort{{Name: ptr.To("grpc"), Port: ptr.To(int32(50051))}},
		Endpoints: []discoveryv1.Endpoint{
			{Addresses: []string{"10.244.1.5"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}},
			{Addresses: []string{"10.244.2.7"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(true)}, Hostname: ptr.To("filter-0")},
			{Addresses: []string{"10.244.2.9"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.To(false)}},
		},
	})
	return NewFromListers("cluster.local", 5, corev1listers.NewServiceLister(svcIdx), discoverylisters.NewEndpointSliceLister(epIdx))
}

func ask(s *Server, name string, t uint16) *dns.Msg {
	m := new(dns.Msg)
	m.SetQuestion(name, t)
	return s.Answer(m)
}

func ips(m *dns.Msg) []string {
	var out []string
	for _, rr := range m.Answer {
		switch r := rr.(type) {
		case *dns.A:
			out = append(out, r.A.String())
		case *dns.AAAA:
			out = append(out, r.AAAA.String())
		}
	}
	sort.Strings(out)
	return out
}

func TestClusterIPService(t *testing.T) {
	s := fixture(t)
	m := ask(s, "web.prod.svc.cluster.local.", dns.TypeA)
	if m.Rcode != dns.RcodeSuccess || len(ips(m)) != 1 || ips(m)[0] != "10.96.0.20" {
		t.Fatalf("A web: %v", m)
	}
	if m.Answer[0].Header().Ttl != 5 {
		t.Fatalf("TTL %d, want 5", m.Answer[0].Header().Ttl)
	}
	// An IPv4-only Service has no AAAA: NOERROR with no answer (not NXDOMAIN, which
	// would make resolvers give up on the A answer).
	m = ask(s, "web.prod.svc.cluster.local.", dns.TypeAAAA)
	if m.Rcode != dns.RcodeSuccess || len(m.Answer) != 0 || len(m.Ns) != 1 {
		t.Fatalf("AAAA web: %v", m)
	}
}

func TestHeadlessServiceReturnsReadyEndpoints(t *testing.T) {
	s := fixture(t)
	got := ips(ask(s, "filter.prod.svc.cluster.local.", dns.TypeA))
	if len(got) != 2 || got[0] != "10.244.1.5" || got[1] != "10.244.2.7" {
		t.Fatalf("headless A = %v, want the two ready endpoints", got)
	}
	if got := ips(ask(s, "filter-0.filter.prod.svc.cluster.local.", dns.TypeA)); len(got) != 1 || got[0] != "10.244.2.7" {
		t.Fatalf("endpoint hostname A = %v", got)
	}
	if got := ips(ask(s, "10-244-1-5.filter.prod.svc.cluster.local.", dns.TypeA)); len(got) != 1 || got[0] != "10.244.1.5" {
		t.Fatalf("dashed endpoint A = %v", got)
	}
	if m := ask(s, "10-244-2-9.filter.prod.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("a not-ready endpoint must not resolve: %v", m)
	}
}

func TestSRVForNamedPorts(t *testing.T) {
	s := fixture(t)
	m := ask(s, "_grpc._tcp.filter.prod.svc.cluster.local.", dns.TypeSRV)
	if len(m.Answer) != 2 {
		t.Fatalf("SRV: %v", m)
	}
	for _, rr := range m.Answer {
		srv := rr.(*dns.SRV)
		if srv.Port != 50051 {
			t.Fatalf("SRV port %d", srv.Port)
		}
	}
	m = ask(s, "_http._tcp.web.prod.svc.cluster.local.", dns.TypeSRV)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.SRV).Target != "web.prod.svc.cluster.local." {
		t.Fatalf("ClusterIP SRV: %v", m)
	}
}

func TestPodExternalNameUnknownAndOutside(t *testing.T) {
	s := fixture(t)
	if got := ips(ask(s, "10-244-1-5.prod.pod.cluster.local.", dns.TypeA)); len(got) != 1 || !net.ParseIP(got[0]).Equal(net.ParseIP("10.244.1.5")) {
		t.Fatalf("pod A = %v", got)
	}
	m := ask(s, "ext.prod.svc.cluster.local.", dns.TypeA)
	if len(m.Answer) != 1 || m.Answer[0].(*dns.CNAME).Target != "mail.example.org." {
		t.Fatalf("ExternalName: %v", m)
	}
	if m := ask(s, "nope.prod.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeNameError || len(m.Ns) != 1 {
		t.Fatalf("unknown service: %v", m)
	}
	if m := ask(s, "web.prod.svc.cluster.local.prod.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeNameError {
		t.Fatalf("search-list expansion must be NXDOMAIN: %v", m)
	}
	if m := ask(s, "pypi.org.", dns.TypeA); m.Rcode != dns.RcodeRefused {
		t.Fatalf("outside the zone must be REFUSED: %v", m)
	}
	if m := ask(s, "prod.svc.cluster.local.", dns.TypeA); m.Rcode != dns.RcodeSuccess {
		t.Fatalf("a namespace with Services is an empty non-terminal: %v", m)
	}
}
