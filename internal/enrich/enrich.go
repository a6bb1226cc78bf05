// Package enrich names what the kernel reported by number: addresses become
// Services, Pods and Nodes (from a metadata snapshot), ifindexes become
// device names and namespace inodes become namespace names.
package enrich

import (
	"net/netip"
	"strconv"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/podnet"
	"github.com/svctrace/svctrace/pkg/event"
)

// Namer names an address (and port) the way a user knows it:
// "service default/hostnames:80/TCP", "pod default/hostnames-7d9f-abc",
// "node worker-1"; "" when unknown.
type Namer interface {
	NameOf(ap netip.AddrPort, proto uint8) string
}

// DeviceNamer names devices and namespaces.
type DeviceNamer interface {
	Device(netns, ifindex uint32) string
	Netns(netns uint32) string
}

// Enricher fills names into paths.
type Enricher struct {
	// Service is the traced Service's display name for every path.
	Service string
	Names   Namer
	Devices DeviceNamer
}

// Path names everything in p.
func (e *Enricher) Path(p *event.Path) {
	if e.Service != "" {
		p.Service = e.Service
	}
	if e.Names != nil {
		p.Client.Name = e.Names.NameOf(p.Client.Addr, p.Original.Proto)
		if p.Backend.Addr.IsValid() {
			p.Backend.Name = e.Names.NameOf(p.Backend.Addr, p.Original.Proto)
		}
	}
	if e.Devices == nil {
		return
	}
	for i := range p.Steps {
		s := &p.Steps[i]
		if s.Ifindex != 0 {
			s.Dev = e.Devices.Device(s.Netns, s.Ifindex)
		}
	}
	for i := range p.Routes {
		r := &p.Routes[i]
		if r.OutIndex != 0 {
			r.OutDev = e.Devices.Device(r.Netns, r.OutIndex)
		}
		if r.Netns != 0 {
			r.NetnsName = e.Devices.Netns(r.Netns)
		}
	}
	if p.Result.Ifindex != 0 {
		p.Result.Dev = e.Devices.Device(p.Result.Netns, p.Result.Ifindex)
	}
	if p.Result.Netns != 0 {
		p.NetnsName = e.Devices.Netns(p.Result.Netns)
	}
	if p.Entered == "" && len(p.Steps) > 0 {
		first := p.Steps[0]
		if first.Dev != "" {
			p.Entered = first.Dev
			if ns := e.Devices.Netns(first.Netns); ns != "" {
				p.Entered = ns + "/" + first.Dev
			}
		}
	}
}

// Event names the devices of a raw event.
func (e *Enricher) Event(ev *event.Event) {
	if e.Devices == nil {
		return
	}
	if ev.InIfindex != 0 {
		ev.InDev = e.Devices.Device(ev.Netns, ev.InIfindex)
	}
	if ev.OutIfindex != 0 {
		ev.OutDev = e.Devices.Device(ev.Netns, ev.OutIfindex)
	}
	if ev.RouteIfindex != 0 {
		ev.RouteDev = e.Devices.Device(ev.Netns, ev.RouteIfindex)
	}
	if ev.Netns != 0 {
		ev.NetnsName = e.Devices.Netns(ev.Netns)
	}
}

// Devices resolves (netns inode, ifindex) to device names by looking into
// the namespaces it can find: its own, the named ones in /run/netns, and
// those of running processes. Lookups are cached; a miss rescans at most
// once per second.
type Devices struct {
	mu       sync.Mutex
	ns       map[uint32]*nsInfo
	lastScan time.Time
	// Hint names a namespace path that may not be found by scanning (the
	// one svctrace traces).
	hints map[string]string
}

type nsInfo struct {
	name string
	path string
	devs map[uint32]devInfo
	at   time.Time
}

type devInfo struct {
	name     string
	kind     string
	prefixes []netip.Prefix
}

// NewDevices returns an empty resolver. hints maps namespace paths to
// display names (e.g. the traced node namespace).
func NewDevices(hints map[string]string) *Devices {
	return &Devices{ns: map[uint32]*nsInfo{}, hints: hints}
}

// Netns returns the namespace's name ("host" for the initial one, the
// /run/netns name, or "pid 1234").
func (d *Devices) Netns(inode uint32) string {
	d.mu.Lock()
	defer d.mu.Unlock()
	info := d.lookup(inode)
	if info == nil {
		return ""
	}
	return info.name
}

// Device returns the device's name, or "if<N>" when it cannot be found.
func (d *Devices) Device(inode, ifindex uint32) string {
	if di, ok := d.dev(inode, ifindex); ok {
		return di.name
	}
	return "if" + strconv.FormatUint(uint64(ifindex), 10)
}

// Prefixes returns the device's IPv4 addresses with their prefix length.
func (d *Devices) Prefixes(inode, ifindex uint32) []netip.Prefix {
	di, _ := d.dev(inode, ifindex)
	return di.prefixes
}

// Kind returns the device's link type ("veth", "vxlan", …).
func (d *Devices) Kind(inode, ifindex uint32) string {
	di, _ := d.dev(inode, ifindex)
	return di.kind
}

// NetnsPrefixes returns every IPv4 address of a namespace found by path.
func NetnsPrefixes(path string) []netip.Prefix {
	var out []netip.Prefix
	for _, di := range listDevices(path) {
		out = append(out, di.prefixes...)
	}
	return out
}

func (d *Devices) dev(inode, ifindex uint32) (devInfo, bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	info := d.lookup(inode)
	if info == nil {
		return devInfo{}, false
	}
	if _, ok := info.devs[ifindex]; info.devs == nil || (!ok && time.Since(info.at) > time.Second) {
		info.devs = listDevices(info.path)
		info.at = time.Now()
	}
	di, ok := info.devs[ifindex]
	return di, ok
}

func (d *Devices) lookup(inode uint32) *nsInfo {
	if inode == 0 {
		return nil
	}
	if info := d.ns[inode]; info != nil {
		return info
	}
	if time.Since(d.lastScan) < time.Second && !d.lastScan.IsZero() {
		return nil
	}
	d.lastScan = time.Now()
	d.scan()
	return d.ns[inode]
}

func inodeOf(path string) (uint32, bool) {
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		return 0, false
	}
	return uint32(st.Ino), true
}

func (d *Devices) add(path, name string) {
	ino, ok := inodeOf(path)
	if !ok {
		return
	}
	if _, seen := d.ns[ino]; seen {
		return
	}
	d.ns[ino] = &nsInfo{name: name, path: path}
}

func (d *Devices) scan() {
	for p, name := range d.hints {
		d.add(p, name)
	}
	d.add("/proc/1/ns/net", "host")
	d.add("/proc/self/ns/net", "svctrace")
	for _, ns := range podnet.Namespaces() {
		d.add(ns.Path, ns.Name)
	}
}

func listDevices(path string) map[uint32]devInfo {
	out := map[uint32]devInfo{}
	for _, l := range podnet.Links(path) {
		out[uint32(l.Index)] = devInfo{name: l.Name, kind: l.Kind, prefixes: l.Prefixes}
	}
	return out
}
