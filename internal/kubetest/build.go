// Package kubetest runs a real Kubernetes control plane for tests: etcd,
// kube-apiserver and kube-proxy built from the Go module proxy at the
// versions pinned in test/kapi (a separate Go module, so the main module
// never imports k8s.io/kubernetes).
//
// Build compiles the three binaries once into
// ${SVCTRACE_CACHE:-$HOME/.cache/svctrace}/kapi/<version>-<go.sum hash>/
// and reuses them afterwards; concurrent test processes serialise on a lock
// file. Start runs etcd and kube-apiserver on 127.0.0.1 only, with a static
// admin token and a kubeconfig in a temporary folder; StartKubeProxy runs
// kube-proxy inside a network namespace. Every process runs in its own
// process group, is stopped by group, and is killed by the kernel if the
// test process dies (Pdeathsig).
package kubetest

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Binaries are a built control plane.
type Binaries struct {
	// Dir holds the binaries.
	Dir string
	// Version is the Kubernetes version, e.g. "v1.37.2".
	Version   string
	Etcd      string
	APIServer string
	KubeProxy string
}

type kapiPackage struct{ pkg, out, name string }

// packages are what test/kapi builds, and the names they get.
func packages() []kapiPackage {
	return []kapiPackage{
		{"k8s.io/kubernetes/cmd/kube-apiserver", "kube-apiserver", "kube-apiserver"},
		{"k8s.io/kubernetes/cmd/kube-proxy", "kube-proxy", "kube-proxy"},
		{"go.etcd.io/etcd/server/v3", "server", "etcd"}, // go build names it after the path: "server"
	}
}

// readyMark is written last into a complete cache folder.
const readyMark = ".complete"

// ModuleDir finds test/kapi: $SVCTRACE_KAPI_DIR, or test/kapi in the
// nearest parent of the working directory that has one (tests run in their
// package folder).
func ModuleDir() (string, error) {
	if d := os.Getenv("SVCTRACE_KAPI_DIR"); d != "" {
		return d, nil
	}
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		cand := filepath.Join(dir, "test", "kapi")
		if _, err := os.Stat(filepath.Join(cand, "go.mod")); err == nil {
			return cand, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("test/kapi/go.mod not found above the working directory (set SVCTRACE_KAPI_DIR)")
		}
		dir = parent
	}
}

// CacheRoot is ${SVCTRACE_CACHE:-$HOME/.cache/svctrace}.
func CacheRoot() (string, error) {
	if d := os.Getenv("SVCTRACE_CACHE"); d != "" {
		return d, nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("cache folder: %w (set SVCTRACE_CACHE)", err)
	}
	return filepath.Join(home, ".cache", "svctrace"), nil
}

// cacheKey returns the pinned Kubernetes version and "<version>-<hash of
// go.sum>".
func cacheKey(modDir string) (version, key string, err error) {
	mod, err := os.ReadFile(filepath.Join(modDir, "go.mod"))
	if err != nil {
		return "", "", err
	}
	sc := bufio.NewScanner(bytes.NewReader(mod))
	for sc.Scan() {
		f := strings.Fields(strings.TrimPrefix(strings.TrimSpace(sc.Text()), "require "))
		if len(f) >= 2 && f[0] == "k8s.io/kubernetes" {
			version = f[1]
			break
		}
	}
	if version == "" {
		return "", "", fmt.Errorf("%s/go.mod does not require k8s.io/kubernetes", modDir)
	}
	sum, err := os.ReadFile(filepath.Join(modDir, "go.sum"))
	if err != nil {
		return "", "", err
	}
	h := sha256.Sum256(sum)
	return version, version + "-" + hex.EncodeToString(h[:])[:12], nil
}

// ldflags stamps the Kubernetes version (otherwise the binaries say
// v0.0.0-master) and strips symbols.
func ldflags(version string) string {
	major, minor, _ := strings.Cut(strings.TrimPrefix(version, "v"), ".")
	minor, _, _ = strings.Cut(minor, ".")
	flags := []string{"-s", "-w"}
	for _, pkg := range []string{"k8s.io/component-base/version", "k8s.io/client-go/pkg/version"} {
		flags = append(flags,
			"-X", pkg+".gitVersion="+version,
			"-X", pkg+".gitMajor="+major,
			"-X", pkg+".gitMinor="+minor,
			"-X", pkg+".gitTreeState=clean")
	}
	return strings.Join(flags, " ")
}

