package meta

import (
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
)

// seedObjects is the seed story built in Go, as the test lab builds it.
func seedObjects() []runtime.Object {
	svc := newService("default", "hostnames", "10.96.183.43", 80, 9376)
	lb := newService("shop", "frontend", "10.96.120.7", 80, 8080)
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	lb.Spec.ExternalTrafficPolicy = corev1.ServiceExternalTrafficPolicyLocal
	lb.Spec.Ports[0].NodePort = 31380
	lb.Spec.ClusterIPs = append(lb.Spec.ClusterIPs, "fd00:10:96::7a")
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "203.0.113.25"}}
	old := newPod("default", "hostnames-dd4cc9dd9-8vx2c", "node01", "10.244.10.237")
	MarkDeleted(old, fixedClock().Add(-2*time.Minute))
	oldSlice := newSlice("default", "hostnames-q9zlm", "hostnames", 9376,
		sliceEndpoint{ip: "10.244.10.237", pod: "hostnames-dd4cc9dd9-8vx2c", node: "node01", ready: true})
	MarkDeleted(oldSlice, fixedClock().Add(-2*time.Minute))
	return []runtime.Object{
		svc, lb,
		newSlice("default", "hostnames-x7k2p", "hostnames", 9376,
			sliceEndpoint{ip: "10.244.10.238", pod: "hostnames-dd4cc9dd9-5k42b", node: "node01", ready: true}),
		newSlice("shop", "frontend-1", "frontend", 8080,
			sliceEndpoint{ip: "10.244.20.5", pod: "frontend-1", node: "node02", ready: true},
			sliceEndpoint{ip: "10.244.10.9", pod: "frontend-2", node: "node01", terminating: true}),
		newPod("default", "hostnames-dd4cc9dd9-5k42b", "node01", "10.244.10.238"),
		old, oldSlice,
		newNode("node01", "10.130.29.81"),
		newNode("node02", "10.130.29.82"),
		&appsv1.Deployment{ObjectMeta: objMeta("default", "hostnames")},
	}
}

func TestWriteManifestsRoundTrip(t *testing.T) {
	objs := seedObjects()
	dir := t.TempDir()
	if err := WriteManifests(dir, objs...); err != nil {
		t.Fatal(err)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var files []string
	for _, e := range entries {
		files = append(files, e.Name())
	}
	wantFiles := []string{
		"deployment-default-hostnames.yaml",
		"endpointslice-default-hostnames-q9zlm.yaml",
		"endpointslice-default-hostnames-x7k2p.yaml",
		"endpointslice-shop-frontend-1.yaml",
		"node-node01.yaml",
		"node-node02.yaml",
		"pod-default-hostnames-dd4cc9dd9-5k42b.yaml",
		"pod-default-hostnames-dd4cc9dd9-8vx2c.yaml",
		"service-default-hostnames.yaml",
		"service-shop-frontend.yaml",
	}
	if !slices.Equal(files, wantFiles) {
		t.Errorf("files %q, want %q", files, wantFiles)
	}
	data, err := os.ReadFile(filepath.Join(dir, "endpointslice-default-hostnames-x7k2p.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "addressType: IPv4\napiVersion: discovery.k8s.io/v1\n") || !strings.Contains(string(data), "\nkind: EndpointSlice\n") {
		t.Errorf("written slice lacks apiVersion/kind:\n%s", data)
	}
	if gvk := objs[0].GetObjectKind().GroupVersionKind(); !gvk.Empty() {
		t.Errorf("WriteManifests modified its input: %v", gvk)
	}

	listFile := filepath.Join(t.TempDir(), "all.yaml")
	if err := WriteManifestList(listFile, objs...); err != nil {
		t.Fatal(err)
	}
	data, err = os.ReadFile(listFile)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(data), "apiVersion: v1\nitems:\n- apiVersion: v1\n") || !strings.Contains(string(data), "\nkind: List\n") {
		t.Errorf("list file:\n%s", data)
	}

	// Loading either form gives the same snapshot as building from the objects directly.
	want := summarize(t, buildDirect(t, objs))
	for _, path := range []string{dir, listFile} {
		s, err := (&ManifestSource{Path: path, Now: fixedClock}).Snapshot(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		if got := summarize(t, s); !reflect.DeepEqual(got, want) {
			t.Errorf("%s: round trip differs:\n got %+v\nwant %+v", path, got, want)
		}
		if !slices.Equal(s.Warnings, []string{"ignored 1 apps/v1 Deployment object"}) {
			t.Errorf("%s: warnings %q", path, s.Warnings)
		}
		if n := s.Name(addr("10.244.10.237"), 9376, tcp); !strings.HasPrefix(n.Detail, "deleted 2m ago") {
			t.Errorf("%s: deleted pod = %v", path, n)
		}
	}
}

// buildDirect builds a snapshot from objects the way the manifest loader does: deletions
// marked by AnnotationDeletedAt first, then the rest.
func buildDirect(t *testing.T, objs []runtime.Object) *Snapshot {
	t.Helper()
	b := &Builder{Now: fixedClock}
	var live []runtime.Object
	for _, o := range objs {
		m, err := apimeta.Accessor(o)
		if err != nil {
			t.Fatal(err)
		}
		v, deleted := m.GetAnnotations()[AnnotationDeletedAt]
		if !deleted {
			live = append(live, o)
			continue
		}
		at, err := time.Parse(time.RFC3339, v)
		if err != nil {
			t.Fatal(err)
		}
		if err := b.Delete(o, at); err != nil {
			t.Fatal(err)
		}
	}
	for _, o := range live {
		_ = b.Upsert(o) // the Deployment is refused
	}
	return b.Build()
}

type snapshotSummary struct {
	Services []Service
	Pods     []Pod
	Deleted  []Pod
	Nodes    []Node
}

func summarize(t *testing.T, s *Snapshot) snapshotSummary {
	t.Helper()
	var sum snapshotSummary
	for _, svc := range s.Services() {
		sum.Services = append(sum.Services, *svc)
	}
	for _, p := range s.Pods() {
		sum.Pods = append(sum.Pods, *p)
	}
	for _, p := range s.DeletedPods() {
		sum.Deleted = append(sum.Deleted, *p)
	}
	for _, n := range s.Nodes() {
		sum.Nodes = append(sum.Nodes, *n)
	}
	return sum
}

func TestWriteManifestsErrors(t *testing.T) {
	dir := t.TempDir()
	p := newPod("ns", "p", "n", "10.0.0.1")
	if err := WriteManifests(dir, p, p.DeepCopy()); err == nil || !strings.Contains(err.Error(), "pod-ns-p.yaml") {
		t.Errorf("duplicate: %v", err)
	}
	noName := newPod("ns", "", "n", "10.0.0.1")
	if err := WriteManifests(dir, noName); err == nil || !strings.Contains(err.Error(), "has no name") {
		t.Errorf("no name: %v", err)
	}
	if err := WriteManifests(dir, &runtime.Unknown{}); err == nil {
		t.Error("unknown type: no error")
	}
	if err := WriteManifestList(filepath.Join(dir, "missing", "x.yaml"), p); err == nil {
		t.Error("missing folder: no error")
	}
}
