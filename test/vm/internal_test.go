package vm

import (
	"bytes"
	"compress/gzip"
	"encoding/binary"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

func TestHostMirrors(t *testing.T) {
	t.Setenv(EnvMirror, "")
	t.Setenv(EnvSecurityMirror, "")
	etc := t.TempDir()
	if err := os.Mkdir(filepath.Join(etc, "sources.list.d"), 0o755); err != nil {
		t.Fatal(err)
	}
	write := func(name, data string) {
		t.Helper()
		if err := os.WriteFile(filepath.Join(etc, name), []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("sources.list.d/nodesource.sources", "Types: deb\nURIs: https://deb.nodesource.com/node_20.x\nSuites: nodistro\nComponents: main\n")
	write("sources.list.d/gcloud.list", "deb https://packages.cloud.google.com/apt cloud-sdk-bookworm main\n")
	write("sources.list.d/disabled.sources", "Enabled: no\nTypes: deb\nURIs: http://wrong.example/debian\nSuites: bookworm\n")
	write("sources.list.d/debian.sources", `Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb deb-src
URIs: http://mirror.example/debian-security/
Suites: bookworm-security
Components: main
`)
	m, err := hostMirrors(etc)
	if err != nil {
		t.Fatal(err)
	}
	if want := (mirrors{"http://mirror.example/debian", "http://mirror.example/debian-security"}); m != want {
		t.Errorf("mirrors = %+v, want %+v", m, want)
	}

	// One-line format, no security line: derived from the archive.
	etc2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(etc2, "sources.list"), []byte(
		"# comment\ndeb-src http://src.example/debian bookworm main\n"+
			"deb [arch=amd64 signed-by=/k.gpg] http://one.example/debian/ bookworm main contrib\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	m, err = hostMirrors(etc2)
	if err != nil {
		t.Fatal(err)
	}
	if want := (mirrors{"http://one.example/debian", "http://one.example/debian-security"}); m != want {
		t.Errorf("mirrors = %+v, want %+v", m, want)
	}

	if _, err := hostMirrors(t.TempDir()); err == nil || !strings.Contains(err.Error(), EnvMirror) {
		t.Errorf("no sources: err = %v, want a hint to set %s", err, EnvMirror)
	}
	t.Setenv(EnvMirror, "http://a/debian")
	t.Setenv(EnvSecurityMirror, "http://b/debian-security")
	if m, _ := hostMirrors(t.TempDir()); m.archive != "http://a/debian" || m.security != "http://b/debian-security" {
		t.Errorf("environment override ignored: %+v", m)
	}
}

func TestSourcesList(t *testing.T) {
	a := &apt{mirrors: mirrors{"http://m/debian", "http://m/debian-security"}, suites: []string{"bookworm", "bullseye-security"}}
	got := a.sourcesList()
	for _, want := range []string{
		"deb [signed-by=" + debianKeyring + " target=Packages] http://m/debian bookworm main\n",
		"deb [signed-by=" + debianKeyring + " target=Packages] http://m/debian-security bullseye-security main\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("sources.list lacks %q:\n%s", want, got)
		}
	}
}

func TestSplitStanzas(t *testing.T) {
	st := splitStanzas([]byte("Package: linux-image-amd64\nVersion: 6.1.176-1\nDescription: x\n more\n\nPackage: b\nSHA256: ab\n"))
	if len(st) != 2 || st[0]["version"] != "6.1.176-1" || st[0]["description"] != "x\nmore" || st[1]["sha256"] != "ab" {
		t.Errorf("stanzas = %q", st)
	}
}

// readCPIO parses a newc archive: name -> (mode, data).
func readCPIO(t *testing.T, b []byte) map[string]struct {
	mode uint32
	data string
	rdev [2]uint32
} {
	t.Helper()
	out := map[string]struct {
		mode uint32
		data string
		rdev [2]uint32
	}{}
	off := 0
	align := func() { off = (off + 3) &^ 3 }
	for {
		if string(b[off:off+6]) != "070701" {
			t.Fatalf("bad magic at %d", off)
		}
		field := func(i int) uint32 {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				t.Fatal(err)
			}
			return uint32(v)
		}
		mode, size, rmaj, rmin, nameSize := field(1), field(6), field(9), field(10), field(11)
		name := string(b[off+110 : off+110+int(nameSize)-1])
		off += 110 + int(nameSize)
		align()
		data := string(b[off : off+int(size)])
		off += int(size)
		align()
		if name == "TRAILER!!!" {
			return out
		}
		out[name] = struct {
			mode uint32
			data string
			rdev [2]uint32
		}{mode, data, [2]uint32{rmaj, rmin}}
	}
}

func TestCPIO(t *testing.T) {
	var b bytes.Buffer
	w := newCPIOWriter(&b)
	w.Dir("bin", 0o755)
	w.File("bin/x", 0o755, []byte("hello"))
	w.File("init", 0o755, []byte("#!/bin/sh\n"))
	w.CharDev("dev/console", 0o600, 5, 1)
	w.Symlink("sh", "busybox")
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	got := readCPIO(t, b.Bytes())
	if e := got["bin/x"]; e.data != "hello" || e.mode != syscall.S_IFREG|0o755 {
		t.Errorf("bin/x = %+v", e)
	}
	if e := got["dev/console"]; e.mode != syscall.S_IFCHR|0o600 || e.rdev != [2]uint32{5, 1} {
		t.Errorf("dev/console = %+v", e)
	}
	if e := got["sh"]; e.data != "busybox" || e.mode&syscall.S_IFMT != syscall.S_IFLNK {
		t.Errorf("sh = %+v", e)
	}
	if got["bin"].mode != syscall.S_IFDIR|0o755 {
		t.Errorf("bin = %+v", got["bin"])
	}
	// The kernel checks with cpio when available.
	if _, err := exec.LookPath("cpio"); err == nil {
		cmd := exec.Command("cpio", "-t")
		cmd.Stdin = &b
		out, err := cmd.Output()
		if err != nil {
			t.Fatal(err)
		}
		if want := "bin\nbin/x\ninit\ndev/console\nsh\n"; string(out) != want {
			t.Errorf("cpio -t = %q, want %q", out, want)
		}
	}
}

func TestModuleClosure(t *testing.T) {
	dir := t.TempDir()
	dep := `kernel/fs/9p/9p.ko.xz: kernel/net/9p/9pnet.ko.xz kernel/fs/fscache/fscache.ko.xz kernel/fs/netfs/netfs.ko.xz
kernel/net/9p/9pnet.ko.xz:
kernel/fs/fscache/fscache.ko.xz: kernel/fs/netfs/netfs.ko.xz
kernel/fs/netfs/netfs.ko.xz:
kernel/net/9p/9pnet_virtio.ko.xz: kernel/net/9p/9pnet.ko.xz
kernel/fs/overlayfs/overlay.ko.xz:
`
	if err := os.WriteFile(filepath.Join(dir, "modules.dep"), []byte(dep), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "modules.builtin"), []byte("kernel/drivers/virtio/virtio_pci.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := moduleClosure(dir, initModules())
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"kernel/net/9p/9pnet.ko.xz", "kernel/net/9p/9pnet_virtio.ko.xz",
		"kernel/fs/netfs/netfs.ko.xz", "kernel/fs/fscache/fscache.ko.xz", "kernel/fs/9p/9p.ko.xz",
		"kernel/fs/overlayfs/overlay.ko.xz",
	}
	if !slices.Equal(got, want) {
		t.Errorf("closure = %q\nwant      %q", got, want)
	}
	if _, err := moduleClosure(dir, []string{"nosuch"}); err == nil {
		t.Error("a missing module is not an error")
	}
	if n := moduleName("kernel/net/ipv4/nf-nat.ko.zst"); n != "nf_nat" {
		t.Errorf("moduleName = %q", n)
	}
}

// fakeBzImage builds the parts of a bzImage header that bzImagePayload reads.
func fakeBzImage(payload []byte) []byte {
	const setupSects = 3
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	copy(img[0x202:], "HdrS")
	binary.LittleEndian.PutUint32(img[0x248:], 100)
	binary.LittleEndian.PutUint32(img[0x24c:], uint32(len(payload)))
	img = append(img, make([]byte, 100)...)
	img = append(img, payload...)
	return append(img, "trailing"...)
}

func TestBzImagePayload(t *testing.T) {
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write([]byte("ELF kernel"))
	zw.Close()
	p, size, err := bzImagePayload(fakeBzImage(gz.Bytes()))
	if err != nil || !bytes.Equal(p, gz.Bytes()) || size != 0 {
		t.Fatalf("gzip payload: %v %d %v", p, size, err)
	}
	var out bytes.Buffer
	if err := decompress(t.Context(), p, &out); err != nil || out.String() != "ELF kernel" {
		t.Fatalf("decompress = %q, %v", out.String(), err)
	}
	// Other formats carry the size appended.
	xz := append([]byte{0xfd, '7', 'z', 'X', 'Z', 0, 1, 2}, 0x10, 0, 0, 0)
	p, size, err = bzImagePayload(fakeBzImage(xz))
	if err != nil || len(p) != 8 || size != 16 {
		t.Fatalf("xz payload: %v %d %v", p, size, err)
	}
	if _, _, err := bzImagePayload([]byte("MZ not a kernel")); err == nil {
		t.Error("accepted a non-bzImage")
	}
	if err := decompress(t.Context(), []byte("??????"), &out); err == nil {
		t.Error("accepted an unknown compression")
	}
}

func TestShellQuote(t *testing.T) {
	args := []string{"plain", "with space", "it's", `"dq" $HOME \n`, "", "*"}
	out, err := exec.Command("/bin/sh", "-c", `for a in `+shellJoin(args)+`; do printf '[%s]' "$a"; done`).Output()
	if err != nil {
		t.Fatal(err)
	}
	var want strings.Builder
	for _, a := range args {
		fmt.Fprintf(&want, "[%s]", a)
	}
	if string(out) != want.String() {
		t.Errorf("sh saw %s, want %s", out, want.String())
	}
	if got := qemuOpt("/a,b"); got != "/a,,b" {
		t.Errorf("qemuOpt = %q", got)
	}
}

func TestRunScript(t *testing.T) {
	s := runScript(RunOptions{Args: []string{"/bin/x.test", "-test.v"}, Dir: "/src/p", Env: []string{"A=b c"}, Modules: []string{"ip_vs"}})
	for _, want := range []string{
		`for m in 'ip_vs'; do`,
		`cd '/src/p'`,
		`(exec env -i 'A=b c' 'SVCTRACE_VM_GUEST=1' 'PATH=` + defaultPath + `' '/bin/x.test' '-test.v')`,
		"echo o > /proc/sysrq-trigger",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("run script lacks %q:\n%s", want, s)
		}
	}
	if s := runScript(RunOptions{Args: []string{"x"}, Env: []string{"PATH=/p"}}); strings.Contains(s, "modprobe") || strings.Contains(s, defaultPath+"' ") {
		t.Errorf("run script:\n%s", s)
	}
}

func TestRunHost(t *testing.T) {
	img, err := Kernel{Name: HostKernel}.Prepare(t.Context(), t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	var u syscall.Utsname
	syscall.Uname(&u)
	if img.Release != utsString(u.Release[:]) || img.Release == "" {
		t.Errorf("release = %q", img.Release)
	}
	var stdout, stderr bytes.Buffer
	dir := t.TempDir()
	res, err := img.Run(t.Context(), RunOptions{
		Args:   []string{"/bin/sh", "-c", `echo "$X" "$(pwd)"; echo e >&2; exit 3`},
		Dir:    dir,
		Env:    []string{"X=y"},
		Stdout: &stdout,
		Stderr: &stderr,
	})
	if err != nil {
		t.Fatal(err)
	}
	if res.ExitCode != 3 || stdout.String() != "y "+dir+"\n" || stderr.String() != "e\n" {
		t.Errorf("exit %d, stdout %q, stderr %q", res.ExitCode, stdout.String(), stderr.String())
	}
	start := time.Now()
	_, err = img.Run(t.Context(), RunOptions{Args: []string{"/bin/sh", "-c", "sleep 30 & wait"}, Timeout: 300 * time.Millisecond})
	if err == nil || time.Since(start) > 10*time.Second {
		t.Errorf("timeout: err = %v after %v", err, time.Since(start))
	}
	res, err = img.Run(t.Context(), RunOptions{Args: []string{"/bin/sh", "-c", "kill -9 $$"}})
	if err != nil || res.ExitCode != 137 {
		t.Errorf("killed: exit %v, err %v", res, err)
	}
}

func TestPrintable(t *testing.T) {
	if got := printable([]byte("\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\nok\x00\n")); got != "SeaBIOS\nok\n" {
		t.Errorf("printable = %q", got)
	}
}

func TestPassEnv(t *testing.T) {
	got := PassEnv([]string{"PATH=/bin", "SVCTRACE_TEST_BACKEND=kprobe", "DISPLAY=:0", "CI=true", "GOCOVERDIR=/c", "SSH_AUTH_SOCK=/s"})
	if want := []string{"PATH=/bin", "SVCTRACE_TEST_BACKEND=kprobe", "CI=true", "GOCOVERDIR=/c"}; !slices.Equal(got, want) {
		t.Errorf("PassEnv = %q, want %q", got, want)
	}
}
