package e2e

// End-to-end against the real thing: etcd and kube-apiserver on 127.0.0.1,
// the real kube-proxy (built from the same Kubernetes module) programming
// the lab's node from inside its network namespace, and svctrace reading the
// cluster through --kubeconfig.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/kubetest"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/pkg/event"
)

// syncBuffer is a bytes.Buffer safe to read while a process writes to it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// liveTrace is a running svctrace whose output can be watched while it runs.
type liveTrace struct {
	cmd            *exec.Cmd
	stdout, stderr syncBuffer
	done           chan error
}

// startKubeTrace runs svctrace against the API server (no --manifests) on
// the lab's node and waits until it is attached.
func startKubeTrace(t *testing.T, l *lab.Lab, node string, args ...string) *liveTrace {
	t.Helper()
	ns, err := l.NodeNetns(node)
	if err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	args = append(args, "--netns", ns, "--node", node, "-o", "json", "--ready-file", ready,
		"--backend", backend(), "--stats-interval", "0")
	tr := &liveTrace{cmd: exec.Command(binary(t), args...), done: make(chan error, 1)}
	tr.cmd.Stdout, tr.cmd.Stderr = &tr.stdout, &tr.stderr
	launch(t, tr.cmd, tr.done, ready, &tr.stderr)
	return tr
}

// waitOutput waits until stdout, stderr or either ("any") contains want.
func (tr *liveTrace) waitOutput(t *testing.T, which, want string, timeout time.Duration) {
	t.Helper()
	seen := func() bool {
		switch which {
		case "stdout":
			return strings.Contains(tr.stdout.String(), want)
		case "stderr":
			return strings.Contains(tr.stderr.String(), want)
		}
		return strings.Contains(tr.stdout.String(), want) || strings.Contains(tr.stderr.String(), want)
	}
	deadline := time.Now().Add(timeout)
	for !seen() {
		select {
		case err := <-tr.done:
			t.Fatalf("svctrace exited (%v) while waiting for %q on %s\nstdout: %s\nstderr: %s", err, want, which, tr.stdout.String(), tr.stderr.String())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q on svctrace's %s after %s\nstdout: %s\nstderr: %s", want, which, timeout, tr.stdout.String(), tr.stderr.String())
		}
	}
}

// waitVerdict waits until the verdict of the flow from src is out: verdicts
// are judged against the metadata of their time, so a test changing the
// cluster waits for them first.
func (tr *liveTrace) waitVerdict(t *testing.T, src netip.AddrPort) {
	t.Helper()
	tr.waitOutput(t, "stdout", `"before":{"src":"`+src.String()+`"`, 10*time.Second)
}

func (tr *liveTrace) stop(t *testing.T) output {
	t.Helper()
	stopLaunched(t, tr.cmd, tr.done, syscall.SIGINT, &tr.stderr)
	return parse(t, tr.stdout.String())
}

// notices returns the messages of the notice lines.
func (o output) notices() []string {
	var out []string
	for _, m := range o.other {
		if m["type"] == "notice" {
			s, _ := m["message"].(string)
			out = append(out, s)
		}
	}
	return out
}

// verdictFor returns the verdict of the flow whose original tuple is want.
func (o output) verdictFor(t *testing.T, want event.Tuple) event.Verdict {
	t.Helper()
	var seen []string
	for _, m := range o.other {
		if m["type"] != "verdict" {
			continue
		}
		if b, ok := m["before"].(map[string]any); ok && fmt.Sprint(b["src"]) == want.Src.String() && fmt.Sprint(b["dst"]) == want.Dst.String() {
			v := output{other: []map[string]any{m}}.verdicts()[0]
			if b, ok := m["backend"].(map[string]any); ok && v.Backend != nil {
				v.Backend.Status, _ = b["status"].(string)
			}
			return v
		}
		seen = append(seen, fmt.Sprint(m["verdict"], m["before"]))
	}
	t.Fatalf("no verdict for %s; verdicts: %v", want, seen)
	return event.Verdict{}
}

// kubeCluster is a real control plane with the lab's objects in it.
type kubeCluster struct {
	srv    *kubetest.Server
	client kubernetes.Interface
	svc    *corev1.Service
	slice  *discoveryv1.EndpointSlice
	pods   map[string]*corev1.Pod
}

