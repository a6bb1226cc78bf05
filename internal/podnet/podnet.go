// Package podnet finds where addresses live on this machine: the network
// namespace and interface that hold each one. svctrace uses it to put its
// device programs on the interfaces of the traced Service's backend pods
// and nowhere else.
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

// Interface is an interface holding one of the addresses looked for.
type Interface struct {
	Addr    netip.Addr
	Netns   string // a path to its namespace (/run/netns/…, or /proc/<pid>/ns/net)
	Inode   uint32 // the namespace's inode
	Ifindex int
	Name    string // interface name
}

// Locate returns the interfaces, in namespaces other than those excluded
// (by inode), that hold one of addrs; loopback interfaces do not count. The
// namespaces are the named ones (/run/netns) and those of running processes
// (each looked into once). An address found in no namespace is not
// reported: a backend on another node, or a pod that is gone.
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
	for _, path := range namespaces() {
		var st unix.Stat_t
		if err := unix.Stat(path, &st); err != nil || seen[uint32(st.Ino)] {
			continue
		}
		seen[uint32(st.Ino)] = true
		for _, ifc := range holding(path, want) {
			ifc.Inode = uint32(st.Ino)
			out = append(out, ifc)
		}
	}
	slices.SortFunc(out, func(a, b Interface) int { return a.Addr.Compare(b.Addr) })
	return out
}

// namespaces lists paths to network namespaces: named ones first (their
// paths outlive any process), then each process's.
func namespaces() []string {
	var paths []string
	if ents, err := os.ReadDir("/run/netns"); err == nil {
		for _, e := range ents {
			paths = append(paths, filepath.Join("/run/netns", e.Name()))
		}
	}
	procs, err := os.ReadDir("/proc")
	if err != nil {
		return paths
	}
	for _, p := range procs {
		if _, err := strconv.Atoi(p.Name()); err == nil {
			paths = append(paths, filepath.Join("/proc", p.Name(), "ns", "net"))
		}
	}
	return paths
}

// holding lists the namespace's interfaces that hold a wanted address.
func holding(path string, want map[netip.Addr]bool) []Interface {
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
	addrs, err := nl.AddrList(nil, netlink.FAMILY_V4)
	if err != nil {
		return nil
	}
	var out []Interface
	for _, ad := range addrs {
		a, ok := netip.AddrFromSlice(ad.IP.To4())
		if !ok || !want[a] || a.IsLoopback() {
			continue
		}
		l, err := nl.LinkByIndex(ad.LinkIndex)
		if err != nil || l.Attrs().Flags&net.FlagLoopback != 0 {
			continue
		}
		out = append(out, Interface{Addr: a, Netns: path, Ifindex: ad.LinkIndex, Name: l.Attrs().Name})
	}
	return out
}
