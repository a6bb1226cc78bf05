package kube

import (
	"context"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/svctrace/svctrace/internal/meta"
)

func ptr[T any](v T) *T { return &v }

func service() *corev1.Service {
	return &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "hostnames",
			Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{}"}},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"},
			Selector: map[string]string{"app": "hostnames"},
			Ports:    []corev1.ServicePort{{Name: "default", Port: 80, Protocol: corev1.ProtocolTCP, TargetPort: intstr.FromInt32(9376)}},
		},
	}
}

func slice(ip, pod string) *discoveryv1.EndpointSlice {
	return &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "hostnames-abcde",
			Labels: map[string]string{discoveryv1.LabelServiceName: "hostnames"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints: []discoveryv1.Endpoint{{
			Addresses:  []string{ip},
			Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)},
			NodeName:   ptr("node1"),
			TargetRef:  &corev1.ObjectReference{Kind: "Pod", Namespace: "default", Name: pod},
		}},
		Ports: []discoveryv1.EndpointPort{{Name: ptr("default"), Port: ptr[int32](9376), Protocol: ptr(corev1.ProtocolTCP)}},
	}
}

func pod(ns, name, ip string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name),
			Labels:          map[string]string{"app": "hostnames"},
			Annotations:     map[string]string{"big": strings.Repeat("x", 4096)},
			ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubelet"}},
			OwnerReferences: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "hostnames-dd4cc9dd9", Controller: ptr(true)}}},
		Spec: corev1.PodSpec{
			NodeName: "node1",
			Containers: []corev1.Container{
				{Name: "app", Image: "serve_hostname", Env: []corev1.EnvVar{{Name: "A", Value: "b"}},
					Ports: []corev1.ContainerPort{{ContainerPort: 9376, Protocol: corev1.ProtocolTCP}}},
				{Name: "sidecar", Image: "proxy"},
			},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}, HostIP: "192.168.50.11",
			Conditions: []corev1.PodCondition{
				{Type: corev1.PodScheduled, Status: corev1.ConditionTrue},
				{Type: corev1.PodReady, Status: corev1.ConditionTrue, Message: "ok"},
			},
		},
	}
}

func node() *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node1", Labels: map[string]string{
			corev1.LabelTopologyZone: "z1", "kubernetes.io/hostname": "node1"}},
		Spec: corev1.NodeSpec{PodCIDR: "10.244.1.0/24", PodCIDRs: []string{"10.244.1.0/24"}},
		Status: corev1.NodeStatus{
			Addresses:  []corev1.NodeAddress{{Type: corev1.NodeInternalIP, Address: "192.168.50.11"}},
			Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionTrue}},
			Images:     []corev1.ContainerImage{{Names: []string{"a"}, SizeBytes: 1}},
		},
	}
}

