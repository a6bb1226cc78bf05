// Package diagnose names the failure: from a packet's path, the cluster's
// metadata and facts about the node, it concludes one verdict per flow
// (ok, stale-backend, no-backend, wrong-source, missing-masquerade,
// no-local-endpoint, dropped) with its evidence and a suggested fix.
package diagnose

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/pkg/event"
)

// Devices tells what the diagnosis needs about the node's devices.
type Devices interface {
	// Prefixes returns the IPv4 addresses (with prefix length) of a device.
	Prefixes(netns, ifindex uint32) []netip.Prefix
	// Kind returns the device's link type ("veth", "vxlan", "ipip", "dummy", …).
	Kind(netns, ifindex uint32) string
}

// Config configures a Diagnoser.
type Config struct {
	Snap    *meta.Snapshot
	Service *meta.Service
	// Node is the node svctrace runs on (from --node or worked out from the
	// node's addresses); "" when unknown.
	Node string
	// NodeNetns is the inode of the node's network namespace.
	NodeNetns uint32
	Devices   Devices
}

// Diagnoser produces verdicts. It remembers the verdict of each flow so a
// flow gets a new verdict only when its fate changes. Not safe for
// concurrent use.
type Diagnoser struct {
	cfg   Config
	flows map[flowKey]string
	order []flowKey
	// healthy remembers, per flow judged ok, what its ok path looked like:
	// a later path of the flow that looks the same under the same metadata
	// is ok again without running the rules (most paths are such).
	healthy map[flowKey]okShape
	gen     uint64 // bumped with every metadata change
}

// okShape is what of a path the rules' answer depends on beyond the flow and
// the metadata: where it ended, how it was rewritten.
type okShape struct {
	final              event.Tuple
	outcome            event.Outcome
	reason, dropReason string
	reply              bool
	nat                int
	ipvs               bool
	gen                uint64
}

func shape(p *event.Path, gen uint64) okShape {
	return okShape{final: p.Final, outcome: p.Result.Outcome, reason: p.Result.Reason, dropReason: p.Result.DropReason,
		reply: p.Reply, nat: len(p.NAT), ipvs: p.IPVS != nil, gen: gen}
}

type flowKey struct {
	src, dst netip.AddrPort
	proto    uint8
}

const maxFlows = 65536

// New returns a Diagnoser.
func New(cfg Config) *Diagnoser {
	return &Diagnoser{cfg: cfg, flows: map[flowKey]string{}, healthy: map[flowKey]okShape{}}
}

// SetSnapshot replaces the metadata (the cluster changed while tracing).
func (d *Diagnoser) SetSnapshot(snap *meta.Snapshot, svc *meta.Service) {
	d.cfg.Snap, d.cfg.Service = snap, svc
	d.gen++
}

// Path returns the verdict for p's flow, or nil when p adds nothing: a
// later packet of a flow whose verdict is unchanged, a healthy reply, or
// traffic that never went to the Service's addresses.
func (d *Diagnoser) Path(p *event.Path) *event.Verdict {
	k := key(p)
	sh := shape(p, d.gen)
	if prev, ok := d.healthy[k]; ok && prev == sh {
		return nil // ok, as the last path of the flow that looked like this
	}
	v := d.judge(p)
	if v == nil {
		return nil
	}
	if v.Verdict == event.VerdictOK {
		d.healthy[k] = sh
	} else {
		delete(d.healthy, k)
	}
	if prev, ok := d.flows[k]; ok && prev == v.Verdict {
		return nil
	}
	if _, ok := d.flows[k]; !ok {
		if len(d.order) >= maxFlows {
			delete(d.flows, d.order[0])
			delete(d.healthy, d.order[0])
			d.order = d.order[1:]
		}
		d.order = append(d.order, k)
	}
	d.flows[k] = v.Verdict
	return v
}

// key identifies the flow in its request direction.
func key(p *event.Path) flowKey {
	t := p.Original
	if p.Conntrack != nil {
		t = p.Conntrack.Original
	} else if p.Reply {
		t = t.Reverse()
	}
	return flowKey{t.Src, t.Dst, t.Proto}
}

