// Package e2e holds svctrace's privileged end-to-end tests: a cluster-shaped
// lab in network namespaces with kube-proxy's real iptables rules, the real
// svctrace binary attached to the node's namespace, real TCP and UDP traffic,
// and assertions on the JSON svctrace prints. They run as root in CI and in
// every kernel of the VM matrix (SVCTRACE_TEST_BACKEND selects the backend).
package e2e

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"reflect"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/pkg/event"
)

func podIP(t *testing.T, l *lab.Lab, name string) netip.Addr {
	t.Helper()
	for _, p := range l.Spec().Pods {
		if p.Name == name {
			return netip.MustParseAddr(p.IP)
		}
	}
	t.Fatalf("no pod %s in the lab", name)
	return netip.Addr{}
}

func tup(src, dst netip.AddrPort, proto uint8) event.Tuple {
	return event.Tuple{Src: src, Dst: dst, Proto: proto}
}

func hasRoute(p *event.Path, kind string, dst netip.Addr) *event.RouteStep {
	for i := range p.Routes {
		if p.Routes[i].Kind == kind && p.Routes[i].Dst == dst {
			return &p.Routes[i]
		}
	}
	return nil
}

func TestHealthyClusterIP(t *testing.T) {
	natSource, plan := requirePlan(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	tr := startTrace(t, l, "node1", "hostnames")
	ctx := context.Background()

	client := podIP(t, l, lab.CurlPod)
	backend := podIP(t, l, lab.HostnamesPod)
	vip := netip.MustParseAddr(lab.HostnamesIP)
	answer, err := l.Dial(ctx, lab.CurlPod, "tcp", "10.96.0.10:80", lab.WithSource(":40123"))
	if err != nil || answer != lab.HostnamesPod {
		t.Fatalf("TCP through the ClusterIP: %q, %v", answer, err)
	}
	answer, err = l.Exchange(ctx, lab.CurlPod, "udp", "10.96.0.10:53", lab.WithSource(":40124"))
	if err != nil || answer != lab.HostnamesPod {
		t.Fatalf("UDP through the ClusterIP: %q, %v", answer, err)
	}
	out := tr.stop(t, syscall.SIGINT)

	// The client's SYN: DNAT to the backend pod, routed to its veth, delivered.
	syn := out.find(t, tup(netip.AddrPortFrom(client, 40123), netip.AddrPortFrom(vip, 80), 6))
	if syn.TCPFlags&0x02 == 0 || syn.Reply {
		t.Errorf("first packet: flags %#x reply %v, want the SYN", syn.TCPFlags, syn.Reply)
	}
	by := "nf_nat"
	if proxyMode() == lab.ProxyIPVS {
		by = "ipvs"
	}
	want := event.NATStep{Type: event.DNAT, By: by,
		Before: tup(netip.AddrPortFrom(client, 40123), netip.AddrPortFrom(vip, 80), 6),
		After:  tup(netip.AddrPortFrom(client, 40123), netip.AddrPortFrom(backend, 9376), 6),
		Source: natSource}
	if len(syn.NAT) != 1 {
		t.Fatalf("SYN NAT steps: %+v", syn.NAT)
	}
	got := syn.NAT[0]
	got.Hook = ""
	if got != want {
		t.Errorf("SYN NAT = %+v, want %+v", got, want)
	}
	wantHook := "PREROUTING"
	if by == "ipvs" {
		wantHook = "INPUT"
		if syn.IPVS == nil || syn.IPVS.Virtual != netip.AddrPortFrom(vip, 80) {
			t.Errorf("SYN IPVS step %+v", syn.IPVS)
		} else if plan["ipvs-conn"] != "" && (syn.IPVS.Connection != "new" || syn.IPVS.Real != netip.AddrPortFrom(backend, 9376)) {
			t.Errorf("SYN IPVS step %+v: want a new connection to the backend", syn.IPVS)
		}
	}
	if (natSource == event.SourceNetfilter || by == "ipvs") && syn.NAT[0].Hook != wantHook {
		t.Errorf("DNAT seen at %q, want %s", syn.NAT[0].Hook, wantHook)
	}
	if syn.Service != "default/hostnames:80/TCP" {
		t.Errorf("service %q", syn.Service)
	}
	if syn.Client.Name != "pod default/"+lab.CurlPod || syn.Backend.Name != "pod default/"+lab.HostnamesPod {
		t.Errorf("names: client %q backend %q", syn.Client.Name, syn.Backend.Name)
	}
	rt := hasRoute(syn, "fib", backend)
	if rt == nil || rt.Error != 0 || !strings.HasPrefix(rt.OutDev, "cali") {
		t.Errorf("no successful route lookup towards the backend's cali veth: %+v", syn.Routes)
	}
	if syn.Result.Outcome != event.OutcomeDelivered {
		t.Errorf("SYN outcome %s (%s)", syn.Result.Outcome, syn.Result.Reason)
	}

	// The backend's SYN-ACK: reverse NAT back to the ClusterIP. (IPVS's
	// reverse rewrite is seen through the netfilter hooks, not probed.)
	synack := out.find(t, tup(netip.AddrPortFrom(backend, 9376), netip.AddrPortFrom(client, 40123), 6))
	if by == "nf_nat" || natSource == event.SourceNetfilter {
		if !synack.Reply || len(synack.NAT) != 1 || !synack.NAT[0].Reverse ||
			synack.NAT[0].After.Src != netip.AddrPortFrom(vip, 80) {
			t.Errorf("SYN-ACK: reply %v NAT %+v", synack.Reply, synack.NAT)
		}
	}
	switch {
	case plan["devices"] == "tc":
		// Device programs on the backend pods' interfaces only: the reply
		// is last seen leaving the node towards the client pod's veth.
		if synack.Result.Outcome != event.OutcomeForwarded || !strings.HasPrefix(synack.Result.Dev, "cali") {
			t.Errorf("SYN-ACK outcome %s on %q, want forwarded to the client pod's cali veth", synack.Result.Outcome, synack.Result.Dev)
		}
	case synack.Result.Outcome != event.OutcomeDelivered:
		t.Errorf("SYN-ACK outcome %s", synack.Result.Outcome)
	}

	// UDP: the same DNAT, the UDP port's name.
	udp := out.find(t, tup(netip.AddrPortFrom(client, 40124), netip.AddrPortFrom(vip, 53), 17))
	if len(udp.NAT) != 1 || udp.NAT[0].After.Dst != netip.AddrPortFrom(backend, 9376) {
		t.Errorf("UDP NAT %+v", udp.NAT)
	}
	if udp.Service != "default/hostnames:53/UDP" || udp.Result.Outcome != event.OutcomeDelivered {
		t.Errorf("UDP service %q outcome %s", udp.Service, udp.Result.Outcome)
	}

	st := out.final(t)
	if st.Lost != 0 || st.Events == 0 || st.Paths == 0 {
		t.Errorf("final stats %+v", st)
	}
}

func TestHostOriginatedConnectSource(t *testing.T) {
	requireBackend(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	tr := startTrace(t, l, "node1", "hostnames")
	answer, err := l.Dial(context.Background(), "node1", "tcp", "10.96.0.10:80", lab.WithSource(":40125"))
	if err != nil || answer != lab.HostnamesPod {
		t.Fatalf("node1 to the ClusterIP: %q, %v", answer, err)
	}
	out := tr.stop(t, syscall.SIGTERM)
	nodeIP := netip.MustParseAddr("192.168.50.11")
	vip := netip.MustParseAddr(lab.HostnamesIP)
	src := nodeIP
	if proxyMode() == lab.ProxyIPVS {
		src = vip
	}
	syn := out.find(t, tup(netip.AddrPortFrom(src, 40125), netip.AddrPortFrom(vip, 80), 6))
	if syn.Entered != "local" {
		t.Errorf("entered %q, want local", syn.Entered)
	}
	// The source address was chosen at connect(), before any packet existed.
	// In IPVS mode the ClusterIP is local (kube-ipvs0): it is its own source.
	wantSrc := nodeIP
	if proxyMode() == lab.ProxyIPVS {
		wantSrc = vip
	}
	var chosen *event.RouteStep
	for i, r := range syn.Routes {
		if (r.Kind == "connect" || r.Kind == "output") && r.Dst == vip && r.Src == wantSrc {
			chosen = &syn.Routes[i]
		}
	}
	if chosen == nil {
		t.Errorf("no connect-time source selection in %+v", syn.Routes)
	}
	if len(syn.NAT) == 0 || syn.NAT[0].Type != event.DNAT || syn.NAT[0].After.Dst.Port() != 9376 {
		t.Errorf("NAT %+v", syn.NAT)
	}
	if (syn.NAT[0].Source == event.SourceNetfilter || syn.NAT[0].By == "ipvs") && syn.NAT[0].Hook != "OUTPUT" && syn.NAT[0].Hook != "INPUT" {
		t.Errorf("host traffic DNATed at %q, want OUTPUT", syn.NAT[0].Hook)
	}
}

func TestUnreachableBackend(t *testing.T) {
	natSource := requireBackend(t)
	spec, err := lab.UnreachableBackend(lab.VariantDefault)
	l := upLab(t, spec, err)
	tr := startTrace(t, l, "node1", "hostnames")
	_, err = l.Dial(context.Background(), lab.CurlPod, "tcp", "10.96.0.10:80", lab.WithSource(":40126"), lab.WithTimeout(2*time.Second))
	if !errors.Is(err, lab.ErrNoRoute) {
		t.Fatalf("dial: %v, want no route to host", err)
	}
	out := tr.stop(t, syscall.SIGINT)
	client := podIP(t, l, lab.CurlPod)
	backend := podIP(t, l, lab.HostnamesPod)
	syn := out.find(t, tup(netip.AddrPortFrom(client, 40126), netip.AddrPortFrom(netip.MustParseAddr(lab.HostnamesIP), 80), 6))
	wantTarget := netip.AddrPortFrom(backend, 9376)
	if proxyMode() == lab.ProxyIPVS && natSource == event.SourceNetfilter {
		// IPVS fails to route to the real server and drops the packet at
		// INPUT: the stable backend knows the real server from the failed
		// lookup, not its port.
		wantTarget = netip.AddrPortFrom(backend, 0)
	}
	if len(syn.NAT) == 0 || syn.NAT[0].After.Dst != wantTarget {
		t.Errorf("NAT %+v, want DNAT to %s", syn.NAT, wantTarget)
	}
	if syn.Result.Outcome != event.OutcomeRejected || syn.Result.Reason != "ICMP host unreachable" {
		t.Errorf("outcome %s %q, want rejected with ICMP host unreachable", syn.Result.Outcome, syn.Result.Reason)
	}
	if syn.Result.DropReason == "" {
		t.Errorf("no kernel drop reason with the rejection: %+v", syn.Result)
	}
	if rt := hasRoute(syn, "fib", backend); rt == nil || rt.Error != -113 {
		t.Errorf("want the failed route lookup (EHOSTUNREACH) towards %s: %+v", backend, syn.Routes)
	}
}

// TestPerfBufferTransport forces the perf event array (the transport of
// kernels before 5.8, which have no ring buffer) and checks that packets
// are still traced end to end.
func TestPerfBufferTransport(t *testing.T) {
	requireBackend(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	tr := startTrace(t, l, "node1", "hostnames", "--perf-buffer")
	answer, err := l.Dial(context.Background(), lab.CurlPod, "tcp", "10.96.0.10:80", lab.WithSource(":40127"))
	if err != nil || answer != lab.HostnamesPod {
		t.Fatalf("dial: %q, %v", answer, err)
	}
	out := tr.stop(t, syscall.SIGINT)
	client := podIP(t, l, lab.CurlPod)
	syn := out.find(t, tup(netip.AddrPortFrom(client, 40127), netip.AddrPortFrom(netip.MustParseAddr(lab.HostnamesIP), 80), 6))
	if syn.Result.Outcome != event.OutcomeDelivered || len(syn.Routes) == 0 {
		t.Errorf("SYN over the perf buffer: outcome %s, %d routes", syn.Result.Outcome, len(syn.Routes))
	}
	if st := out.final(t); st.Lost != 0 || st.Events == 0 {
		t.Errorf("final stats %+v", st)
	}
	t.Logf("stderr: %s", tr.stderr.String())
}

// Where the kernel has bpf_rdonly_cast the programs read packets and
// conntrack entries through it; --helper-reads keeps the helper calls that
// older kernels use. Both read the same connection the same way: its
// paths' tuples, TCP flags, rewrites and outcomes are equal.
func TestCastAndHelperReadsAgree(t *testing.T) {
	requireBackend(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	client := podIP(t, l, lab.CurlPod)
	vip := netip.MustParseAddr(lab.HostnamesIP)
	type view struct {
		Original, Final event.Tuple
		Flags           uint8
		NAT             []event.NATStep
		Outcome         event.Outcome
		Steps           []string
	}
	trace := func(port uint16, args ...string) view {
		tr := startTrace(t, l, "node1", "hostnames", args...)
		answer, err := l.Dial(context.Background(), lab.CurlPod, "tcp", "10.96.0.10:80", lab.WithSource(fmt.Sprintf(":%d", port)))
		if err != nil || answer != lab.HostnamesPod {
			t.Fatalf("dial: %q, %v", answer, err)
		}
		out := tr.stop(t, syscall.SIGINT)
		syn := out.find(t, tup(netip.AddrPortFrom(client, port), netip.AddrPortFrom(vip, 80), 6))
		v := view{Original: syn.Original, Final: syn.Final, Flags: syn.TCPFlags, NAT: syn.NAT, Outcome: syn.Result.Outcome}
		for i := range v.NAT {
			v.NAT[i].Before.Src = netip.AddrPortFrom(v.NAT[i].Before.Src.Addr(), 0)
			v.NAT[i].After.Src = netip.AddrPortFrom(v.NAT[i].After.Src.Addr(), 0)
		}
		v.Original.Src = netip.AddrPortFrom(client, 0)
		v.Final.Src = netip.AddrPortFrom(v.Final.Src.Addr(), 0)
		for _, s := range syn.Steps {
			v.Steps = append(v.Steps, s.Where)
		}
		if st := out.final(t); st.Lost != 0 || st.Events == 0 {
			t.Errorf("final stats %+v", st)
		}
		return v
	}
	cast := trace(40128)
	helper := trace(40129, "--helper-reads")
	if cast.Flags != 0x02 || len(cast.NAT) != 1 || cast.Outcome != event.OutcomeDelivered {
		t.Errorf("SYN read through casts: %+v", cast)
	}
	if !reflect.DeepEqual(cast, helper) {
		t.Errorf("casts and helper calls read the SYN differently:\n%+v\n%+v", cast, helper)
	}
}

// TestDeviceHooks: by default (where the node's netfilter links are
// attached and the kernel has tcx) device events come from the traced
// Service's backend pod's interface only; with --device-hooks all they come
// from every interface (tracepoints), the client pod's too, so the reply is
// seen delivered in the client pod.
func TestDeviceHooks(t *testing.T) {
	_, plan := requirePlan(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	client := podIP(t, l, lab.CurlPod)
	backend := podIP(t, l, lab.HostnamesPod)
	vip := netip.MustParseAddr(lab.HostnamesIP)
	devSteps := func(p *event.Path) map[event.Source][]string {
		out := map[event.Source][]string{}
		for _, s := range p.Steps {
			if s.Kind == event.KindRecv || s.Kind == event.KindXmit {
				out[s.Source] = append(out[s.Source], s.Where+" "+s.Dev)
			}
		}
		return out
	}
	for i, mode := range []string{"pods", "all"} {
		tr := startTrace(t, l, "node1", "hostnames", "--device-hooks", mode)
		port := uint16(40200 + i)
		answer, err := l.Dial(context.Background(), lab.CurlPod, "tcp", "10.96.0.10:80", lab.WithSource(fmt.Sprintf(":%d", port)))
		if err != nil || answer != lab.HostnamesPod {
			t.Fatalf("%s: TCP through the ClusterIP: %q, %v", mode, answer, err)
		}
		out := tr.stop(t, syscall.SIGINT)
		syn := out.find(t, tup(netip.AddrPortFrom(client, port), netip.AddrPortFrom(vip, 80), 6))
		synack := out.find(t, tup(netip.AddrPortFrom(backend, 9376), netip.AddrPortFrom(client, port), 6))
		sd, ad := devSteps(syn), devSteps(synack)
		if mode == "pods" && plan["devices"] == "tc" {
			// The SYN received on the backend's eth0, the SYN-ACK queued
			// there; nothing of the client pod's side.
			if len(sd[event.SourceTC]) != 1 || len(sd[event.SourceTracepoint]) != 0 || syn.Result.Outcome != event.OutcomeDelivered {
				t.Errorf("pods: SYN device steps %v, outcome %s; want one tc step, delivered", sd, syn.Result.Outcome)
			}
			if len(ad[event.SourceTC]) != 1 || len(ad[event.SourceTracepoint]) != 0 || synack.Result.Outcome != event.OutcomeForwarded {
				t.Errorf("pods: SYN-ACK device steps %v, outcome %s; want one tc step, forwarded", ad, synack.Result.Outcome)
			}
			continue
		}
		// Every interface on the way: the client pod's eth0, the node's
		// two veths, the backend's eth0.
		if len(sd[event.SourceTracepoint]) != 4 || len(sd[event.SourceTC]) != 0 || syn.Result.Outcome != event.OutcomeDelivered {
			t.Errorf("%s: SYN device steps %v, outcome %s; want 4 from tracepoints, delivered", mode, sd, syn.Result.Outcome)
		}
		if len(ad[event.SourceTracepoint]) != 4 || synack.Result.Outcome != event.OutcomeDelivered {
			t.Errorf("%s: SYN-ACK device steps %v, outcome %s; want 4 from tracepoints, delivered", mode, ad, synack.Result.Outcome)
		}
	}
}
