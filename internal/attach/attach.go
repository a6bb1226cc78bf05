// Package attach loads svctrace's BPF programs and attaches them: it picks,
// per hook, the implementation this kernel allows (fentry, kprobe, or the
// stable tracepoint + netfilter-link flavour), keeps the in-kernel Service
// filter up to date, and hands out a reader for the event stream.
package attach

import (
	"errors"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/rlimit"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/internal/kernel"
)

// Options configure Load.
type Options struct {
	// Backend chooses the kernel-function hook flavour (auto by default).
	Backend Backend
	// NetnsPath is the network namespace whose netfilter hooks are traced
	// (the node's); empty means svctrace's own.
	NetnsPath string
	// PerfBuffer forces the perf event array transport instead of the ring buffer.
	PerfBuffer bool
	// WakeupBytes batches reader wakeups until this many bytes are pending
	// (the reader polls on a deadline meanwhile). 0 wakes on every event.
	WakeupBytes uint32
	// RingBufSize overrides the ring buffer size in bytes (a power of two
	// multiple of the page size); 0 keeps the default of 4 MiB.
	RingBufSize uint32
	// LoadOnly loads and verifies programs without attaching them (doctor).
	LoadOnly bool
	// PacketsPerFlow traces this many packets of each flow direction in
	// full, then only its SYN/FIN/RST packets and its failures (drops, ICMP
	// errors). 0 traces every packet.
	PacketsPerFlow uint32
	// SkipHooks names hooks (see HookNames) not to attach: less detail in
	// the paths, less work per packet.
	SkipHooks []string
	// Headers copies each traced packet's first 64 bytes into its event
	// (pcapng export, recordings); without it the programs skip that read.
	Headers bool
	// BTF is the kernel's type information; loaded if nil.
	BTF *kernel.BTF
	// NoCast keeps the helper-call reads of packets and conntrack entries
	// even where bpf_rdonly_cast would do (tests of that path).
	NoCast bool
	// NoopPrograms attaches every hook with programs that return before
	// looking at the packet (benchmarks: the kernel's cost of calling the
	// hooks, apart from the programs' own work). Nothing is traced.
	NoopPrograms bool
	// RouteRepeat: a successful input route lookup in the node's namespace
	// that repeats the last one sent for the same source, destination and
	// input device (same table, device and gateway) less than this long
	// ago is not sent; the packet's next event carries Event.RouteRepeat
	// instead. Only with the netfilter hook and the route hook's
	// tracepoint (the netfilter hook after the lookup carries the note).
	// 0 sends every lookup.
	RouteRepeat time.Duration
	// DeviceHooks chooses where device events come from: DevicesPods (the
	// default where the kernel allows it: tcx programs on the interfaces
	// SetDevices names, the Service's backend pods; traffic elsewhere runs
	// no device program) or DevicesAll (tracepoints: every device in every
	// namespace, at a cost to every packet on the machine).
	DeviceHooks DeviceHooks
}

// DeviceHooks says where device events come from (--device-hooks).
type DeviceHooks string

// DeviceHooks values ("" is DevicesPods).
const (
	DevicesPods DeviceHooks = "pods"
	DevicesAll  DeviceHooks = "all"
)

// ParseDeviceHooks validates a --device-hooks value.
func ParseDeviceHooks(s string) (DeviceHooks, error) {
	switch d := DeviceHooks(s); d {
	case DevicesPods, DevicesAll:
		return d, nil
	}
	return "", fmt.Errorf("unknown device hooks %q: use pods or all", s)
}

// HookStatus reports what happened to one hook.
type HookStatus struct {
	Hook   string `json:"hook"`
	About  string `json:"about"`
	Impl   string `json:"impl,omitempty"`   // flavour in use: fentry, kprobe, tracepoint, netfilter
	Detail string `json:"detail,omitempty"` // programs and targets
	// Skipped is why the hook is not traced (empty when it is).
	Skipped string `json:"skipped,omitempty"`
	// Tried lists the implementations that were tried and why each failed.
	Tried []string `json:"tried,omitempty"`
}

// Probes is the loaded and attached set of programs with their maps.
type Probes struct {
	opts    Options
	spec    *ebpf.CollectionSpec
	shared  map[string]*ebpf.Map
	colls   []*ebpf.Collection
	links   []link.Link
	plan    []HookStatus
	useRing bool
	netns   uint32
	ownBTF  bool
	btf     *kernel.BTF
	filter  filterState
	// tc holds the tcx device programs (devices hook in its tc flavour)
	// and their links, per interface, as SetDevices last chose them.
	tc tcDevices
	// routeRepeatMs is Options.RouteRepeat where it applies (0 elsewhere).
	routeRepeatMs uint32
}

