package e2e

import (
	"context"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/svctrace/svctrace/internal/demo"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/pkg/event"
)

// verdicts parses the trace's verdict lines.
func (o output) verdicts() []event.Verdict {
	var out []event.Verdict
	for _, m := range o.other {
		if m["type"] != "verdict" {
			continue
		}
		v := event.Verdict{Verdict: m["verdict"].(string), Evidence: map[string]any{}}
		if s, ok := m["summary"].(string); ok {
			v.Summary = s
		}
		if e, ok := m["evidence"].(map[string]any); ok {
			v.Evidence = e
		}
		if b, ok := m["backend"].(map[string]any); ok {
			v.Backend = &event.Backend{}
			if s, ok := b["node"].(string); ok {
				v.Backend.Node = s
			}
			if s, ok := b["pod"].(string); ok {
				v.Backend.Pod = s
			}
		}
		if s, ok := m["node"].(string); ok {
			v.Node = s
		}
		out = append(out, v)
	}
	return out
}

// runScenario brings a scenario up, traces its focus Service on its focus
// node through the CLI, runs every probe of the scenario (each must behave
// as the scenario says) and returns the verdicts.
func runScenario(t *testing.T, name string, v lab.Variant) []event.Verdict {
	t.Helper()
	requireBackend(t)
	sc, err := lab.LookupScenario(name)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := sc.Spec(v)
	l := upLab(t, spec, err)
	svc, node, err := demo.Focus(spec)
	if err != nil {
		t.Fatal(err)
	}
	if svc.Namespace != "" && svc.Namespace != "default" {
		tr := startTrace(t, l, node, svc.Name, "-n", svc.Namespace)
		return finish(t, l, tr)
	}
	tr := startTrace(t, l, node, svc.Name)
	return finish(t, l, tr)
}

func finish(t *testing.T, l *lab.Lab, tr *trace) []event.Verdict {
	t.Helper()
	for _, r := range l.RunChecks(context.Background()) {
		if !r.OK() {
			t.Errorf("probe %s: %v", r.Check.Name, r.Problem)
		}
	}
	return tr.stop(t, syscall.SIGINT).verdicts()
}

func ids(vs []event.Verdict) []string {
	var out []string
	for _, v := range vs {
		out = append(out, v.Verdict)
	}
	return out
}

func first(t *testing.T, vs []event.Verdict, id string) event.Verdict {
	t.Helper()
	for _, v := range vs {
		if v.Verdict == id {
			return v
		}
	}
	t.Fatalf("no %s verdict; got %v", id, ids(vs))
	return event.Verdict{}
}

func TestVerdictHealthyIsOK(t *testing.T) {
	vs := runScenario(t, "healthy", lab.VariantDefault)
	if len(vs) == 0 {
		t.Fatal("no verdicts")
	}
	for _, v := range vs {
		if v.Verdict != event.VerdictOK {
			t.Errorf("healthy scenario gave %s: %s", v.Verdict, v.Summary)
		}
	}
	ok := first(t, vs, event.VerdictOK)
	if ok.Backend == nil || ok.Backend.Pod != "default/"+lab.HostnamesPod {
		t.Errorf("ok verdict backend %+v", ok.Backend)
	}
}

func TestVerdictStaleBackend(t *testing.T) {
	vs := runScenario(t, "stale-backend", lab.VariantDefault)
	v := first(t, vs, event.VerdictStaleBackend)
	if d, _ := v.Evidence["dnat_target"].(string); d != "10.244.1.5:9376" && d != "10.244.1.5:0" {
		t.Errorf("dnat_target %v", v.Evidence["dnat_target"])
	}
	eps, _ := v.Evidence["ready_endpoints"].([]any)
	if len(eps) != 1 || eps[0] != "10.244.1.6:9376 (pod default/"+lab.HostnamesPod+" on node1)" {
		t.Errorf("ready_endpoints %v", v.Evidence["ready_endpoints"])
	}
	if slices.Contains(ids(vs), event.VerdictOK) {
		t.Errorf("a stale flow was called ok: %v", ids(vs))
	}
}

