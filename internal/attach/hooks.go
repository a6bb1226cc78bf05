package attach

import (
	"fmt"

	"github.com/svctrace/svctrace/internal/kernel"
)

// Backend selects how kernel-function hooks are attached.
type Backend string

// Backends. Auto picks, per hook, fentry, then kprobe, then the stable
// (tracepoint + netfilter link) implementation.
const (
	BackendAuto      Backend = "auto"
	BackendFentry    Backend = "fentry"
	BackendKprobe    Backend = "kprobe"
	BackendNetfilter Backend = "netfilter"
)

// ParseBackend validates a --backend value. "stable" is accepted as an alias
// of netfilter.
func ParseBackend(s string) (Backend, error) {
	switch Backend(s) {
	case BackendAuto, BackendFentry, BackendKprobe, BackendNetfilter:
		return Backend(s), nil
	case "stable":
		return BackendNetfilter, nil
	}
	return "", fmt.Errorf("unknown backend %q: use auto, fentry, kprobe or netfilter", s)
}

// Implementation flavours of a hook.
const (
	implFentry     = "fentry"
	implKprobe     = "kprobe"
	implTracepoint = "tracepoint"
	implNetfilter  = "netfilter"
	implTC         = "tc"
)

type attachKind int

const (
	attachFentry attachKind = iota // fentry or fexit: target in the program spec
	attachKprobe
	attachKretprobe
	attachTracepoint // tp_btf
	attachNetfilter
	// attachTCX programs are loaded with their hook and attached later, to
	// the interfaces Probes.SetDevices names (tcx: ingress or egress).
	attachTCXIngress
	attachTCXEgress
)

// progAttach is one program of an implementation and where it goes.
type progAttach struct {
	prog   string
	kind   attachKind
	target string // kernel function or tracepoint
}

// impl is one way to implement a hook.
type impl struct {
	flavour string
	progs   []progAttach
	// check verifies prerequisites before anything is loaded; nil means none.
	check func(env *env) error
	// derived means the hook's data comes from another hook's programs
	// (NAT steps from the netfilter links); nothing is loaded for it.
	derived string
	// needs names a hook that must be attached for this implementation to
	// be used (the tc device programs leave the node's own devices to the
	// netfilter links).
	needs string
}

// hookDef is a logical observation point with its implementations in order
// of preference.
type hookDef struct {
	name  string
	about string
	// module is the kernel module the hook's functions live in; when it is
	// not loaded the hook is skipped (once, with that reason).
	module string
	// kernelFunc is true when the hook has kernel-function implementations
	// (fentry/kprobe) that --backend chooses between.
	kernelFunc bool
	impls      []impl
}

// env carries what the prerequisite checks need.
type env struct {
	btf *kernel.BTF
}

// btfModules are the modules whose BTF may hold the functions hooked.
func btfModules() []string { return []string{"nf_nat", "nf_conntrack", "ip_vs"} }

func funcCheck(name string, params ...string) func(*env) error {
	return func(e *env) error {
		proto, _, err := e.btf.Func(name, btfModules()...)
		if err != nil {
			if kernel.SymbolExists(name) {
				return nil // no BTF for it (module without BTF): a kprobe can still attach by symbol
			}
			return err
		}
		return kernel.CheckParams(name, proto, params...)
	}
}

func fentryCheck(name string, params ...string) func(*env) error {
	return func(e *env) error {
		proto, _, err := e.btf.Func(name, btfModules()...)
		if err != nil {
			return fmt.Errorf("fentry needs btf for %s: %w", name, err)
		}
		return kernel.CheckParams(name, proto, params...)
	}
}

func tracepointCheck(name string, minArgs int) func(*env) error {
	return func(e *env) error {
		n, err := e.btf.TracepointArgs(name)
		if err != nil {
			return err
		}
		if n < minArgs {
			return fmt.Errorf("tracepoint %s has %d arguments, need %d", name, n, minArgs)
		}
		return nil
	}
}

