package kube_test

// Tests against a real etcd and kube-apiserver (internal/kubetest; skipped
// with -short).

import (
	"context"
	"errors"
	"net/netip"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/svctrace/svctrace/internal/kube"
	"github.com/svctrace/svctrace/internal/kubetest"
	"github.com/svctrace/svctrace/internal/meta"
)

const ns = "kapi"

func ptr[T any](v T) *T { return &v }

func admin(t *testing.T, s *kubetest.Server) kubernetes.Interface {
	t.Helper()
	c, err := s.Client()
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// notes collects Notify calls.
type notes struct {
	mu   sync.Mutex
	msgs []string
}

func (n *notes) add(m string) {
	n.mu.Lock()
	n.msgs = append(n.msgs, m)
	n.mu.Unlock()
}

// wait returns the notes once one contains want.
func (n *notes) wait(t *testing.T, want string, timeout time.Duration) []string {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		n.mu.Lock()
		msgs := append([]string(nil), n.msgs...)
		n.mu.Unlock()
		for _, m := range msgs {
			if strings.Contains(m, want) {
				return msgs
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no notice with %q after %s; notices: %q", want, timeout, msgs)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func waitSnap(t *testing.T, src *kube.Source, what string, timeout time.Duration, ok func(*meta.Snapshot) bool) *meta.Snapshot {
	t.Helper()
	deadline := time.After(timeout)
	for {
		select {
		case snap, open := <-src.Updates():
			if !open {
				t.Fatalf("updates closed while waiting for %s", what)
			}
			if ok(snap) {
				return snap
			}
		case <-deadline:
			t.Fatalf("no snapshot with %s after %s", what, timeout)
		}
	}
}

var svcPorts = []discoveryv1.EndpointPort{{Name: ptr("default"), Port: ptr[int32](9376), Protocol: ptr(corev1.ProtocolTCP)}}

// startCluster starts the control plane with the test namespace and node1,
// and returns it with an admin client.
func startCluster(t *testing.T) (*kubetest.Server, kubernetes.Interface) {
	t.Helper()
	s := kubetest.StartForTest(t)
	ctx := context.Background()
	c := admin(t, s)
	if err := kubetest.CreateNamespace(ctx, c, ns); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.CreateNode(ctx, c, "node1", "192.168.50.11", "10.244.1.0/24"); err != nil {
		t.Fatal(err)
	}
	return s, c
}

func hostnames(t *testing.T, ctx context.Context, c kubernetes.Interface) *corev1.Service {
	t.Helper()
	svc, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "hostnames"},
		Spec: corev1.ServiceSpec{
			ClusterIP: "10.96.0.10",
			Selector:  map[string]string{"app": "hostnames"},
			Ports:     []corev1.ServicePort{{Name: "default", Port: 80, TargetPort: intstr.FromInt32(9376)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return svc
}

func backend(t *testing.T, ctx context.Context, c kubernetes.Interface, name, ip string) *corev1.Pod {
	t.Helper()
	p, err := kubetest.CreateRunningPod(ctx, c, kubetest.Pod{Namespace: ns, Name: name, Node: "node1", IP: ip, HostIP: "192.168.50.11",
		Labels: map[string]string{"app": "hostnames"}, Owner: "hostnames-dd4cc9dd9",
		Ports: []corev1.ContainerPort{{ContainerPort: 9376, Protocol: corev1.ProtocolTCP}}})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRealAPIServer follows a Service through a backend replacement and an
// API server outage.
func TestRealAPIServer(t *testing.T) {
	s, c := startCluster(t)
	ctx := context.Background()
	svc := hostnames(t, ctx, c)
	podA := backend(t, ctx, c, "hostnames-dd4cc9dd9-aaaaa", "10.244.1.5")
	sl, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, kubetest.EndpointSlice(svc, "hostnames-abcde", svcPorts, podA), metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// A client in another namespace.
	if err := kubetest.CreateNamespace(ctx, c, "clients"); err != nil {
		t.Fatal(err)
	}
	if _, err := kubetest.CreateRunningPod(ctx, c, kubetest.Pod{Namespace: "clients", Name: "curl", Node: "node1", IP: "10.244.1.2", HostIP: "192.168.50.11"}); err != nil {
		t.Fatal(err)
	}

	// A Service without a selector, its endpoints managed by hand (like
	// default/kubernetes).
	api, err := c.CoreV1().Services(ns).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "api"},
		Spec:       corev1.ServiceSpec{ClusterIP: "10.96.0.20", Ports: []corev1.ServicePort{{Name: "https", Port: 443, TargetPort: intstr.FromInt32(6443)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.DiscoveryV1().EndpointSlices(ns).Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Namespace: ns, Name: "api", Labels: map[string]string{discoveryv1.LabelServiceName: api.Name}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.8"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr(true)}}},
		Ports:       []discoveryv1.EndpointPort{{Name: ptr("https"), Port: ptr[int32](6443), Protocol: ptr(corev1.ProtocolTCP)}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	var n notes
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	begin := time.Now()
	src, err := kube.Start(runCtx, admin(t, s), kube.Options{Namespace: ns, Server: s.URL, Notify: n.add, PollInterval: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	t.Logf("source started in %s", time.Since(begin).Round(time.Millisecond))
	snap, _ := src.Snapshot(ctx)
	got, err := snap.Service(ns, "hostnames")
	if err != nil || len(got.Endpoints) != 1 || got.Endpoints[0].PodRef.Name != podA.Name {
		t.Fatalf("service %+v, %v", got, err)
	}
	if p, ok := snap.PodByAddr(netip.MustParseAddr("10.244.1.2")); !ok || p.String() != "clients/curl" {
		t.Errorf("client pod in another namespace: %v %v", p, ok)
	}
	if p, _ := snap.PodByAddr(netip.MustParseAddr("10.244.1.5")); p == nil || p.Owner != "ReplicaSet/hostnames-dd4cc9dd9" {
		t.Errorf("backend pod %+v", p)
	}
	apiSvc, err := snap.Service(ns, "api")
	if err != nil || len(apiSvc.Endpoints) != 1 || apiSvc.Endpoints[0].Addr != netip.MustParseAddr("10.0.0.8") || apiSvc.Selector {
		t.Errorf("selector-less service: %+v, %v", apiSvc, err)
	}
	inFilter := false
	for _, e := range snap.Filter(apiSvc).Entries {
		inFilter = inFilter || (e.Addr == netip.MustParseAddr("10.0.0.8") && e.Port == 6443)
	}
	if !inFilter {
		t.Errorf("the selector-less service's endpoint is not in its filter: %+v", snap.Filter(apiSvc).Entries)
	}

	// Replace the backend.
	podB := backend(t, ctx, c, "hostnames-dd4cc9dd9-bbbbb", "10.244.1.6")
	next := kubetest.EndpointSlice(svc, sl.Name, svcPorts, podB)
	next.ResourceVersion = sl.ResourceVersion
	if sl, err = c.DiscoveryV1().EndpointSlices(ns).Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	if err := kubetest.DeletePod(ctx, c, ns, podA.Name); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	snap = waitSnap(t, src, "the replaced backend", 10*time.Second, func(s *meta.Snapshot) bool {
		old, _ := s.PodByAddr(netip.MustParseAddr("10.244.1.5"))
		svc, _ := s.Service(ns, "hostnames")
		return old != nil && old.Deleted && len(svc.Endpoints) == 1 && svc.Endpoints[0].PodRef.Name == podB.Name
	})
	t.Logf("replacement seen in %s", time.Since(begin).Round(time.Millisecond))
	got, _ = snap.Service(ns, "hostnames")
	st := snap.EndpointState(got, netip.MustParseAddr("10.244.1.5"), 9376, uint8(meta.ProtoTCP))
	if st.Ready || !strings.Contains(st.Detail, "deleted") {
		t.Errorf("the old backend's state: %+v", st)
	}

	// The API server goes away: one warning, the last state kept.
	begin = time.Now()
	if err := s.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver stopped in %s", time.Since(begin).Round(time.Millisecond))
	msgs := n.wait(t, "lost contact", 30*time.Second)
	t.Logf("warned %s after the stop began: %s", time.Since(begin).Round(time.Millisecond), msgs[0])
	if snap2, _ := src.Snapshot(ctx); snap2 != snap {
		t.Error("the snapshot changed while the API server was away")
	}
	begin = time.Now()
	if err := s.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("kube-apiserver restarted in %s", time.Since(begin).Round(time.Millisecond))
	msgs = n.wait(t, "answers again", 30*time.Second)
	lost := 0
	for _, m := range msgs {
		if strings.Contains(m, "lost contact") {
			lost++
		}
	}
	if lost != 1 {
		t.Errorf("want one warning for one outage: %q", msgs)
	}

	// Changes flow again.
	podC := backend(t, ctx, c, "hostnames-dd4cc9dd9-ccccc", "10.244.1.7")
	next = kubetest.EndpointSlice(svc, sl.Name, svcPorts, podC)
	next.ResourceVersion = sl.ResourceVersion
	if _, err = c.DiscoveryV1().EndpointSlices(ns).Update(ctx, next, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	begin = time.Now()
	waitSnap(t, src, "the change made after the outage", 60*time.Second, func(s *meta.Snapshot) bool {
		svc, _ := s.Service(ns, "hostnames")
		return len(svc.Endpoints) == 1 && svc.Endpoints[0].PodRef.Name == podC.Name
	})
	t.Logf("change after the outage seen in %s", time.Since(begin).Round(time.Millisecond))
}

// TestDeployManifests applies deploy/svctrace.yaml with strict validation,
// then checks that its ServiceAccount can run the source and do nothing
// else.
func TestDeployManifests(t *testing.T) {
	s, c := startCluster(t)
	ctx := context.Background()
	hostnames(t, ctx, c)
	const sa = "system:serviceaccount:svctrace:svctrace"
	asSA := rest.CopyConfig(s.RESTConfig())
	asSA.Impersonate = rest.ImpersonationConfig{UserName: sa}
	saClient, err := kubernetes.NewForConfig(asSA)
	if err != nil {
		t.Fatal(err)
	}

	// Before the ClusterRole exists: a clear, classified error.
	_, err = kube.Start(ctx, saClient, kube.Options{Namespace: ns, Server: s.URL})
	if !errors.Is(err, kube.ErrForbidden) || !strings.Contains(err.Error(), "cannot list resource") || strings.Contains(err.Error(), "\n") {
		t.Fatalf("without RBAC: %v, want a one-line ErrForbidden", err)
	}

	objs, err := kubetest.ApplyFile(ctx, s.RESTConfig(), filepath.Join("..", "..", "deploy", "svctrace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var kinds []string
	for _, o := range objs {
		kinds = append(kinds, o.GetKind())
	}
	if strings.Join(kinds, ",") != "Namespace,ServiceAccount,ClusterRole,ClusterRoleBinding,DaemonSet" {
		t.Errorf("applied %v", kinds)
	}
	ds, err := c.AppsV1().DaemonSets("svctrace").Get(ctx, "svctrace", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod := ds.Spec.Template.Spec
	sc := pod.Containers[0].SecurityContext
	if sc == nil || (sc.Privileged != nil && *sc.Privileged) || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 ||
		!pod.HostNetwork || pod.ServiceAccountName != "svctrace" {
		t.Errorf("daemonset pod spec: %+v", pod)
	}

	src, err := kube.Start(ctx, saClient, kube.Options{Namespace: ns, Server: s.URL})
	if err != nil {
		t.Fatalf("the ServiceAccount cannot run the source: %v", err)
	}
	src.Close()

	// Read-only, and only these resources.
	for _, tc := range []struct {
		verb, group, resource string
		allowed               bool
	}{
		{"list", "", "pods", true}, {"watch", "", "services", true}, {"get", "", "nodes", true},
		{"watch", "discovery.k8s.io", "endpointslices", true},
		{"create", "", "pods", false}, {"delete", "", "services", false}, {"update", "discovery.k8s.io", "endpointslices", false},
		{"patch", "", "nodes", false}, {"get", "", "secrets", false}, {"list", "", "configmaps", false},
		{"list", "", "endpoints", false}, {"create", "", "pods/exec", false},
	} {
		res, err := c.AuthorizationV1().SubjectAccessReviews().Create(ctx, &authorizationv1.SubjectAccessReview{
			Spec: authorizationv1.SubjectAccessReviewSpec{User: sa, ResourceAttributes: &authorizationv1.ResourceAttributes{
				Verb: tc.verb, Group: tc.group, Resource: strings.Split(tc.resource, "/")[0], Subresource: subresource(tc.resource),
			}},
		}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if res.Status.Allowed != tc.allowed {
			t.Errorf("%s %s (group %q): allowed=%v, want %v", tc.verb, tc.resource, tc.group, res.Status.Allowed, tc.allowed)
		}
	}
}

func subresource(r string) string {
	_, sub, _ := strings.Cut(r, "/")
	return sub
}
