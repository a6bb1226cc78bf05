package attach

import (
	"errors"
	"net/netip"
	"os"
	"os/exec"
	"strings"
	"testing"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/testenv"
)

// ourLinks lists the kernel's BPF links whose program is one of svctrace's.
func ourLinks(t *testing.T) map[link.ID]string {
	t.Helper()
	names := map[string]bool{}
	spec, err := bpfobj.LoadSvctrace()
	if err != nil {
		t.Fatal(err)
	}
	for n := range spec.Programs {
		names[n] = true // cilium/ebpf reports full names (from BTF), not the kernel's 15 characters
	}
	out := map[link.ID]string{}
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		prog, err := ebpf.NewProgramFromID(info.Program)
		if err != nil {
			continue
		}
		pi, err := prog.Info()
		prog.Close()
		if err == nil && names[pi.Name] {
			out[info.ID] = pi.Name
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

func newNetns(t *testing.T) string {
	t.Helper()
	name := "stattach" + t.Name()[len(t.Name())-3:]
	if out, err := exec.Command("ip", "netns", "add", name).CombinedOutput(); err != nil {
		t.Fatalf("ip netns add: %v: %s", err, out)
	}
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", name).Run() })
	return "/run/netns/" + name
}

func TestLoadAttachAndRelease(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.SkipIfMissing(t, "BPF netfilter links (6.4+)", kernel.HaveNetfilterLink())
	before := ourLinks(t)
	ns := newNetns(t)
	p, err := Load(Options{Backend: BackendNetfilter, NetnsPath: ns})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	devicesTried := ""
	for _, st := range p.Plan() {
		got[st.Hook] = st.Impl
		if st.Hook == "devices" {
			devicesTried = strings.Join(st.Tried, "; ")
		}
		if st.Impl == "" && st.Skipped == "" {
			t.Errorf("hook %s neither attached nor skipped", st.Hook)
		}
	}
	// Device events from tcx programs where the kernel has tcx links
	// (6.6+); netfilter links alone (6.4, 6.5): the tracepoints.
	devices, deviceLinks := "tc", 0
	if tcCheck(&env{btf: mustBTF(t)}) != nil {
		devices, deviceLinks = "tracepoint", 2
		if !strings.HasPrefix(devicesTried, "tc: ") {
			t.Errorf("devices hook without tcx: tried %q, want the tc flavour's reason", devicesTried)
		}
	}
	for hook, want := range map[string]string{
		"netfilter": "netfilter", "nat": "netfilter", "route": "tracepoint",
		"drop": "tracepoint", "devices": devices, "source": "tracepoint",
	} {
		if got[hook] != want {
			t.Errorf("hook %s uses %q, want %q", hook, got[hook], want)
		}
	}
	during := ourLinks(t)
	// 6 netfilter links (before NAT at OUTPUT and INPUT, after NAT at all
	// four NAT hooks) plus one per tracepoint; the tc device programs wait
	// for SetDevices.
	if n := len(during) - len(before); n != 6+4+deviceLinks {
		t.Errorf("%d links attached, want %d (6 netfilter, %d tracepoints): %v", n, 6+4+deviceLinks, 4+deviceLinks, during)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	after := ourLinks(t)
	for id, name := range after {
		if _, ok := before[id]; !ok {
			t.Errorf("link %d (%s) left behind after Close", id, name)
		}
	}
}

// TestAttachReleaseBackend attaches with the backend under test
// ($SVCTRACE_TEST_BACKEND in the VM matrix, auto elsewhere) and checks that
// Close leaves no link behind.
func TestAttachReleaseBackend(t *testing.T) {
	testenv.RequireRoot(t)
	b := BackendAuto
	if env := os.Getenv("SVCTRACE_TEST_BACKEND"); env != "" {
		var err error
		if b, err = ParseBackend(env); err != nil {
			t.Fatal(err)
		}
	}
	before := ourLinks(t)
	p, err := Load(Options{Backend: b})
	if err != nil {
		t.Fatal(err)
	}
	kernelFunc := map[string]bool{}
	for _, h := range hookTable() {
		kernelFunc[h.name] = h.kernelFunc
	}
	attached := 0
	for _, st := range p.Plan() {
		if st.Impl != "" && !strings.HasPrefix(st.Detail, "from the ") {
			attached++
			// --backend picks the flavour of kernel-function hooks; the
			// others (drops, ICMP, devices) use what the kernel has.
			if b != BackendAuto && kernelFunc[st.Hook] && st.Impl != string(b) && !(b == BackendNetfilter && st.Impl == "tracepoint") {
				t.Errorf("hook %s uses %s with --backend %s", st.Hook, st.Impl, b)
			}
		}
	}
	during := ourLinks(t)
	if attached == 0 || len(during) <= len(before) {
		t.Errorf("%d hooks attached, %d links", attached, len(during)-len(before))
	}
	t.Logf("backend %s on %s: %d hooks, %d links", b, kernel.Release(), attached, len(during)-len(before))
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for id, name := range ourLinks(t) {
		if _, ok := before[id]; !ok {
			t.Errorf("link %d (%s) left behind after Close", id, name)
		}
	}
}

// TestSkipHooks leaves hooks out as --skip-hooks asks: reported as left
// out, and none of their programs attached.
func TestSkipHooks(t *testing.T) {
	testenv.RequireRoot(t)
	before := ourLinks(t)
	p, err := Load(Options{SkipHooks: []string{"devices", "drop"}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	attached := 0
	for _, st := range p.Plan() {
		switch {
		case st.Hook == "devices" || st.Hook == "drop":
			if st.Impl != "" || st.Skipped != "left out (--skip-hooks)" {
				t.Errorf("hook %s: impl %q, skipped %q; want it left out", st.Hook, st.Impl, st.Skipped)
			}
		case st.Impl != "":
			attached++
		}
	}
	if attached == 0 {
		t.Errorf("no other hook attached: %+v", p.Plan())
	}
	for id, name := range ourLinks(t) {
		if _, ok := before[id]; ok {
			continue
		}
		if strings.Contains(name, "netif_receive") || strings.Contains(name, "net_dev_queue") || strings.Contains(name, "kfree_skb") {
			t.Errorf("link %d runs %s of a hook left out", id, name)
		}
	}
}

func TestForcedBackendReportsSkips(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := Load(Options{Backend: BackendKprobe, LoadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	for _, st := range p.Plan() {
		if st.Hook == "netfilter" && st.Impl != "" {
			t.Errorf("netfilter links attached with --backend kprobe")
		}
		if st.Hook == "nat" {
			if kernel.HaveKprobes() == nil && kernel.ModuleLoaded("nf_nat") {
				if st.Impl != "kprobe" {
					t.Errorf("nat hook uses %q with kprobes available: %v", st.Impl, st.Tried)
				}
			} else if st.Skipped == "" || len(st.Tried) == 0 {
				t.Errorf("nat hook on a kernel without kprobes: want a skip with its reason, got %+v", st)
			}
		}
	}
}

func TestFilterUpdatesInPlace(t *testing.T) {
	testenv.RequireRoot(t)
	p, err := Load(Options{Backend: BackendNetfilter, LoadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	a := netip.MustParseAddr("10.96.0.10")
	b := netip.MustParseAddr("10.244.1.5")
	if _, err := p.SetFilter([]FilterEntry{{Addr: a, Port: 80, Proto: 6}, {Addr: b, Port: 9376, Proto: 6}, {Port: 30080, Proto: 6}}, false); err != nil {
		t.Fatal(err)
	}
	if n := count(t, p.Map("filter")); n != 3 {
		t.Errorf("filter has %d keys, want 3", n)
	}
	if n := count(t, p.Map("filter_addrs")); n != 2 {
		t.Errorf("filter_addrs has %d keys, want 2", n)
	}
	var cfg bpfobj.SvctraceConfig
	if err := p.Map("config_map").Lookup(uint32(0), &cfg); err != nil || cfg.AnyAddrKeys != 1 {
		t.Errorf("config %+v (%v): want any_addr_keys for the NodePort", cfg, err)
	}
	// The backend changed: its old address goes, the new one comes, the rest stays.
	c := netip.MustParseAddr("10.244.1.6")
	skipped, err := p.SetFilter([]FilterEntry{{Addr: a, Port: 80, Proto: 6}, {Addr: c, Port: 9376, Proto: 6}, {Addr: netip.MustParseAddr("fd00::1"), Port: 80, Proto: 6}}, false)
	if err != nil {
		t.Fatal(err)
	}
	if skipped != 1 {
		t.Errorf("skipped %d IPv6 entries, want 1", skipped)
	}
	k, _ := filterKey(FilterEntry{Addr: b, Port: 9376, Proto: 6})
	var role uint32
	if err := p.Map("filter").Lookup(k, &role); !errors.Is(err, ebpf.ErrKeyNotExist) {
		t.Errorf("old backend still in the filter (%v)", err)
	}
	if n := count(t, p.Map("filter")); n != 2 {
		t.Errorf("filter has %d keys, want 2", n)
	}
	if err := p.Map("config_map").Lookup(uint32(0), &cfg); err != nil || cfg.AnyAddrKeys != 0 {
		t.Errorf("config %+v: any_addr_keys should be off without NodePorts", cfg)
	}
}

func count(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	n := 0
	var k, v []byte
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestMain(m *testing.M) { os.Exit(m.Run()) }

func mustBTF(t *testing.T) *kernel.BTF {
	t.Helper()
	b, err := kernel.LoadBTF()
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestNoopPrograms attaches the same hooks twice, tracing everything, while
// the namespace talks to itself: the real programs emit events, the programs
// that return at once (the benchmark's measure of the hooks' own cost)
// attach every hook alike and emit none.
func TestNoopPrograms(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.SkipIfMissing(t, "BPF netfilter links (6.4+)", kernel.HaveNetfilterLink())
	ns := newNetns(t)
	name := ns[strings.LastIndex(ns, "/")+1:]
	if out, err := exec.Command("ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	events := func(noop bool) (uint64, []HookStatus) {
		p, err := Load(Options{Backend: BackendNetfilter, NetnsPath: ns, NoopPrograms: noop})
		if err != nil {
			t.Fatal(err)
		}
		defer p.Close()
		if _, err := p.SetFilter(nil, true); err != nil {
			t.Fatal(err)
		}
		udpEcho(t, ns, ns, netip.MustParseAddrPort("127.0.0.1:9999"), 3)
		c, err := p.Counters()
		if err != nil {
			t.Fatal(err)
		}
		var n uint64
		for i := range c.Emitted {
			n += c.Emitted[i] + c.Lost[i]
		}
		return n, p.Plan()
	}
	real, realPlan := events(false)
	noop, noopPlan := events(true)
	if real == 0 {
		t.Errorf("the real programs emitted no event for the namespace's pings")
	}
	if noop != 0 {
		t.Errorf("the programs returning at once emitted %d events", noop)
	}
	if len(realPlan) != len(noopPlan) {
		t.Fatalf("plans differ: %v vs %v", realPlan, noopPlan)
	}
	for i := range realPlan {
		if realPlan[i].Impl != noopPlan[i].Impl {
			t.Errorf("hook %s: %q with the real programs, %q with the ones returning at once", realPlan[i].Hook, realPlan[i].Impl, noopPlan[i].Impl)
		}
	}
}
