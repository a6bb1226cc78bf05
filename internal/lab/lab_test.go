package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/equality"
)

// requireRoot skips outside CI when not root; in CI (CI set) the lab tests
// must run.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() == 0 {
		return
	}
	if os.Getenv("CI") != "" {
		t.Fatal("lab tests need root (network namespaces, iptables-restore) and CI is set: run them as root")
	}
	t.Skip("lab tests need root to create network namespaces and load iptables rules; run as root (CI does)")
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// assertNoLeftovers checks that nothing named after the lab id remains.
func assertNoLeftovers(t *testing.T, id string) {
	t.Helper()
	if m, _ := filepath.Glob(filepath.Join(NetnsRunDir, id+"-*")); len(m) > 0 {
		t.Errorf("namespaces left behind: %v", m)
	}
	links, err := netlink.LinkList()
	if err != nil {
		t.Fatalf("list links: %v", err)
	}
	for _, l := range links {
		if strings.HasPrefix(l.Attrs().Name, id) {
			t.Errorf("link left behind: %s", l.Attrs().Name)
		}
	}
	if _, err := os.Stat(filepath.Join(OwnerDir, id)); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("owner record left behind (%v)", err)
	}
	if m, _ := filepath.Glob(filepath.Join(os.TempDir(), manifestsDirPrefix+id+"*")); len(m) > 0 {
		t.Errorf("manifests left behind: %v", m)
	}
}

// scenarioExpectations are dataplane and manifest facts per scenario
// variant, beyond the client-visible checks.
type scenarioExpectations struct {
	// loaded lines (substrings of iptables-save) per node
	rules map[string][]string
	// substrings that must not be loaded, per node
	absent map[string][]string
	// extra assertions on the parsed manifests
	manifests func(t *testing.T, m Manifests)
}

