package vm

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
)

// EnvCache overrides the cache directory (default $HOME/.cache/svctrace).
const EnvCache = "SVCTRACE_CACHE"

// imageFormat changes whenever the layout of a prepared image changes, so
// that stale caches are rebuilt rather than booted.
const imageFormat = 2

// UpdateHint is what to run when a pinned kernel left the mirror.
const UpdateHint = "go run ./test/vm/cmd/vmkernels -update"

// Image is a kernel prepared for booting: the uncompressed kernel, an
// initramfs and the depmod'ed module tree, all in the cache.
type Image struct {
	Kernel Kernel `json:"kernel"`
	// Release is the kernel's uname -r.
	Release string `json:"release"`
	// Dir holds the image; empty for the host kernel.
	Dir string `json:"-"`
	// Format is imageFormat when the image was built.
	Format int `json:"format"`
}

// Vmlinux is the uncompressed kernel, booted through its PVH entry.
func (img *Image) Vmlinux() string { return filepath.Join(img.Dir, "vmlinux") }

// Initramfs is the busybox initramfs.
func (img *Image) Initramfs() string { return filepath.Join(img.Dir, "initramfs.cpio") }

// Config is the kernel's build configuration, at /boot/config-<release> in
// the guest.
func (img *Image) Config() string { return filepath.Join(img.Dir, "config") }

// ModulesDir is the module tree, mounted at /usr/lib/modules/<release> in
// the guest.
func (img *Image) ModulesDir() string {
	return filepath.Join(img.Dir, "root", "lib", "modules", img.Release)
}

// DefaultCacheDir is $SVCTRACE_CACHE, or $HOME/.cache/svctrace.
func DefaultCacheDir() (string, error) {
	if d := os.Getenv(EnvCache); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cache directory: %w (set %s)", err, EnvCache)
	}
	return filepath.Join(home, ".cache", "svctrace"), nil
}

// Prepare fetches, verifies, extracts and caches the kernel under
// cacheDir/vm/<package>_<version>. It is idempotent and safe to call from
// several processes at once. For the host kernel it only reads uname.
func (k Kernel) Prepare(ctx context.Context, cacheDir string) (*Image, error) {
	if k.IsHost() {
		var u syscall.Utsname
		if err := syscall.Uname(&u); err != nil {
			return nil, fmt.Errorf("uname: %w", err)
		}
		return &Image{Kernel: k, Release: utsString(u.Release[:]), Format: imageFormat}, nil
	}
	if err := k.validatePin(); err != nil {
		return nil, fmt.Errorf("kernel %s: %w", k.Name, err)
	}
	// The guest finds the modules at the same path: make it absolute.
	cacheDir, err := filepath.Abs(cacheDir)
	if err != nil {
		return nil, fmt.Errorf("prepare kernel %s: %w", k.Name, err)
	}
	base := filepath.Join(cacheDir, "vm")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("prepare kernel %s: %w", k.Name, err)
	}
	dir := filepath.Join(base, k.Package+"_"+k.Version)
	if img, err := loadImage(dir, k); err == nil {
		return img, nil
	}
	unlock, err := lockFile(ctx, dir+".lock")
	if err != nil {
		return nil, fmt.Errorf("prepare kernel %s: %w", k.Name, err)
	}
	defer unlock()
	// Another process may have built it while we waited.
	if img, err := loadImage(dir, k); err == nil {
		return img, nil
	}
	deb, err := k.fetch(ctx, base)
	if err != nil {
		return nil, fmt.Errorf("prepare kernel %s: %w", k.Name, err)
	}
	img, err := k.build(ctx, deb, dir)
	if err != nil {
		return nil, fmt.Errorf("prepare kernel %s: %w", k.Name, err)
	}
	return img, nil
}

func utsString(b []int8) string {
	var s strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		s.WriteByte(byte(c))
	}
	return s.String()
}

func loadImage(dir string, k Kernel) (*Image, error) {
	b, err := os.ReadFile(filepath.Join(dir, "image.json"))
	if err != nil {
		return nil, err
	}
	var img Image
	if err := json.Unmarshal(b, &img); err != nil {
		return nil, err
	}
	if img.Format != imageFormat || img.Kernel.SHA256 != k.SHA256 || img.Release == "" {
		return nil, errors.New("stale image")
	}
	img.Kernel = k
	img.Dir = dir
	return &img, nil
}

// fetch returns the verified .deb, downloading it unless it is cached.
func (k Kernel) fetch(ctx context.Context, base string) (string, error) {
	debs := filepath.Join(base, "debs")
	if err := os.MkdirAll(debs, 0o755); err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	deb := filepath.Join(debs, k.Package+"_"+k.Version+"_amd64.deb")
	if sum, err := fileSHA256(deb); err == nil && sum == k.SHA256 {
		return deb, nil
	}
	unlock, err := lockFile(ctx, filepath.Join(base, "apt.lock"))
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	defer unlock()
	a, err := newApt(filepath.Join(base, "apt", k.Suite), []string{k.Suite})
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	if err := a.setup(); err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	tmp, err := os.MkdirTemp(debs, ".download-")
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	defer os.RemoveAll(tmp)
	var got string
	for _, force := range []bool{false, true} {
		// Cached lists may predate a security update that retired the
		// version, or the pinned file: retry once with fresh lists.
		if err = a.update(ctx, force); err != nil {
			return "", fmt.Errorf("fetch: %w", err)
		}
		if got, err = a.download(ctx, tmp, k.Package, k.Version); err == nil {
			break
		}
	}
	if err != nil {
		if errors.Is(err, ErrVersionGone) {
			return "", fmt.Errorf("%s %s is no longer in %s on the mirror: run `%s` and commit test/vm/kernels.json: %w",
				k.Package, k.Version, k.Suite, UpdateHint, err)
		}
		return "", fmt.Errorf("fetch: %w", err)
	}
	sum, err := fileSHA256(got)
	if err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	if sum != k.SHA256 {
		return "", fmt.Errorf("fetch %s %s: sha256 is %s, the matrix pins %s (the archive rebuilt it? run `%s`)",
			k.Package, k.Version, sum, k.SHA256, UpdateHint)
	}
	if err := os.Rename(got, deb); err != nil {
		return "", fmt.Errorf("fetch: %w", err)
	}
	return deb, nil
}

