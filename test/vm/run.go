package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Environment variables read by Run when RunOptions leave the choice open.
const (
	// EnvAccel selects the qemu accelerator: "tcg" (default) or "kvm".
	EnvAccel = "SVCTRACE_VM_ACCEL"
	// EnvConsole=1 copies the guest's kernel console to stderr.
	EnvConsole = "SVCTRACE_VM_CONSOLE"
	// EnvGuest=1 is set for every command run in a VM.
	EnvGuest = "SVCTRACE_VM_GUEST"
)

// DefaultTimeout bounds a run when RunOptions.Timeout is zero.
const DefaultTimeout = 30 * time.Minute

// defaultPath is the guest's PATH when the caller's Env has none.
const defaultPath = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// RunOptions describe one command to run in a VM.
type RunOptions struct {
	// Args is the command and its arguments; Args[0] is a path on the
	// host, which the guest sees at the same place.
	Args []string
	// Dir is the working directory (a host path); empty means "/".
	Dir string
	// Env is the command's complete environment.
	Env []string
	// Modules are modprobe'd before the command runs; a module that
	// fails to load is an error, not an exit code.
	Modules []string
	// Stdout and Stderr receive the command's output while it runs; nil
	// discards it.
	Stdout, Stderr io.Writer
	// Timeout bounds boot, run and power-off; zero means DefaultTimeout.
	Timeout time.Duration
	// SharedDirs are host directories the guest may write to; they are
	// mounted at the same paths (everything else is read-only, with
	// writes going to a tmpfs that is lost at power-off).
	SharedDirs []string
	// Console receives the kernel console. Nil means os.Stderr when
	// SVCTRACE_VM_CONSOLE=1, else nothing (its tail is still quoted in
	// errors).
	Console io.Writer
	// Accel is "tcg" or "kvm"; empty means $SVCTRACE_VM_ACCEL or "tcg".
	Accel string
	// Memory in MiB; zero means 1024.
	Memory int
}

// Result of a run.
type Result struct {
	// ExitCode of the command (128+n when killed by signal n).
	ExitCode int
	// Duration from start to power-off.
	Duration time.Duration
	// Boot is the time until the command started (VM boot and module
	// loading); zero on the host kernel.
	Boot time.Duration
}

// Run boots the image and runs a command in it as root. The command's exit
// code is in the Result; errors mean that the harness failed (boot failure,
// timeout, missing module, kernel panic). On the host kernel the command runs
// directly.
func (img *Image) Run(ctx context.Context, opts RunOptions) (*Result, error) {
	if len(opts.Args) == 0 {
		return nil, errors.New("run: no command")
	}
	if opts.Timeout == 0 {
		opts.Timeout = DefaultTimeout
	}
	if img.Kernel.IsHost() {
		return runHost(ctx, opts)
	}
	return img.runVM(ctx, opts)
}

func runHost(ctx context.Context, opts RunOptions) (*Result, error) {
	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	for _, m := range opts.Modules {
		if _, err := os.Stat(filepath.Join("/sys/module", moduleName(m))); err == nil {
			continue
		}
		modprobe, err := findSbin("modprobe")
		if err != nil {
			return nil, fmt.Errorf("run: module %s: %w", m, err)
		}
		if out, err := exec.CommandContext(ctx, modprobe, m).CombinedOutput(); err != nil {
			return nil, fmt.Errorf("run: modprobe %s on the host: %w: %s", m, err, strings.TrimSpace(string(out)))
		}
	}
	start := time.Now()
	cmd := exec.CommandContext(ctx, opts.Args[0], opts.Args[1:]...)
	cmd.Dir = opts.Dir
	cmd.Env = opts.Env
	cmd.Stdout = orDiscard(opts.Stdout)
	cmd.Stderr = orDiscard(opts.Stderr)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second
	err := cmd.Run()
	res := &Result{Duration: time.Since(start)}
	var exit *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return res, fmt.Errorf("run %s: %w", opts.Args[0], ctx.Err())
	case errors.As(err, &exit):
		res.ExitCode = exitCode(exit.ProcessState)
		return res, nil
	case err != nil:
		return res, fmt.Errorf("run %s: %w", opts.Args[0], err)
	}
	return res, nil
}

func exitCode(ps *os.ProcessState) int {
	if ws, ok := ps.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
		return 128 + int(ws.Signal())
	}
	return ps.ExitCode()
}

func orDiscard(w io.Writer) io.Writer {
	if w == nil {
		return io.Discard
	}
	return w
}

// qemuOpt escapes a value for qemu's comma-separated option syntax.
func qemuOpt(s string) string { return strings.ReplaceAll(s, ",", ",,") }

// shellQuote quotes s for POSIX sh.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

func shellJoin(args []string) string {
	q := make([]string, len(args))
	for i, a := range args {
		q[i] = shellQuote(a)
	}
	return strings.Join(q, " ")
}

