package enrich

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/pkg/event"
)

type names map[netip.Addr]string

func (n names) NameOf(ap netip.AddrPort, _ uint8) string { return n[ap.Addr()] }

type devs struct{}

func (devs) Device(netns, ifindex uint32) string {
	return map[uint32]string{3: "cali1", 7: "eth0"}[ifindex]
}
func (devs) Netns(netns uint32) string { return map[uint32]string{10: "node", 20: "pod-a"}[netns] }

func TestPathNames(t *testing.T) {
	ap := netip.MustParseAddrPort
	p := &event.Path{
		Original: event.Tuple{Src: ap("10.244.1.2:4000"), Dst: ap("10.96.0.10:80"), Proto: 6},
		Client:   event.Endpoint{Addr: ap("10.244.1.2:4000")},
		Backend:  event.Endpoint{Addr: ap("10.244.1.5:9376")},
		Steps:    []event.Step{{Netns: 20, Ifindex: 7}, {Netns: 10, Ifindex: 3}},
		Routes:   []event.RouteStep{{Netns: 10, OutIndex: 3}},
		Result:   event.Result{Outcome: event.OutcomeDelivered, Netns: 10, Ifindex: 3},
	}
	e := &Enricher{Names: names{
		netip.MustParseAddr("10.244.1.2"): "pod default/curl",
		netip.MustParseAddr("10.244.1.5"): "pod default/hostnames-x",
	}, Devices: devs{}}
	e.Path(p)
	if p.Client.Name != "pod default/curl" || p.Backend.Name != "pod default/hostnames-x" {
		t.Errorf("names: %+v %+v", p.Client, p.Backend)
	}
	if p.Steps[0].Dev != "eth0" || p.Routes[0].OutDev != "cali1" || p.Routes[0].NetnsName != "node" || p.Result.Dev != "cali1" {
		t.Errorf("devices: %+v %+v %+v", p.Steps, p.Routes, p.Result)
	}
	if p.Entered != "pod-a/eth0" || p.NetnsName != "node" {
		t.Errorf("entered %q netns %q", p.Entered, p.NetnsName)
	}
}

// The live resolver finds its own namespace's loopback device.
func TestDevicesOwnNamespace(t *testing.T) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/self/ns/net", &st); err != nil {
		t.Fatal(err)
	}
	d := NewDevices(nil)
	if got := d.Device(uint32(st.Ino), 1); got != "lo" {
		t.Errorf("ifindex 1 is %q, want lo", got)
	}
	if got := d.Device(uint32(st.Ino), 99999); got != "if99999" {
		t.Errorf("unknown device named %q", got)
	}
}