// slicePorts are the EndpointSlice ports of default/hostnames.
func slicePorts() []discoveryv1.EndpointPort {
	return []discoveryv1.EndpointPort{
		{Name: ptrTo("default"), Port: ptrTo[int32](lab.HostnamesTarget), Protocol: ptrTo(corev1.ProtocolTCP)},
		{Name: ptrTo("dns"), Port: ptrTo[int32](lab.HostnamesTarget), Protocol: ptrTo(corev1.ProtocolUDP)},
	}
}

func ptrTo[T any](v T) *T { return &v }

// labPod creates the API object of one of the lab's pods, running at its
// lab address.
func (k *kubeCluster) labPod(t *testing.T, l *lab.Lab, name string) *corev1.Pod {
	t.Helper()
	for _, p := range l.Spec().Pods {
		if p.Name != name {
			continue
		}
		parts := strings.Split(name, "-")
		obj, err := kubetest.CreateRunningPod(context.Background(), k.client, kubetest.Pod{
			Namespace: p.Namespace, Name: p.Name, Node: p.Node, IP: p.IP, HostIP: "192.168.50.11",
			Labels: p.Labels, Ports: p.Ports, Owner: strings.Join(parts[:len(parts)-1], "-"),
		})
		if err != nil {
			t.Fatal(err)
		}
		k.pods[name] = obj
		return obj
	}
	t.Fatalf("no pod %s in the lab", name)
	return nil
}

// setEndpoints makes the Service's EndpointSlice list exactly these pods.
func (k *kubeCluster) setEndpoints(t *testing.T, pods ...string) {
	t.Helper()
	var objs []*corev1.Pod
	for _, p := range pods {
		objs = append(objs, k.pods[p])
	}
	ctx := context.Background()
	next := kubetest.EndpointSlice(k.svc, "hostnames-8f7nz", slicePorts(), objs...)
	var err error
	if k.slice == nil {
		k.slice, err = k.client.DiscoveryV1().EndpointSlices("default").Create(ctx, next, metav1.CreateOptions{})
	} else {
		next.ResourceVersion = k.slice.ResourceVersion
		k.slice, err = k.client.DiscoveryV1().EndpointSlices("default").Update(ctx, next, metav1.UpdateOptions{})
	}
	if err != nil {
		t.Fatal(err)
	}
}

func (k *kubeCluster) deletePod(t *testing.T, name string) {
	t.Helper()
	if err := kubetest.DeletePod(context.Background(), k.client, "default", name); err != nil {
		t.Fatal(err)
	}
}

// newKubeCluster starts the control plane and creates node1 and the
// Service default/hostnames of the lab's healthy scenario.
func newKubeCluster(t *testing.T) *kubeCluster {
	t.Helper()
	srv := kubetest.StartForTest(t)
	c, err := srv.Client()
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := kubetest.CreateNamespace(ctx, c, "default"); err != nil && !apierrors.IsAlreadyExists(errors.Unwrap(err)) {
		t.Fatal(err)
	}
	if err := kubetest.CreateNode(ctx, c, "node1", "192.168.50.11", "10.244.1.0/24"); err != nil {
		t.Fatal(err)
	}
	svc, err := c.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "hostnames"},
		Spec: corev1.ServiceSpec{
			ClusterIP: lab.HostnamesIP,
			Selector:  map[string]string{"app": "hostnames"},
			Ports: []corev1.ServicePort{
				{Name: "default", Protocol: corev1.ProtocolTCP, Port: lab.HostnamesPort, TargetPort: intstr.FromInt32(lab.HostnamesTarget)},
				{Name: "dns", Protocol: corev1.ProtocolUDP, Port: lab.HostnamesUDPPort, TargetPort: intstr.FromInt32(lab.HostnamesTarget)},
			},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return &kubeCluster{srv: srv, client: c, svc: svc, pods: map[string]*corev1.Pod{}}
}

