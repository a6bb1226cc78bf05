package podnet

import (
	"net/netip"
	"os/exec"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/testenv"
)

func ip(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
		t.Fatalf("ip %v: %v: %s", args, err, out)
	}
}

// TestLocate finds a pod's address on its interface in its namespace (a
// real one, made here), not the same address in an excluded namespace, and
// never a loopback interface.
func TestLocate(t *testing.T) {
	testenv.RequireRoot(t)
	for _, ns := range []string{"stpodnet-a", "stpodnet-b"} {
		ip(t, "netns", "add", ns)
		t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	}
	ip(t, "-n", "stpodnet-a", "link", "add", "vpeer", "type", "veth", "peer", "name", "eth0", "netns", "stpodnet-b")
	ip(t, "-n", "stpodnet-b", "addr", "add", "10.97.3.4/24", "dev", "eth0")
	ip(t, "-n", "stpodnet-b", "addr", "add", "10.97.9.9/32", "dev", "lo")
	ip(t, "-n", "stpodnet-a", "addr", "add", "10.97.5.5/24", "dev", "vpeer")
	pod, other := netip.MustParseAddr("10.97.3.4"), netip.MustParseAddr("10.97.5.5")
	got := Locate([]netip.Addr{pod, netip.MustParseAddr("10.97.9.9"), netip.MustParseAddr("10.97.200.1")}, nil)
	if len(got) != 1 {
		t.Fatalf("located %+v, want the pod's interface only", got)
	}
	g := got[0]
	var st unix.Stat_t
	if err := unix.Stat("/run/netns/stpodnet-b", &st); err != nil {
		t.Fatal(err)
	}
	if g.Addr != pod || g.Name != "eth0" || g.Inode != uint32(st.Ino) || g.Ifindex == 0 || g.Netns != "/run/netns/stpodnet-b" {
		t.Errorf("located %+v", g)
	}
	var sta unix.Stat_t
	if err := unix.Stat("/run/netns/stpodnet-a", &sta); err != nil {
		t.Fatal(err)
	}
	if got := Locate([]netip.Addr{other}, []uint32{uint32(sta.Ino)}); len(got) != 0 {
		t.Errorf("found %+v in an excluded namespace", got)
	}
	if got := Locate([]netip.Addr{other}, nil); len(got) != 1 || got[0].Name != "vpeer" {
		t.Errorf("located %+v, want vpeer", got)
	}
}