// facts are what the rules look at, extracted from a path once.
type facts struct {
	p       *event.Path
	svcAddr netip.AddrPort // the Service address the flow was sent to
	role    string         // "cluster-ip", "load-balancer-ip", "external-ip", "node-port"
	port    *meta.ServicePort
	dnat    *event.NATStep
	snat    *event.NATStep
	failed  bool
	local   bool // originated on the node
	chosen  *event.RouteStep
	outStep *event.Step // where the packet left the node
}

func (d *Diagnoser) gather(p *event.Path) (*facts, bool) {
	f := &facts{p: p}
	dst := p.Original.Dst
	if p.Conntrack != nil {
		dst = p.Conntrack.Original.Dst
	} else if p.Reply {
		dst = p.Original.Src
	}
	svc := d.cfg.Service
	if svc == nil {
		return nil, false
	}
	f.role, f.port = serviceRole(svc, dst, p.Original.Proto)
	if f.role == "" {
		return nil, false // not Service traffic (direct to a pod, or an ICMP error)
	}
	f.svcAddr = dst
	for i := range p.NAT {
		n := &p.NAT[i]
		if n.Reverse {
			continue
		}
		if n.Type == event.DNAT && f.dnat == nil {
			f.dnat = n
		}
		if n.Type == event.SNAT && f.snat == nil {
			f.snat = n
		}
	}
	switch p.Result.Outcome {
	case event.OutcomeDropped, event.OutcomeRejected, event.OutcomeNoRoute:
		f.failed = true
	}
	f.local = p.Entered == "local"
	for i := range p.Routes {
		r := &p.Routes[i]
		if (r.Kind == "connect" || r.Kind == "output") && r.Src.IsValid() && f.chosen == nil {
			f.chosen = r
		}
	}
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Netns != d.cfg.NodeNetns || s.Ifindex == 0 {
			continue
		}
		if (s.Kind == event.KindNetfilter && strings.HasPrefix(s.Where, "POSTROUTING")) || s.Kind == event.KindXmit {
			f.outStep = s
		}
	}
	return f, true
}

// serviceRole says which of the Service's addresses dst is.
func serviceRole(svc *meta.Service, dst netip.AddrPort, proto uint8) (string, *meta.ServicePort) {
	a := dst.Addr().Unmap()
	for i := range svc.Ports {
		sp := &svc.Ports[i]
		if proto != 0 && uint8(sp.Protocol) != proto {
			continue
		}
		if sp.Port == dst.Port() {
			if slices.Contains(svc.ClusterIPs, a) {
				return "cluster-ip", sp
			}
			if slices.Contains(svc.LoadBalancerIPs, a) {
				return "load-balancer-ip", sp
			}
			if slices.Contains(svc.ExternalIPs, a) {
				return "external-ip", sp
			}
		}
		if sp.NodePort != 0 && sp.NodePort == dst.Port() {
			return "node-port", sp
		}
	}
	return "", nil
}

func (d *Diagnoser) judge(p *event.Path) *event.Verdict {
	f, ok := d.gather(p)
	if !ok {
		return nil
	}
	if p.Reply {
		if !f.failed {
			return nil
		}
		return d.dropped(f)
	}
	for _, rule := range []func(*facts) *event.Verdict{
		d.staleBackend,
		d.noLocalEndpoint,
		d.noBackend,
		d.missingMasquerade,
		d.wrongSource,
	} {
		if v := rule(f); v != nil {
			return v
		}
	}
	if f.failed {
		return d.dropped(f)
	}
	if f.dnat != nil {
		return d.ok(f)
	}
	return nil
}

