package vm

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"strings"
)

// Guest paths shared between the initramfs and the run script.
const (
	guestShare = "/run/svctrace-vm" // the writable per-run directory shared with the host
	shareTag   = "svcshare"
	rootTag    = "rootfs"
	ninepOpts  = "trans=virtio,version=9p2000.L,msize=262144"
)

// initModules are the modules the initramfs loads (with their dependencies)
// to mount the host's root; Debian's generic kernels build them as modules.
func initModules() []string { return []string{"virtio_pci", "9pnet_virtio", "9p", "overlay"} }

// initScript is /init of the initramfs. It mounts the host's root (9p,
// read-only) under an overlay with a tmpfs upper layer, mounts the pseudo
// file systems, the kernel's modules and the per-run shares, then hands over
// to the run script the host wrote into the shared directory.
const initScript = `#!/bin/busybox sh
/bin/busybox mount -t devtmpfs devtmpfs /dev
/bin/busybox --install -s /bin
export PATH=/bin
fail() {
	echo "svctrace-vm init: $*"
	[ -d /share/. ] && echo "$*" > /share/init-error
	sync
	echo o > /proc/sysrq-trigger
	sleep 60
}
mount -t proc proc /proc
mount -t sysfs sysfs /sys
while read -r m; do
	insmod "/modules/$m" || fail "insmod $m failed"
done < /modules/order
mount -t 9p -o ` + ninepOpts + ` ` + shareTag + ` /share || fail "mount of the shared directory failed"
mount -t 9p -o ` + ninepOpts + `,ro,cache=loose ` + rootTag + ` /lower || fail "mount of the host root failed"
mount -t tmpfs -o mode=0755 upper /rw || fail "tmpfs failed"
mkdir -p /rw/upper /rw/work
mount -t overlay -o lowerdir=/lower,upperdir=/rw/upper,workdir=/rw/work overlay /newroot || fail "overlay mount failed"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sysfs $R/sys
mount --move /dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts $R/dev/pts
mount -t tmpfs -o mode=1777 shm $R/dev/shm
mount -t tmpfs -o mode=0755 run $R/run
mount -t tracefs tracefs $R/sys/kernel/tracing || fail "tracefs mount failed"
mount -t debugfs debugfs $R/sys/kernel/debug || fail "debugfs mount failed"
mount -t bpf bpf $R/sys/fs/bpf || fail "bpffs mount failed"
mount -t cgroup2 cgroup2 $R/sys/fs/cgroup
mkdir -p $R` + guestShare + `
mount --move /share $R` + guestShare + `
. $R` + guestShare + `/config
mkdir -p "$R/usr/lib/modules/$RELEASE"
mount --bind "$R$MODULES" "$R/usr/lib/modules/$RELEASE" || fail "bind mount of the modules failed"
mkdir -p "$R/boot"
touch "$R/boot/config-$RELEASE"
mount --bind "$R$CONFIG" "$R/boot/config-$RELEASE" || fail "bind mount of the kernel config failed"
while read -r tag dir; do
	mount -t 9p -o ` + ninepOpts + ` "$tag" "$R$dir" || fail "mount of $dir failed"
done < $R` + guestShare + `/mounts
hostname svctrace-vm
ip link set lo up
umount /proc /sys
exec switch_root $R /bin/sh ` + guestShare + `/run.sh
`

// buildInitramfs writes an uncompressed newc cpio (nothing to decompress
// under TCG) with a static busybox, the init script and the modules needed
// to mount the host's root. modDir is the kernel's depmod'ed module tree.
func buildInitramfs(ctx context.Context, out, modDir string) error {
	bb, err := staticBusybox()
	if err != nil {
		return err
	}
	busybox, err := os.ReadFile(bb)
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	mods, err := moduleClosure(modDir, initModules())
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	var buf bytes.Buffer
	w := newCPIOWriter(&buf)
	for _, d := range []string{"bin", "dev", "proc", "sys", "share", "lower", "rw", "newroot", "modules"} {
		w.Dir(d, 0o755)
	}
	w.CharDev("dev/console", 0o600, 5, 1)
	w.CharDev("dev/null", 0o666, 1, 3)
	w.File("bin/busybox", 0o755, busybox)
	w.File("init", 0o755, []byte(initScript))
	var order strings.Builder
	for _, rel := range mods {
		data, err := readModule(ctx, filepath.Join(modDir, rel))
		if err != nil {
			return fmt.Errorf("initramfs: %w", err)
		}
		name := moduleFileName(rel) + ".ko"
		w.File("modules/"+name, 0o644, data)
		order.WriteString(name + "\n")
	}
	w.File("modules/order", 0o644, []byte(order.String()))
	if err := w.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := os.WriteFile(out, buf.Bytes(), 0o644); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}

