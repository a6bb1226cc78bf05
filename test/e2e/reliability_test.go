package e2e

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"

	"github.com/svctrace/svctrace/internal/bpfobj"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/testenv"
)

// bpfObjects lists the kernel's links and programs that are svctrace's (by
// program name), from the kernel's own listing.
func bpfObjects(t *testing.T) (links, progs map[uint32]string) {
	t.Helper()
	spec, err := bpfobj.LoadSvctrace()
	if err != nil {
		t.Fatal(err)
	}
	ours := func(name string) bool { _, ok := spec.Programs[name]; return ok }
	links, progs = map[uint32]string{}, map[uint32]string{}
	it := new(link.Iterator)
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue
		}
		if p, err := ebpf.NewProgramFromID(info.Program); err == nil {
			if pi, err := p.Info(); err == nil && ours(pi.Name) {
				links[uint32(info.ID)] = pi.Name
			}
			p.Close()
		}
	}
	var id ebpf.ProgramID
	for {
		next, err := ebpf.ProgramGetNextID(id)
		if err != nil {
			break
		}
		id = next
		p, err := ebpf.NewProgramFromID(id)
		if err != nil {
			continue
		}
		if pi, err := p.Info(); err == nil && ours(pi.Name) {
			progs[uint32(id)] = pi.Name
		}
		p.Close()
	}
	return links, progs
}

// TestStartStopCycles starts and stops svctrace 100 times (SIGINT and
// SIGTERM alternately) and checks that the kernel holds none of its links
// or programs afterwards.
func TestStartStopCycles(t *testing.T) {
	requireBackend(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	links0, progs0 := bpfObjects(t)
	for i := 0; i < 100; i++ {
		tr := startTrace(t, l, "node1", "hostnames")
		sig := syscall.SIGINT
		if i%2 == 1 {
			sig = syscall.SIGTERM
		}
		if err := tr.cmd.Process.Signal(sig); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-tr.done:
			if err != nil {
				t.Fatalf("cycle %d: svctrace exited with %v after %s: %s", i, err, sig, tr.stderr.String())
			}
		case <-time.After(20 * time.Second):
			t.Fatalf("cycle %d: no exit after %s", i, sig)
		}
	}
	// The kernel frees programs after an RCU grace period once the last
	// reference is gone: give it a moment before calling anything a leak.
	var links, progs map[uint32]string
	for wait := 0; wait < 50; wait++ {
		links, progs = bpfObjects(t)
		if len(links) <= len(links0) && len(progs) <= len(progs0) {
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	for id, name := range links {
		if _, ok := links0[id]; !ok {
			t.Errorf("link %d (%s) left behind", id, name)
		}
	}
	for id, name := range progs {
		if _, ok := progs0[id]; !ok {
			t.Errorf("program %d (%s) left behind", id, name)
		}
	}
}

// TestFloodCountsLoss offers far more traced packets than a tiny ring
// buffer can take: svctrace must stay up, stay bounded in memory, and
// count every lost event in its final stats.
func TestFloodCountsLoss(t *testing.T) {
	requireBackend(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	tr := startTrace(t, l, "node1", "hostnames", "--ring-buffer-size", "8192", "--per", "flow")
	cns, err := l.Netns(lab.CurlPod)
	if err != nil {
		t.Fatal(err)
	}
	sent := 0
	err = lab.InNetns(lab.NetnsPath(cns), func() error {
		c, err := net.Dial("udp4", "10.96.0.10:53")
		if err != nil {
			return err
		}
		defer c.Close()
		end := time.Now().Add(2 * time.Second)
		for time.Now().Before(end) {
			if _, err := c.Write([]byte("x")); err == nil {
				sent++
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	rss := peakRSS(tr.cmd.Process.Pid)
	out := tr.stop(t, syscall.SIGINT)
	st := out.final(t)
	t.Logf("%d packets sent; %d events read, %d lost (per CPU %v); peak RSS %.1f MB", sent, st.Events, st.Lost, st.LostPerCPU, float64(rss)/1e6)
	if st.Lost == 0 {
		t.Errorf("an 8 KiB ring buffer under a flood lost nothing: the loss counter is not working")
	}
	if !strings.Contains(tr.stderr.String(), "events lost") {
		t.Errorf("no loss warning at exit: %s", tr.stderr.String())
	}
	if rss > 200<<20 {
		t.Errorf("peak RSS %d MB under a flood", rss>>20)
	}
}

func peakRSS(pid int) int64 {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(data), "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "VmHWM:" {
			kb, _ := strconv.ParseInt(f[1], 10, 64)
			return kb << 10
		}
	}
	return 0
}

// TestMissingPrivilege runs svctrace as an unprivileged user: a one-line
// error naming the capabilities, exit code 2.
func TestMissingPrivilege(t *testing.T) {
	testenv.RequireRoot(t)
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	// The manifests must be readable by the unprivileged user: only the BPF
	// part may fail.
	mf, err := os.MkdirTemp("", "svctrace-unprivileged-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(mf) })
	if err := os.Chmod(mf, 0o755); err != nil {
		t.Fatal(err)
	}
	ents, err := os.ReadDir(l.ManifestsDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		data, err := os.ReadFile(filepath.Join(l.ManifestsDir(), e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(mf, e.Name()), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cmd := exec.Command(binary(t), "--svc", "hostnames", "--manifests", mf)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 2 {
		t.Fatalf("exit %v, want code 2; output %q", err, out)
	}
	msg := strings.TrimSpace(string(out))
	if strings.Count(msg, "\n") != 0 || !strings.Contains(msg, "CAP_BPF") {
		t.Errorf("want one line naming the capabilities, got %q", msg)
	}
}

// TestKernelWithoutHook asks for a backend the kernel cannot provide for
// some hooks: svctrace says once what is not traced and traces the rest.
func TestKernelWithoutHook(t *testing.T) {
	testenv.RequireRoot(t)
	if kernel.HaveKprobes() == nil {
		t.Skip("kernel feature present: this kernel has kprobes, so --backend kprobe lacks nothing here")
	}
	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	ns, _ := l.NodeNetns("node1")
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, binary(t), "--svc", "hostnames", "--manifests", l.ManifestsDir(), "--netns", ns,
		"--backend", "kprobe", "--duration", "1s", "-o", "json")
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("svctrace: %v: %s", err, stderr.String())
	}
	lines := strings.Split(strings.TrimSpace(stderr.String()), "\n")
	found := false
	for _, line := range lines {
		if strings.Contains(line, "not traced") && strings.Contains(line, "nat") {
			found = true
		}
	}
	if !found {
		t.Errorf("no 'not traced' line for the NAT hook: %q", stderr.String())
	}
}