func (d *Diagnoser) verdict(f *facts, id, summary, fix string) *event.Verdict {
	v := &event.Verdict{
		Type:     "verdict",
		Verdict:  id,
		Time:     f.p.Start,
		Service:  f.p.Service,
		Node:     d.cfg.Node,
		Summary:  summary,
		Fix:      fix,
		Before:   f.p.Original,
		Evidence: map[string]any{"outcome": string(f.p.Result.Outcome)},
	}
	if f.p.Result.Reason != "" {
		v.Evidence["reason"] = f.p.Result.Reason
	}
	if f.p.Result.DropReason != "" {
		v.Evidence["drop_reason"] = f.p.Result.DropReason
	}
	if f.p.Result.Location != "" {
		v.Evidence["location"] = f.p.Result.Location
	}
	if f.dnat != nil {
		v.After = f.dnat.After
		if f.snat != nil {
			v.After.Src = f.snat.After.Src
		}
		v.Evidence["dnat_by"] = f.dnat.By
		v.Backend = d.backend(f.dnat.After.Dst, f.p.Original.Proto)
	}
	return v
}

func (d *Diagnoser) backend(ap netip.AddrPort, proto uint8) *event.Backend {
	b := &event.Backend{Addr: ap}
	st := d.cfg.Snap.EndpointState(d.cfg.Service, ap.Addr(), ap.Port(), proto)
	if st.Pod != nil {
		b.Pod = st.Pod.Namespace + "/" + st.Pod.Name
		b.Node = st.Pod.NodeName
	}
	if st.Endpoint != nil && st.Endpoint.NodeName != "" {
		b.Node = st.Endpoint.NodeName
	}
	b.Status = st.Verdict.String()
	if st.Detail != "" {
		b.Status = st.Detail
	}
	return b
}

// readyEndpoints lists the Service's ready endpoints ("10.244.1.6:9376 (pod default/x on node1)").
func (d *Diagnoser) readyEndpoints(sp *meta.ServicePort) []string {
	var out []string
	for _, ep := range d.cfg.Service.Endpoints {
		if !ep.Ready {
			continue
		}
		s := ep.Addr.String()
		if sp != nil {
			if port, ok := ep.PortFor(*sp); ok {
				s = netip.AddrPortFrom(ep.Addr, port.Port).String()
			}
		}
		var who []string
		if ep.PodRef.Name != "" {
			who = append(who, "pod "+ep.PodRef.Namespace+"/"+ep.PodRef.Name)
		}
		if ep.NodeName != "" {
			who = append(who, "on "+ep.NodeName)
		}
		if len(who) > 0 {
			s += " (" + strings.Join(who, " ") + ")"
		}
		out = append(out, s)
	}
	return out
}

func (d *Diagnoser) svcName() string {
	return d.cfg.Service.Namespace + "/" + d.cfg.Service.Name
}

// staleBackend: DNATed to something that is not a ready endpoint now.
func (d *Diagnoser) staleBackend(f *facts) *event.Verdict {
	if f.dnat == nil {
		return nil
	}
	to := f.dnat.After.Dst
	st := d.cfg.Snap.EndpointState(d.cfg.Service, to.Addr(), to.Port(), f.p.Original.Proto)
	if st.Ready {
		return nil
	}
	what := st.Detail
	if what == "" {
		what = "not an endpoint of " + d.svcName()
	}
	eps := d.readyEndpoints(f.port)
	summary := fmt.Sprintf("%s DNATed %s to %s, which is not a ready endpoint: %s",
		f.dnat.By, f.svcAddr, to, what)
	fix := fmt.Sprintf("the dataplane on this node is stale: kube-proxy has not applied the current EndpointSlices of %s; check that kube-proxy is running and syncing (its logs, /healthz), then compare %s with the endpoints",
		d.svcName(), rulesCommand(f.dnat.By))
	v := d.verdict(f, event.VerdictStaleBackend, summary, fix)
	v.Evidence["dnat_target"] = to.String()
	v.Evidence["target_status"] = st.Verdict.String()
	v.Evidence["ready_endpoints"] = eps
	if len(st.Services) > 0 {
		v.Evidence["endpoint_of"] = st.Services
	}
	return v
}

func rulesCommand(by string) string {
	if by == "ipvs" {
		return "'ipvsadm -Ln'"
	}
	return "'iptables-save -t nat | grep KUBE-SEP'"
}