// startKubeProxy runs the real kube-proxy in node's namespace, reaching the
// API server through a forwarder on the namespace's loopback.
func startKubeProxy(t *testing.T, l *lab.Lab, k *kubeCluster, node string, mode lab.ProxyMode) *kubetest.Process {
	t.Helper()
	nsPath, err := l.NodeNetns(node)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	fwd, err := kubetest.ForwardFromNetns(ctx, nsPath, strings.TrimPrefix(k.srv.URL, "https://"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = fwd.Close() })
	dir := t.TempDir()
	kubeconfig := filepath.Join(dir, "kube-proxy.kubeconfig")
	if err := k.srv.WriteKubeconfig(kubeconfig, fwd.URL()); err != nil {
		t.Fatal(err)
	}
	p, err := kubetest.StartKubeProxy(kubetest.BinariesForTest(t), kubetest.KubeProxyConfig{
		Netns: nsPath, NodeName: node, Kubeconfig: kubeconfig, Mode: string(mode), ClusterCIDR: lab.DefaultClusterCIDR, Dir: dir,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Stop(10 * time.Second); err != nil {
			t.Errorf("stop kube-proxy: %v", err)
		}
		if t.Failed() {
			b, _ := os.ReadFile(p.Log)
			t.Logf("kube-proxy log (last lines):\n%s", lastLines(string(b), 40))
		}
	})
	return p
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// waitRules waits until the rules kube-proxy wrote in node's namespace
// (the nat table, or the IPVS table) have every string of has and none of
// hasNot.
func waitRules(t *testing.T, l *lab.Lab, node string, kp *kubetest.Process, mode lab.ProxyMode, has, hasNot []string) {
	t.Helper()
	ns, err := l.Netns(node)
	if err != nil {
		t.Fatal(err)
	}
	argv := []string{"iptables-save", "-t", "nat"}
	if mode == lab.ProxyIPVS {
		argv = []string{"ipvsadm", "-Ln"}
	}
	deadline := time.Now().Add(60 * time.Second)
	var rules string
	for time.Now().Before(deadline) {
		out, err := l.Exec(context.Background(), ns, argv...)
		rules = string(out)
		present := func(s string) bool { return strings.Contains(rules, s) }
		if mode == lab.ProxyIPVS {
			// kube-proxy terminates IPVS real servers gracefully: a removed
			// endpoint stays at weight 0 until its connections expire, and
			// no new connection is scheduled to it.
			active := activeRealServers(rules)
			present = func(s string) bool { return active[s] || !strings.Contains(s, ":") && strings.Contains(rules, s) }
		}
		ok := err == nil
		for _, s := range has {
			ok = ok && present(s)
		}
		for _, s := range hasNot {
			ok = ok && !present(s)
		}
		if ok {
			return
		}
		select {
		case <-kp.Exited():
			b, _ := os.ReadFile(kp.Log)
			t.Fatalf("kube-proxy exited:\n%s", lastLines(string(b), 40))
		case <-time.After(200 * time.Millisecond):
		}
	}
	t.Fatalf("kube-proxy did not program %v (without %v) in 60s; rules:\n%s", has, hasNot, rules)
}

// activeRealServers returns the real servers ("ip:port") of `ipvsadm -Ln`
// output that have a weight above zero.
func activeRealServers(out string) map[string]bool {
	active := map[string]bool{}
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[0] == "->" && f[3] != "0" && f[3] != "Weight" {
			active[f[1]] = true
		}
	}
	return active
}

// kubeProxyMode is the mode kube-proxy runs in: $SVCTRACE_TEST_PROXY
// (iptables by default; ipvs where the kernel has ip_vs, as in the VM
// matrix).
func kubeProxyMode(t *testing.T) lab.ProxyMode {
	t.Helper()
	mode := proxyMode()
	w, err := lab.NewRuleWriter(mode)
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Available(); err != nil {
		reason := fmt.Sprintf("proxy mode %s on kernel %s: %v", mode, kernel.Release(), err)
		fmt.Printf("SVCTRACE-NA: %s\n", reason)
		t.Skipf("kernel feature absent: %s", reason)
	}
	return mode
}

// upKubeLab is the healthy scenario with three backend pods, whose node
// rules are left to the real kube-proxy.
func upKubeLab(t *testing.T) *lab.Lab {
	t.Helper()
	spec, err := lab.Healthy(lab.VariantScaled)
	if err != nil {
		t.Fatal(err)
	}
	spec.Proxy.Mode = lab.ProxyNone
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	l, err := lab.Up(ctx, spec, lab.WithManifestsDir(t.TempDir()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("lab close: %v", err)
		}
	})
	if rules := l.Rules("node1"); rules != "" {
		t.Fatalf("the lab wrote node1's rules itself:\n%s", rules)
	}
	return l
}

