package diagnose_test

import (
	"context"
	"io"
	"path/filepath"
	"slices"
	"testing"

	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/pkg/event"
)

// collector keeps the verdicts of a replay.
type collector struct {
	render.Renderer
	verdicts []event.Verdict
}

func (c *collector) Verdict(v *event.Verdict) error {
	c.verdicts = append(c.verdicts, *v)
	return nil
}

// replay runs a recording of a lab scenario (made on a real kernel by
// hack/record-fixtures: the real tracer, real kube-proxy-style rules, real
// traffic) through the same pipeline as a live trace and returns its verdicts.
func replay(t *testing.T, name string) []event.Verdict {
	t.Helper()
	rd, err := record.Open(filepath.Join("testdata", name+".jsonl.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	c := &collector{Renderer: render.NewJSON(io.Discard)}
	if _, err := record.Replay(context.Background(), rd, record.ReplayConfig{Renderer: c}); err != nil {
		t.Fatal(err)
	}
	return c.verdicts
}

func ids(vs []event.Verdict) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Verdict)
	}
	return out
}

func find(t *testing.T, vs []event.Verdict, id string) event.Verdict {
	t.Helper()
	for _, v := range vs {
		if v.Verdict == id {
			return v
		}
	}
	t.Fatalf("no %s verdict; got %v", id, ids(vs))
	return event.Verdict{}
}

func TestRecordedHealthyIsOK(t *testing.T) {
	vs := replay(t, "healthy")
	if len(vs) == 0 {
		t.Fatal("no verdicts")
	}
	for _, v := range vs {
		if v.Verdict != event.VerdictOK {
			t.Errorf("healthy: %s: %s", v.Verdict, v.Summary)
		}
	}
}

func TestRecordedStaleBackend(t *testing.T) {
	v := find(t, replay(t, "stale-backend"), event.VerdictStaleBackend)
	if v.Evidence["dnat_target"] != "10.244.1.5:9376" || v.After.Dst.String() != "10.244.1.5:9376" {
		t.Errorf("evidence %v after %v", v.Evidence, v.After)
	}
	if eps, _ := v.Evidence["ready_endpoints"].([]string); len(eps) != 1 {
		t.Errorf("ready endpoints %v", v.Evidence["ready_endpoints"])
	}
}

func TestRecordedNoBackend(t *testing.T) {
	v := find(t, replay(t, "no-backend"), event.VerdictNoBackend)
	if v.Evidence["service_has_ready_endpoints"] != true {
		t.Errorf("kube-proxy not syncing: evidence %v", v.Evidence)
	}
	v = find(t, replay(t, "no-backend-no-ready-endpoints"), event.VerdictNoBackend)
	if v.Evidence["service_has_ready_endpoints"] != false {
		t.Errorf("no ready endpoints: evidence %v", v.Evidence)
	}
}

func TestRecordedWrongSource(t *testing.T) {
	v := find(t, replay(t, "wrong-source"), event.VerdictWrongSource)
	if v.Evidence["chosen_source"] != "10.141.13.182" || v.Evidence["out_dev"] != "eth0" {
		t.Errorf("evidence %v", v.Evidence)
	}
}

func TestRecordedMissingMasquerade(t *testing.T) {
	v := find(t, replay(t, "missing-masquerade"), event.VerdictMissingMasquerade)
	if v.Evidence["backend_node"] != "node2" || v.Evidence["source"] != "192.168.50.11" {
		t.Errorf("evidence %v", v.Evidence)
	}
}

func TestRecordedNoLocalEndpoint(t *testing.T) {
	vs := replay(t, "no-local-endpoint")
	v := find(t, vs, event.VerdictNoLocalEndpoint)
	if nodes, _ := v.Evidence["nodes_with_endpoints"].([]string); !slices.Equal(nodes, []string{"node2"}) {
		t.Errorf("evidence %v", v.Evidence)
	}
}

func TestRecordedDropped(t *testing.T) {
	v := find(t, replay(t, "unreachable-backend"), event.VerdictDropped)
	if v.Evidence["reason"] != "ICMP host unreachable" {
		t.Errorf("evidence %v", v.Evidence)
	}
}
