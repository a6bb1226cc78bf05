package meta

import (
	"errors"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
)

func ptrTo[T any](v T) *T { return &v }

func objMeta(ns, name string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(ns + "-" + name + "-uid")}
}

func newService(ns, name, clusterIP string, port, target int32) *corev1.Service {
	return &corev1.Service{
		ObjectMeta: objMeta(ns, name),
		Spec: corev1.ServiceSpec{
			Type:      corev1.ServiceTypeClusterIP,
			ClusterIP: clusterIP, ClusterIPs: []string{clusterIP},
			Selector: map[string]string{"app": name},
			Ports:    []corev1.ServicePort{{Protocol: corev1.ProtocolTCP, Port: port, TargetPort: intstr.FromInt32(target)}},
		},
	}
}

func newPod(ns, name, node, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: objMeta(ns, name),
		Spec:       corev1.PodSpec{NodeName: node},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
}

func newNode(name, ip string) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name},
		Status:     corev1.NodeStatus{Addresses: []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: ip}}},
	}
}

type sliceEndpoint struct {
	ip, pod, node      string
	ready, terminating bool
}

func newSlice(ns, name, svc string, port int32, eps ...sliceEndpoint) *discoveryv1.EndpointSlice {
	sl := &discoveryv1.EndpointSlice{
		ObjectMeta:  objMeta(ns, name),
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: ptrTo(""), Port: ptrTo(port), Protocol: ptrTo(corev1.ProtocolTCP)}},
	}
	sl.Labels = map[string]string{discoveryv1.LabelServiceName: svc}
	for _, e := range eps {
		ep := discoveryv1.Endpoint{
			Addresses: []string{e.ip},
			Conditions: discoveryv1.EndpointConditions{
				Ready: ptrTo(e.ready), Serving: ptrTo(e.ready || e.terminating), Terminating: ptrTo(e.terminating),
			},
			NodeName: ptrTo(e.node),
		}
		if e.pod != "" {
			ep.TargetRef = &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: e.pod}
		}
		sl.Endpoints = append(sl.Endpoints, ep)
	}
	return sl
}

// TestBuilderInformerFlow drives a Builder the way an informer source will.
func TestBuilderInformerFlow(t *testing.T) {
	now := fixedClock()
	b := &Builder{Now: func() time.Time { return now }}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(b.Upsert(newService("default", "hostnames", "10.96.183.43", 80, 9376)))
	must(b.Upsert(newNode("node01", "10.130.29.81")))
	oldPod := newPod("default", "hostnames-old", "node01", "10.244.10.237")
	newP := newPod("default", "hostnames-new", "node01", "10.244.10.238")
	must(b.Upsert(oldPod))
	must(b.Upsert(newP))
	must(b.Upsert(newSlice("default", "hostnames-abc", "hostnames", 9376,
		sliceEndpoint{ip: "10.244.10.237", pod: "hostnames-old", node: "node01", ready: true},
		sliceEndpoint{ip: "10.244.10.238", pod: "hostnames-new", node: "node01", ready: true})))
	first := b.Build()

	// The old pod starts terminating, then goes away and leaves the slice.
	now = now.Add(30 * time.Second)
	term := oldPod.DeepCopy()
	term.DeletionTimestamp = &metav1.Time{Time: now}
	must(b.Upsert(term))
	must(b.Upsert(newSlice("default", "hostnames-abc", "hostnames", 9376,
		sliceEndpoint{ip: "10.244.10.237", pod: "hostnames-old", node: "node01", terminating: true},
		sliceEndpoint{ip: "10.244.10.238", pod: "hostnames-new", node: "node01", ready: true})))
	terminating := b.Build()
	if n := terminating.Name(addr("10.244.10.237"), 9376, 6); n.Detail != "terminating" {
		t.Errorf("terminating pod name = %v", n)
	}
	if st := terminating.EndpointState(mustService(t, terminating, "default", "hostnames"), addr("10.244.10.237"), 9376, 6); st.Verdict != VerdictTerminating {
		t.Errorf("terminating endpoint verdict = %v", st.Verdict)
	}

	now = now.Add(30 * time.Second)
	goneAt := now
	must(b.Delete(term, goneAt))
	must(b.Upsert(newSlice("default", "hostnames-abc", "hostnames", 9376,
		sliceEndpoint{ip: "10.244.10.238", pod: "hostnames-new", node: "node01", ready: true})))
	now = now.Add(3 * time.Minute)
	s := b.Build()

	n := s.Name(addr("10.244.10.237"), 9376, 6)
	wantDetail := "deleted 3m ago; was an endpoint of default/hostnames until 2025-06-01T12:01:00Z"
	if n.Kind != KindPod || n.Name != "hostnames-old" || n.Detail != wantDetail || !n.GoneAt.Equal(goneAt) {
		t.Errorf("deleted pod name = %+v, want detail %q", n, wantDetail)
	}
	svc := mustService(t, s, "default", "hostnames")
	if len(svc.Endpoints) != 1 || len(svc.FormerEndpoints) != 1 || !svc.FormerEndpoints[0].Until.Equal(goneAt) {
		t.Errorf("endpoints %+v former %+v", svc.Endpoints, svc.FormerEndpoints)
	}
	if e, ok := s.Filter(svc).Match(addr("10.244.10.237"), 9376, 6); !ok || e.Role != RoleFormerEndpoint {
		t.Errorf("former endpoint filter entry = %v, %v", e, ok)
	}

	// Earlier snapshots are immutable.
	if n := first.Name(addr("10.244.10.237"), 9376, 6); n.Detail != "" || n.Name != "hostnames-old" {
		t.Errorf("first snapshot changed: %v", n)
	}
	if got := len(mustService(t, first, "default", "hostnames").Endpoints); got != 2 {
		t.Errorf("first snapshot has %d endpoints, want 2", got)
	}

	// After the retention window the pod and the former endpoint are forgotten.
	now = now.Add(DefaultRetention)
	late := b.Build()
	if n := late.Name(addr("10.244.10.237"), 9376, 6); n.Kind != KindUnknown {
		t.Errorf("after retention: %v", n)
	}
	if len(late.DeletedPods()) != 0 || len(mustService(t, late, "default", "hostnames").FormerEndpoints) != 0 {
		t.Error("deleted pod or former endpoint outlived retention")
	}
}

