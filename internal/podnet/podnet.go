// Package podnet lists this machine's network namespaces and their
// interfaces, and finds where addresses live: the namespace and interface
// that hold each one. svctrace uses it to put its device programs on the
// interfaces of the traced Service's backend pods and nowhere else, and to
// name namespaces and devices in what it prints.
package podnet

import (
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// Namespace is a path to a network namespace and a name for it.
type Namespace struct {
	Path string
	Name string // the /run/netns name, or "pid 1234"
}

// Namespaces lists the named namespaces (/run/netns; their paths outlive
// any process), then each process's. A namespace shows up once per path
// that leads to it: callers that care tell them apart by inode.
func Namespaces() []Namespace {
	var out []Namespace
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			out = append(out, Namespace{Path: filepath.Join("/run/netns", e.Name()), Name: e.Name()})
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return out
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err != nil {
			continue
		}
		out = append(out, Namespace{Path: filepath.Join("/proc", p.Name(), "ns", "net"), Name: "pid " + p.Name()})
	}
	return out
}

// Link is an interface of a namespace with its IPv4 addresses.
type Link struct {
	Index    int
	Name     string
	Kind     string // "veth", "vxlan", …
	Loopback bool
	Prefixes []netip.Prefix
}

// Links lists the interfaces of the namespace at path (none when it cannot
// be entered).
func Links(path string) []Link {
	h, err := netns.GetFromPath(path)
	if err != nil {
		return nil
	}
	defer h.Close()
	nl, err := netlink.NewHandleAt(h)
	if err != nil {
		return nil
	}
	defer nl.Close()
	links, err := nl.LinkList()
	if err != nil {
		return nil
	}
	prefixes := map[int][]netip.Prefix{}
	if addrs, err := nl.AddrList(nil, netlink.FAMILY_V4); err == nil {
		for _, ad := range addrs {
			if ip, ok := netip.AddrFromSlice(ad.IP.To4()); ok {
				ones, _ := ad.Mask.Size()
				prefixes[ad.LinkIndex] = append(prefixes[ad.LinkIndex], netip.PrefixFrom(ip, ones))
			}
		}
	}
	out := make([]Link, 0, len(links))
	for _, l := range links {
		a := l.Attrs()
		out = append(out, Link{Index: a.Index, Name: a.Name, Kind: l.Type(),
			Loopback: a.Flags&net.FlagLoopback != 0, Prefixes: prefixes[a.Index]})
	}
	return out
}

// Interface is an interface holding one of the addresses looked for.
type Interface struct {
	Addr      netip.Addr
	Netns     string // a path to its namespace (/run/netns/…, or /proc/<pid>/ns/net)
	NetnsName string
	Inode     uint32 // the namespace's inode
	Ifindex   int
	Name      string // interface name
}

// Locate returns the interfaces, in namespaces other than those excluded
// (by inode), that hold one of addrs; loopback interfaces do not count.
// Each namespace is looked into once. An address found in no namespace is
// not reported: a backend on another node, or a pod that is gone.
func Locate(addrs []netip.Addr, exclude []uint32) []Interface {
	want := map[netip.Addr]bool{}
	for _, a := range addrs {
		if a.Is4() {
			want[a] = true
		}
	}
	if len(want) == 0 {
		return nil
	}
	var out []Interface
	seen := map[uint32]bool{}
	for _, ino := range exclude {
		seen[ino] = true
	}
	for _, ns := range Namespaces() {
		var st unix.Stat_t
		if err := unix.Stat(ns.Path, &st); err != nil || seen[uint32(st.Ino)] {
			continue
		}
		seen[uint32(st.Ino)] = true
		for _, l := range Links(ns.Path) {
			if l.Loopback {
				continue
			}
			for _, p := range l.Prefixes {
				if want[p.Addr()] {
					out = append(out, Interface{Addr: p.Addr(), Netns: ns.Path, NetnsName: ns.Name,
						Inode: uint32(st.Ino), Ifindex: l.Index, Name: l.Name})
				}
			}
		}
	}
	slices.SortFunc(out, func(a, b Interface) int { return a.Addr.Compare(b.Addr) })
	return out
}
