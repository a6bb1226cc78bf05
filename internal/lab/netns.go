package lab

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// NetnsRunDir is where named network namespaces live (as with "ip netns").
const NetnsRunDir = "/run/netns"

// NetnsPath returns the bind-mount path of a named network namespace.
func NetnsPath(name string) string { return filepath.Join(NetnsRunDir, name) }

// ensureNetnsRunDir makes /run/netns a shared mount point, the way iproute2
// does, so namespaces mounted there propagate to other mount namespaces.
func ensureNetnsRunDir() error {
	if err := os.MkdirAll(NetnsRunDir, 0o755); err != nil {
		return fmt.Errorf("create %s: %w", NetnsRunDir, err)
	}
	for attempt := 0; ; attempt++ {
		err := unix.Mount("", NetnsRunDir, "none", unix.MS_SHARED|unix.MS_REC, "")
		if err == nil {
			return nil
		}
		if !errors.Is(err, unix.EINVAL) || attempt > 0 {
			return fmt.Errorf("make %s shared: %w", NetnsRunDir, err)
		}
		if err := unix.Mount(NetnsRunDir, NetnsRunDir, "none", unix.MS_BIND|unix.MS_REC, ""); err != nil {
			return fmt.Errorf("bind mount %s: %w", NetnsRunDir, err)
		}
	}
}

// createNetns creates a named network namespace like "ip netns add". The
// namespace is entered by a dedicated, locked OS thread that is never
// unlocked, so the Go runtime discards it instead of reusing a thread that
// sits in the wrong namespace.
func createNetns(name string) error {
	path := NetnsPath(name)
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("create netns file: %w", err)
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// Deliberately no UnlockOSThread: this thread ends up in the new
		// namespace and must die with the goroutine.
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare netns: %w", err)
			return
		}
		src := fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid())
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount netns: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		_ = os.Remove(path)
		return fmt.Errorf("netns %s: %w", name, err)
	}
	return nil
}

// deleteNetns removes a named network namespace like "ip netns del". The
// kernel frees it once nothing (process, socket, fd) refers to it any more.
func deleteNetns(name string) error {
	path := NetnsPath(name)
	var errs []error
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		errs = append(errs, fmt.Errorf("unmount %s: %w", path, err))
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove %s: %w", path, err))
	}
	return errors.Join(errs...)
}

// inNetns runs fn on a locked OS thread that has joined the namespace at
// path. Sockets created by fn stay in that namespace after it returns. If
// the thread cannot be moved back it is left locked, so the runtime
// terminates it.
func inNetns(path string, fn func() error) error {
	target, err := netns.GetFromPath(path)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", path, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("get current netns: %w", err)
			return
		}
		defer orig.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", path, err)
			return
		}
		ferr := fn()
		if err := netns.Set(orig); err != nil {
			errc <- errors.Join(ferr, fmt.Errorf("leave netns %s: %w", path, err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// sysctl is one /proc/sys/net write; Optional ones may be missing.
type sysctl struct {
	Key      string // path under /proc/sys, e.g. "net/ipv4/ip_forward"
	Value    string
	Optional bool
}

// writeSysctls must run inside the target namespace (see inNetns):
// /proc/sys/net resolves against the calling thread's network namespace.
func writeSysctls(sysctls []sysctl) error {
	for _, s := range sysctls {
		p := "/proc/sys/" + s.Key
		if err := os.WriteFile(p, []byte(s.Value), 0o644); err != nil {
			if s.Optional && errors.Is(err, os.ErrNotExist) {
				continue
			}
			return fmt.Errorf("sysctl %s=%s: %w", s.Key, s.Value, err)
		}
	}
	return nil
}

// InNetns runs fn on a locked OS thread inside the network namespace at
// path (sockets it creates stay in that namespace). Benchmarks and tests
// use it to run their own clients and servers in the lab.
func InNetns(path string, fn func() error) error { return inNetns(path, fn) }