// noBackend: the Service address was hit but the dataplane had nowhere to
// send it (IPVS without destination, kube-proxy's REJECT for a Service
// without endpoints).
func (d *Diagnoser) noBackend(f *facts) *event.Verdict {
	if f.dnat != nil || !f.failed {
		return nil
	}
	ipvsNoDest := false
	for _, s := range f.p.Steps {
		if s.Kind == event.KindIPVSNoDest {
			ipvsNoDest = true
		}
	}
	rejected := f.p.Result.Outcome == event.OutcomeRejected
	// NETFILTER_DROP names a netfilter verdict (REJECT drops after sending
	// its ICMP error); kernels without drop reasons (before 5.17) show it
	// by where the packet was freed.
	nfDrop := f.p.Result.Reason == "NETFILTER_DROP" || f.p.Result.DropReason == "NETFILTER_DROP" ||
		strings.HasPrefix(f.p.Result.Location, "nf_hook_slow+")
	if !ipvsNoDest && !(rejected && nfDrop) {
		return nil
	}
	eps := d.readyEndpoints(f.port)
	var summary, fix string
	by := "kube-proxy's REJECT rule"
	if ipvsNoDest {
		by = "the IPVS virtual server (no destination)"
	}
	if len(eps) == 0 {
		summary = fmt.Sprintf("%s has no ready endpoints: %s refused %s", d.svcName(), by, f.svcAddr)
		fix = fmt.Sprintf("fix the Service, not the node: check that its selector matches running Pods and that they pass readiness ('kubectl get endpointslices -n %s -l kubernetes.io/service-name=%s')",
			d.cfg.Service.Namespace, d.cfg.Service.Name)
	} else {
		summary = fmt.Sprintf("%s refused %s although the EndpointSlices have %d ready endpoints: the dataplane lacks %s",
			by, f.svcAddr, len(eps), strings.Join(eps, ", "))
		fix = "kube-proxy on this node is not syncing: check that it is running and its logs (restart it); the ready endpoints it lacks are listed in the evidence"
	}
	v := d.verdict(f, event.VerdictNoBackend, summary, fix)
	v.Evidence["ready_endpoints"] = eps
	v.Evidence["service_has_ready_endpoints"] = len(eps) > 0
	v.Evidence["ipvs_no_destination"] = ipvsNoDest
	return v
}

// noLocalEndpoint: externalTrafficPolicy=Local traffic to a node without a
// ready local endpoint, dropped or rejected.
func (d *Diagnoser) noLocalEndpoint(f *facts) *event.Verdict {
	svc := d.cfg.Service
	if f.role == "cluster-ip" || !strings.EqualFold(string(svc.ExternalTrafficPolicy), "Local") {
		return nil
	}
	if !f.failed || d.cfg.Node == "" {
		return nil
	}
	var withEndpoints []string
	for _, ep := range svc.Endpoints {
		if !ep.Ready {
			continue
		}
		if ep.NodeName == d.cfg.Node {
			return nil // there is a local endpoint: something else went wrong
		}
		if ep.NodeName != "" && !slices.Contains(withEndpoints, ep.NodeName) {
			withEndpoints = append(withEndpoints, ep.NodeName)
		}
	}
	summary := fmt.Sprintf("%s has externalTrafficPolicy: Local and node %s has no ready endpoint of it: traffic to %s (%s) arriving here is dropped",
		d.svcName(), d.cfg.Node, f.svcAddr, f.role)
	if len(withEndpoints) > 0 {
		summary += "; nodes with endpoints: " + strings.Join(withEndpoints, ", ")
	}
	fix := "either set externalTrafficPolicy: Cluster (the client source IP is then lost to SNAT), or run a ready backend on every node that receives this traffic (a DaemonSet, or topology spread)"
	v := d.verdict(f, event.VerdictNoLocalEndpoint, summary, fix)
	v.Evidence["address_role"] = f.role
	v.Evidence["nodes_with_endpoints"] = withEndpoints
	v.Evidence["external_traffic_policy"] = svc.ExternalTrafficPolicy
	return v
}