// Load loads and attaches every hook it can. It fails only when nothing
// useful can be traced (no BTF, no privileges, no hook attached); hooks that
// this kernel lacks are reported in Plan and skipped.
func Load(opts Options) (_ *Probes, err error) {
	if opts.Backend == "" {
		opts.Backend = BackendAuto
	}
	p := &Probes{opts: opts, btf: opts.BTF}
	// Kernels before 5.11 account BPF memory against RLIMIT_MEMLOCK.
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("%w (%v)", errNoPrivileges, err)
	}
	defer func() {
		if err != nil {
			p.Close()
		}
	}()
	if p.btf == nil {
		b, err := kernel.LoadBTF()
		if err != nil {
			return nil, err
		}
		p.btf, p.ownBTF = b, true
	}
	if err := p.loadSpec(); err != nil {
		return nil, err
	}
	if err := p.createMaps(); err != nil {
		return nil, err
	}
	if opts.NetnsPath != "" {
		var st unix.Stat_t
		if err := unix.Stat(opts.NetnsPath, &st); err != nil {
			return nil, fmt.Errorf("network namespace %s: %w", opts.NetnsPath, err)
		}
		p.netns = uint32(st.Ino)
	} else {
		var st unix.Stat_t
		if err := unix.Stat("/proc/self/ns/net", &st); err == nil {
			p.netns = uint32(st.Ino)
		}
	}

	e := &env{btf: p.btf}
	attached := map[string]string{}
	for _, h := range hookTable() {
		st := HookStatus{Hook: h.name, About: h.about}
		if slices.Contains(opts.SkipHooks, h.name) {
			st.Skipped = "left out (--skip-hooks)"
			p.plan = append(p.plan, st)
			continue
		}
		if h.module != "" && !kernel.ModuleLoaded(h.module) {
			st.Skipped = "module " + h.module + " is not loaded"
			p.plan = append(p.plan, st)
			continue
		}
		for _, im := range h.impls {
			if !allowed(opts, h, im.flavour) {
				continue
			}
			if im.needs != "" && attached[im.needs] == "" {
				st.Tried = append(st.Tried, fmt.Sprintf("%s: needs the %s hook", im.flavour, im.needs))
				continue
			}
			if im.derived != "" {
				if f, ok := attached[im.derived]; ok {
					st.Impl = f
					st.Detail = "from the " + im.derived + " hook"
					break
				}
				st.Tried = append(st.Tried, fmt.Sprintf("%s: needs the %s hook", im.flavour, im.derived))
				continue
			}
			if im.flavour == implNetfilter && im.derived == "" && !p.useRing {
				st.Tried = append(st.Tried, "netfilter: netfilter programs cannot write to the perf buffer transport (kernels with netfilter links, 6.4+, all have the ring buffer)")
				continue
			}
			if im.check != nil {
				if err := im.check(e); err != nil {
					st.Tried = append(st.Tried, fmt.Sprintf("%s: %v", im.flavour, err))
					continue
				}
			}
			detail, err := p.loadImpl(im)
			if err != nil {
				st.Tried = append(st.Tried, fmt.Sprintf("%s: %s", im.flavour, explain(err)))
				continue
			}
			st.Impl, st.Detail = im.flavour, detail
			attached[h.name] = im.flavour
			break
		}
		if st.Impl == "" {
			st.Skipped = "no implementation available on this kernel"
			if paranoidRefused(st.Tried) {
				level, _ := kernel.PerfEventParanoid()
				st.Skipped = "kprobes refused: " + perfParanoidHint(level)
			}
			if len(st.Tried) == 0 {
				st.Skipped = fmt.Sprintf("not available with --backend %s", opts.Backend)
			}
		}
		p.plan = append(p.plan, st)
	}
	if len(attached) == 0 {
		return nil, fmt.Errorf("no hook could be attached (%s)", summarizeTried(p.plan))
	}
	if opts.RouteRepeat > 0 && attached["netfilter"] == implNetfilter && attached["route"] == implTracepoint {
		p.routeRepeatMs = uint32(max(opts.RouteRepeat.Milliseconds(), 1))
		for i := range p.plan {
			if p.plan[i].Hook == "route" {
				p.plan[i].Detail += fmt.Sprintf("; a forwarded packet's lookup with the same result as the last one sent for its addresses and input device (within %s) is noted on its next event, not sent", opts.RouteRepeat)
			}
		}
	}
	// The spec and the kernel's BTF are not needed once everything is
	// loaded: drop them (tens of MB) so the trace runs lean.
	p.spec = nil
	p.btf = nil
	return p, nil
}

