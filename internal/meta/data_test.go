package meta

import (
	"bytes"
	"encoding/json"
	"net/netip"
	"strings"
	"testing"
)

// roundTrip encodes s's data as JSON and restores a snapshot from it.
func roundTrip(t *testing.T, s *Snapshot) (*Snapshot, []byte) {
	t.Helper()
	b, err := json.Marshal(s.Data())
	if err != nil {
		t.Fatal(err)
	}
	var d SnapshotData
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatal(err)
	}
	r, err := RestoreSnapshot(&d)
	if err != nil {
		t.Fatal(err)
	}
	return r, b
}

func mustJSON(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// TestRestoreSnapshotAnswersAlike checks that a snapshot restored from its
// JSON data answers every query the tracer makes exactly as the original:
// names of every address and port it knows, filters, endpoint states.
func TestRestoreSnapshotAnswersAlike(t *testing.T) {
	src := &ManifestSource{Path: "testdata/cluster", Recursive: true, Now: fixedClock}
	s, err := src.Snapshot(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if len(s.DeletedPods()) == 0 {
		t.Fatal("fixtures should have deleted pods")
	}
	r, b := roundTrip(t, s)
	if _, b2 := roundTrip(t, r); !bytes.Equal(b, b2) {
		t.Errorf("data differs after a second round trip:\n%s\n%s", b, b2)
	}
	if !r.Time().Equal(s.Time()) || strings.Join(r.Warnings, "\n") != strings.Join(s.Warnings, "\n") {
		t.Errorf("time %v warnings %q, want %v %q", r.Time(), r.Warnings, s.Time(), s.Warnings)
	}

	addrs := map[netip.Addr]bool{}
	ports := map[uint16]bool{0: true, 1: true}
	for _, svc := range s.Services() {
		for _, a := range append(append(append([]netip.Addr(nil), svc.ClusterIPs...), svc.ExternalIPs...), svc.LoadBalancerIPs...) {
			addrs[a] = true
		}
		for _, p := range svc.Ports {
			ports[p.Port], ports[p.NodePort] = true, true
			for _, tp := range p.TargetPorts {
				ports[tp] = true
			}
		}
		for _, ep := range svc.Endpoints {
			addrs[ep.Addr] = true
			for _, p := range ep.Ports {
				ports[p.Port] = true
			}
		}
		for _, f := range svc.FormerEndpoints {
			addrs[f.Addr] = true
		}
	}
	for _, p := range append(append([]*Pod(nil), s.Pods()...), s.DeletedPods()...) {
		for _, a := range append(append([]netip.Addr(nil), p.IPs...), p.HostIPs...) {
			addrs[a] = true
		}
		for _, cp := range p.Ports {
			ports[cp.Port], ports[cp.HostPort] = true, true
		}
	}
	for _, n := range s.Nodes() {
		for _, a := range n.Addrs() {
			addrs[a] = true
		}
	}
	addrs[netip.MustParseAddr("192.0.2.1")] = true // unknown

	queries := 0
	for a := range addrs {
		for port := range ports {
			for _, proto := range []uint8{0, 6, 17, 132} {
				if got, want := r.Name(a, port, proto), s.Name(a, port, proto); got.String() != want.String() ||
					mustJSON(t, got) != mustJSON(t, want) {
					t.Errorf("Name(%s, %d, %d) = %+v, want %+v", a, port, proto, got, want)
				}
				for _, svc := range s.Services() {
					rsvc, err := r.Service(svc.Namespace, svc.Name)
					if err != nil {
						t.Fatal(err)
					}
					got, want := r.EndpointState(rsvc, a, port, proto), s.EndpointState(svc, a, port, proto)
					if mustJSON(t, got) != mustJSON(t, want) {
						t.Errorf("EndpointState(%s, %s, %d, %d) = %+v, want %+v", svc, a, port, proto, got, want)
					}
					queries++
				}
			}
		}
	}
	for _, svc := range s.Services() {
		rsvc, _ := r.Service(svc.Namespace, svc.Name)
		if got, want := mustJSON(t, r.Filter(rsvc)), mustJSON(t, s.Filter(svc)); got != want {
			t.Errorf("Filter(%s) = %s, want %s", svc, got, want)
		}
		if got, want := mustJSON(t, rsvc), mustJSON(t, svc); got != want {
			t.Errorf("service %s = %s, want %s", svc, got, want)
		}
	}
	t.Logf("%d addresses, %d ports, %d endpoint-state queries compared", len(addrs), len(ports), queries)
}

func TestRestoreSnapshotRejectsNull(t *testing.T) {
	for _, in := range []string{
		`{"services":[null]}`, `{"nodes":[null]}`, `{"pods":[null]}`, `{"deleted_pods":[null]}`,
	} {
		var d SnapshotData
		if err := json.Unmarshal([]byte(in), &d); err != nil {
			t.Fatal(err)
		}
		if _, err := RestoreSnapshot(&d); err == nil || !strings.Contains(err.Error(), "null") {
			t.Errorf("%s: err %v", in, err)
		}
	}
	if _, err := RestoreSnapshot(nil); err == nil {
		t.Error("nil data restored")
	}
	// Empty data is a valid, empty snapshot.
	s, err := RestoreSnapshot(&SnapshotData{})
	if err != nil || len(s.Services()) != 0 {
		t.Errorf("empty: %v %v", s, err)
	}
}