// wrongSource: locally originated traffic whose connect-time source address
// does not belong to the network it finally leaves on, so replies cannot
// come back.
func (d *Diagnoser) wrongSource(f *facts) *event.Verdict {
	if !f.local || f.chosen == nil || f.dnat == nil || f.snat != nil || f.outStep == nil || d.cfg.Devices == nil {
		return nil
	}
	src := f.chosen.Src
	backend := f.dnat.After.Dst.Addr()
	if slices.Contains(d.cfg.Service.ClusterIPs, src) {
		return d.wrongSourceVerdict(f, src, "the source is the ClusterIP itself", nil)
	}
	prefixes := d.cfg.Devices.Prefixes(f.outStep.Netns, f.outStep.Ifindex)
	var onLink *netip.Prefix
	for i, pf := range prefixes {
		if pf.Contains(backend) {
			onLink = &prefixes[i]
		}
	}
	if onLink == nil {
		return nil // the backend is not on the output device's network: nothing to compare with
	}
	for _, pf := range prefixes {
		if pf.Contains(src) {
			return nil
		}
	}
	return d.wrongSourceVerdict(f, src, fmt.Sprintf("the packet leaves through %s on %s, which %s belongs to", f.outStep.Dev, onLink.Masked(), backend), onLink)
}

func (d *Diagnoser) wrongSourceVerdict(f *facts, src netip.Addr, why string, onLink *netip.Prefix) *event.Verdict {
	chosenBy := "the route lookup at connect()"
	if r := d.lookupFor(f, src); r != nil {
		chosenBy = fmt.Sprintf("table %d route to %s via dev %s", r.Table, f.svcAddr.Addr(), r.OutDev)
		if r.Gateway.IsValid() {
			chosenBy += " gw " + r.Gateway.String()
		}
	}
	summary := fmt.Sprintf("the node chose source %s for %s (%s), but after DNAT to %s %s: replies cannot come back",
		src, f.svcAddr, chosenBy, f.dnat.After.Dst, why)
	fix := fmt.Sprintf("route the Service range through the backend's network so the right source is chosen, e.g. 'ip route add %s/32 dev %s'", f.svcAddr.Addr(), f.outStep.Dev)
	if onLink != nil {
		fix = fmt.Sprintf("route the Service range through the backend's network so the right source is chosen, e.g. 'ip route add <service CIDR> dev %s' (here at least: ip route add %s/32 dev %s)",
			f.outStep.Dev, f.svcAddr.Addr(), f.outStep.Dev)
	}
	v := d.verdict(f, event.VerdictWrongSource, summary, fix)
	v.Evidence["chosen_source"] = src.String()
	v.Evidence["chosen_by"] = chosenBy
	v.Evidence["out_dev"] = f.outStep.Dev
	if onLink != nil {
		v.Evidence["out_dev_network"] = onLink.Masked().String()
	}
	return v
}

// lookupFor finds the connect-time route lookup that returned src's device.
func (d *Diagnoser) lookupFor(f *facts, src netip.Addr) *event.RouteStep {
	for i := range f.p.Routes {
		r := &f.p.Routes[i]
		if r.Kind == "fib" && r.Dst == f.svcAddr.Addr() && r.Error == 0 && r.OutDev != "" && r.Table != 255 {
			return r
		}
	}
	return nil
}