// staticBusybox finds a statically linked busybox (Debian: busybox-static):
// the initramfs has no libraries.
func staticBusybox() (string, error) {
	var candidates []string
	if p, err := exec.LookPath("busybox"); err == nil {
		candidates = append(candidates, p)
	}
	candidates = append(candidates, "/usr/bin/busybox", "/bin/busybox")
	for _, c := range candidates {
		f, err := elf.Open(c)
		if err != nil {
			continue
		}
		static := true
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				static = false
			}
		}
		f.Close()
		if static {
			return c, nil
		}
		return "", fmt.Errorf("%s is dynamically linked: install busybox-static", c)
	}
	return "", errors.New("busybox not found: install busybox-static")
}

// moduleFileName strips the directory and the .ko[.xz|.zst|.gz] suffix.
func moduleFileName(rel string) string {
	base := path.Base(rel)
	for _, ext := range []string{".xz", ".zst", ".gz"} {
		base = strings.TrimSuffix(base, ext)
	}
	return strings.TrimSuffix(base, ".ko")
}

// moduleName normalises a module name the way the kernel does ('-' is '_').
func moduleName(s string) string { return strings.ReplaceAll(moduleFileName(s), "-", "_") }

// moduleClosure returns the module files (relative to modDir) needed to load
// names, dependencies first. Modules built into the kernel are left out.
func moduleClosure(modDir string, names []string) ([]string, error) {
	deps, err := readModulesDep(modDir)
	if err != nil {
		return nil, err
	}
	builtin := map[string]bool{}
	if b, err := os.ReadFile(filepath.Join(modDir, "modules.builtin")); err == nil {
		for l := range strings.SplitSeq(string(b), "\n") {
			if l != "" {
				builtin[moduleName(l)] = true
			}
		}
	}
	byName := map[string]string{}
	for file := range deps {
		byName[moduleName(file)] = file
	}
	var order []string
	done := map[string]bool{}
	var visit func(file string)
	visit = func(file string) {
		if done[file] {
			return
		}
		done[file] = true
		// modules.dep lists the full closure, the module needed last
		// first; load in reverse, each after its own dependencies.
		d := deps[file]
		for i := len(d) - 1; i >= 0; i-- {
			visit(d[i])
		}
		order = append(order, file)
	}
	for _, n := range names {
		n = moduleName(n)
		file, ok := byName[n]
		switch {
		case ok:
			visit(file)
		case builtin[n]:
		default:
			return nil, fmt.Errorf("module %s is neither built in nor in %s", n, modDir)
		}
	}
	return order, nil
}

func readModulesDep(modDir string) (map[string][]string, error) {
	f, err := os.Open(filepath.Join(modDir, "modules.dep"))
	if err != nil {
		return nil, fmt.Errorf("read modules.dep (was depmod run?): %w", err)
	}
	defer f.Close()
	deps := map[string][]string{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64*1024), 1<<20)
	for sc.Scan() {
		mod, rest, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		deps[mod] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return deps, nil
}

// readModule returns a module decompressed: busybox insmod takes plain .ko.
func readModule(ctx context.Context, file string) ([]byte, error) {
	var tool []string
	switch {
	case strings.HasSuffix(file, ".ko"):
		return os.ReadFile(file)
	case strings.HasSuffix(file, ".ko.gz"):
		f, err := os.Open(file)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r, err := gzip.NewReader(f)
		if err != nil {
			return nil, fmt.Errorf("gunzip %s: %w", file, err)
		}
		return io.ReadAll(r)
	case strings.HasSuffix(file, ".ko.xz"):
		tool = []string{"xz", "-dc", file}
	case strings.HasSuffix(file, ".ko.zst"):
		tool = []string{"zstd", "-dc", file}
	default:
		return nil, fmt.Errorf("unknown module file %s", file)
	}
	var out bytes.Buffer
	if err := runFilter(ctx, tool, nil, &out); err != nil {
		return nil, fmt.Errorf("decompress module: %w", err)
	}
	return out.Bytes(), nil
}