func sliceOf(t *testing.T, m Manifests, svc string) (ips []string, ready []bool) {
	t.Helper()
	for _, s := range m.EndpointSlices {
		if s.Labels["kubernetes.io/service-name"] != svc {
			continue
		}
		for _, ep := range s.Endpoints {
			ips = append(ips, ep.Addresses...)
			ready = append(ready, ep.Conditions.Ready != nil && *ep.Conditions.Ready)
		}
		return ips, ready
	}
	t.Fatalf("no EndpointSlice for %s", svc)
	return nil, nil
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// masqNonPods is kube-proxy's masquerade rule for off-pod traffic to the
// hostnames ClusterIP, as iptables-save prints it.
const masqNonPods = "-A KUBE-SVC-ODX2UBAZM7RQWOIU ! -s 10.244.0.0/16 -d 10.96.0.10/32 -p tcp -m comment --comment \"default/hostnames:default cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"

func expectations(name string, v Variant) scenarioExpectations {
	noSEPFor := func(ip string) string { return "--to-destination " + ip }
	switch name + "/" + string(v) {
	case "healthy/":
		return scenarioExpectations{rules: map[string][]string{"node1": {
			noSEPFor("10.244.1.5:9376"), masqNonPods, "-j MASQUERADE --random-fully",
			"-A KUBE-SVC-ODX2UBAZM7RQWOIU -m comment --comment \"default/hostnames:default -> 10.244.1.5:9376\" -j KUBE-SEP-",
		}}}
	case "healthy/scaled":
		return scenarioExpectations{rules: map[string][]string{"node1": {
			"--probability 0.33333333349", "--probability 0.50000000000", noSEPFor("10.244.1.7:9376"),
		}}}
	case "unreachable-backend/":
		return scenarioExpectations{
			rules: map[string][]string{"node1": {noSEPFor("10.244.1.5:9376")}},
			manifests: func(t *testing.T, m Manifests) {
				if ips, ready := sliceOf(t, m, "hostnames"); !slices.Equal(ips, []string{"10.244.1.5"}) || !ready[0] {
					t.Errorf("EndpointSlice should list the ready 10.244.1.5, has %v %v", ips, ready)
				}
			},
		}
	case "stale-backend/":
		return scenarioExpectations{
			rules:  map[string][]string{"node1": {noSEPFor("10.244.1.5:9376")}},
			absent: map[string][]string{"node1": {noSEPFor("10.244.1.6:9376")}},
			manifests: func(t *testing.T, m Manifests) {
				if ips, ready := sliceOf(t, m, "hostnames"); !slices.Equal(ips, []string{"10.244.1.6"}) || !ready[0] {
					t.Errorf("EndpointSlice should list only the new ready 10.244.1.6, has %v %v", ips, ready)
				}
				for _, p := range m.Pods {
					if p.Status.PodIP == "10.244.1.5" || p.Name == OldHostnamesPod {
						t.Errorf("the replaced pod must not be in the manifests: %s", p.Name)
					}
				}
			},
		}
	case "stale-backend/fixed":
		return scenarioExpectations{rules: map[string][]string{"node1": {noSEPFor("10.244.1.6:9376")}}}
	case "no-backend/":
		return scenarioExpectations{
			rules:  map[string][]string{"node1": {`"default/hostnames:default has no endpoints"`, "-j REJECT --reject-with icmp-port-unreachable", `"default/hostnames:dns has no endpoints"`}},
			absent: map[string][]string{"node1": {"KUBE-SEP-"}},
			manifests: func(t *testing.T, m Manifests) {
				if _, ready := sliceOf(t, m, "hostnames"); len(ready) != 1 || !ready[0] {
					t.Errorf("EndpointSlice should have one ready endpoint, has %v", ready)
				}
			},
		}
	case "no-backend/no-ready-endpoints":
		return scenarioExpectations{
			rules: map[string][]string{"node1": {`"default/hostnames:default has no endpoints"`}},
			manifests: func(t *testing.T, m Manifests) {
				if _, ready := sliceOf(t, m, "hostnames"); len(ready) != 1 || ready[0] {
					t.Errorf("EndpointSlice should have one not-ready endpoint, has %v", ready)
				}
				for _, p := range m.Pods {
					if p.Name == HostnamesPod && podReady(p) {
						t.Errorf("pod %s should not be Ready", p.Name)
					}
				}
			},
		}
	case "wrong-source/":
		return scenarioExpectations{
			rules:  map[string][]string{"node1": {"KUBE-SVC-NPX46M4PTMTKRN6Y", noSEPFor("10.0.0.8:6443")}},
			absent: map[string][]string{"node1": {"! -s 10.244.0.0/16"}},
			manifests: func(t *testing.T, m Manifests) {
				if ips, _ := sliceOf(t, m, "kubernetes"); !slices.Equal(ips, []string{"10.0.0.8"}) {
					t.Errorf("kubernetes EndpointSlice should hold 10.0.0.8, has %v", ips)
				}
			},
		}
	case "missing-masquerade/":
		return scenarioExpectations{
			rules:  map[string][]string{"node1": {noSEPFor("10.244.2.5:9376")}},
			absent: map[string][]string{"node1": {"! -s 10.244.0.0/16"}},
		}
	case "missing-masquerade/fixed":
		return scenarioExpectations{rules: map[string][]string{"node1": {masqNonPods}}}
	case "no-local-endpoint/":
		return scenarioExpectations{
			rules: map[string][]string{
				"node1": {`"kube-system/nginx-ingress-lb:http has no local endpoints"`, "-d 172.18.0.100/32", "-j DROP", "KUBE-EXT-"},
				"node2": {"KUBE-SVL-", noSEPFor("10.244.2.5:80")},
			},
			absent: map[string][]string{"node1": {"KUBE-SVL-", "pod traffic for"}},
			manifests: func(t *testing.T, m Manifests) {
				for _, s := range m.Services {
					if s.Name != "nginx-ingress-lb" {
						continue
					}
					if s.Spec.ExternalTrafficPolicy != corev1.ServiceExternalTrafficPolicyLocal ||
						len(s.Status.LoadBalancer.Ingress) != 1 || s.Status.LoadBalancer.Ingress[0].IP != IngressLBIP {
						t.Errorf("service should be eTP=Local with ingress %s: %+v", IngressLBIP, s.Spec)
					}
				}
			},
		}
	case "no-local-endpoint/detect-local":
		return scenarioExpectations{rules: map[string][]string{"node1": {`"pod traffic for kube-system/nginx-ingress-lb:http external destinations"`}}}
	case "no-local-endpoint/fixed":
		return scenarioExpectations{rules: map[string][]string{"node1": {`"masquerade traffic for kube-system/nginx-ingress-lb:http external destinations"`}}}
	}
	return scenarioExpectations{}
}

// checkManifests parses the lab's manifest directory back and compares it
// with the objects the lab reports.
func checkManifests(t *testing.T, l *Lab, extra func(*testing.T, Manifests)) {
	t.Helper()
	got, err := ReadManifests(l.ManifestsDir())
	if err != nil {
		t.Fatalf("parse manifests: %v", err)
	}
	want := l.Manifests()
	s := l.Spec()
	if len(got.Nodes) != len(s.Nodes) || len(got.Pods) != len(s.Pods) || len(got.Services) != len(s.Services) ||
		len(got.EndpointSlices) != len(s.Services) || len(got.ConfigMaps) != 1 {
		t.Fatalf("manifests: got %d nodes, %d pods, %d services, %d slices, %d configmaps",
			len(got.Nodes), len(got.Pods), len(got.Services), len(got.EndpointSlices), len(got.ConfigMaps))
	}
	key := func(ns, name string) string { return ns + "/" + name }
	compare := func(kind string, wantObjs, gotObjs map[string]any) {
		for k, w := range wantObjs {
			if !equality.Semantic.DeepEqual(w, gotObjs[k]) {
				t.Errorf("%s %s does not round-trip", kind, k)
			}
		}
	}
	wm, gm := map[string]any{}, map[string]any{}
	for _, o := range want.Pods {
		wm[key(o.Namespace, o.Name)] = o
	}
	for _, o := range got.Pods {
		gm[key(o.Namespace, o.Name)] = o
		if o.APIVersion != "v1" || o.Kind != "Pod" || o.Status.PodIP == "" || o.Spec.NodeName == "" || o.Status.Phase != corev1.PodRunning {
			t.Errorf("pod %s: incomplete: %+v", o.Name, o.Status)
		}
	}
	compare("pod", wm, gm)
	wm, gm = map[string]any{}, map[string]any{}
	for _, o := range want.EndpointSlices {
		wm[key(o.Namespace, o.Name)] = o
	}
	for _, o := range got.EndpointSlices {
		gm[key(o.Namespace, o.Name)] = o
		if o.APIVersion != "discovery.k8s.io/v1" || o.Kind != "EndpointSlice" {
			t.Errorf("slice %s: type meta %+v", o.Name, o.TypeMeta)
		}
	}
	compare("endpointslice", wm, gm)
	wm, gm = map[string]any{}, map[string]any{}
	for _, o := range want.Services {
		wm[key(o.Namespace, o.Name)] = o
	}
	for _, o := range got.Services {
		gm[key(o.Namespace, o.Name)] = o
	}
	compare("service", wm, gm)
	wm, gm = map[string]any{}, map[string]any{}
	for _, o := range want.Nodes {
		wm[o.Name] = o
	}
	for _, o := range got.Nodes {
		gm[o.Name] = o
		if o.Spec.PodCIDR == "" || len(o.Status.Addresses) == 0 || o.Status.Addresses[0].Type != corev1.NodeInternalIP {
			t.Errorf("node %s: incomplete: %+v", o.Name, o.Status.Addresses)
		}
	}
	compare("node", wm, gm)
	if extra != nil {
		extra(t, got)
	}
}

func TestScenarios(t *testing.T) {
	requireRoot(t)
	for _, sc := range Scenarios() {
		for _, v := range append([]Variant{VariantDefault}, sc.Variants...) {
			name := sc.Name
			if v != VariantDefault {
				name += "/" + string(v)
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				ctx := testContext(t, 30*time.Second)
				spec, err := sc.Spec(v)
				if err != nil {
					t.Fatal(err)
				}
				l, err := Up(ctx, spec)
				if err != nil {
					t.Fatalf("up: %v", err)
				}
				id := l.ID()
				closed := false
				t.Cleanup(func() {
					if !closed {
						_ = l.Close()
					}
				})
				t.Logf("%s (%s) up in %s", name, id, l.SetupDuration().Round(time.Millisecond))

				built := l.Spec()
				for _, n := range built.Nodes {
					p, err := l.NodeNetns(n.Name)
					if err != nil || p != NetnsPath(id+"-"+n.Name) {
						t.Errorf("NodeNetns(%s) = %q, %v", n.Name, p, err)
					}
					if _, err := os.Stat(p); err != nil {
						t.Errorf("node netns: %v", err)
					}
				}
				for _, p := range built.Pods {
					if !strings.HasPrefix(p.Netns, id+"-") || p.HostVeth != CaliName(p.Namespace, p.Name) || len(p.HostVeth) > 15 {
						t.Errorf("pod %s: netns %q host veth %q", p.Name, p.Netns, p.HostVeth)
					}
				}

				for _, r := range l.RunChecks(ctx) {
					if r.OK() {
						t.Logf("%s", r)
					} else {
						t.Errorf("%s", r)
					}
				}

				exp := expectations(sc.Name, v)
				for node, wants := range exp.rules {
					saved, err := l.Exec(ctx, node, "iptables-save")
					if err != nil {
						t.Fatalf("iptables-save on %s: %v", node, err)
					}
					for _, w := range wants {
						if !strings.Contains(string(saved), w) {
							t.Errorf("%s: loaded rules lack %q", node, w)
						}
					}
					for _, w := range exp.absent[node] {
						if strings.Contains(string(saved), w) {
							t.Errorf("%s: loaded rules have %q", node, w)
						}
					}
					if !strings.Contains(l.Rules(node), "*nat") {
						t.Errorf("%s: Rules() is empty", node)
					}
				}
				checkManifests(t, l, exp.manifests)

				if err := l.Close(); err != nil {
					t.Fatalf("close: %v", err)
				}
				closed = true
				if err := l.Close(); err != nil {
					t.Errorf("second close: %v", err)
				}
				assertNoLeftovers(t, id)
			})
		}
	}
}

