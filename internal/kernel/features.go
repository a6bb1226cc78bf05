package kernel

import (
	"bufio"
	"bytes"
	"cmp"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"golang.org/x/sys/unix"
)

// Release returns the running kernel's release ("6.1.0-31-amd64").
func Release() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return "unknown"
	}
	return unix.ByteSliceToString(u.Release[:])
}

// Version returns the running kernel's major and minor version.
func Version() (major, minor int) {
	r := Release()
	parts := strings.SplitN(r, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, _ = strconv.Atoi(parts[0])
	minorStr := parts[1]
	if i := strings.IndexFunc(minorStr, func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		minorStr = minorStr[:i]
	}
	minor, _ = strconv.Atoi(minorStr)
	return major, minor
}

// HaveKprobes reports whether kprobes can be created (the kprobe PMU or
// tracefs kprobe_events exists).
func HaveKprobes() error {
	if _, err := os.Stat("/sys/bus/event_source/devices/kprobe/type"); err == nil {
		return nil
	}
	for _, p := range []string{"/sys/kernel/tracing/kprobe_events", "/sys/kernel/debug/tracing/kprobe_events"} {
		if _, err := os.Stat(p); err == nil {
			return nil
		}
	}
	return fmt.Errorf("kprobes: %w (CONFIG_KPROBES is off or tracefs is not mounted)", ebpf.ErrNotSupported)
}

// PerfEventParanoid reads kernel.perf_event_paranoid. Above 2 (a Debian and
// Ubuntu patch, their default 3) perf_event_open, and with it every kprobe,
// needs CAP_SYS_ADMIN: CAP_PERFMON is not enough.
func PerfEventParanoid() (int, bool) {
	b, err := os.ReadFile("/proc/sys/kernel/perf_event_paranoid")
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

// HaveRingBuf reports whether BPF ring buffers are supported (5.8+).
func HaveRingBuf() error {
	return features.HaveMapType(ebpf.RingBuf)
}

// HaveNetfilterLink reports whether BPF netfilter programs are supported (6.4+).
func HaveNetfilterLink() error {
	return features.HaveProgramType(ebpf.Netfilter)
}

// ModuleLoaded reports whether a kernel module (or built-in with that name)
// is present.
func ModuleLoaded(name string) bool {
	if _, err := os.Stat("/sys/module/" + name); err == nil {
		return true
	}
	return false
}

// IsNotSupported reports whether err means "this kernel or this node's
// policy does not allow it" rather than a bug: EPERM, EOPNOTSUPP, ENOTSUPP,
// EINVAL from an attach, a missing symbol, or ebpf.ErrNotSupported.
func IsNotSupported(err error) bool {
	return errors.Is(err, ebpf.ErrNotSupported) || errors.Is(err, unix.EPERM) ||
		errors.Is(err, unix.EOPNOTSUPP) || errors.Is(err, syscall.Errno(524)) ||
		errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.EINVAL) ||
		errors.Is(err, unix.E2BIG) || errors.Is(err, unix.EACCES)
}

// SymbolExists reports whether /proc/kallsyms lists a function of that name
// (for module functions without BTF, which kprobes can still attach to).
func SymbolExists(name string) bool {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 3 && fields[2] == name {
			return true
		}
	}
	return false
}

// Symbols resolves kernel addresses to symbol names from /proc/kallsyms. It
// loads the table on first use: the text symbols' addresses, and their
// names back to back in one string (a kernel has ~100,000 of them: a string
// each would cost several megabytes more).
type Symbols struct {
	once  sync.Once
	err   error
	addrs []uint64
	ends  []uint32 // names[ends[i-1]:ends[i]] is symbol i's name
	names string
}

// Load reads the table now instead of on first use. Reading /proc/kallsyms
// takes tens of milliseconds (~65 ms on a 6.18 kernel): done by the first
// drop's decoding, it stalled the event reader long enough for a busy ring
// buffer to overflow.
func (s *Symbols) Load() error {
	s.once.Do(s.load)
	return s.err
}

// Lookup returns "symbol+0xoff" for addr, or "" if unknown.
func (s *Symbols) Lookup(addr uint64) string {
	if addr == 0 {
		return ""
	}
	s.once.Do(s.load)
	if s.err != nil || len(s.addrs) == 0 {
		return ""
	}
	i := sort.Search(len(s.addrs), func(i int) bool { return s.addrs[i] > addr }) - 1
	if i < 0 {
		return ""
	}
	off := addr - s.addrs[i]
	if off > 1<<20 {
		return ""
	}
	return fmt.Sprintf("%s+0x%x", s.name(i), off)
}

func (s *Symbols) name(i int) string {
	start := uint32(0)
	if i > 0 {
		start = s.ends[i-1]
	}
	return s.names[start:s.ends[i]]
}

func (s *Symbols) load() {
	f, err := os.Open("/proc/kallsyms")
	if err != nil {
		s.err = err
		return
	}
	defer f.Close()
	type sym struct {
		addr       uint64
		start, end uint32 // in names
	}
	var syms []sym
	var names []byte
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20) // few large reads: the file is ~5 MB
	for sc.Scan() {
		// ffffffff81000000 T _stext [module]
		line := sc.Bytes()
		a, rest, ok := bytes.Cut(line, []byte{' '})
		if !ok || len(rest) < 3 || (rest[0] != 't' && rest[0] != 'T') || rest[1] != ' ' {
			continue
		}
		name := rest[2:]
		if k := bytes.IndexAny(name, " \t"); k >= 0 {
			name = name[:k]
		}
		addr, ok := parseHex(a)
		if !ok || addr == 0 {
			continue
		}
		syms = append(syms, sym{addr, uint32(len(names)), uint32(len(names) + len(name))})
		names = append(names, name...)
	}
	if !slices.IsSortedFunc(syms, func(a, b sym) int { return cmp.Compare(a.addr, b.addr) }) {
		slices.SortFunc(syms, func(a, b sym) int { return cmp.Compare(a.addr, b.addr) })
	}
	// Lay the names out in address order, so that ends alone delimits them.
	var sorted strings.Builder
	sorted.Grow(len(names))
	s.addrs = make([]uint64, len(syms))
	s.ends = make([]uint32, len(syms))
	for i, x := range syms {
		sorted.Write(names[x.start:x.end])
		s.addrs[i], s.ends[i] = x.addr, uint32(sorted.Len())
	}
	s.names = sorted.String()
}

// parseHex parses a kallsyms address (up to 16 hex digits) without the
// string conversion strconv needs.
func parseHex(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		switch {
		case c >= '0' && c <= '9':
			c -= '0'
		case c >= 'a' && c <= 'f':
			c -= 'a' - 10
		case c >= 'A' && c <= 'F':
			c -= 'A' - 10
		default:
			return 0, false
		}
		v = v<<4 | uint64(c)
	}
	return v, true
}