// runScript is the guest's PID 1 after switch_root. It loads the modules,
// runs the command with its output in the shared directory, records the exit
// status and powers off.
func runScript(opts RunOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, `# written by svctrace test/vm
S=%s
PATH=%s
export PATH
off() {
	sync
	echo o > /proc/sysrq-trigger
	sleep 60
}
`, guestShare, defaultPath)
	if len(opts.Modules) > 0 {
		fmt.Fprintf(&b, `for m in %s; do
	modprobe "$m" >> $S/modprobe.log 2>&1 || echo "$m" >> $S/modprobe.failed
done
[ -e $S/modprobe.failed ] && off
`, shellJoin(opts.Modules))
	}
	dir := opts.Dir
	if dir == "" {
		dir = "/"
	}
	env := append(slices.Clone(opts.Env), EnvGuest+"=1")
	if !slices.ContainsFunc(env, func(e string) bool { return strings.HasPrefix(e, "PATH=") }) {
		env = append(env, "PATH="+defaultPath)
	}
	fmt.Fprintf(&b, `cd %s 2> $S/cd.log || off
cat /proc/uptime > $S/started
(exec env -i %s %s) < /dev/null > $S/stdout 2> $S/stderr
echo $? > $S/status.tmp && mv $S/status.tmp $S/status
off
`, shellQuote(dir), shellJoin(env), shellJoin(opts.Args))
	return b.String()
}

func (img *Image) qemuArgs(opts RunOptions, share, console string, console2 bool) ([]string, error) {
	accel := opts.Accel
	if accel == "" {
		accel = os.Getenv(EnvAccel)
	}
	if accel != "" && accel != "tcg" && accel != "kvm" {
		return nil, fmt.Errorf("unknown accelerator %q (want tcg or kvm)", accel)
	}
	mem := opts.Memory
	if mem == 0 {
		mem = 1024
	}
	cmdline := []string{
		"console=ttyS0", "panic=-1", "oops=panic", "rdinit=/init",
		"random.trust_cpu=on", "mitigations=off", "nokaslr",
	}
	if !console2 {
		cmdline = append(cmdline, "quiet")
	}
	args := []string{
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-machine", "pc", "-smp", "1", "-m", strconv.Itoa(mem),
	}
	if accel == "kvm" {
		args = append(args, "-accel", "kvm", "-cpu", "host")
	} else {
		args = append(args, "-accel", "tcg,thread=multi", "-cpu", "max")
	}
	args = append(args,
		"-kernel", img.Vmlinux(),
		"-initrd", img.Initramfs(),
		"-append", strings.Join(cmdline, " "),
		"-chardev", "file,id=con,path="+qemuOpt(console),
		"-serial", "chardev:con",
		"-virtfs", "local,path=/,mount_tag="+rootTag+",security_model=none,readonly=on,multidevs=remap",
		"-virtfs", "local,path="+qemuOpt(share)+",mount_tag="+shareTag+",security_model=none,multidevs=remap",
	)
	for i, d := range opts.SharedDirs {
		args = append(args, "-virtfs",
			fmt.Sprintf("local,path=%s,mount_tag=rw%d,security_model=none,multidevs=remap", qemuOpt(d), i))
	}
	return args, nil
}

