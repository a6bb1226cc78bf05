package vm

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// moduleBTF says which kernels of the matrix have module BTF
// (CONFIG_DEBUG_INFO_BTF_MODULES): Debian's 5.10 does not.
func moduleBTF() map[string]bool { return map[string]bool{"5.10": false, "6.1": true, "6.12": true} }

// requireQEMU skips without qemu, but only outside CI: in CI a missing qemu is
// a broken runner.
func requireQEMU(t *testing.T) {
	t.Helper()
	if os.Getenv(EnvGuest) == "1" {
		t.Skip("already inside a test VM: no nested VMs under TCG")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		if os.Getenv("CI") != "" {
			t.Fatalf("qemu-system-x86_64 is not installed, and CI=%s: install qemu-system-x86", os.Getenv("CI"))
		}
		t.Skip("qemu-system-x86_64 is not installed (and CI is unset)")
	}
}

// buildExitTest compiles, on the host, a Go test binary that fails when
// VMTEST_FAIL=1; it lives under the temporary directory, which the guest
// sees through the shared root.
func buildExitTest(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	files := map[string]string{
		"go.mod": "module exittest\n\ngo 1.22\n",
		"exit_test.go": `package exittest

import (
	"fmt"
	"os"
	"runtime"
	"testing"
)

func TestExit(t *testing.T) {
	fmt.Println("GO-TEST-RAN", runtime.Version(), os.Getenv("VMTEST_MARK"))
	if os.Getenv("VMTEST_FAIL") == "1" {
		t.Fatal("failing as asked")
	}
}
`,
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	bin := filepath.Join(dir, "exit.test")
	cmd := exec.Command("go", "test", "-c", "-o", bin, ".")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go test -c: %v\n%s", err, out)
	}
	return bin
}

// guestChecks runs in the guest and prints one "key=value" line per check.
const guestChecks = `
echo "uname=$(uname -r)"
echo "pwd=$(pwd)"
echo "mark=$VMTEST_MARK"
echo "hostonly=${VMTEST_HOSTONLY:-unset}"
echo "guest=$SVCTRACE_VM_GUEST"
echo "uid=$(id -u)"
if modprobe ip_vs && cat /proc/net/ip_vs | grep -q "IP Virtual Server"; then echo ipvs=yes; else echo ipvs=no; fi
[ -e /sys/kernel/btf/vmlinux ] && echo btf_vmlinux=yes || echo btf_vmlinux=no
[ -e /sys/kernel/btf/ip_vs ] && echo btf_ip_vs=yes || echo btf_ip_vs=no
[ -e /sys/kernel/tracing/kprobe_events ] && echo kprobe_events=yes || echo kprobe_events=no
[ -e /sys/fs/bpf ] && grep -q " /sys/fs/bpf bpf " /proc/mounts && echo bpffs=yes || echo bpffs=no
[ -e "/boot/config-$(uname -r)" ] && echo config=yes || echo config=no
echo "netfilter_link=$(grep -c '^CONFIG_NETFILTER_BPF_LINK=y' /boot/config-$(uname -r))"
touch "$VMTEST_SHARED/written-by-guest" && echo shared=yes
touch /usr/written-to-overlay && echo overlay=yes
echo to-stderr >&2
exec "$VMTEST_BIN" -test.v
`

