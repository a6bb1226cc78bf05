package lab

import (
	"errors"
	"io"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// These tests need no privileges.

func TestChainNamesMatchKubeProxy(t *testing.T) {
	// Chain names seen on real clusters.
	for _, c := range []struct{ got, want string }{
		{ServiceChain("default/kubernetes:https", "tcp"), "KUBE-SVC-NPX46M4PTMTKRN6Y"},
		{ServiceChain("kube-system/kube-dns:dns", "udp"), "KUBE-SVC-TCOU7JCQXEZGVUNU"},
		{ServiceChain("kube-system/kube-dns:dns-tcp", "TCP"), "KUBE-SVC-ERIFXISQEP7F7OF4"},
		{ServiceChain("default/test-svc", "tcp"), "KUBE-SVC-QKNQQNIN727HO3XU"},
		{EndpointChain("default/test-svc", "tcp", "10.244.1.3:80"), "KUBE-SEP-SQEBHSRBMT4ZUBXZ"},
		{EndpointChain("default/test-svc", "tcp", "10.244.2.3:80"), "KUBE-SEP-SUSDB4Q4CAFDFR7F"},
		{ExternalChain("default/kubernetes:https", "tcp"), "KUBE-EXT-NPX46M4PTMTKRN6Y"},
		{LocalServiceChain("default/kubernetes:https", "tcp"), "KUBE-SVL-NPX46M4PTMTKRN6Y"},
		{FirewallChain("default/kubernetes:https", "tcp"), "KUBE-FW-NPX46M4PTMTKRN6Y"},
	} {
		if c.got != c.want {
			t.Errorf("got %s, want %s", c.got, c.want)
		}
	}
}

func mustSpec(t *testing.T, name string, v Variant) Spec {
	t.Helper()
	sc, err := LookupScenario(name)
	if err != nil {
		t.Fatal(err)
	}
	s, err := sc.Spec(v)
	if err != nil {
		t.Fatal(err)
	}
	n, err := normalize(s)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func rulesFor(t *testing.T, s Spec, node string) string {
	t.Helper()
	return string(IPTablesRules(s.proxyView(*s.node(node), true)))
}

func TestIPTablesRulesLikeKubeProxy(t *testing.T) {
	svc := ServiceChain("default/hostnames:default", "tcp")
	sep := EndpointChain("default/hostnames:default", "tcp", "10.244.1.5:9376")
	cases := []struct {
		scenario string
		variant  Variant
		node     string
		want     []string
		absent   []string
	}{
		{"healthy", "", "node1", []string{
			"-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
			"-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES",
			"-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING",
			"-A KUBE-POSTROUTING -m mark ! --mark 0x00004000/0x00004000 -j RETURN",
			"-A KUBE-POSTROUTING -j MARK --xor-mark 0x00004000",
			"-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully",
			"-A KUBE-MARK-MASQ -j MARK --or-mark 0x00004000",
			"-A KUBE-SERVICES -m comment --comment \"default/hostnames:default cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j " + svc,
			"-A " + svc + " -m comment --comment \"default/hostnames:default cluster IP\" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ",
			"-A " + svc + " -m comment --comment \"default/hostnames:default -> 10.244.1.5:9376\" -j " + sep,
			"-A " + sep + " -m comment --comment default/hostnames:default -s 10.244.1.5 -j KUBE-MARK-MASQ",
			"-A " + sep + " -m comment --comment default/hostnames:default -m tcp -p tcp -j DNAT --to-destination 10.244.1.5:9376",
			"-A KUBE-SERVICES -m comment --comment \"default/hostnames:dns cluster IP\" -m udp -p udp -d 10.96.0.10 --dport 53 -j KUBE-SVC-",
			"-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n",
		}, []string{"REJECT", "has no"}},
		{"healthy", VariantScaled, "node1", []string{
			"-m statistic --mode random --probability 0.3333333333 -j KUBE-SEP-",
			"-m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-",
			"\"default/hostnames:default -> 10.244.1.7:9376\" -j KUBE-SEP-",
		}, nil},
		{"no-backend", "", "node1", []string{
			"-A KUBE-SERVICES -m comment --comment \"default/hostnames:default has no endpoints\" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j REJECT",
			"-A KUBE-SERVICES -m comment --comment \"default/hostnames:dns has no endpoints\" -m udp -p udp -d 10.96.0.10 --dport 53 -j REJECT",
		}, []string{"KUBE-SVC-", "KUBE-SEP-"}},
		{"no-backend", VariantNoReadyEndpoints, "node1", []string{"has no endpoints\""}, []string{"KUBE-SEP-"}},
		{"stale-backend", "", "node1", []string{"--to-destination 10.244.1.5:9376"}, []string{"10.244.1.6"}},
		{"wrong-source", "", "node1", []string{
			"-A KUBE-SVC-NPX46M4PTMTKRN6Y -m comment --comment \"default/kubernetes:https -> 10.0.0.8:6443\" -j KUBE-SEP-",
		}, []string{"! -s 10.244.0.0/16"}},
		{"missing-masquerade", "", "node1", []string{"--to-destination 10.244.2.5:9376"}, []string{"! -s 10.244.0.0/16"}},
		{"no-local-endpoint", "", "node1", []string{
			"-A KUBE-SERVICES -m comment --comment \"kube-system/nginx-ingress-lb:http loadbalancer IP\" -m tcp -p tcp -d 172.18.0.100 --dport 80 -j KUBE-EXT-",
			"-A KUBE-EXTERNAL-SERVICES -m comment --comment \"kube-system/nginx-ingress-lb:http has no local endpoints\" -m tcp -p tcp -d 172.18.0.100 --dport 80 -j DROP",
			"-A KUBE-EXTERNAL-SERVICES -m comment --comment \"kube-system/nginx-ingress-lb:http has no local endpoints\" -m addrtype --dst-type LOCAL -m tcp -p tcp --dport 31080 -j DROP",
			"-m comment --comment \"masquerade LOCAL traffic for kube-system/nginx-ingress-lb:http external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ",
			"-m comment --comment \"route LOCAL traffic for kube-system/nginx-ingress-lb:http external destinations\" -m addrtype --src-type LOCAL -j KUBE-SVC-",
			"-A KUBE-NODEPORTS -m comment --comment \"kube-system/nginx-ingress-lb:http health check node port\" -m tcp -p tcp --dport 32080 -j ACCEPT",
			"-A KUBE-NODEPORTS -m comment --comment kube-system/nginx-ingress-lb:http -m tcp -p tcp --dport 31080 -j KUBE-EXT-",
		}, []string{"KUBE-SVL-", "pod traffic for"}},
		{"no-local-endpoint", "", "node2", []string{
			":KUBE-SVL-",
			"-A KUBE-EXT-",
			"-j KUBE-SVL-",
			"--to-destination 10.244.2.5:80",
		}, []string{"has no local endpoints"}},
		{"no-local-endpoint", VariantDetectLocal, "node1", []string{
			"\"pod traffic for kube-system/nginx-ingress-lb:http external destinations\" -s 10.244.0.0/16 -j KUBE-SVC-",
		}, nil},
		{"no-local-endpoint", VariantFixed, "node1", []string{
			"\"masquerade traffic for kube-system/nginx-ingress-lb:http external destinations\" -j KUBE-MARK-MASQ",
		}, []string{"has no local endpoints"}},
	}
	for _, c := range cases {
		rules := rulesFor(t, mustSpec(t, c.scenario, c.variant), c.node)
		for _, w := range c.want {
			if !strings.Contains(rules, w) {
				t.Errorf("%s/%s %s: rules lack %q\n%s", c.scenario, c.variant, c.node, w, rules)
			}
		}
		for _, w := range c.absent {
			if strings.Contains(rules, w) {
				t.Errorf("%s/%s %s: rules have %q", c.scenario, c.variant, c.node, w)
			}
		}
		for _, table := range []string{"*mangle\n", "*filter\n", "*nat\n"} {
			if !strings.Contains(rules, table) {
				t.Errorf("%s: no %s table", c.scenario, table)
			}
		}
		if strings.Count(rules, "COMMIT\n") != 3 {
			t.Errorf("%s: want 3 COMMITs", c.scenario)
		}
	}
}

func TestCategorizeEndpointsTerminatingFallback(t *testing.T) {
	p := ServicePortView{Namespace: "default", Name: "x", Protocol: corev1.ProtocolTCP, Port: 80, ClusterIP: "10.96.0.99",
		Endpoints: []EndpointView{
			{IP: "10.244.1.5", Port: 80, NodeName: "node1", Serving: true, Terminating: true},
			{IP: "10.244.1.6", Port: 80, NodeName: "node1"},
		}}
	cluster, _, all, has := categorizeEndpoints(p, "node1")
	if !has || len(cluster) != 1 || cluster[0].IP != "10.244.1.5" || len(all) != 1 {
		t.Fatalf("serving+terminating fallback: %v %v %v", cluster, all, has)
	}
	p.Endpoints[0].Serving = false
	if _, _, _, has := categorizeEndpoints(p, "node1"); has {
		t.Fatal("no usable endpoints expected")
	}
}

func TestScenarioSpecsAndManifests(t *testing.T) {
	seen := map[string]bool{}
	for _, sc := range Scenarios() {
		if sc.Description == "" || strings.Contains(sc.Description, "\n") {
			t.Errorf("%s: need a one-line description", sc.Name)
		}
		if seen[sc.Name] {
			t.Errorf("duplicate scenario %s", sc.Name)
		}
		seen[sc.Name] = true
		for _, v := range append([]Variant{""}, sc.Variants...) {
			s, err := sc.Spec(v)
			if err != nil {
				t.Fatal(err)
			}
			if s.Outcome == "" || len(s.Checks) == 0 {
				t.Errorf("%s/%s: no outcome or checks", sc.Name, v)
			}
			n, err := normalize(s)
			if err != nil {
				t.Fatalf("%s/%s: %v", sc.Name, v, err)
			}
			dir := t.TempDir()
			want := buildManifests(&n, time.Now())
			if err := writeManifests(dir, want); err != nil {
				t.Fatal(err)
			}
			got, err := ReadManifests(dir)
			if err != nil {
				t.Fatalf("%s/%s: %v", sc.Name, v, err)
			}
			if len(got.Pods) != len(n.Pods) || len(got.EndpointSlices) != len(n.Services) || len(got.Nodes) != len(n.Nodes) {
				t.Errorf("%s/%s: manifests do not round-trip", sc.Name, v)
			}
			for _, p := range got.Pods {
				if !strings.HasPrefix(p.OwnerReferences[0].Name, strings.Join(strings.Split(p.Name, "-")[:len(strings.Split(p.Name, "-"))-1], "-")) {
					t.Errorf("pod %s owner %s", p.Name, p.OwnerReferences[0].Name)
				}
			}
		}
		if _, err := sc.Spec("no-such-variant"); err == nil {
			t.Errorf("%s accepted an unknown variant", sc.Name)
		}
	}
	for _, name := range []string{"healthy", "unreachable-backend", "stale-backend", "no-backend", "wrong-source", "missing-masquerade", "no-local-endpoint"} {
		if !seen[name] {
			t.Errorf("scenario %s missing", name)
		}
	}
}

func TestNormalizeRejectsBadSpecs(t *testing.T) {
	base := mustSpec(t, "healthy", "")
	for name, mutate := range map[string]func(*Spec){
		"pod outside node cidr": func(s *Spec) { s.Pods[0].IP = "10.244.9.9" },
		"unknown node":          func(s *Spec) { s.Pods[0].Node = "node9" },
		"clusterIP outside":     func(s *Spec) { s.Services[0].ClusterIP = "192.0.2.1" },
		"duplicate names":       func(s *Spec) { s.Pods[1].Name = s.Pods[0].Name },
		"unknown client":        func(s *Spec) { s.Checks[0].From = "ghost" },
		"unknown fault":         func(s *Spec) { s.Faults = []Fault{{Kind: "bogus"}} },
		"nic off network":       func(s *Spec) { s.Nodes[0].NICs[0].Address = "10.1.1.1/24" },
		"long nic":              func(s *Spec) { s.Nodes[0].NICs[0].Name = "averyveryverylongname" },
	} {
		s := base
		s.Pods = append([]PodSpec(nil), base.Pods...)
		s.Nodes = append([]NodeSpec(nil), base.Nodes...)
		s.Nodes[0].NICs = append([]NIC(nil), base.Nodes[0].NICs...)
		s.Services = append([]ServiceSpec(nil), base.Services...)
		s.Checks = append([]Check(nil), base.Checks...)
		mutate(&s)
		if _, err := normalize(s); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestClassify(t *testing.T) {
	for _, c := range []struct {
		err  error
		want error
	}{
		{&net.OpError{Op: "dial", Err: syscall.ECONNREFUSED}, ErrConnRefused},
		{&net.OpError{Op: "dial", Err: syscall.EHOSTUNREACH}, ErrNoRoute},
		{&net.OpError{Op: "dial", Err: syscall.ENETUNREACH}, ErrNetUnreachable},
		{&net.OpError{Op: "read", Err: syscall.ECONNRESET}, ErrConnReset},
		{&net.OpError{Op: "read", Err: errTimeout{}}, ErrTimeout},
	} {
		got := classify(c.err)
		if !errors.Is(got, c.want) {
			t.Errorf("classify(%v) = %v, want %v", c.err, got, c.want)
		}
		if !errors.Is(got, c.err) {
			t.Errorf("classify(%v) lost the cause", c.err)
		}
	}
	if err := (Expect{Err: ErrTimeout}).Verify("", classify(&net.OpError{Err: syscall.ECONNREFUSED})); err == nil {
		t.Error("a refused connection satisfied an expected timeout")
	}
	if err := (Expect{Answers: []string{"a", "b"}}).Verify("b", nil); err != nil {
		t.Error(err)
	}
}

type errTimeout struct{}

func (errTimeout) Error() string   { return "i/o timeout" }
func (errTimeout) Timeout() bool   { return true }
func (errTimeout) Temporary() bool { return true }

func TestServerAnswers(t *testing.T) {
	s := &server{answer: "hostnames-x", conns: map[net.Conn]struct{}{}}
	for _, c := range []struct{ req, want string }{
		{"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "HTTP/1.0 200 OK"},
		{probeRequest, "hostnames-x\n"},
		{"", "hostnames-x\n"}, // nc-style client that sends nothing
	} {
		client, srv := net.Pipe()
		go s.handleTCP(srv)
		if c.req != "" {
			if _, err := io.WriteString(client, c.req); err != nil {
				t.Fatal(err)
			}
		}
		b, _ := io.ReadAll(client)
		client.Close()
		if !strings.HasPrefix(string(b), c.want) || !strings.HasSuffix(string(b), "hostnames-x\n") {
			t.Errorf("request %q: got %q", c.req, b)
		}
	}
}