func TestKubeAPIRealKubeProxy(t *testing.T) {
	requireBackend(t)
	mode := kubeProxyMode(t)
	k := newKubeCluster(t)
	l := upKubeLab(t)
	ctx := context.Background()

	const (
		podA = lab.HostnamesPod  // 10.244.1.5
		podB = lab.HostnamesPod2 // 10.244.1.6
		podC = lab.HostnamesPod3 // 10.244.1.7
	)
	k.labPod(t, l, lab.CurlPod)
	k.labPod(t, l, podA)
	k.setEndpoints(t, podA)
	begin := time.Now()
	kp := startKubeProxy(t, l, k, "node1", mode)
	waitRules(t, l, "node1", kp, mode, []string{"10.96.0.10", "10.244.1.5:9376"}, nil)
	t.Logf("kube-proxy started and programmed node1 in %s", time.Since(begin).Round(time.Millisecond))

	tr := startKubeTrace(t, l, "node1", "--svc", "hostnames", "-n", "default", "--kubeconfig", k.srv.Kubeconfig)
	client := podIP(t, l, lab.CurlPod)
	vip := netip.MustParseAddr(lab.HostnamesIP)
	dial := func(port uint16) (string, error) {
		return l.Dial(ctx, lab.CurlPod, "tcp", lab.HostnamesIP+":80", lab.WithSource(":"+strconv.Itoa(int(port))), lab.WithTimeout(3*time.Second))
	}

	// 1. Healthy: kube-proxy DNATs to pod A.
	if answer, err := dial(40201); err != nil || answer != podA {
		t.Fatalf("through the ClusterIP: %q, %v", answer, err)
	}
	tr.waitVerdict(t, netip.AddrPortFrom(client, 40201))

	// 2. Replace the backend (new pod, new IP, slice updated, old pod
	// deleted): kube-proxy follows, and so do svctrace's filter and names.
	k.labPod(t, l, podB)
	k.setEndpoints(t, podB)
	k.deletePod(t, podA)
	waitRules(t, l, "node1", kp, mode, []string{"10.244.1.6:9376"}, []string{"10.244.1.5:9376"})
	tr.waitOutput(t, "stdout", "added 10.244.1.6:9376", 10*time.Second)
	if answer, err := dial(40202); err != nil || answer != podB {
		t.Fatalf("after the replacement: %q, %v", answer, err)
	}
	tr.waitVerdict(t, netip.AddrPortFrom(client, 40202))

	// 3. kube-proxy stops syncing (seed stories 000 and 001); the backend is
	// replaced again and the old one's network goes away with it.
	if err := kp.Signal(syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	k.labPod(t, l, podC)
	k.deletePod(t, podB) // first: the slice update below is what the test waits for
	k.setEndpoints(t, podC)
	nodeNS, _ := l.Netns("node1")
	if out, err := l.Exec(ctx, nodeNS, "ip", "link", "del", lab.CaliName("default", podB)); err != nil {
		t.Fatalf("remove %s's veth: %v %s", podB, err, out)
	}
	tr.waitOutput(t, "stdout", "added 10.244.1.7:9376", 10*time.Second)
	if _, err := dial(40203); !errors.Is(err, lab.ErrNoRoute) {
		t.Fatalf("with kube-proxy stopped: %v, want no route to host (the rules still DNAT to the deleted pod)", err)
	}
	tr.waitVerdict(t, netip.AddrPortFrom(client, 40203))

	// 4. kube-proxy resumes; then the API server goes away mid-trace.
	if err := kp.Signal(syscall.SIGCONT); err != nil {
		t.Fatal(err)
	}
	waitRules(t, l, "node1", kp, mode, []string{"10.244.1.7:9376"}, []string{"10.244.1.6:9376"})
	if err := k.srv.StopAPIServer(); err != nil {
		t.Fatal(err)
	}
	// A warning on stderr, or a notice record if the tracer prints them.
	tr.waitOutput(t, "any", "lost contact with the Kubernetes API server", 30*time.Second)
	if answer, err := dial(40204); err != nil || answer != podC {
		t.Fatalf("with the API server away: %q, %v", answer, err)
	}
	tr.waitVerdict(t, netip.AddrPortFrom(client, 40204)) // paths still come out
	if err := k.srv.StartAPIServer(ctx); err != nil {
		t.Fatal(err)
	}
	tr.waitOutput(t, "any", "answers again", 30*time.Second)
	// Scale up: a fourth backend (only its API object: no traffic goes to
	// it). Former endpoints stay in the filter for the retention window, so
	// a new address is what shows the filter following the cluster again.
	const podD = "hostnames-dd4cc9dd9-zz9k4"
	d, err := kubetest.CreateRunningPod(ctx, k.client, kubetest.Pod{Namespace: "default", Name: podD, Node: "node1",
		IP: "10.244.1.9", HostIP: "192.168.50.11", Labels: map[string]string{"app": "hostnames"}})
	if err != nil {
		t.Fatal(err)
	}
	k.pods[podD] = d
	k.setEndpoints(t, podC, podD)
	tr.waitOutput(t, "stdout", "added 10.244.1.9:9376", 60*time.Second)

	out := tr.stop(t)
	stderr := tr.stderr.String()
	// Once as a warning on stderr, once as a notice record in the output.
	if n, m := strings.Count(stderr, "lost contact"), strings.Count(out.raw, "lost contact"); n != 1 || m != 1 {
		t.Errorf("'lost contact' %d times on stderr and %d times in the output, want once each:\n%s", n, m, stderr)
	}
	t.Logf("notices: %q", out.notices())
	t.Logf("stderr: %s", stderr)

	check := func(port uint16, want netip.Addr, pod, verdict string) (*event.Path, event.Verdict) {
		t.Helper()
		orig := tup(netip.AddrPortFrom(client, port), netip.AddrPortFrom(vip, 80), 6)
		syn := out.find(t, orig)
		// A real server IPVS cannot route to is seen, by the stable backend,
		// only in IPVS's route lookup, which carries no port.
		unroutable := mode == lab.ProxyIPVS && backend() == "netfilter" && verdict == event.VerdictStaleBackend
		if len(syn.NAT) == 0 || syn.NAT[0].Type != event.DNAT || (syn.NAT[0].After.Dst != netip.AddrPortFrom(want, 9376) &&
			!(unroutable && syn.NAT[0].After.Dst == netip.AddrPortFrom(want, 0))) {
			t.Errorf("port %d: NAT %+v, want DNAT to %s:9376", port, syn.NAT, want)
		}
		if !strings.HasPrefix(syn.Backend.Name, "pod default/"+pod) {
			t.Errorf("port %d: backend named %q, want pod default/%s", port, syn.Backend.Name, pod)
		}
		v := out.verdictFor(t, orig)
		if v.Verdict != verdict {
			t.Errorf("port %d: verdict %s (%s), want %s", port, v.Verdict, v.Summary, verdict)
		}
		if v.Backend == nil || v.Backend.Pod != "default/"+pod {
			t.Errorf("port %d: verdict backend %+v, want pod default/%s", port, v.Backend, pod)
		}
		return syn, v
	}
	check(40201, netip.MustParseAddr("10.244.1.5"), podA, event.VerdictOK)
	check(40202, netip.MustParseAddr("10.244.1.6"), podB, event.VerdictOK)
	_, stale := check(40203, netip.MustParseAddr("10.244.1.6"), podB, event.VerdictStaleBackend)
	portless := mode == lab.ProxyIPVS && backend() == "netfilter" && stale.Evidence["dnat_target"] == "10.244.1.6:0"
	if (stale.Evidence["dnat_target"] != "10.244.1.6:9376" && !portless) || stale.Backend == nil ||
		// The pod's deletion and the slice's update come through separate
		// watches: the deletion may not have arrived yet (seen under
		// emulation), and the former endpoint names the pod either way.
		!(strings.Contains(stale.Backend.Status, "deleted") && strings.Contains(stale.Backend.Status, "ago") ||
			strings.Contains(stale.Backend.Status, "was an endpoint of default/hostnames until")) {
		t.Errorf("stale-backend evidence %v backend %+v: want the deleted pod as the DNAT target", stale.Evidence, stale.Backend)
	}
	eps, _ := stale.Evidence["ready_endpoints"].([]any)
	if len(eps) != 1 || !strings.HasPrefix(fmt.Sprint(eps[0]), "10.244.1.7:9376 (pod default/"+podC) {
		t.Errorf("ready_endpoints %v, want pod C", stale.Evidence["ready_endpoints"])
	}
	check(40204, netip.MustParseAddr("10.244.1.7"), podC, event.VerdictOK)
	t.Logf("stale-backend verdict: %s; backend %+v", stale.Summary, *stale.Backend)

	notices := strings.Join(out.notices(), "\n")
	for _, want := range []string{"added 10.244.1.6:9376", "added 10.244.1.7:9376", "added 10.244.1.9:9376"} {
		if !strings.Contains(notices, want) {
			t.Errorf("no notice saying %q:\n%s", want, notices)
		}
	}
}

// TestKubeAPIUsageErrors: an API server that is not there, an unknown and a
// headless Service: one-line errors, exit code 2, before any BPF.
func TestKubeAPIUsageErrors(t *testing.T) {
	dir := t.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "https://" + ln.Addr().String()
	ln.Close()
	nowhere := filepath.Join(dir, "nowhere.kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["c"] = &clientcmdapi.Cluster{Server: closed, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["u"] = &clientcmdapi.AuthInfo{Token: "x"}
	cfg.Contexts["c"] = &clientcmdapi.Context{Cluster: "c", AuthInfo: "u"}
	cfg.CurrentContext = "c"
	if err := clientcmd.WriteToFile(*cfg, nowhere); err != nil {
		t.Fatal(err)
	}
	run := func(args ...string) (int, string, time.Duration) {
		t.Helper()
		cmd := exec.Command(binary(t), args...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		begin := time.Now()
		err := cmd.Run()
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			t.Fatal(err)
		}
		return cmd.ProcessState.ExitCode(), stderr.String(), time.Since(begin)
	}
	expect := func(name string, code int, stderr string, want ...string) {
		t.Helper()
		if code != 2 {
			t.Errorf("%s: exit code %d, want 2 (stderr %q)", name, code, stderr)
		}
		if strings.Count(strings.TrimSpace(stderr), "\n") != 0 {
			t.Errorf("%s: want a one-line error, got %q", name, stderr)
		}
		for _, w := range want {
			if !strings.Contains(stderr, w) {
				t.Errorf("%s: stderr %q does not say %q", name, stderr, w)
			}
		}
	}

	code, stderr, took := run("--svc", "hostnames", "--kubeconfig", nowhere)
	expect("unreachable", code, stderr, "cannot reach the Kubernetes API server at "+closed, "connection refused")
	if took > 10*time.Second {
		t.Errorf("an unreachable API server took %s to report", took)
	}
	code, stderr, _ = run("--svc", "hostnames", "--kubeconfig", filepath.Join(dir, "missing"))
	expect("missing kubeconfig", code, stderr, "kubeconfig")

	k := newKubeCluster(t)
	ctx := context.Background()
	if _, err := k.client.CoreV1().Services("default").Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Namespace: "default", Name: "db"},
		Spec:       corev1.ServiceSpec{ClusterIP: corev1.ClusterIPNone, Ports: []corev1.ServicePort{{Port: 5432}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	code, stderr, _ = run("--svc", "hostname", "-n", "default", "--kubeconfig", k.srv.Kubeconfig)
	expect("unknown", code, stderr, "service default/hostname not found; did you mean default/hostnames?")
	code, stderr, _ = run("--svc", "hostnames", "-n", "kube-system", "--kubeconfig", k.srv.Kubeconfig)
	expect("other namespace", code, stderr, "service kube-system/hostnames not found; did you mean default/hostnames?")
	code, stderr, _ = run("--svc", "db", "--kubeconfig", k.srv.Kubeconfig)
	expect("headless", code, stderr, "no virtual IP")

	// Shell completion of --svc through the API.
	cmd := exec.Command(binary(t), "__complete", "--kubeconfig", k.srv.Kubeconfig, "-n", "default", "--svc", "h")
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "hostnames\tClusterIP 10.96.0.10") || strings.Contains(string(out), "db") {
		t.Errorf("completion of --svc h: %q", out)
	}
}