func fileSHA256(file string) (string, error) {
	f, err := os.Open(file)
	if err != nil {
		return "", err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return "", err
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}

// prunedModuleDirs are module subtrees (under kernel/) no test in a VM
// without hardware needs; dropping them halves the cache.
func prunedModuleDirs() []string {
	return []string{
		"sound",
		"drivers/gpu", "drivers/media", "drivers/infiniband", "drivers/scsi", "drivers/usb",
		"drivers/iio", "drivers/staging", "drivers/hid", "drivers/input", "drivers/mtd",
		"drivers/bluetooth", "drivers/isdn", "drivers/video", "drivers/hwmon", "drivers/comedi",
		"drivers/net/wireless", "drivers/net/ethernet", "drivers/net/can", "drivers/net/usb",
		"drivers/target", "drivers/ata", "drivers/platform", "drivers/misc",
		"net/bluetooth", "net/mac80211", "net/wireless",
	}
}

// build extracts deb and assembles the image in dir, atomically.
func (k Kernel) build(ctx context.Context, deb, dir string) (*Image, error) {
	depmod, err := findSbin("depmod")
	if err != nil {
		return nil, err
	}
	tmp, err := os.MkdirTemp(filepath.Dir(dir), ".build-")
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	defer os.RemoveAll(tmp)
	x := filepath.Join(tmp, "deb")
	if out, err := exec.CommandContext(ctx, "dpkg-deb", "-x", deb, x).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("dpkg-deb -x %s: %w: %s", deb, err, strings.TrimSpace(string(out)))
	}
	// Debian moved the module tree from /lib to /usr/lib (trixie).
	var modParent string
	for _, p := range []string{"lib/modules", "usr/lib/modules"} {
		if fi, err := os.Stat(filepath.Join(x, p)); err == nil && fi.IsDir() {
			modParent = filepath.Join(x, p)
		}
	}
	if modParent == "" {
		return nil, fmt.Errorf("build: %s has no module tree", deb)
	}
	ents, err := os.ReadDir(modParent)
	if err != nil || len(ents) != 1 {
		return nil, fmt.Errorf("build: want one kernel release in %s, have %d (%v)", deb, len(ents), err)
	}
	release := ents[0].Name()
	vmlinuz := filepath.Join(x, "boot", "vmlinuz-"+release)
	if err := extractVmlinux(ctx, vmlinuz, filepath.Join(tmp, "vmlinux")); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	// The kernel's config, for tools that read /boot/config-$(uname -r)
	// (bpftool feature probe, tests checking CONFIG_*).
	if err := os.Rename(filepath.Join(x, "boot", "config-"+release), filepath.Join(tmp, "config")); err != nil {
		return nil, fmt.Errorf("build: kernel config: %w", err)
	}
	root := filepath.Join(tmp, "root")
	modDir := filepath.Join(root, "lib", "modules", release)
	if err := os.MkdirAll(filepath.Dir(modDir), 0o755); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.Rename(filepath.Join(modParent, release), modDir); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	// depmod -b looks in BASE/lib/modules or BASE/usr/lib/modules,
	// depending on how kmod was built.
	if err := os.MkdirAll(filepath.Join(root, "usr", "lib"), 0o755); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.Symlink("../../lib/modules", filepath.Join(root, "usr", "lib", "modules")); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	for _, l := range []string{"build", "source"} {
		_ = os.Remove(filepath.Join(modDir, l)) // dangling links to headers
	}
	for _, p := range prunedModuleDirs() {
		if err := os.RemoveAll(filepath.Join(modDir, "kernel", p)); err != nil {
			return nil, fmt.Errorf("build: %w", err)
		}
	}
	if out, err := exec.CommandContext(ctx, depmod, "-b", root, release).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("depmod -b %s %s: %w: %s", root, release, err, strings.TrimSpace(string(out)))
	}
	if err := buildInitramfs(ctx, filepath.Join(tmp, "initramfs.cpio"), modDir); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.RemoveAll(x); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	img := &Image{Kernel: k, Release: release, Format: imageFormat}
	b, err := json.MarshalIndent(img, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, "image.json"), b, 0o644); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	// A stale or half-built image of the same name goes first; we hold
	// the lock.
	if err := os.RemoveAll(dir); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("build: %w", err)
	}
	img.Dir = dir
	return img, nil
}

// findSbin finds a tool that may live outside a non-root user's PATH.
func findSbin(name string) (string, error) {
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	}
	for _, d := range []string{"/usr/sbin", "/sbin"} {
		p := filepath.Join(d, name)
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", fmt.Errorf("%s not found: install kmod", name)
}