func start(t *testing.T, c kubernetes.Interface, opts Options) *Source {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	if opts.Debounce == 0 {
		opts.Debounce = 20 * time.Millisecond
	}
	s, err := Start(ctx, c, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

// next waits for an update satisfying ok.
func next(t *testing.T, s *Source, what string, ok func(*meta.Snapshot) bool) *meta.Snapshot {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		select {
		case snap, open := <-s.Updates():
			if !open {
				t.Fatalf("updates closed while waiting for %s", what)
			}
			if ok(snap) {
				return snap
			}
		case <-deadline:
			t.Fatalf("no update with %s", what)
		}
	}
}

func TestSourceFollowsTheCluster(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(service(), slice("10.244.1.5", "hostnames-a"), pod("default", "hostnames-a", "10.244.1.5"),
		pod("other", "client", "10.244.1.2"), node())
	var now atomic.Int64
	now.Store(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC).UnixNano())
	clock := func() time.Time { return time.Unix(0, now.Load()) }
	s := start(t, c, Options{Namespace: "default", Now: clock})

	snap, err := s.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	svc, err := snap.Service("default", "hostnames")
	if err != nil {
		t.Fatal(err)
	}
	if len(svc.Endpoints) != 1 || svc.Endpoints[0].Addr != netip.MustParseAddr("10.244.1.5") {
		t.Fatalf("endpoints %+v", svc.Endpoints)
	}
	if p, ok := snap.PodByAddr(netip.MustParseAddr("10.244.1.2")); !ok || p.String() != "other/client" {
		t.Errorf("a client in another namespace is not named: %v", p)
	}
	if n, ok := snap.NodeByAddr(netip.MustParseAddr("192.168.50.11")); !ok || n.Name != "node1" || n.Zone != "z1" {
		t.Errorf("node %+v", n)
	}

	// Replace the backend: new pod, slice updated, old pod deleted.
	now.Add(int64(time.Minute))
	if _, err := c.CoreV1().Pods("default").Create(ctx, pod("default", "hostnames-b", "10.244.1.6"), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	sl := slice("10.244.1.6", "hostnames-b")
	sl.ResourceVersion = "2"
	if _, err := c.DiscoveryV1().EndpointSlices("default").Update(ctx, sl, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := c.CoreV1().Pods("default").Delete(ctx, "hostnames-a", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	snap = next(t, s, "the old pod deleted", func(s *meta.Snapshot) bool {
		p, ok := s.PodByAddr(netip.MustParseAddr("10.244.1.5"))
		return ok && p.Deleted
	})
	svc, _ = snap.Service("default", "hostnames")
	if len(svc.Endpoints) != 1 || svc.Endpoints[0].Addr != netip.MustParseAddr("10.244.1.6") {
		t.Errorf("endpoints %+v", svc.Endpoints)
	}
	if len(svc.FormerEndpoints) != 1 || svc.FormerEndpoints[0].Addr != netip.MustParseAddr("10.244.1.5") {
		t.Errorf("former endpoints %+v", svc.FormerEndpoints)
	}
	old, _ := snap.PodByAddr(netip.MustParseAddr("10.244.1.5"))
	if !old.DeletedAt.Equal(clock()) {
		t.Errorf("deleted at %v, want the time the deletion was seen (%v)", old.DeletedAt, clock())
	}
	now.Add(int64(2 * time.Minute))
	st := snap.EndpointState(svc, netip.MustParseAddr("10.244.1.5"), 9376, uint8(meta.ProtoTCP))
	if st.Ready || !strings.Contains(st.Detail, "deleted") {
		t.Errorf("endpoint state of the old address: %+v", st)
	}
	if got, _ := s.Snapshot(ctx); got != snap {
		t.Error("Snapshot does not return the latest update")
	}
}

func TestSourceDebounces(t *testing.T) {
	ctx := context.Background()
	c := fake.NewClientset(service(), node())
	s := start(t, c, Options{Namespace: "default", Debounce: 200 * time.Millisecond})
	for i := range 50 {
		ip := netip.AddrFrom4([4]byte{10, 244, 2, byte(i + 1)}).String()
		if _, err := c.CoreV1().Pods("default").Create(ctx, pod("default", "p"+ip, ip), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	updates := 0
	deadline := time.After(10 * time.Second)
	for {
		select {
		case snap := <-s.Updates():
			updates++
			if len(snap.Pods()) == 50 {
				if updates > 3 {
					t.Errorf("%d snapshots for one burst of 50 pods", updates)
				}
				return
			}
		case <-deadline:
			t.Fatalf("never saw the 50 pods (%d updates)", updates)
		}
	}
}

func TestSourceUpdatesClosedOnCancel(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	s, err := Start(ctx, fake.NewClientset(), Options{})
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case _, open := <-s.Updates():
		if open {
			t.Error("an update after cancel")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("updates not closed after the context ended")
	}
	s.Close()
}

func TestSlimKeepsWhatMetaReads(t *testing.T) {
	full := pod("default", "hostnames-a", "10.244.1.5")
	slimmed, err := slim(full.DeepCopy())
	if err != nil {
		t.Fatal(err)
	}
	sp := slimmed.(*corev1.Pod)
	if sp.Annotations != nil || sp.ManagedFields != nil || sp.Spec.Containers[0].Env != nil || len(sp.Spec.Containers) != 1 ||
		len(sp.Status.Conditions) != 1 {
		t.Errorf("not slimmed: %+v", sp)
	}
	a, b := meta.NewSnapshot(full), meta.NewSnapshot(sp)
	pa, _ := a.Pod("default", "hostnames-a")
	pb, _ := b.Pod("default", "hostnames-a")
	if pa.Owner != pb.Owner || pa.Ready != pb.Ready || len(pa.Ports) != len(pb.Ports) || pa.IPs[0] != pb.IPs[0] ||
		pa.HostIPs[0] != pb.HostIPs[0] || pa.Labels["app"] != pb.Labels["app"] || pa.NodeName != pb.NodeName {
		t.Errorf("slim changed what meta sees:\n%+v\n%+v", pa, pb)
	}
	n, _ := slim(node())
	sn := n.(*corev1.Node)
	if sn.Status.Images != nil || len(sn.Labels) != 1 || sn.Status.Addresses[0].Address != "192.168.50.11" {
		t.Errorf("node not slimmed right: %+v", sn)
	}
	if o, _ := slim("other"); o != "other" {
		t.Error("other objects must pass unchanged")
	}
}

func TestStartForbidden(t *testing.T) {
	c := fake.NewClientset()
	c.PrependReactor("list", "pods", func(k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods"}, "",
			errors.New(`User "system:serviceaccount:svctrace:svctrace" cannot list resource "pods"`))
	})
	_, err := Start(context.Background(), c, Options{})
	if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), "deploy/rbac.yaml") {
		t.Errorf("err = %v, want ErrForbidden with the RBAC hint", err)
	}
}

func clientFor(t *testing.T, host string) kubernetes.Interface {
	t.Helper()
	c, err := kubernetes.NewForConfig(&rest.Config{Host: host})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestStartUnreachable(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	host := "http://" + ln.Addr().String()
	ln.Close() // nothing listens there now

	begin := time.Now()
	_, err = Start(context.Background(), clientFor(t, host), Options{Server: host})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("err = %v, want ErrUnreachable: connection refused", err)
	}
	if strings.Contains(err.Error(), "\n") || strings.Contains(err.Error(), "/api/v1") {
		t.Errorf("want one short line, got %q", err)
	}
	if d := time.Since(begin); d > 2*time.Second {
		t.Errorf("a refused connection took %s", d)
	}

	// A server that never answers: bounded by StartTimeout.
	hang := httptest.NewServer(http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) { <-r.Context().Done() }))
	defer hang.Close()
	begin = time.Now()
	_, err = Start(context.Background(), clientFor(t, hang.URL), Options{Server: hang.URL, StartTimeout: 300 * time.Millisecond})
	if !errors.Is(err, ErrUnreachable) || !strings.Contains(err.Error(), "no answer within 300ms") {
		t.Errorf("err = %v, want ErrUnreachable: no answer", err)
	}
	if d := time.Since(begin); d > 3*time.Second {
		t.Errorf("StartTimeout not honoured: %s", d)
	}
}

