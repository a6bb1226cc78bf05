package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"sigs.k8s.io/yaml"

	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/pkg/event"
)

// daemonSetContainer reads the svctrace container of deploy/svctrace.yaml.
func daemonSetContainer(t *testing.T) corev1.Container {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "..", "deploy", "svctrace.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, doc := range bytes.Split(data, []byte("\n---\n")) {
		var ds appsv1.DaemonSet
		if err := yaml.Unmarshal(doc, &ds); err != nil {
			t.Fatalf("deploy/svctrace.yaml: %v", err)
		}
		if ds.Kind == "DaemonSet" {
			return ds.Spec.Template.Spec.Containers[0]
		}
	}
	t.Fatal("deploy/svctrace.yaml has no DaemonSet")
	return corev1.Container{}
}

// TestDaemonSetCapabilities runs svctrace the way the DaemonSet's container
// does, short of a container runtime: as uid 0 in the node's network
// namespace, with no_new_privs and only the capabilities the manifest adds
// (everything else dropped from the bounding set), and checks that it
// attaches and names a Service packet's DNAT.
func TestDaemonSetCapabilities(t *testing.T) {
	natSource, _ := requirePlan(t)
	c := daemonSetContainer(t)
	sc := c.SecurityContext
	if sc == nil || sc.Capabilities == nil || len(sc.Capabilities.Drop) != 1 || sc.Capabilities.Drop[0] != "ALL" {
		t.Fatalf("the DaemonSet must drop ALL capabilities and add the few it needs: %+v", sc)
	}
	if sc.Privileged != nil && *sc.Privileged {
		t.Fatal("the DaemonSet must not be privileged")
	}
	// Capability numbers of linux/capability.h.
	capBits := map[string]uint{
		"NET_ADMIN": 12, "SYS_ADMIN": 21, "SYS_PTRACE": 19, "SYS_RESOURCE": 24, "PERFMON": 38, "BPF": 39,
	}
	var want uint64
	bounding := []string{"-all"}
	for _, cp := range sc.Capabilities.Add {
		bit, ok := capBits[string(cp)]
		if !ok {
			t.Fatalf("capability %s: unknown to this test", cp)
		}
		want |= 1 << bit
		bounding = append(bounding, "+"+strings.ToLower(string(cp)))
	}
	for _, forbidden := range []string{"SYS_ADMIN", "SYS_PTRACE"} {
		if want&(1<<capBits[forbidden]) != 0 {
			t.Errorf("the DaemonSet adds %s", forbidden)
		}
	}

	drop := []string{"setpriv", "--no-new-privs", "--bounding-set", strings.Join(bounding, ","), "--inh-caps", "-all", "--"}
	if natSource == event.SourceKprobe {
		allowKprobes(t, append(drop, binary(t), "doctor", "--backend", backend()))
	}

	spec, err := lab.Healthy(lab.VariantDefault)
	l := upLab(t, spec, err)
	nodeNS, err := l.NodeNetns("node1")
	if err != nil {
		t.Fatal(err)
	}
	ready := filepath.Join(t.TempDir(), "ready")
	// nsenter (full root) puts it in the node's namespace, as hostNetwork
	// does; setpriv then leaves it only the manifest's capabilities.
	argv := append([]string{"nsenter", "--net=" + nodeNS}, drop...)
	argv = append(argv, binary(t), "--svc", "hostnames", "-n", "default", "--manifests", l.ManifestsDir(),
		"-o", "json", "--ready-file", ready, "--backend", backend(), "--stats-interval", "0")
	tr := &trace{cmd: exec.Command(argv[0], argv[1:]...), done: make(chan error, 1)}
	tr.cmd.Stdout, tr.cmd.Stderr = &tr.stdout, &tr.stderr
	launch(t, tr.cmd, tr.done, ready, &tr.stderr)

	// The test's own bounding set may lack some (this sandbox has no
	// CAP_SYS_RESOURCE, which only kernels before 5.11 need).
	have := capField(t, os.Getpid(), "CapBnd:")
	if eff := capField(t, tr.cmd.Process.Pid, "CapEff:"); eff != want&have {
		t.Errorf("svctrace ran with CapEff %#x, want exactly the DaemonSet's %#x (within this test's %#x)", eff, want&have, have)
	}
	answer, err := l.Dial(context.Background(), lab.CurlPod, "tcp", lab.HostnamesIP+":80", lab.WithSource(":40611"))
	if err != nil || answer != lab.HostnamesPod {
		t.Fatalf("TCP through the ClusterIP: %q, %v", answer, err)
	}
	out := tr.stop(t, syscall.SIGINT)
	if strings.Contains(tr.stderr.String(), "not permitted") || strings.Contains(tr.stderr.String(), "permission") {
		t.Errorf("a permission problem with the DaemonSet's capabilities:\n%s", tr.stderr.String())
	}
	client := podIP(t, l, lab.CurlPod)
	syn := out.find(t, tup(netip.AddrPortFrom(client, 40611), netip.AddrPortFrom(netip.MustParseAddr(lab.HostnamesIP), 80), 6))
	if len(syn.NAT) != 1 || syn.NAT[0].Type != event.DNAT || syn.NAT[0].Source != natSource ||
		syn.NAT[0].After.Dst != netip.AddrPortFrom(podIP(t, l, lab.HostnamesPod), 9376) {
		t.Errorf("SYN NAT %+v, want DNAT to the backend seen by %s", syn.NAT, natSource)
	}
	if !strings.HasPrefix(syn.Backend.Name, "pod default/"+lab.HostnamesPod) {
		t.Errorf("backend named %q", syn.Backend.Name)
	}
	t.Logf("with CapEff %#x (%s): %d paths; stderr: %s", want, strings.Join(bounding[1:], ","), len(out.paths), tr.stderr.String())
}

// allowKprobes handles kernels (Debian's, Ubuntu's) whose
// perf_event_paranoid of 3 reserves kprobes for CAP_SYS_ADMIN: doctor, run
// with the DaemonSet's capabilities, must name the setting and its fix; then
// the test applies that fix for its duration, as the README tells operators.
func allowKprobes(t *testing.T, doctor []string) {
	t.Helper()
	const knob = "/proc/sys/kernel/perf_event_paranoid"
	old, err := os.ReadFile(knob)
	if err != nil {
		t.Fatal(err)
	}
	level, err := strconv.Atoi(strings.TrimSpace(string(old)))
	if err != nil || level <= 2 {
		return
	}
	out, _ := exec.Command(doctor[0], doctor[1:]...).CombinedOutput()
	hint := fmt.Sprintf("kernel.perf_event_paranoid is %d, which reserves perf events and kprobes for CAP_SYS_ADMIN: set sysctl kernel.perf_event_paranoid=2", level)
	if !strings.Contains(string(out), "kprobes refused: "+hint) {
		t.Errorf("with perf_event_paranoid %d, doctor does not name the setting and its fix:\n%s", level, out)
	}
	if err := os.WriteFile(knob, []byte("2"), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.WriteFile(knob, old, 0o644) })
	t.Logf("kernel.perf_event_paranoid was %d: doctor named it; lowered to 2 for the test", level)
}

// capField is a capability set ("CapEff:", "CapBnd:") of pid.
func capField(t *testing.T, pid int, field string) uint64 {
	t.Helper()
	data, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(data), "\n") {
		if v, ok := strings.CutPrefix(line, field); ok {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, pid)
	return 0
}