func TestVerdictNoBackend(t *testing.T) {
	vs := runScenario(t, "no-backend", lab.VariantDefault)
	v := first(t, vs, event.VerdictNoBackend)
	if v.Evidence["service_has_ready_endpoints"] != true {
		t.Errorf("want the 'dataplane lacks ready endpoints' case: %v", v.Evidence)
	}
	// The Service really has no ready endpoints: fix the Service, not the node.
	vs = runScenario(t, "no-backend", lab.VariantNoReadyEndpoints)
	v = first(t, vs, event.VerdictNoBackend)
	if v.Evidence["service_has_ready_endpoints"] != false {
		t.Errorf("want the 'no ready endpoints' case: %v", v.Evidence)
	}
}

func TestVerdictWrongSource(t *testing.T) {
	vs := runScenario(t, "wrong-source", lab.VariantDefault)
	v := first(t, vs, event.VerdictWrongSource)
	if proxyMode() == lab.ProxyIPVS {
		// The ClusterIP is local on kube-ipvs0: the node sources the
		// connection from the ClusterIP itself, and the route fix cannot help.
		if v.Evidence["chosen_source"] != lab.KubernetesIP {
			t.Errorf("evidence %v", v.Evidence)
		}
		vs = runScenario(t, "wrong-source", lab.VariantFixed)
		first(t, vs, event.VerdictWrongSource)
		return
	}
	if v.Evidence["chosen_source"] != "10.141.13.182" || v.Evidence["out_dev"] != "eth0" || v.Evidence["out_dev_network"] != "10.0.0.0/24" {
		t.Errorf("evidence %v", v.Evidence)
	}
	// The fix applied: the right source, no wrong-source verdict.
	vs = runScenario(t, "wrong-source", lab.VariantFixed)
	if slices.Contains(ids(vs), event.VerdictWrongSource) || !slices.Contains(ids(vs), event.VerdictOK) {
		t.Errorf("fixed variant verdicts %v", ids(vs))
	}
}

func TestVerdictMissingMasquerade(t *testing.T) {
	vs := runScenario(t, "missing-masquerade", lab.VariantDefault)
	v := first(t, vs, event.VerdictMissingMasquerade)
	src := "192.168.50.11"
	if proxyMode() == lab.ProxyIPVS {
		src = lab.HostnamesIP
	}
	if v.Evidence["source"] != src || v.Evidence["backend_node"] != "node2" || v.Evidence["snat"] != false {
		t.Errorf("evidence %v", v.Evidence)
	}
	// iptables mode: node2's rp_filter drops the node address; IPVS mode:
	// the source is the ClusterIP itself, dropped on input too.
	// (Before 5.17 the kernel gives no reasons: the place tells, ip_rcv_finish_core.)
	r, _ := v.Evidence["reason"].(string)
	loc, _ := v.Evidence["location"].(string)
	rpfilter := r == "IP_RPFILTER" || (strings.HasPrefix(r, "unknown") && strings.HasPrefix(loc, "ip_rcv_finish_core"))
	if v.Evidence["outcome"] != "dropped" || (proxyMode() == lab.ProxyIPTables && !rpfilter) {
		t.Errorf("want node2's drop in the evidence: %v", v.Evidence)
	}
	vs = runScenario(t, "missing-masquerade", lab.VariantFixed)
	if slices.Contains(ids(vs), event.VerdictMissingMasquerade) {
		t.Errorf("fixed variant verdicts %v", ids(vs))
	}
}

func TestVerdictNoLocalEndpoint(t *testing.T) {
	vs := runScenario(t, "no-local-endpoint", lab.VariantDefault)
	v := first(t, vs, event.VerdictNoLocalEndpoint)
	nodes, _ := v.Evidence["nodes_with_endpoints"].([]any)
	if v.Node != "node1" || len(nodes) != 1 || nodes[0] != "node2" || v.Evidence["address_role"] != "load-balancer-ip" {
		t.Errorf("node %q evidence %v", v.Node, v.Evidence)
	}
}

func TestVerdictDropped(t *testing.T) {
	vs := runScenario(t, "unreachable-backend", lab.VariantDefault)
	v := first(t, vs, event.VerdictDropped)
	if v.Evidence["reason"] != "ICMP host unreachable" || v.Evidence["outcome"] != "rejected" {
		t.Errorf("evidence %v", v.Evidence)
	}
}