func binariesIn(dir, version string) *Binaries {
	return &Binaries{
		Dir: dir, Version: version,
		Etcd:      filepath.Join(dir, "etcd"),
		APIServer: filepath.Join(dir, "kube-apiserver"),
		KubeProxy: filepath.Join(dir, "kube-proxy"),
	}
}

// Cached returns the binaries if they are already built for the current
// test/kapi/go.sum, without building.
func Cached() (*Binaries, bool) {
	modDir, err := ModuleDir()
	if err != nil {
		return nil, false
	}
	root, err := CacheRoot()
	if err != nil {
		return nil, false
	}
	version, key, err := cacheKey(modDir)
	if err != nil {
		return nil, false
	}
	dir := filepath.Join(root, "kapi", key)
	if _, err := os.Stat(filepath.Join(dir, readyMark)); err != nil {
		return nil, false
	}
	return binariesIn(dir, version), true
}

// Build returns the cached binaries, building them first if needed (about
// 5 min on 2 cores from an empty Go build cache, seconds to relink with a
// warm one). logf, if set, receives progress lines.
func Build(ctx context.Context, logf func(format string, args ...any)) (*Binaries, error) {
	if logf == nil {
		logf = func(string, ...any) {}
	}
	modDir, err := ModuleDir()
	if err != nil {
		return nil, err
	}
	root, err := CacheRoot()
	if err != nil {
		return nil, err
	}
	version, key, err := cacheKey(modDir)
	if err != nil {
		return nil, fmt.Errorf("kapi: %w", err)
	}
	base := filepath.Join(root, "kapi")
	dir := filepath.Join(base, key)
	if _, err := os.Stat(filepath.Join(dir, readyMark)); err == nil {
		return binariesIn(dir, version), nil
	}
	if err := os.MkdirAll(base, 0o755); err != nil {
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	unlock, err := lockFile(ctx, dir+".lock", func() { logf("kapi: waiting for another process building %s", dir) })
	if err != nil {
		return nil, err
	}
	defer unlock()
	if _, err := os.Stat(filepath.Join(dir, readyMark)); err == nil {
		return binariesIn(dir, version), nil // built while we waited
	}

	tmp, err := os.MkdirTemp(base, ".build-"+key+"-")
	if err != nil {
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	defer os.RemoveAll(tmp)
	args := []string{"build", "-buildvcs=false", "-ldflags", ldflags(version), "-o", tmp + string(filepath.Separator)}
	for _, p := range packages() {
		args = append(args, p.pkg)
	}
	logf("kapi: building etcd, kube-apiserver and kube-proxy %s into %s (minutes from an empty Go build cache)", version, dir)
	begin := time.Now()
	cmd := exec.CommandContext(ctx, "go", args...)
	cmd.Dir = modDir
	cmd.Env = append(os.Environ(), "GOWORK=off", "GOFLAGS=-mod=readonly")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("kapi: go build in %s: %w\n%s", modDir, err, tail(out, 40))
	}
	for _, p := range packages() {
		if err := os.Rename(filepath.Join(tmp, p.out), filepath.Join(tmp, p.name)); err != nil {
			return nil, fmt.Errorf("kapi: %w", err)
		}
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	if err := os.WriteFile(filepath.Join(tmp, readyMark), []byte(version+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil { // an incomplete leftover
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	if err := os.Rename(tmp, dir); err != nil {
		return nil, fmt.Errorf("kapi cache: %w", err)
	}
	logf("kapi: built in %s", time.Since(begin).Round(time.Second))
	return binariesIn(dir, version), nil
}

// lockFile takes an exclusive flock on path, polling so that ctx can end
// the wait; waiting is called once if another process holds it.
func lockFile(ctx context.Context, path string, waiting func()) (func(), error) {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, 0o644)
	if err != nil {
		return nil, fmt.Errorf("kapi lock: %w", err)
	}
	told := false
	for {
		err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
		if err == nil {
			return func() {
				_ = unix.Flock(int(f.Fd()), unix.LOCK_UN)
				f.Close()
			}, nil
		}
		if !errors.Is(err, unix.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("kapi lock %s: %w", path, err)
		}
		if !told {
			waiting()
			told = true
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(time.Second):
		}
	}
}

// tail returns the last n lines of b.
func tail(b []byte, n int) string {
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
