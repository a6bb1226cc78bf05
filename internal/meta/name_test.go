package meta

import (
	"net/netip"
	"testing"
)

const (
	tcp  = 6
	udp  = 17
	sctp = 132
)

func TestName(t *testing.T) {
	s := loadCluster(t)
	tests := []struct {
		name  string
		addr  string
		port  uint16
		proto uint8
		kind  Kind
		want  string // Name.String()
	}{
		{"service clusterIP", "10.96.183.43", 80, tcp, KindService, "default/hostnames:80/TCP"},
		{"service clusterIP, any protocol", "10.96.183.43", 80, 0, KindService, "default/hostnames:80/TCP"},
		{"service clusterIP, other port", "10.96.183.43", 81, tcp, KindService, "default/hostnames (not a service port)"},
		{"service clusterIP, wrong protocol", "10.96.183.43", 80, udp, KindService, "default/hostnames (not a service port)"},
		{"service clusterIP, no port", "10.96.183.43", 0, 0, KindService, "default/hostnames"},
		{"service IPv6 clusterIP", "fd00:10:96::7a", 443, udp, KindService, "shop/frontend:443/UDP"},
		{"service IPv4-mapped", "::ffff:10.96.0.1", 443, tcp, KindService, "default/kubernetes:443/TCP"},
		{"external IP", "198.51.100.10", 80, tcp, KindService, "shop/frontend:80/TCP (external IP)"},
		{"load balancer IP", "203.0.113.25", 80, tcp, KindService, "shop/frontend:80/TCP (load balancer IP)"},
		{"node port on a node", "10.130.29.81", 31380, tcp, KindService, "shop/frontend:31380/TCP (node port on node01)"},
		{"node port on a node's IPv6", "fd00:10:130::81", 31443, udp, KindService, "shop/frontend:31443/UDP (node port on node01)"},
		{"node port on loopback", "127.0.0.1", 31380, tcp, KindService, "shop/frontend:31380/TCP (node port)"},
		{"loopback, not a node port", "127.0.0.1", 8080, tcp, KindUnknown, "unknown"},
		{"pod", "10.244.10.238", 9376, tcp, KindPod, "pod default/hostnames-dd4cc9dd9-5k42b"},
		{"pod, ephemeral port", "10.244.10.238", 41234, tcp, KindPod, "pod default/hostnames-dd4cc9dd9-5k42b"},
		{"pod IPv6 named port", "fd00:10:244:20::5", 8080, tcp, KindPod, "pod shop/frontend-6c8f9b7d4-m2x7q"},
		{"terminating pod", "10.244.10.9", 8080, tcp, KindPod, "pod shop/frontend-6c8f9b7d4-wq4lz (terminating)"},
		{"deleted pod", "10.244.10.237", 9376, tcp, KindPod,
			"pod default/hostnames-dd4cc9dd9-8vx2c (deleted 2m ago; was an endpoint of default/hostnames until 2025-06-01T11:58:00Z)"},
		{"running pod wins over completed", "10.244.20.99", 0, 0, KindPod, "pod shop/debug"},
		{"node", "10.130.29.81", 22, tcp, KindNode, "node node01"},
		{"node external IP", "192.0.2.81", 0, 0, KindNode, "node node01"},
		{"node not ready", "10.130.29.82", 10250, tcp, KindNode, "node node02 (not ready)"},
		{"host-network pod port", "10.130.29.81", 9100, tcp, KindPod, "pod monitoring/node-exporter-7xk2p (host network)"},
		{"host-network pod, other port", "10.130.29.81", 9101, tcp, KindNode, "node node01"},
		{"host port of a pod", "10.130.29.82", 80, tcp, KindPod, "pod ingress/ingress-controller-5b9d8 (host port)"},
		{"bare endpoint on a node (API server)", "10.130.29.80", 6443, tcp, KindEndpoint, "endpoint of default/kubernetes:https (node controlplane)"},
		{"control-plane node, other port", "10.130.29.80", 22, tcp, KindNode, "node controlplane"},
		{"unknown", "192.0.2.200", 80, tcp, KindUnknown, "unknown"},
		{"unknown IPv6", "2001:db8::1", 80, sctp, KindUnknown, "unknown"},
		{"invalid address", "", 0, 0, KindUnknown, "unknown"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var a netip.Addr
			if tt.addr != "" {
				a = addr(tt.addr)
			}
			n := s.Name(a, tt.port, tt.proto)
			if n.Kind != tt.kind || n.String() != tt.want {
				t.Errorf("Name(%s, %d, %d) = %s %q, want %s %q", tt.addr, tt.port, tt.proto, n.Kind, n, tt.kind, tt.want)
			}
		})
	}
}

