package attach

import (
	"errors"
	"fmt"
	"slices"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// Device is an interface the tc device programs are attached to: a backend
// pod's interface, found by its address (see package podnet).
type Device struct {
	Netns   string // path of the interface's network namespace
	Inode   uint32 // that namespace's inode: with Ifindex, the interface's identity
	Ifindex int
	Name    string // for messages
}

type devKey struct {
	inode   uint32
	ifindex int
}

type tcProg struct {
	prog *ebpf.Program
	kind attachKind
}

// tcDevices are the tc flavour's programs and their links per interface.
type tcDevices struct {
	mu       sync.Mutex
	progs    []tcProg
	attached map[devKey]tcAttached
}

// tcAttached is one interface's links.
type tcAttached struct {
	name  string
	links []link.Link
}

func (a tcAttached) close() error {
	var errs []error
	for _, l := range a.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach %s: %w", a.name, err))
		}
	}
	return errors.Join(errs...)
}

// UsesDevices reports whether device events come from tcx programs on the
// interfaces SetDevices names (else from tracepoints, or not at all).
func (p *Probes) UsesDevices() bool { return len(p.tc.progs) > 0 }

// SetDevices attaches the tc device programs to exactly these interfaces:
// new ones get their links, those no longer named lose theirs. An interface
// that went away with its namespace has lost its links already (the kernel
// detaches tcx links from a device it unregisters); closing them is still
// needed and harmless. Without the tc flavour it does nothing. It returns
// the interfaces attached, by name, and every failure (one interface's
// failure does not keep the others from being attached).
func (p *Probes) SetDevices(devs []Device) ([]string, error) {
	t := &p.tc
	t.mu.Lock()
	defer t.mu.Unlock()
	if len(t.progs) == 0 {
		return nil, nil
	}
	if t.attached == nil {
		t.attached = map[devKey]tcAttached{}
	}
	want := map[devKey]Device{}
	for _, d := range devs {
		want[devKey{d.Inode, d.Ifindex}] = d
	}
	var errs []error
	for k, a := range t.attached {
		if _, ok := want[k]; !ok {
			errs = append(errs, a.close())
			delete(t.attached, k)
		}
	}
	for k, d := range want {
		if _, ok := t.attached[k]; ok {
			continue
		}
		ls, err := t.attach(d)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		t.attached[k] = tcAttached{name: d.Name, links: ls}
	}
	var names []string
	for _, a := range t.attached {
		names = append(names, a.name)
	}
	slices.Sort(names)
	return names, errors.Join(errs...)
}

func (t *tcDevices) attach(d Device) ([]link.Link, error) {
	var ls []link.Link
	err := inNetns(d.Netns, func() error {
		for _, tp := range t.progs {
			at := ebpf.AttachTCXIngress
			if tp.kind == attachTCXEgress {
				at = ebpf.AttachTCXEgress
			}
			l, err := link.AttachTCX(link.TCXOptions{Interface: d.Ifindex, Program: tp.prog, Attach: at})
			if err != nil {
				return fmt.Errorf("tcx %s: %w", d.Name, err)
			}
			ls = append(ls, l)
		}
		return nil
	})
	if err != nil {
		for _, l := range ls {
			l.Close()
		}
		return nil, err
	}
	return ls, nil
}

func (t *tcDevices) close() error {
	t.mu.Lock()
	defer t.mu.Unlock()
	var errs []error
	for _, a := range t.attached {
		errs = append(errs, a.close())
	}
	t.attached, t.progs = nil, nil
	return errors.Join(errs...)
}
