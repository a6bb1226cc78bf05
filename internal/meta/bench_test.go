package meta

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// syntheticCluster returns a cluster of nodes × podsPerNode pods, one Service per 10 pods
// (every fourth a NodePort), their EndpointSlices, and deletedPods deleted pods.
func syntheticCluster(nodes, podsPerNode, deletedPods int) []runtime.Object {
	var objs []runtime.Object
	for n := range nodes {
		objs = append(objs, newNode(fmt.Sprintf("node%03d", n), fmt.Sprintf("10.130.%d.%d", n/250, n%250+1)))
	}
	total := nodes * podsPerNode
	podIP := func(i int) string { return fmt.Sprintf("10.%d.%d.%d", 64+i/65536, i/256%256, i%256) }
	for svcIdx := 0; svcIdx*10 < total; svcIdx++ {
		name := fmt.Sprintf("svc-%d", svcIdx)
		svc := newService("bench", name, fmt.Sprintf("10.96.%d.%d", svcIdx/256, svcIdx%256), 80, 8080)
		svc.Spec.Ports = append(svc.Spec.Ports, corev1.ServicePort{Name: "dns", Protocol: corev1.ProtocolUDP, Port: 53})
		svc.Spec.Ports[0].Name = "http"
		if svcIdx%4 == 0 {
			svc.Spec.Type = corev1.ServiceTypeNodePort
			svc.Spec.Ports[0].NodePort = int32(30000 + svcIdx%2700)
		}
		objs = append(objs, svc)
		var eps []sliceEndpoint
		for i := svcIdx * 10; i < svcIdx*10+10 && i < total; i++ {
			node := fmt.Sprintf("node%03d", i%nodes)
			pod := newPod("bench", fmt.Sprintf("%s-%d", name, i), node, podIP(i))
			pod.Spec.Containers = []corev1.Container{{Name: "c", Ports: []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}}}}
			objs = append(objs, pod)
			eps = append(eps, sliceEndpoint{ip: podIP(i), pod: pod.Name, node: node, ready: i%7 != 0, terminating: i%13 == 0})
		}
		objs = append(objs, newSlice("bench", name+"-abcde", name, 8080, eps...))
	}
	for i := range deletedPods {
		p := newPod("bench", fmt.Sprintf("gone-%d", i), "node000", podIP(total+i))
		MarkDeleted(p, time.Date(2025, 6, 1, 11, 55, 0, 0, time.UTC))
		objs = append(objs, p)
	}
	return objs
}

func syntheticSnapshot(tb testing.TB, nodes, podsPerNode, deletedPods int) *Snapshot {
	tb.Helper()
	b := &Builder{Now: fixedClock}
	for _, o := range syntheticCluster(nodes, podsPerNode, deletedPods) {
		var err error
		if o.(interface{ GetAnnotations() map[string]string }).GetAnnotations()[AnnotationDeletedAt] != "" {
			err = b.Delete(o, fixedClock().Add(-5*time.Minute))
		} else {
			err = b.Upsert(o)
		}
		if err != nil {
			tb.Fatal(err)
		}
	}
	return b.Build()
}

// BenchmarkName measures the hot-path lookup on a 200-node, 20 000-pod, 2 000-service cluster.
func BenchmarkName(b *testing.B) {
	s := syntheticSnapshot(b, 200, 100, 500)
	cases := []struct {
		name  string
		addr  netip.Addr
		port  uint16
		proto uint8
		want  Kind
	}{
		{"service", addr("10.96.3.7"), 80, tcp, KindService},
		{"service-other-port", addr("10.96.3.7"), 81, tcp, KindService},
		{"pod-port", addr("10.64.20.5"), 8080, tcp, KindPod},
		{"pod-ephemeral", addr("10.64.20.5"), 45678, tcp, KindPod},
		{"pod-ipv4-mapped", addr("::ffff:10.64.20.5"), 8080, tcp, KindPod},
		{"deleted-pod", addr("10.64.78.40"), 8080, tcp, KindPod},
		{"node", addr("10.130.0.17"), 22, tcp, KindNode},
		{"node-port", addr("10.130.0.17"), 30000, tcp, KindService},
		{"unknown", addr("192.0.2.1"), 443, tcp, KindUnknown},
		{"unknown-any-proto", addr("192.0.2.1"), 443, 0, KindUnknown},
	}
	for _, c := range cases {
		if got := s.Name(c.addr, c.port, c.proto); got.Kind != c.want {
			b.Fatalf("%s: Name = %v, want kind %s", c.name, got, c.want)
		}
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				_ = s.Name(c.addr, c.port, c.proto)
			}
		})
	}
	b.Run("mixed", func(b *testing.B) {
		b.ReportAllocs()
		i := 0
		for b.Loop() {
			c := cases[i%len(cases)]
			_ = s.Name(c.addr, c.port, c.proto)
			i++
		}
	})
}

// BenchmarkFilter computes the filter of a 10-endpoint NodePort service and of a
// 1 000-endpoint one.
func BenchmarkFilter(b *testing.B) {
	s := syntheticSnapshot(b, 200, 100, 0)
	small := mustService(b, s, "bench", "svc-4")

	var objs []runtime.Object
	big := newService("bench", "big", "10.96.200.1", 80, 8080)
	big.Spec.Type = corev1.ServiceTypeLoadBalancer
	big.Spec.Ports[0].NodePort = 31000
	big.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.1"}}
	objs = append(objs, big)
	for sl := range 10 {
		var eps []sliceEndpoint
		for i := range 100 {
			eps = append(eps, sliceEndpoint{ip: fmt.Sprintf("10.70.%d.%d", sl, i), ready: true})
		}
		objs = append(objs, newSlice("bench", fmt.Sprintf("big-%d", sl), "big", 8080, eps...))
	}
	bs := NewSnapshot(objs...)
	large := mustService(b, bs, "bench", "big")
	if n := len(bs.Filter(large).Entries); n != 1003 {
		b.Fatalf("big filter has %d entries, want 1003", n)
	}

	b.Run("10-endpoints", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = s.Filter(small)
		}
	})
	b.Run("1000-endpoints", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			_ = bs.Filter(large)
		}
	})
}

// BenchmarkBuild measures a full rebuild, what an informer source pays per batch of changes,
// for a 20-node, 2 000-pod cluster.
func BenchmarkBuild(b *testing.B) {
	bl := &Builder{Now: fixedClock}
	for _, o := range syntheticCluster(20, 100, 50) {
		_ = bl.Upsert(o)
	}
	b.ReportAllocs()
	for b.Loop() {
		_ = bl.Build()
	}
}
