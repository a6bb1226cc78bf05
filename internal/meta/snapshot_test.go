package meta

import (
	"errors"
	"net/netip"
	"reflect"
	"slices"
	"testing"

	corev1 "k8s.io/api/core/v1"
)

func TestServiceFields(t *testing.T) {
	s := loadCluster(t)

	t.Run("seed story hostnames", func(t *testing.T) {
		svc := mustService(t, s, "default", "hostnames")
		if !slices.Equal(svc.ClusterIPs, []netip.Addr{addr("10.96.183.43")}) || svc.Headless || !svc.Selector {
			t.Errorf("clusterIPs %v headless %v selector %v", svc.ClusterIPs, svc.Headless, svc.Selector)
		}
		if len(svc.Ports) != 1 {
			t.Fatalf("ports = %+v", svc.Ports)
		}
		p := svc.Ports[0]
		if p.Port != 80 || p.Protocol != ProtoTCP || p.TargetPort.IntValue() != 9376 || !slices.Equal(p.TargetPorts, []uint16{9376}) {
			t.Errorf("port = %+v", p)
		}
		want := []Endpoint{{
			Addr: addr("10.244.10.238"), Ports: []EndpointPort{{Port: 9376, Protocol: ProtoTCP}},
			Ready: true, Serving: true, NodeName: "node01",
			PodRef: ObjectRef{"default", "hostnames-dd4cc9dd9-5k42b"}, Slice: "hostnames-x7k2p",
		}}
		if !reflect.DeepEqual(svc.Endpoints, want) {
			t.Errorf("endpoints = %+v\nwant %+v", svc.Endpoints, want)
		}
		if len(svc.FormerEndpoints) != 1 || svc.FormerEndpoints[0].Addr != addr("10.244.10.237") ||
			!svc.FormerEndpoints[0].Until.Equal(fixedClock().Add(-2*60e9)) {
			t.Errorf("former endpoints = %+v", svc.FormerEndpoints)
		}
	})

	t.Run("headless", func(t *testing.T) {
		svc := mustService(t, s, "db", "postgres")
		if !svc.Headless || len(svc.ClusterIPs) != 0 || len(svc.Endpoints) != 1 {
			t.Errorf("headless %v clusterIPs %v endpoints %+v", svc.Headless, svc.ClusterIPs, svc.Endpoints)
		}
		if svc.Ports[0].Protocol != ProtoTCP {
			t.Errorf("protocol defaults to TCP, got %v", svc.Ports[0].Protocol)
		}
	})

	t.Run("selector-less default/kubernetes", func(t *testing.T) {
		svc := mustService(t, s, "default", "kubernetes")
		if svc.Selector || svc.SelectorLabels != nil {
			t.Errorf("selector %v %v", svc.Selector, svc.SelectorLabels)
		}
		if len(svc.Endpoints) != 1 || svc.Endpoints[0].Addr != addr("10.130.29.80") ||
			!slices.Equal(svc.Endpoints[0].Ports, []EndpointPort{{Name: "https", Port: 6443, Protocol: ProtoTCP}}) {
			t.Errorf("endpoints = %+v", svc.Endpoints)
		}
	})

	t.Run("dual-stack load balancer", func(t *testing.T) {
		svc := mustService(t, s, "shop", "frontend")
		if svc.Type != corev1.ServiceTypeLoadBalancer || svc.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
			svc.HealthCheckNodePort != 32145 {
			t.Errorf("type %v etp %v hc %d", svc.Type, svc.ExternalTrafficPolicy, svc.HealthCheckNodePort)
		}
		if !slices.Equal(svc.ClusterIPs, []netip.Addr{addr("10.96.120.7"), addr("fd00:10:96::7a")}) {
			t.Errorf("clusterIPs = %v", svc.ClusterIPs)
		}
		if !slices.Equal(svc.LoadBalancerIPs, []netip.Addr{addr("203.0.113.25")}) ||
			!slices.Equal(svc.ExternalIPs, []netip.Addr{addr("198.51.100.10")}) {
			t.Errorf("lb %v external %v", svc.LoadBalancerIPs, svc.ExternalIPs)
		}
		http := svc.Ports[0]
		if http.TargetPort.StrVal != "http" || !slices.Equal(http.TargetPorts, []uint16{8080}) || http.NodePort != 31380 {
			t.Errorf("named target port not resolved: %+v", http)
		}
		var addrs []string
		for _, ep := range svc.Endpoints {
			addrs = append(addrs, ep.Addr.String())
		}
		if want := []string{"10.244.10.9", "10.244.20.5", "fd00:10:244:20::5"}; !slices.Equal(addrs, want) {
			t.Errorf("endpoint addresses %q, want %q", addrs, want)
		}
		term := svc.Endpoints[0]
		if term.Ready || !term.Serving || !term.Terminating || term.Zone != "zone-a" {
			t.Errorf("terminating endpoint = %+v", term)
		}
		if ep := svc.Endpoints[2]; !ep.Ready || ep.PodRef.Name != "frontend-6c8f9b7d4-m2x7q" {
			t.Errorf("IPv6 endpoint = %+v", ep)
		}
	})
}