// TestBootEachKernel boots every VM kernel of the matrix and checks the guest
// environment the tracer's tests rely on, and that exit codes and output come
// back.
func TestBootEachKernel(t *testing.T) {
	requireQEMU(t)
	m, err := ReadMatrix("kernels.json")
	if err != nil {
		t.Fatal(err)
	}
	cache, err := DefaultCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin := buildExitTest(t)
	t.Setenv("VMTEST_HOSTONLY", "leaked") // must not reach the guest: Env is complete
	first := true
	for _, k := range m.Kernels {
		if k.IsHost() {
			continue
		}
		t.Run(k.Name, func(t *testing.T) {
			start := time.Now()
			img, err := k.Prepare(t.Context(), cache)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: prepared %s in %.1fs", k.Name, img.Release, time.Since(start).Seconds())

			shared := t.TempDir()
			workdir := t.TempDir()
			var stdout, stderr bytes.Buffer
			res, err := img.Run(t.Context(), RunOptions{
				Args: []string{"/bin/sh", "-c", guestChecks},
				Dir:  workdir,
				Env: []string{
					"VMTEST_MARK=hello world", "VMTEST_BIN=" + bin, "VMTEST_SHARED=" + shared,
				},
				Modules:    []string{"nf_conntrack", "nf_nat"},
				Stdout:     &stdout,
				Stderr:     &stderr,
				Timeout:    3 * time.Minute,
				SharedDirs: []string{shared},
			})
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: boot %.1fs, checks and Go test %.1fs, total %.1fs",
				k.Name, res.Boot.Seconds(), (res.Duration - res.Boot).Seconds(), res.Duration.Seconds())
			got := map[string]string{}
			for l := range strings.Lines(stdout.String()) {
				if key, v, ok := strings.Cut(strings.TrimSpace(l), "="); ok {
					got[key] = v
				}
			}
			want := map[string]string{
				"uname": img.Release, "pwd": workdir, "mark": "hello world", "hostonly": "unset", "guest": "1", "uid": "0",
				"ipvs": "yes", "btf_vmlinux": "yes", "kprobe_events": "yes", "bpffs": "yes", "config": "yes",
				"shared": "yes", "overlay": "yes",
			}
			if has, ok := moduleBTF()[k.Name]; ok {
				want["btf_ip_vs"] = map[bool]string{true: "yes", false: "no"}[has]
			} else {
				t.Logf("%s: no expectation for module BTF; /sys/kernel/btf/ip_vs: %s", k.Name, got["btf_ip_vs"])
			}
			for key, w := range want {
				if got[key] != w {
					t.Errorf("%s = %q, want %q", key, got[key], w)
				}
			}
			t.Logf("%s: CONFIG_NETFILTER_BPF_LINK=y: %s", k.Name, got["netfilter_link"])
			if res.ExitCode != 0 {
				t.Errorf("exit code %d, want 0\nstdout:\n%s\nstderr:\n%s", res.ExitCode, stdout.String(), stderr.String())
			}
			if !strings.Contains(stdout.String(), "GO-TEST-RAN") || !strings.Contains(stdout.String(), "--- PASS: TestExit") {
				t.Errorf("the Go test binary did not run:\n%s", stdout.String())
			}
			if stderr.String() != "to-stderr\n" {
				t.Errorf("stderr = %q, want only the command's output", stderr.String())
			}
			if strings.Contains(stdout.String(), "to-stderr") || strings.Contains(stdout.String(), "Linux version") {
				t.Errorf("stdout has stderr or console output:\n%s", stdout.String())
			}
			if _, err := os.Stat(filepath.Join(shared, "written-by-guest")); err != nil {
				t.Errorf("the guest's write to a shared directory did not reach the host: %v", err)
			}
			if _, err := os.Stat("/usr/written-to-overlay"); err == nil {
				t.Errorf("the guest wrote through to the host's /usr")
			}

			// A failing Go test: its exit code comes back.
			stdout.Reset()
			res, err = img.Run(t.Context(), RunOptions{
				Args:    []string{bin, "-test.v"},
				Dir:     workdir,
				Env:     []string{"VMTEST_FAIL=1"},
				Stdout:  &stdout,
				Timeout: 3 * time.Minute,
			})
			if err != nil {
				t.Fatal(err)
			}
			if res.ExitCode != 1 || !strings.Contains(stdout.String(), "failing as asked") {
				t.Errorf("failing test: exit code %d, want 1; output:\n%s", res.ExitCode, stdout.String())
			}
			t.Logf("%s: failing Go test run: boot %.1fs, total %.1fs", k.Name, res.Boot.Seconds(), res.Duration.Seconds())

			if !first {
				return
			}
			first = false
			// A module that does not exist is an error, not an exit code.
			_, err = img.Run(t.Context(), RunOptions{
				Args:    []string{"/bin/true"},
				Modules: []string{"ip_vs", "svctrace_no_such_module"},
				Timeout: 3 * time.Minute,
			})
			if err == nil || !strings.Contains(err.Error(), "svctrace_no_such_module") {
				t.Errorf("missing module: err = %v, want an error naming it", err)
			}
		})
	}
}