func (img *Image) runVM(ctx context.Context, opts RunOptions) (*Result, error) {
	qemu, err := exec.LookPath("qemu-system-x86_64")
	if err != nil {
		return nil, fmt.Errorf("run: qemu-system-x86_64 not found (install qemu-system-x86): %w", err)
	}
	if len(opts.Modules) > 0 {
		// The guest runs the host's modprobe.
		if _, err := findSbin("modprobe"); err != nil {
			return nil, fmt.Errorf("run: %w", err)
		}
	}
	opts.SharedDirs = slices.Clone(opts.SharedDirs)
	for i, d := range opts.SharedDirs {
		if !filepath.IsAbs(d) {
			return nil, fmt.Errorf("run: shared directory %q is not absolute", d)
		}
		if fi, err := os.Stat(d); err != nil || !fi.IsDir() {
			return nil, fmt.Errorf("run: shared directory %q: not a directory", d)
		}
		opts.SharedDirs[i] = filepath.Clean(d)
	}
	tmp, err := os.MkdirTemp("", "svctrace-vm-")
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	defer os.RemoveAll(tmp)
	share := filepath.Join(tmp, "share")
	if err := os.Mkdir(share, 0o755); err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}
	var mounts strings.Builder
	for i, d := range opts.SharedDirs {
		fmt.Fprintf(&mounts, "rw%d %s\n", i, d)
	}
	config := fmt.Sprintf("RELEASE=%s\nMODULES=%s\nCONFIG=%s\n",
		shellQuote(img.Release), shellQuote(img.ModulesDir()), shellQuote(img.Config()))
	for name, data := range map[string]string{
		"config": config,
		"mounts": mounts.String(),
		"run.sh": runScript(opts),
		"stdout": "",
		"stderr": "",
	} {
		if err := os.WriteFile(filepath.Join(share, name), []byte(data), 0o644); err != nil {
			return nil, fmt.Errorf("run: %w", err)
		}
	}
	consoleFile := filepath.Join(tmp, "console.log")
	consoleOut := opts.Console
	if consoleOut == nil && os.Getenv(EnvConsole) == "1" {
		consoleOut = os.Stderr
	}

	args, err := img.qemuArgs(opts, share, consoleFile, consoleOut != nil)
	if err != nil {
		return nil, fmt.Errorf("run: %w", err)
	}

	ctx, cancel := context.WithTimeout(ctx, opts.Timeout)
	defer cancel()
	var qemuOut bytes.Buffer
	cmd := exec.CommandContext(ctx, qemu, args...)
	cmd.Stdin = nil
	cmd.Stdout = &qemuOut
	cmd.Stderr = &qemuOut
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 5 * time.Second

	start := time.Now()
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("run: start qemu: %w", err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	follow := func(file string, w io.Writer) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			followFile(file, w, stop)
		}()
	}
	follow(filepath.Join(share, "stdout"), orDiscard(opts.Stdout))
	follow(filepath.Join(share, "stderr"), orDiscard(opts.Stderr))
	if consoleOut != nil {
		follow(consoleFile, consoleOut)
	}
	var boot time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(50 * time.Millisecond)
		defer t.Stop()
		for {
			if _, err := os.Stat(filepath.Join(share, "started")); err == nil {
				boot = time.Since(start)
				return
			}
			select {
			case <-stop:
				return
			case <-t.C:
			}
		}
	}()
	waitErr := cmd.Wait()
	close(stop)
	wg.Wait()
	res := &Result{Duration: time.Since(start), Boot: boot}

	diag := func() string {
		var s strings.Builder
		if q := strings.TrimSpace(qemuOut.String()); q != "" {
			fmt.Fprintf(&s, "\nqemu: %s", q)
		}
		if t := consoleTail(consoleFile, 40); t != "" {
			fmt.Fprintf(&s, "\nlast kernel console lines (%s=1 shows all):\n%s", EnvConsole, t)
		}
		return s.String()
	}
	readShare := func(name string) (string, bool) {
		b, err := os.ReadFile(filepath.Join(share, name))
		return strings.TrimSpace(string(b)), err == nil
	}
	if ctx.Err() != nil {
		return res, fmt.Errorf("run %s on %s: vm killed: %w%s", opts.Args[0], img.Release, ctx.Err(), diag())
	}
	if msg, ok := readShare("init-error"); ok {
		return res, fmt.Errorf("run on %s: guest init: %s%s", img.Release, msg, diag())
	}
	if failed, ok := readShare("modprobe.failed"); ok {
		log, _ := readShare("modprobe.log")
		return res, fmt.Errorf("run on %s: module(s) %s failed to load: %s",
			img.Release, strings.Join(strings.Fields(failed), ", "), log)
	}
	if msg, ok := readShare("cd.log"); ok && msg != "" {
		return res, fmt.Errorf("run on %s: working directory %s: %s", img.Release, opts.Dir, msg)
	}
	status, ok := readShare("status")
	if !ok {
		return res, fmt.Errorf("run %s on %s: the guest wrote no exit status (qemu: %v)%s",
			opts.Args[0], img.Release, waitErr, diag())
	}
	code, err := strconv.Atoi(status)
	if err != nil {
		return res, fmt.Errorf("run on %s: bad exit status %q", img.Release, status)
	}
	res.ExitCode = code
	return res, nil
}

// followFile copies what is appended to file to w until stop is closed, then
// copies the rest.
func followFile(file string, w io.Writer, stop <-chan struct{}) {
	var f *os.File
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	buf := make([]byte, 64*1024)
	drain := func() {
		if f == nil {
			var err error
			if f, err = os.Open(file); err != nil {
				f = nil
				return
			}
		}
		for {
			n, err := f.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
			}
			if err != nil || n == 0 {
				return
			}
		}
	}
	t := time.NewTicker(50 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-stop:
			drain()
			return
		case <-t.C:
			drain()
		}
	}
}

// consoleTail returns the last n lines of the console log.
func consoleTail(file string, n int) string {
	f, err := os.Open(file)
	if err != nil {
		return ""
	}
	defer f.Close()
	const max = 64 * 1024
	if fi, err := f.Stat(); err == nil && fi.Size() > max {
		f.Seek(fi.Size()-max, io.SeekStart)
	}
	b, _ := io.ReadAll(f)
	lines := strings.Split(strings.TrimRight(printable(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ansiRE matches the terminal escape sequences firmware writes to the serial
// console.
var ansiRE = regexp.MustCompile(`\x1b(\[[0-9;?]*[A-Za-z]|[()][A-Za-z0-9]|[A-Za-z])`)

// printable drops terminal escapes and control characters other than
// newline and tab.
func printable(b []byte) string {
	s := ansiRE.ReplaceAllString(string(b), "")
	return strings.Map(func(r rune) rune {
		if r == '\n' || r == '\t' || (r >= ' ' && r != 0x7f) {
			return r
		}
		return -1
	}, s)
}