func TestUnknownService(t *testing.T) {
	s := loadCluster(t)
	tests := []struct {
		ns, name string
		want     string
	}{
		{"default", "hostname", "service default/hostname not found; did you mean default/hostnames?"},
		{"default", "HostNames", "service default/HostNames not found; did you mean default/hostnames?"},
		{"prod", "frontend", "service prod/frontend not found; did you mean shop/frontend?"},
		{"shop", "frontnd", "service shop/frontnd not found; did you mean shop/frontend?"},
		{"default", "kube", "service default/kube not found; did you mean default/kubernetes?"},
		{"default", "zzz", "service default/zzz not found"},
	}
	for _, tt := range tests {
		svc, err := s.Service(tt.ns, tt.name)
		if svc != nil || !errors.Is(err, ErrUnknownService) {
			t.Errorf("Service(%s, %s) = %v, %v; want ErrUnknownService", tt.ns, tt.name, svc, err)
			continue
		}
		if err.Error() != tt.want {
			t.Errorf("Service(%s, %s) error %q, want %q", tt.ns, tt.name, err, tt.want)
		}
	}
	var use *UnknownServiceError
	if _, err := s.Service("default", "hostname"); !errors.As(err, &use) || !slices.Equal(use.Suggestions, []string{"default/hostnames"}) {
		t.Errorf("errors.As: %+v", use)
	}
	// An empty namespace means "default", as for kubectl.
	if _, err := s.Service("", "hostnames"); err != nil {
		t.Error(err)
	}
}

func TestUnknownServiceSeveralSuggestions(t *testing.T) {
	s := NewSnapshot(
		&corev1.Service{ObjectMeta: objMeta("a", "web")},
		&corev1.Service{ObjectMeta: objMeta("a", "web2")},
		&corev1.Service{ObjectMeta: objMeta("b", "webs")},
		&corev1.Service{ObjectMeta: objMeta("c", "webs")},
		&corev1.Service{ObjectMeta: objMeta("d", "webs")},
	)
	_, err := s.Service("a", "webs")
	want := "service a/webs not found; did you mean b/webs, c/webs or d/webs?"
	if err == nil || err.Error() != want {
		t.Errorf("err = %v, want %q", err, want)
	}
}

func TestHelpers(t *testing.T) {
	s := loadCluster(t)
	if n, ok := s.NodeByAddr(addr("fd00:10:130::81")); !ok || n.Name != "node01" || n.Zone != "zone-a" {
		t.Errorf("NodeByAddr IPv6 = %+v, %v", n, ok)
	}
	if n, ok := s.NodeByAddr(addr("::ffff:192.0.2.81")); !ok || n.Name != "node01" {
		t.Errorf("NodeByAddr of an IPv4-mapped external IP = %+v, %v", n, ok)
	}
	if n, _ := s.Node("node02"); n == nil || n.Ready || len(n.PodCIDRs) != 2 {
		t.Errorf("node02 = %+v", n)
	}
	if p, ok := s.PodByAddr(addr("10.244.20.99")); !ok || p.Name != "debug" {
		t.Errorf("a running pod wins over a completed one with the same IP: %+v", p)
	}
	if p, ok := s.PodByAddr(addr("10.244.10.237")); !ok || !p.Deleted || !p.DeletedAt.Equal(fixedClock().Add(-2*60e9)) {
		t.Errorf("deleted pod = %+v", p)
	}
	if p, ok := s.PodByAddr(addr("fd00:10:244:20::5")); !ok || p.Owner != "" || !p.Ready {
		t.Errorf("IPv6 pod = %+v", p)
	}
	if p, _ := s.Pod("default", "hostnames-dd4cc9dd9-5k42b"); p == nil || p.Owner != "ReplicaSet/hostnames-dd4cc9dd9" {
		t.Errorf("pod owner = %+v", p)
	}
	if _, ok := s.PodByAddr(addr("10.130.29.81")); ok {
		t.Error("a host-network pod was found by its node's address")
	}
	if got := len(s.DeletedPods()); got != 1 {
		t.Errorf("%d deleted pods, want 1", got)
	}
	if !s.Time().Equal(fixedClock()) {
		t.Errorf("Time = %v", s.Time())
	}
}