func kprobeCheck(inner func(*env) error) func(*env) error {
	return func(e *env) error {
		if err := kernel.HaveKprobes(); err != nil {
			return err
		}
		return inner(e)
	}
}

func netfilterCheck(*env) error { return kernel.HaveNetfilterLink() }

// tcCheck: tcx links (6.6+) and bpf_cast_to_kern_ctx (6.2+, the sk_buff
// the other hooks see) in the kernel.
func tcCheck(e *env) error {
	if _, _, err := e.btf.Func("tcx_prog_attach"); err != nil {
		return fmt.Errorf("no tcx links in this kernel (6.6+): %w", err)
	}
	if _, _, err := e.btf.Func("bpf_cast_to_kern_ctx"); err != nil {
		return fmt.Errorf("no bpf_cast_to_kern_ctx in this kernel (6.2+): %w", err)
	}
	return nil
}

const (
	pSkb   = "struct sk_buff *"
	pCt    = "struct nf_conn *"
	pFlow4 = "struct flowi4 *"
)

// HookNames lists the hooks svctrace knows, in attach order, with what
// each one observes.
func HookNames() [][2]string {
	var names [][2]string
	for _, h := range hookTable() {
		names = append(names, [2]string{h.name, h.about})
	}
	return names
}

// hookTable lists every hook svctrace knows, with its implementations in the
// order auto tries them.
func hookTable() []hookDef {
	natSig := []string{pSkb, pCt}
	setupSig := []string{pCt}
	fibSig := []string{"struct fib_table *", pFlow4, "struct fib_result *"}
	routeSig := []string{"struct net *", pFlow4}
	validateSig := []string{pSkb}
	return []hookDef{
		{
			name:  "netfilter",
			about: "netfilter hooks just after the NAT priorities, and before them at OUTPUT and INPUT (in the node's network namespace)",
			impls: []impl{{
				flavour: implNetfilter,
				progs: []progAttach{
					{prog: "nf_before", kind: attachNetfilter},
					{prog: "nf_after", kind: attachNetfilter},
				},
				check: netfilterCheck,
			}},
		},
		{
			name: "nat", about: "packet rewritten by nf_nat (tuple before and after, DNAT or SNAT)", kernelFunc: true,
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fe_nat_manip_pkt", attachFentry, "nf_nat_manip_pkt"}},
					check: fentryCheck("nf_nat_manip_pkt", natSig...)},
				{flavour: implKprobe, progs: []progAttach{{"kp_nat_manip_pkt", attachKprobe, "nf_nat_manip_pkt"}},
					check: kprobeCheck(funcCheck("nf_nat_manip_pkt", natSig...))},
				{flavour: implNetfilter, derived: "netfilter"},
			},
		},
		{
			name: "nat-bind", about: "NAT binding chosen for a new connection (nf_nat_setup_info)", kernelFunc: true,
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fx_nat_setup_info", attachFentry, "nf_nat_setup_info"}},
					check: fentryCheck("nf_nat_setup_info", setupSig...)},
				{flavour: implKprobe, progs: []progAttach{
					{"kp_nat_setup_info", attachKprobe, "nf_nat_setup_info"},
					{"krp_nat_setup_info", attachKretprobe, "nf_nat_setup_info"}},
					check: kprobeCheck(funcCheck("nf_nat_setup_info", setupSig...))},
				{flavour: implNetfilter, derived: "netfilter"},
			},
		},
		{
			name: "route", about: "FIB table lookups: table, result device, gateway, error", kernelFunc: true,
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fx_fib_table_lookup", attachFentry, "fib_table_lookup"}},
					check: fentryCheck("fib_table_lookup", fibSig...)},
				{flavour: implKprobe, progs: []progAttach{
					{"kp_fib_table_lookup", attachKprobe, "fib_table_lookup"},
					{"krp_fib_table_lookup", attachKretprobe, "fib_table_lookup"}},
					check: kprobeCheck(funcCheck("fib_table_lookup", fibSig...))},
				{flavour: implTracepoint, progs: []progAttach{{"tp_fib_table_lookup", attachTracepoint, "fib_table_lookup"}},
					check: tracepointCheck("fib_table_lookup", 4)},
			},
		},
		{
			name: "source", about: "source address chosen for locally originated traffic (at connect time)", kernelFunc: true,
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fx_route_output", attachFentry, "ip_route_output_key_hash"}},
					check: fentryCheck("ip_route_output_key_hash", routeSig...)},
				{flavour: implKprobe, progs: []progAttach{
					{"kp_route_output", attachKprobe, "ip_route_output_key_hash"},
					{"krp_route_output", attachKretprobe, "ip_route_output_key_hash"}},
					check: kprobeCheck(funcCheck("ip_route_output_key_hash", routeSig...))},
				{flavour: implTracepoint, progs: []progAttach{{"tp_sock_set_state", attachTracepoint, "inet_sock_set_state"}},
					check: tracepointCheck("inet_sock_set_state", 3)},
			},
		},
		{
			name: "ipvs-in", about: "packets entering IPVS (virtual server hit)", kernelFunc: true, module: "ip_vs",
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fe_ipvs_in_hook", attachFentry, "ip_vs_in_hook"}},
					check: fentryCheck("ip_vs_in_hook", "", pSkb)},
				{flavour: implKprobe, progs: []progAttach{{"kp_ipvs_in_hook", attachKprobe, "ip_vs_in_hook"}},
					check: kprobeCheck(funcCheck("ip_vs_in_hook", "", pSkb))},
				// Kernels before 6.0: the netfilter entry points that call
				// ip_vs_in (which itself is usually inlined); skb is argument 2.
				{flavour: implKprobe, progs: []progAttach{
					{"kp_ipvs_in_hook", attachKprobe, "ip_vs_remote_request4"},
					{"kp_ipvs_in_hook", attachKprobe, "ip_vs_local_request4"}},
					check: kprobeCheck(func(e *env) error {
						if err := funcCheck("ip_vs_remote_request4", "", pSkb)(e); err != nil {
							return err
						}
						return funcCheck("ip_vs_local_request4", "", pSkb)(e)
					})},
				// ip_vs_in(ipvs, hooknum, skb, af) where it was not inlined.
				{flavour: implKprobe, progs: []progAttach{{"kp_ipvs_in", attachKprobe, "ip_vs_in"}},
					check: kprobeCheck(funcCheck("ip_vs_in", "", "", pSkb))},
				{flavour: implNetfilter, derived: "netfilter"},
			},
		},
		{
			name: "ipvs-conn", about: "IPVS connections created (real server chosen) vs reused", kernelFunc: true, module: "ip_vs",
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fe_ipvs_conn_new", attachFentry, "ip_vs_conn_new"}},
					check: fentryCheck("ip_vs_conn_new")},
				{flavour: implKprobe, progs: []progAttach{{"kp_ipvs_conn_new", attachKprobe, "ip_vs_conn_new"}},
					check: kprobeCheck(funcCheck("ip_vs_conn_new"))},
			},
		},
		{
			name: "ipvs-sched", about: "IPVS virtual servers without a destination (no real server)", kernelFunc: true, module: "ip_vs",
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fe_ipvs_sched_err", attachFentry, "ip_vs_scheduler_err"}},
					check: fentryCheck("ip_vs_scheduler_err")},
				{flavour: implKprobe, progs: []progAttach{{"kp_ipvs_sched_err", attachKprobe, "ip_vs_scheduler_err"}},
					check: kprobeCheck(funcCheck("ip_vs_scheduler_err"))},
			},
		},
		{
			name: "ipvs-xmit", about: "packets IPVS sends to a real server (masquerade), with the tuple after DNAT", kernelFunc: true, module: "ip_vs",
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fe_ipvs_nat_xmit", attachFentry, "ip_vs_nat_xmit"}},
					check: fentryCheck("ip_vs_nat_xmit", pSkb)},
				{flavour: implKprobe, progs: []progAttach{{"kp_ipvs_nat_xmit", attachKprobe, "ip_vs_nat_xmit"}},
					check: kprobeCheck(funcCheck("ip_vs_nat_xmit", pSkb))},
				{flavour: implNetfilter, derived: "netfilter"},
			},
		},
		{
			name: "drop", about: "packets the kernel drops, with the drop reason",
			impls: []impl{
				{flavour: implTracepoint, progs: []progAttach{{"tp_kfree_skb_reason", attachTracepoint, "kfree_skb"}},
					check: tracepointCheck("kfree_skb", 3)},
				{flavour: implTracepoint, progs: []progAttach{{"tp_kfree_skb", attachTracepoint, "kfree_skb"}},
					check: tracepointCheck("kfree_skb", 2)},
			},
		},
		{
			name: "validate-source", about: "reverse-path check failures (fib_validate_source)", kernelFunc: true,
			impls: []impl{
				{flavour: implFentry, progs: []progAttach{{"fx_fib_validate_source", attachFentry, "fib_validate_source"}},
					check: fentryCheck("fib_validate_source", validateSig...)},
				{flavour: implKprobe, progs: []progAttach{
					{"kp_fib_validate_source", attachKprobe, "fib_validate_source"},
					{"krp_fib_validate_source", attachKretprobe, "fib_validate_source"}},
					check: kprobeCheck(funcCheck("fib_validate_source", validateSig...))},
				{flavour: implTracepoint, derived: "drop"},
			},
		},
		{
			name: "icmp", about: "ICMP errors the kernel sends about a traced packet",
			impls: []impl{
				{flavour: implTracepoint, progs: []progAttach{{"tp_icmp_send", attachTracepoint, "icmp_send"}},
					check: tracepointCheck("icmp_send", 3)},
				{flavour: implKprobe, progs: []progAttach{{"kp_icmp_send", attachKprobe, "__icmp_send"}},
					check: kprobeCheck(funcCheck("__icmp_send", pSkb))},
			},
		},
		{
			name: "devices", about: "packets received by and queued to devices",
			impls: []impl{
				// Where the node's netfilter links see its own devices' traffic:
				// tcx programs on the Service's backend pods' interfaces only
				// (unless DeviceHooks is "all").
				{flavour: implTC, progs: []progAttach{
					{prog: "tcx_recv", kind: attachTCXIngress},
					{prog: "tcx_xmit", kind: attachTCXEgress}},
					check: tcCheck, needs: "netfilter"},
				{flavour: implTracepoint, progs: []progAttach{
					{"tp_netif_receive_skb", attachTracepoint, "netif_receive_skb"},
					{"tp_net_dev_queue", attachTracepoint, "net_dev_queue"}},
					check: func(e *env) error {
						if err := tracepointCheck("netif_receive_skb", 1)(e); err != nil {
							return err
						}
						return tracepointCheck("net_dev_queue", 1)(e)
					}},
			},
		},
	}
}

// allowed reports whether an implementation flavour may be used under the
// chosen backend and device hooks. Hooks without kernel-function
// implementations always use what they have; the netfilter links are the
// stable backend's; --device-hooks all rules out the tc device programs.
func allowed(o Options, h hookDef, flavour string) bool {
	if flavour == implTC && o.DeviceHooks == DevicesAll {
		return false
	}
	switch o.Backend {
	case BackendAuto:
		return true
	case BackendNetfilter:
		return flavour == implNetfilter || flavour == implTracepoint || flavour == implTC
	case BackendFentry, BackendKprobe:
		if h.name == "netfilter" {
			return false
		}
		if !h.kernelFunc {
			return true
		}
		return flavour == string(o.Backend)
	}
	return false
}