// explain turns a load or attach failure into the reason a user needs.
func explain(err error) string {
	if errors.Is(err, unix.EPERM) {
		return "refused by the kernel (EPERM: this program type is forbidden here, e.g. by lockdown or a BPF LSM policy)"
	}
	if errors.Is(err, unix.EACCES) && strings.Contains(err.Error(), "perf event") {
		if level, ok := kernel.PerfEventParanoid(); ok && level > 2 {
			return fmt.Sprintf("%v (%s)", err, perfParanoidHint(level))
		}
	}
	return err.Error()
}

// perfParanoidHint says why perf events (and so kprobes) are refused to a
// process with CAP_PERFMON: Debian and Ubuntu kernels reserve them for
// CAP_SYS_ADMIN at perf_event_paranoid 3, their default.
func perfParanoidHint(level int) string {
	return fmt.Sprintf("kernel.perf_event_paranoid is %d, which reserves perf events and kprobes for CAP_SYS_ADMIN: "+
		"set sysctl kernel.perf_event_paranoid=2, or grant CAP_SYS_ADMIN", level)
}

// paranoidRefused reports whether the paranoid setting is what left a hook
// out: it refused a kprobe, and every other try failed for want of the
// function.
func paranoidRefused(tried []string) bool {
	refused := false
	for _, t := range tried {
		switch {
		case strings.Contains(t, "kernel.perf_event_paranoid"):
			refused = true
		case !strings.Contains(t, "not found"):
			return false
		}
	}
	return refused
}

func summarizeTried(plan []HookStatus) string {
	var parts []string
	for _, st := range plan {
		if len(st.Tried) > 0 {
			parts = append(parts, st.Hook+": "+strings.Join(st.Tried, "; "))
		}
	}
	return strings.Join(parts, " | ")
}

// ErrPrivileges is returned when svctrace lacks the capabilities to load BPF.
var ErrPrivileges = errors.New("insufficient privileges")

// errNoPrivileges says what to do about it.
var errNoPrivileges = fmt.Errorf("%w: run as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (and CAP_SYS_RESOURCE on kernels before 5.11)", ErrPrivileges)

func (p *Probes) loadSpec() error {
	spec, err := bpfobj.LoadSvctrace()
	if err != nil {
		return fmt.Errorf("load bpf object: %w", err)
	}
	usePerf := p.opts.PerfBuffer
	if !usePerf && kernel.HaveRingBuf() != nil {
		usePerf = true
	}
	p.useRing = !usePerf
	var u32 uint32
	if usePerf {
		u32 = 1
	}
	if err := spec.Variables["use_perf"].Set(u32); err != nil {
		return fmt.Errorf("set use_perf: %w", err)
	}
	if err := spec.Variables["wakeup_bytes"].Set(p.opts.WakeupBytes); err != nil {
		return fmt.Errorf("set wakeup_bytes: %w", err)
	}
	consumed := uint32(0xffffffff)
	if reasons, err := p.btf.DropReasons(); err == nil {
		for v, name := range reasons {
			if name == "CONSUMED" {
				consumed = v
			}
		}
	}
	if err := spec.Variables["consumed_reason"].Set(consumed); err != nil {
		return fmt.Errorf("set consumed_reason: %w", err)
	}
	// Reads through bpf_rdonly_cast where the kernel has it (6.2+);
	// elsewhere that code is dead and the verifier never sees the call.
	var cast uint32
	if _, _, err := p.btf.Func("bpf_rdonly_cast"); err == nil && !p.opts.NoCast {
		cast = 1
	}
	if err := spec.Variables["use_cast"].Set(cast); err != nil {
		return fmt.Errorf("set use_cast: %w", err)
	}
	var noop uint32
	if p.opts.NoopPrograms {
		noop = 1
	}
	if err := spec.Variables["noop_progs"].Set(noop); err != nil {
		return fmt.Errorf("set noop_progs: %w", err)
	}
	if usePerf {
		// The ring buffer code is dead (use_perf is constant); give the map
		// a type every kernel can create.
		ev := spec.Maps["events"]
		ev.Type, ev.KeySize, ev.ValueSize, ev.MaxEntries = ebpf.Array, 4, 4, 1
	} else if p.opts.RingBufSize != 0 {
		spec.Maps["events"].MaxEntries = p.opts.RingBufSize
	}
	p.spec = spec
	return nil
}