// TestMonitorWarnsOncePerOutage drives the health monitor with list/watch
// failures while the API server is "down", then "back".
func TestMonitorWarnsOncePerOutage(t *testing.T) {
	c := fake.NewClientset()
	var down atomic.Bool
	c.PrependReactor("list", "services", func(k8stesting.Action) (bool, runtime.Object, error) {
		if down.Load() {
			return true, nil, &net.OpError{Op: "dial", Net: "tcp", Err: errors.New("connect: connection refused")}
		}
		return false, nil, nil
	})
	var mu sync.Mutex
	var notes []string
	s := start(t, c, Options{PollInterval: 20 * time.Millisecond, Notify: func(m string) {
		mu.Lock()
		notes = append(notes, m)
		mu.Unlock()
	}})
	got := func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), notes...)
	}
	waitNotes := func(n int) []string {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for len(got()) < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
		return got()
	}

	// A routine error while the server answers: nothing to say.
	s.watchErr <- errors.New("very short watch")
	time.Sleep(100 * time.Millisecond)
	if n := got(); len(n) != 0 {
		t.Fatalf("notice for a passing error: %q", n)
	}

	down.Store(true)
	for range 5 {
		select {
		case s.watchErr <- errors.New("connection refused"):
		default:
		}
		time.Sleep(20 * time.Millisecond)
	}
	n := waitNotes(1)
	if len(n) != 1 || !strings.Contains(n[0], "lost contact") {
		t.Fatalf("notices %q, want one 'lost contact'", n)
	}
	down.Store(false)
	n = waitNotes(2)
	if len(n) != 2 || !strings.Contains(n[1], "answers again") {
		t.Fatalf("notices %q, want 'answers again' second", n)
	}
}