func TestResyncProxyRepairsStaleRules(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ctx := testContext(t, 20*time.Second)
	spec, err := StaleBackend(VariantDefault)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Dial(ctx, CurlPod, "tcp", "10.96.0.10:80"); !errors.Is(err, ErrNoRoute) {
		t.Fatalf("stale rules: got %v, want %v", err, ErrNoRoute)
	}
	if err := l.ResyncProxy(ctx, "node1"); err != nil {
		t.Fatal(err)
	}
	got, err := l.Dial(ctx, CurlPod, "tcp", "10.96.0.10:80")
	if err != nil || got != HostnamesPod {
		t.Fatalf("after resync: %q, %v", got, err)
	}
	if !strings.Contains(l.Rules("node1"), "--to-destination 10.244.1.6:9376") {
		t.Error("Rules() does not show the resynced DNAT")
	}
}

func TestExecAndClientHelpers(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ctx := testContext(t, 20*time.Second)
	spec, err := Healthy(VariantDefault)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()

	out, err := l.Exec(ctx, "node1", "ip", "route", "show")
	if err != nil {
		t.Fatal(err)
	}
	for _, w := range []string{"unreachable 10.244.1.0/24", "10.244.1.5 dev cali", "default via 192.168.50.1 dev eth0"} {
		if !strings.Contains(string(out), w) {
			t.Errorf("node1 routes lack %q:\n%s", w, out)
		}
	}
	out, err = l.Exec(ctx, CurlPod, "ip", "route", "show")
	if err != nil || !strings.Contains(string(out), "default via 169.254.1.1 dev eth0 onlink") {
		t.Errorf("pod routes: %v\n%s", err, out)
	}
	if _, err := l.Exec(ctx, "node1", "false"); err == nil {
		t.Error("Exec of a failing command returned no error")
	}

	// The bound source address is the one the server sees answering.
	if got, err := l.Dial(ctx, "node1", "tcp", "10.96.0.10:80", WithSource("192.168.50.11")); err != nil || got != HostnamesPod {
		t.Errorf("dial with source: %q, %v", got, err)
	}
	// A fixed source port makes the 5-tuple known in advance.
	r := l.Probe(ctx, Check{Name: "fixed tuple", From: CurlPod, Network: "tcp", Address: "10.96.0.10:80",
		Source: "10.244.1.2:40123", Expect: Expect{Answers: []string{HostnamesPod}}})
	if !r.OK() || r.Local != "10.244.1.2:40123" {
		t.Errorf("fixed source port: %s (local %q)", r, r.Local)
	}
	r = l.Probe(ctx, Check{Name: "udp tuple", From: CurlPod, Network: "udp", Address: "10.96.0.10:53", Source: ":40124"})
	if !r.OK() || r.Local != "10.244.1.2:40124" {
		t.Errorf("udp source port: %s (local %q)", r, r.Local)
	}
	if got, err := l.Exchange(ctx, CurlPod, "udp", "10.96.0.10:53"); err != nil || got != HostnamesPod {
		t.Errorf("exchange: %q, %v", got, err)
	}
	// Nothing listens on 10.244.1.5:81: the pod's kernel resets.
	if _, err := l.Dial(ctx, CurlPod, "tcp", "10.244.1.5:81"); !errors.Is(err, ErrConnRefused) {
		t.Errorf("closed port: %v, want %v", err, ErrConnRefused)
	}
	// A port without a service rule and no listener on the node network: no
	// answer at all, bounded by the timeout.
	start := time.Now()
	if _, err := l.Dial(ctx, CurlPod, "tcp", "192.168.50.99:80", WithTimeout(300*time.Millisecond)); !errors.Is(err, ErrTimeout) && !errors.Is(err, ErrNoRoute) {
		t.Errorf("silent address: %v, want a timeout or no route", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("timeout not honoured: %s", d)
	}
	if _, err := l.Netns("nope"); err == nil {
		t.Error("unknown client accepted")
	}
	if _, err := l.NodeNetns(CurlPod); err == nil {
		t.Error("NodeNetns accepted a pod")
	}
}

func TestUpFailureCleansUp(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ctx := testContext(t, 20*time.Second)
	spec, err := Healthy(VariantDefault)
	if err != nil {
		t.Fatal(err)
	}
	// Valid on paper, fails in the kernel: the gateway is on no network.
	spec.Nodes[0].Routes = []RouteSpec{{Dst: "10.9.0.0/16", Via: "10.99.0.1"}}
	l, err := Up(ctx, spec)
	if err == nil {
		l.Close()
		t.Fatal("Up succeeded with an impossible route")
	}
	m := regexp.MustCompile(`\((st[0-9a-f]{4})\)`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("error does not name the lab id: %v", err)
	}
	assertNoLeftovers(t, m[1])
}

func TestProxyModeIPVS(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	spec, err := Healthy(VariantDefault)
	if err != nil {
		t.Fatal(err)
	}
	spec.Proxy.Mode = ProxyIPVS
	l, err := Up(testContext(t, 10*time.Second), spec)
	if err == nil {
		l.Close()
		t.Fatal("ipvs mode came up although it is not implemented")
	}
	if _, statErr := os.Stat("/proc/net/ip_vs"); statErr != nil {
		if !errors.Is(err, ErrNotSupported) {
			t.Errorf("got %v, want %v", err, ErrNotSupported)
		}
	} else if !errors.Is(err, ErrNotImplemented) {
		t.Errorf("got %v, want %v", err, ErrNotImplemented)
	}
}

func TestCleanupRemovesLeftovers(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ctx := testContext(t, 20*time.Second)
	spec, err := MissingMasquerade(VariantDefault)
	if err != nil {
		t.Fatal(err)
	}
	l, err := Up(ctx, spec)
	if err != nil {
		t.Fatal(err)
	}
	id := l.ID()
	// A killed process leaves everything but its sockets behind.
	l.abandon()
	// And maybe a link in the root namespace.
	leak := &netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: id + "-leak"}, PeerName: id + "-leakp"}
	if err := netlink.LinkAdd(leak); err != nil {
		t.Fatalf("create root link: %v", err)
	}
	before, _ := filepath.Glob(filepath.Join(NetnsRunDir, id+"-*"))
	if len(before) != len(spec.Nodes)+len(spec.Pods)+len(spec.Networks) {
		t.Fatalf("abandoned lab has %d namespaces: %v", len(before), before)
	}
	removed, err := Cleanup(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if len(removed) != len(before) {
		t.Errorf("Cleanup removed %v, want %v", removed, before)
	}
	assertNoLeftovers(t, id)
}