// createMaps creates every map once; each implementation's programs are
// then loaded against these shared maps.
func (p *Probes) createMaps() error {
	s := p.spec.Copy()
	for name := range s.Programs {
		delete(s.Programs, name)
	}
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{})
	if err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("%w (creating BPF maps: %v)", errNoPrivileges, err)
		}
		return fmt.Errorf("create maps: %w", err)
	}
	p.colls = append(p.colls, coll)
	p.shared = coll.Maps
	return nil
}

// loadImpl loads an implementation's programs and attaches them. On failure
// nothing of it stays loaded.
func (p *Probes) loadImpl(im impl) (detail string, err error) {
	s := p.spec.Copy()
	want := map[string]bool{}
	for _, pa := range im.progs {
		want[pa.prog] = true
	}
	for name := range s.Programs {
		if !want[name] {
			delete(s.Programs, name)
		}
	}
	coll, err := ebpf.NewCollectionWithOptions(s, ebpf.CollectionOptions{
		MapReplacements: p.shared,
		Cache:           p.btf.Cache(),
	})
	if err != nil {
		var ve *ebpf.VerifierError
		if errors.As(err, &ve) && !kernel.IsNotSupported(err) {
			return "", fmt.Errorf("load: %+v", ve)
		}
		return "", fmt.Errorf("load: %w", err)
	}
	if p.opts.LoadOnly {
		p.colls = append(p.colls, coll)
		return describe(im), nil
	}
	var links []link.Link
	for _, pa := range im.progs {
		prog := coll.Programs[pa.prog]
		ls, err := p.attachOne(pa, prog)
		if err != nil {
			for _, l := range links {
				l.Close()
			}
			coll.Close()
			return "", err
		}
		links = append(links, ls...)
	}
	p.colls = append(p.colls, coll)
	p.links = append(p.links, links...)
	return describe(im), nil
}

func describe(im impl) string {
	var parts []string
	for _, pa := range im.progs {
		switch pa.kind {
		case attachNetfilter:
			parts = append(parts, pa.prog)
		case attachKretprobe:
			parts = append(parts, "kretprobe:"+pa.target)
		case attachKprobe:
			parts = append(parts, "kprobe:"+pa.target)
		case attachTracepoint:
			parts = append(parts, "tp_btf:"+pa.target)
		case attachFentry:
			parts = append(parts, im.flavour+":"+pa.target)
		case attachTCXIngress:
			parts = append(parts, "tcx ingress")
		case attachTCXEgress:
			parts = append(parts, "tcx egress")
		}
	}
	d := strings.Join(parts, ", ")
	if im.flavour == implTC {
		d += " on the Service's backend pods' interfaces (attached as they are found; --device-hooks all: tracepoints on every device)"
	}
	return d
}

func (p *Probes) attachOne(pa progAttach, prog *ebpf.Program) ([]link.Link, error) {
	switch pa.kind {
	case attachFentry, attachTracepoint:
		l, err := link.AttachTracing(link.TracingOptions{Program: prog})
		if err != nil {
			return nil, fmt.Errorf("attach %s: %w", pa.target, err)
		}
		return []link.Link{l}, nil
	case attachKprobe:
		l, err := link.Kprobe(pa.target, prog, nil)
		if err != nil {
			return nil, fmt.Errorf("kprobe %s: %w", pa.target, err)
		}
		return []link.Link{l}, nil
	case attachKretprobe:
		l, err := link.Kretprobe(pa.target, prog, nil)
		if err != nil {
			return nil, fmt.Errorf("kretprobe %s: %w", pa.target, err)
		}
		return []link.Link{l}, nil
	case attachNetfilter:
		return p.attachNetfilter(pa.prog, prog)
	case attachTCXIngress, attachTCXEgress:
		// Attached per interface by SetDevices.
		p.tc.progs = append(p.tc.progs, tcProg{prog: prog, kind: pa.kind})
		return nil, nil
	}
	return nil, fmt.Errorf("unknown attach kind %d", pa.kind)
}