// missingMasquerade: a non-pod source DNATed to a Pod on another node and
// sent over the overlay or node network without SNAT.
func (d *Diagnoser) missingMasquerade(f *facts) *event.Verdict {
	if f.dnat == nil || f.snat != nil {
		return nil
	}
	src := f.dnat.After.Src.Addr()
	if _, isPod := d.cfg.Snap.PodByAddr(src); isPod && !d.isNodeAddr(src) {
		return nil
	}
	if d.inPodCIDR(src) {
		return nil
	}
	b := d.backend(f.dnat.After.Dst, f.p.Original.Proto)
	if b.Pod == "" || b.Node == "" || d.cfg.Node == "" || b.Node == d.cfg.Node {
		return nil // not a Pod on another node
	}
	out := ""
	if f.outStep != nil {
		out = f.outStep.Dev
		if d.cfg.Devices != nil {
			if k := d.cfg.Devices.Kind(f.outStep.Netns, f.outStep.Ifindex); k != "" {
				out += " (" + k + ")"
			}
		}
	}
	summary := fmt.Sprintf("%s was DNATed to %s on node %s and sent", f.p.Original, f.dnat.After.Dst, b.Node)
	if out != "" {
		summary += " out " + out
	}
	summary += fmt.Sprintf(" with source %s, which is not a pod address, without MASQUERADE: node %s cannot answer or drops it", src, b.Node)
	if f.failed && f.p.Result.Reason != "" {
		summary += fmt.Sprintf(" (seen: %s", f.p.Result.Reason)
		if f.p.NetnsName != "" {
			summary += " in " + f.p.NetnsName
		}
		summary += ")"
	}
	fix := "masquerade traffic from outside the pod network: give kube-proxy the cluster CIDR (--cluster-cidr / clusterCIDR, or --detect-local-mode) so KUBE-MARK-MASQ marks it, or add e.g. 'iptables -t nat -A POSTROUTING -s <node network> -d <cluster CIDR> -j MASQUERADE'"
	v := d.verdict(f, event.VerdictMissingMasquerade, summary, fix)
	v.Evidence["source"] = src.String()
	v.Evidence["backend_node"] = b.Node
	v.Evidence["out_dev"] = out
	v.Evidence["snat"] = false
	return v
}

func (d *Diagnoser) isNodeAddr(a netip.Addr) bool {
	_, ok := d.cfg.Snap.NodeByAddr(a)
	return ok
}

func (d *Diagnoser) inPodCIDR(a netip.Addr) bool {
	for _, n := range d.cfg.Snap.Nodes() {
		for _, pf := range n.PodCIDRs {
			// A node's own overlay address (flannel.1: x.y.z.0) is in its CIDR
			// and is what MASQUERADE would use: it counts as a pod address.
			if pf.Contains(a) {
				return true
			}
		}
	}
	return false
}

func (d *Diagnoser) dropped(f *facts) *event.Verdict {
	r := f.p.Result
	where := r.Location
	if r.Dev != "" {
		where = strings.TrimSpace(where + " on " + r.Dev)
	}
	if f.p.NetnsName != "" {
		where += " (netns " + f.p.NetnsName + ")"
	}
	summary := fmt.Sprintf("%s %s: %s", f.p.Original, r.Outcome, r.Reason)
	if where != "" {
		summary += " at " + strings.TrimSpace(where)
	}
	return d.verdict(f, event.VerdictDropped, summary, dropFix(r))
}

// dropFix suggests where to look for common drop reasons.
func dropFix(r event.Result) string {
	reason := r.Reason
	if r.DropReason != "" {
		reason = r.DropReason
	}
	switch {
	case strings.Contains(reason, "RPFILTER"):
		return "reverse-path filtering dropped it: the source is not routable back through the input device (check rp_filter and routes for the source)"
	case strings.Contains(reason, "NETFILTER_DROP"):
		return "a netfilter rule dropped or rejected it: check 'iptables-save' / 'nft list ruleset' for DROP/REJECT rules matching it"
	case strings.Contains(reason, "NO_SOCKET"):
		return "nothing listens on the destination port in the destination's namespace"
	case strings.Contains(reason, "NEIGH"):
		return "the next hop did not answer ARP: check the neighbour and the link"
	case strings.Contains(r.Reason, "unreachable"), strings.Contains(reason, "NOROUTE"):
		return "no route to the destination: check the routes on the node that dropped it ('ip route get')"
	}
	return ""
}

func (d *Diagnoser) ok(f *facts) *event.Verdict {
	summary := fmt.Sprintf("%s reached ready endpoint %s", f.svcAddr, f.dnat.After.Dst)
	v := d.verdict(f, event.VerdictOK, summary, "")
	if v.Backend != nil && v.Backend.Pod != "" {
		v.Summary += " (pod " + v.Backend.Pod + ")"
	}
	return v
}