func TestCleanupSparesLiveOwners(t *testing.T) {
	requireRoot(t)
	t.Parallel()
	ctx := testContext(t, 10*time.Second)
	if err := ensureNetnsRunDir(); err != nil {
		t.Fatal(err)
	}
	// A lab owned by another live process (pid 1).
	start, err := processStart(1)
	if err != nil {
		t.Fatal(err)
	}
	id := ""
	for i := 0xfff0; i <= 0xffff; i++ {
		cand := fmt.Sprintf("st%04x", i)
		if _, err := os.Stat(filepath.Join(OwnerDir, cand)); errors.Is(err, os.ErrNotExist) {
			id = cand
			break
		}
	}
	if id == "" {
		t.Fatal("no free test id")
	}
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(OwnerDir, id), []byte(fmt.Sprintf("1 %s\n", start)), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := createNetns(id + "-x"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _, _ = cleanup(context.Background(), id, true) })
	removed, err := Cleanup(ctx, id)
	if err != nil || len(removed) != 0 {
		t.Fatalf("Cleanup removed %v (%v) of a live owner's lab", removed, err)
	}
	// A dead owner: a pid that has exited.
	if err := os.WriteFile(filepath.Join(OwnerDir, id), []byte("999999999 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	removed, err = Cleanup(ctx, id)
	if err != nil || !slices.Equal(removed, []string{id + "-x"}) {
		t.Fatalf("Cleanup of a dead owner's lab removed %v (%v)", removed, err)
	}
	assertNoLeftovers(t, id)
	if _, err := Cleanup(ctx, "foo"); err == nil {
		t.Error("Cleanup accepted a prefix that is not a lab prefix")
	}
}