// nfPoint is a netfilter hook and the priorities to try, nearest first.
type nfPoint struct {
	hook  link.NetfilterInetHook
	prios []int32
}

// Netfilter priorities around NAT: DNAT runs at -100 (PREROUTING, OUTPUT),
// SNAT at 100 (POSTROUTING, INPUT). A priority already taken by another BPF
// link is refused with EBUSY, so neighbours are tried.
//
// The links after NAT see every packet that crosses the node's NAT hooks.
// Links before NAT are attached only where the view after NAT (with the
// conntrack entry's tuples, status and the packet's direction, from which
// the correlator rebuilds the packet before this hook's rewrite) is not
// enough: OUTPUT, where NAT re-routes the node's own packets (the route
// before the rewrite is the wrong-source evidence), and INPUT, where IPVS
// takes a packet for a virtual server, outside nf_nat (the stable
// backend's IPVS inference). Every link is a program run for every packet
// of every flow, traced or not: the three left out (PREROUTING, FORWARD
// and POSTROUTING) were 3 of the 10 runs a forwarded packet met.
func nfPoints(prog string) []nfPoint {
	if prog == "nf_before" {
		return []nfPoint{
			{link.NetfilterInetLocalOut, []int32{-101, -102, -103}},
			{link.NetfilterInetLocalIn, []int32{99, 98, 97}},
		}
	}
	return []nfPoint{
		{link.NetfilterInetPreRouting, []int32{-99, -98, -97}},
		{link.NetfilterInetLocalOut, []int32{-99, -98, -97}},
		{link.NetfilterInetPostRouting, []int32{101, 102, 103}},
		{link.NetfilterInetLocalIn, []int32{101, 102, 103}},
	}
}

func (p *Probes) attachNetfilter(name string, prog *ebpf.Program) ([]link.Link, error) {
	var links []link.Link
	err := inNetns(p.opts.NetnsPath, func() error {
		for _, pt := range nfPoints(name) {
			var lastErr error
			var l link.Link
			for _, prio := range pt.prios {
				l, lastErr = link.AttachNetfilter(link.NetfilterOptions{
					Program:        prog,
					ProtocolFamily: link.NetfilterProtoIPv4,
					Hook:           pt.hook,
					Priority:       prio,
				})
				if lastErr == nil || !errors.Is(lastErr, unix.EBUSY) {
					break
				}
			}
			if lastErr != nil {
				return fmt.Errorf("netfilter link %s hook %d: %w", name, pt.hook, lastErr)
			}
			links = append(links, l)
		}
		return nil
	})
	if err != nil {
		for _, l := range links {
			l.Close()
		}
		return nil, err
	}
	return links, nil
}

// inNetns runs fn on a locked OS thread inside the network namespace at
// path (or in the current one when path is empty).
func inNetns(path string, fn func() error) error {
	if path == "" {
		return fn()
	}
	runtime.LockOSThread()
	orig, err := netns.Get()
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("get current netns: %w", err)
	}
	defer orig.Close()
	target, err := netns.GetFromPath(path)
	if err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	if err := netns.Set(target); err != nil {
		runtime.UnlockOSThread()
		return fmt.Errorf("enter netns %s: %w", path, err)
	}
	ferr := fn()
	if err := netns.Set(orig); err != nil {
		// Leave the thread locked: Go terminates it rather than reuse it
		// in the wrong namespace.
		return fmt.Errorf("restore netns: %w", err)
	}
	runtime.UnlockOSThread()
	return ferr
}

// Plan returns what was attached for each hook, and what was skipped and why.
func (p *Probes) Plan() []HookStatus { return p.plan }

// NetnsInode is the inode of the namespace whose netfilter hooks are traced.
func (p *Probes) NetnsInode() uint32 { return p.netns }

// RingBuffer reports whether events come through a ring buffer (else a perf
// event array).
func (p *Probes) RingBuffer() bool { return p.useRing }

// Map returns one of the shared maps by name.
func (p *Probes) Map(name string) *ebpf.Map { return p.shared[name] }

// Close detaches every link and releases every program and map.
func (p *Probes) Close() error {
	var errs []error
	if err := p.tc.close(); err != nil {
		errs = append(errs, err)
	}
	for _, l := range p.links {
		if err := l.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	p.links = nil
	for _, c := range p.colls {
		c.Close()
	}
	p.colls = nil
	p.shared = nil
	return errors.Join(errs...)
}