func TestNameFields(t *testing.T) {
	s := loadCluster(t)
	n := s.Name(addr("10.244.20.5"), 8443, udp)
	want := Name{Kind: KindPod, Namespace: "shop", Name: "frontend-6c8f9b7d4-m2x7q", Port: 8443, PortName: "quic", Proto: ProtoUDP, Node: "node02"}
	if n != want {
		t.Errorf("container port name = %+v, want %+v", n, want)
	}
	n = s.Name(addr("10.96.120.7"), 80, tcp)
	want = Name{Kind: KindService, Namespace: "shop", Name: "frontend", Port: 80, PortName: "http", Proto: ProtoTCP}
	if n != want {
		t.Errorf("service port name = %+v, want %+v", n, want)
	}
	if d := s.Name(addr("10.244.10.237"), 0, 0); !d.GoneAt.Equal(fixedClock().Add(-2*60e9)) || !d.Known() {
		t.Errorf("deleted pod GoneAt = %v", d.GoneAt)
	}
	if (Name{}).Known() || (Name{}).String() != "unknown" {
		t.Error("zero Name is known")
	}
}

func TestNameDoesNotAllocate(t *testing.T) {
	s := loadCluster(t)
	cases := []struct {
		a     netip.Addr
		port  uint16
		proto uint8
	}{
		{addr("10.96.183.43"), 80, tcp},
		{addr("10.96.183.43"), 81, tcp},
		{addr("10.244.10.238"), 9376, tcp},
		{addr("10.244.10.237"), 9376, tcp},
		{addr("10.130.29.81"), 31380, tcp},
		{addr("127.0.0.1"), 31380, 0},
		{addr("fd00:10:244:20::5"), 8080, tcp},
		{addr("192.0.2.200"), 80, tcp},
	}
	for _, c := range cases {
		if n := testing.AllocsPerRun(100, func() { _ = s.Name(c.a, c.port, c.proto) }); n != 0 {
			t.Errorf("Name(%v, %d, %d) allocates %v times", c.a, c.port, c.proto, n)
		}
	}
}

func TestNameHostNetworkEndpoint(t *testing.T) {
	// A host-network pod that declares no ports, behind a Service: its node address on the
	// endpoint port names the pod, on other ports the node.
	pod := newPod("kube-system", "metrics-hn", "node01", "10.130.29.81")
	pod.Spec.HostNetwork = true
	s := NewSnapshot(
		newNode("node01", "10.130.29.81"),
		pod,
		newService("kube-system", "metrics", "10.96.9.9", 443, 10250),
		newSlice("kube-system", "metrics-1", "metrics", 10250,
			sliceEndpoint{ip: "10.130.29.81", pod: "metrics-hn", node: "node01", ready: true}),
	)
	if n := s.Name(addr("10.130.29.81"), 10250, tcp); n.String() != "pod kube-system/metrics-hn (host network)" {
		t.Errorf("endpoint port: %v", n)
	}
	if n := s.Name(addr("10.130.29.81"), 22, tcp); n.String() != "node node01" {
		t.Errorf("other port: %v", n)
	}
	st := s.EndpointState(mustService(t, s, "kube-system", "metrics"), addr("10.130.29.81"), 10250, tcp)
	if st.Verdict != VerdictReady || st.Node == nil || st.Node.Name != "node01" {
		t.Errorf("state = %+v", st)
	}
}

func TestNameConcurrent(t *testing.T) {
	s := loadCluster(t)
	done := make(chan struct{})
	for range 4 {
		go func() {
			defer func() { done <- struct{}{} }()
			for range 1000 {
				if n := s.Name(addr("10.96.183.43"), 80, tcp); n.Name != "hostnames" {
					t.Errorf("Name = %v", n)
					return
				}
				_ = s.EndpointState(nil, addr("10.244.10.238"), 0, 0)
			}
		}()
	}
	for range 4 {
		<-done
	}
}