func TestBuilderRetentionAndDeletes(t *testing.T) {
	now := fixedClock()
	b := &Builder{Retention: time.Minute, Now: func() time.Time { return now }}
	p := newPod("ns", "p", "n", "10.0.0.1")
	if err := b.Upsert(p); err != nil {
		t.Fatal(err)
	}
	// The final state from an informer may lack the IP: the live one is used.
	final := p.DeepCopy()
	final.Status.PodIP, final.Status.PodIPs = "", nil
	if err := b.Delete(final, now); err != nil {
		t.Fatal(err)
	}
	now = now.Add(59 * time.Second)
	if n := b.Build().Name(addr("10.0.0.1"), 0, 0); n.Detail != "deleted 59s ago" {
		t.Errorf("name = %v", n)
	}
	now = now.Add(2 * time.Second)
	if n := b.Build().Name(addr("10.0.0.1"), 0, 0); n.Known() {
		t.Errorf("kept past a 1m retention: %v", n)
	}

	// A slice deleted outright retires all its endpoints; a Service delete removes it.
	if err := b.Upsert(newService("ns", "s", "10.96.0.5", 80, 8080)); err != nil {
		t.Fatal(err)
	}
	sl := newSlice("ns", "s-1", "s", 8080, sliceEndpoint{ip: "10.0.0.2", ready: true})
	_ = b.Upsert(sl)
	_ = b.Delete(sl, now)
	s := b.Build()
	if n := s.Name(addr("10.0.0.2"), 8080, 6); n.Kind != KindEndpoint || n.GoneAt.IsZero() {
		t.Errorf("former bare endpoint = %+v", n)
	}
	_ = b.Delete(newService("ns", "s", "10.96.0.5", 80, 8080), now)
	_ = b.Delete(newNode("n", "10.1.1.1"), now)
	if _, err := b.Build().Service("ns", "s"); !errors.Is(err, ErrUnknownService) {
		t.Errorf("deleted service still there: %v", err)
	}
}

func TestBuilderUnsupported(t *testing.T) {
	var b Builder
	d := &appsv1.Deployment{ObjectMeta: objMeta("ns", "d")}
	if err := b.Upsert(d); !errors.Is(err, ErrUnsupportedObject) {
		t.Errorf("Upsert: %v", err)
	}
	if err := b.Delete(d, fixedClock()); !errors.Is(err, ErrUnsupportedObject) {
		t.Errorf("Delete: %v", err)
	}
	s := NewSnapshot(d, newNode("n1", "10.1.1.1"))
	if len(s.Nodes()) != 1 || len(s.Warnings) != 1 || s.Warnings[0] != "ignored 1 apps/v1 Deployment object" {
		t.Errorf("nodes %d warnings %q", len(s.Nodes()), s.Warnings)
	}
}

func TestBuilderWarningsAndDedupe(t *testing.T) {
	bad := newPod("ns", "p", "n", "10.0.0.300")
	noLabel := newSlice("ns", "orphan", "x", 80)
	noLabel.Labels = nil
	svc := newService("ns", "s", "10.96.0.5", 80, 8080)
	// The same address in two slices (during rebalancing) is one endpoint.
	a := newSlice("ns", "s-a", "s", 8080, sliceEndpoint{ip: "10.0.0.7", ready: false, terminating: false})
	b := newSlice("ns", "s-b", "s", 8080, sliceEndpoint{ip: "10.0.0.7", ready: true})
	s := NewSnapshot(bad, noLabel, svc, a, b)
	want := []string{
		"endpointslice ns/orphan: no kubernetes.io/service-name label; ignored",
		`pod ns/p podIP: bad address "10.0.0.300"`,
	}
	if len(s.Warnings) != 2 || s.Warnings[0] != want[0] || s.Warnings[1] != want[1] {
		t.Errorf("warnings = %q, want %q", s.Warnings, want)
	}
	eps := mustService(t, s, "ns", "s").Endpoints
	if len(eps) != 1 || !eps[0].Ready || len(eps[0].Ports) != 1 {
		t.Errorf("endpoints = %+v", eps)
	}
}
