package attach

import (
	"fmt"
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/svctrace/svctrace/internal/decode"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/testenv"
	"github.com/svctrace/svctrace/pkg/event"
)

func run(t *testing.T, args ...string) string {
	t.Helper()
	out, err := exec.Command(args[0], args[1:]...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v: %s", strings.Join(args, " "), err, out)
	}
	return string(out)
}

func inode(t *testing.T, path string) uint32 {
	t.Helper()
	var st unix.Stat_t
	if err := unix.Stat(path, &st); err != nil {
		t.Fatal(err)
	}
	return uint32(st.Ino)
}

// TestDevicesOnChosenInterfaces: a "node" namespace and a "pod" one joined
// by a veth pair. With the tc flavour the device programs run on the pod's
// interface once SetDevices names it (events from the pod's namespace,
// source tc, both directions), on nothing before and after, and Close
// leaves no link behind. With --device-hooks all the tracepoints are back.
func TestDevicesOnChosenInterfaces(t *testing.T) {
	testenv.RequireRoot(t)
	testenv.SkipIfMissing(t, "BPF netfilter links (6.4+)", kernel.HaveNetfilterLink())
	testenv.SkipIfMissing(t, "tcx links (6.6+)", tcCheck(&env{btf: mustBTF(t)}))
	node := newNetns(t)
	pod := podBehindVeth(t, node, "p", "10.98.0")
	podName := pod[strings.LastIndex(pod, "/")+1:]
	podIf := 0
	for _, l := range strings.Split(run(t, "ip", "-n", podName, "-o", "link", "show", "eth0"), "\n") {
		if i := strings.Index(l, ":"); i > 0 {
			_, _ = fmt.Sscan(l[:i], &podIf)
			break
		}
	}
	if podIf == 0 {
		t.Fatal("pod interface index not found")
	}

	before := ourLinks(t)
	p, err := Load(Options{Backend: BackendNetfilter, NetnsPath: node})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if !p.UsesDevices() {
		t.Fatalf("devices hook not in its tc flavour: %+v", p.Plan())
	}
	if _, err := p.SetFilter([]FilterEntry{{Addr: netip.MustParseAddr("10.98.0.2")}}, false); err != nil {
		t.Fatal(err)
	}
	r, err := p.NewReader()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	dec := decode.New(decode.Options{})
	podIno := inode(t, pod)
	// deviceEvents sends two UDP exchanges from the node to the pod and
	// counts the device events read, by source and namespace.
	deviceEvents := func() (tc, elsewhere int) {
		udpEcho(t, node, pod, netip.MustParseAddrPort("10.98.0.2:9999"), 2)
		var ev event.Event
		for {
			rec, err := r.Read(time.Now().Add(200 * time.Millisecond))
			if err != nil {
				return tc, elsewhere
			}
			if dec.Decode(rec, &ev) != nil || (ev.Kind != event.KindRecv && ev.Kind != event.KindXmit) {
				continue
			}
			if ev.Source == event.SourceTC && ev.Netns == podIno && int(ev.InIfindex) == podIf {
				tc++
			} else {
				elsewhere++
			}
		}
	}
	if tc, other := deviceEvents(); tc+other != 0 {
		t.Errorf("before SetDevices: %d device events from the pod, %d elsewhere; want none", tc, other)
	}
	names, err := p.SetDevices([]Device{{Netns: pod, Inode: podIno, Ifindex: podIf, Name: "pod eth0"}})
	if err != nil || len(names) != 1 {
		t.Fatalf("SetDevices: %v %v", names, err)
	}
	if n := len(ourLinks(t)) - len(before); n != 6+4+2 {
		t.Errorf("%d links with one interface, want 12", n)
	}
	// Two requests received, two answers queued on the pod's eth0.
	if tc, other := deviceEvents(); tc != 4 || other != 0 {
		t.Errorf("with the pod's interface: %d device events there (want 4), %d elsewhere (want 0)", tc, other)
	}
	if _, err := p.SetDevices(nil); err != nil {
		t.Fatal(err)
	}
	if tc, other := deviceEvents(); tc+other != 0 {
		t.Errorf("after the interface was dropped: %d + %d device events", tc, other)
	}
	if _, err := p.SetDevices([]Device{{Netns: pod, Inode: podIno, Ifindex: podIf, Name: "pod eth0"}}); err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	for id, name := range ourLinks(t) {
		if _, ok := before[id]; !ok {
			t.Errorf("link %d (%s) left behind after Close", id, name)
		}
	}

	all, err := Load(Options{Backend: BackendNetfilter, NetnsPath: node, DeviceHooks: DevicesAll, LoadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer all.Close()
	for _, st := range all.Plan() {
		if st.Hook == "devices" && st.Impl != "tracepoint" {
			t.Errorf("--device-hooks all: devices hook is %q", st.Impl)
		}
	}
	if all.UsesDevices() {
		t.Errorf("--device-hooks all: tc programs loaded")
	}
}

// podBehindVeth makes a "pod" namespace (node's name and suffix) joined
// to node by a veth pair: vnode in node with net.1/24, eth0 in the pod
// with net.2/24. It returns the pod namespace's path.
func podBehindVeth(t *testing.T, node, suffix, net string) string {
	t.Helper()
	pod := node + suffix
	podName := pod[strings.LastIndex(pod, "/")+1:]
	nodeName := node[strings.LastIndex(node, "/")+1:]
	run(t, "ip", "netns", "add", podName)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", podName).Run() })
	run(t, "ip", "-n", nodeName, "link", "add", "vnode", "type", "veth", "peer", "name", "eth0", "netns", podName)
	run(t, "ip", "-n", nodeName, "addr", "add", net+".1/24", "dev", "vnode")
	run(t, "ip", "-n", nodeName, "link", "set", "vnode", "up")
	run(t, "ip", "-n", podName, "addr", "add", net+".2/24", "dev", "eth0")
	run(t, "ip", "-n", podName, "link", "set", "eth0", "up")
	return pod
}

// udpEcho sends n datagrams from a socket in namespace from to an echo
// socket at dst in namespace to, and waits for each answer (sockets stay
// in the namespace they were made in).
func udpEcho(t *testing.T, from, to string, dst netip.AddrPort, n int) {
	t.Helper()
	var srv, cli *net.UDPConn
	if err := inNetns(to, func() (err error) {
		srv, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer srv.Close()
	if err := inNetns(from, func() (err error) {
		cli, err = net.DialUDP("udp4", nil, net.UDPAddrFromAddrPort(dst))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			k, peer, err := srv.ReadFromUDPAddrPort(buf)
			if err != nil {
				return
			}
			_, _ = srv.WriteToUDPAddrPort(buf[:k], peer)
		}
	}()
	buf := make([]byte, 64)
	for i := 0; i < n; i++ {
		if _, err := cli.Write([]byte("svctrace")); err != nil {
			t.Fatal(err)
		}
		_ = cli.SetReadDeadline(time.Now().Add(2 * time.Second))
		if _, err := cli.Read(buf); err != nil {
			t.Fatalf("echo %d: %v", i, err)
		}
	}
}
