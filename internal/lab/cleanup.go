package lab

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// NamePrefix starts every lab's id ("st" + 4 hex digits) and so every
// namespace name a lab creates ("st3fa9-node1").
const NamePrefix = "st"

// OwnerDir holds one record per lab ("<id>": pid and process start time), so
// Cleanup can tell leftovers of dead processes from labs in use.
const OwnerDir = "/run/svctrace-lab"

// manifestsDirPrefix names the temporary manifest directories.
const manifestsDirPrefix = "svctrace-lab-"

// labID returns the id part ("st" + 4 hex digits) of a lab namespace,
// record or directory name, or "".
func labID(name string) string {
	if len(name) < 6 || !strings.HasPrefix(name, NamePrefix) || (len(name) > 6 && name[6] != '-') {
		return ""
	}
	for _, c := range name[2:6] {
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return ""
		}
	}
	return name[:6]
}

// processStart returns a process's start time (field 22 of /proc/pid/stat).
func processStart(pid int) (string, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", fmt.Errorf("read process stat: %w", err)
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return "", errors.New("malformed process stat")
	}
	fields := strings.Fields(s[i+1:])
	// fields[0] is field 3 (state); start time is field 22.
	if len(fields) < 20 {
		return "", errors.New("malformed process stat")
	}
	return fields[19], nil
}

// reserveID picks an unused lab id and writes its owner record.
func reserveID() (string, error) {
	if err := os.MkdirAll(OwnerDir, 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", OwnerDir, err)
	}
	start, err := processStart(os.Getpid())
	if err != nil {
		return "", err
	}
	for range 64 {
		var b [2]byte
		if _, err := rand.Read(b[:]); err != nil {
			return "", fmt.Errorf("random lab id: %w", err)
		}
		id := NamePrefix + hex.EncodeToString(b[:])
		if m, _ := filepath.Glob(filepath.Join(NetnsRunDir, id+"-*")); len(m) > 0 {
			continue // leftovers of an earlier lab with this id
		}
		f, err := os.OpenFile(filepath.Join(OwnerDir, id), os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return "", fmt.Errorf("write lab owner record: %w", err)
		}
		_, werr := fmt.Fprintf(f, "%d %s\n", os.Getpid(), start)
		if cerr := f.Close(); werr == nil {
			werr = cerr
		}
		if werr != nil {
			_ = os.Remove(f.Name())
			return "", fmt.Errorf("write lab owner record: %w", werr)
		}
		return id, nil
	}
	return "", errors.New("no free lab id")
}

// ownerAlive reports whether the lab's owner process still runs (and is not
// a recycled pid); ours reports whether that process is this one.
func ownerAlive(id string) (alive, ours bool) {
	b, err := os.ReadFile(filepath.Join(OwnerDir, id))
	if err != nil {
		return false, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return false, false
	}
	pid, err := strconv.Atoi(f[0])
	if err != nil {
		return false, false
	}
	start, err := processStart(pid)
	if err != nil || start != f[1] {
		return false, false
	}
	return true, pid == os.Getpid()
}

// Cleanup removes what labs left behind after their process was killed:
// network namespaces, root-namespace links, owner records and temporary
// manifest directories whose lab id starts with prefix (NamePrefix for all
// labs, or one lab's id). Labs whose owner process is another live process
// are left alone; labs of the calling process are removed. It returns the
// removed namespace names.
func Cleanup(ctx context.Context, prefix string) ([]string, error) {
	return cleanup(ctx, prefix, false)
}

func cleanup(ctx context.Context, prefix string, force bool) ([]string, error) {
	if !strings.HasPrefix(prefix, NamePrefix) {
		return nil, fmt.Errorf("cleanup: prefix %q does not start with %q", prefix, NamePrefix)
	}
	match := func(name string) (string, bool) {
		id := labID(name)
		return id, id != "" && strings.HasPrefix(name, prefix)
	}

	byID := map[string][]string{} // lab id -> its namespaces
	entries, err := os.ReadDir(NetnsRunDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cleanup: list %s: %w", NetnsRunDir, err)
	}
	for _, e := range entries {
		if id, ok := match(e.Name()); ok {
			byID[id] = append(byID[id], e.Name())
		}
	}
	records, err := os.ReadDir(OwnerDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("cleanup: list %s: %w", OwnerDir, err)
	}
	for _, e := range records {
		if id, ok := match(e.Name()); ok {
			if _, seen := byID[id]; !seen {
				byID[id] = nil
			}
		}
	}
	tmpDirs, _ := filepath.Glob(filepath.Join(os.TempDir(), manifestsDirPrefix+"st*"))
	for _, d := range tmpDirs {
		if id, ok := match(strings.TrimPrefix(filepath.Base(d), manifestsDirPrefix)); ok {
			if _, seen := byID[id]; !seen {
				byID[id] = nil
			}
		}
	}
	links, err := netlink.LinkList()
	if err != nil {
		return nil, fmt.Errorf("cleanup: list links: %w", err)
	}
	linksByID := map[string][]netlink.Link{}
	for _, l := range links {
		if id, ok := match(l.Attrs().Name); ok {
			linksByID[id] = append(linksByID[id], l)
			if _, seen := byID[id]; !seen {
				byID[id] = nil
			}
		}
	}

	ids := make([]string, 0, len(byID))
	for id := range byID {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	var removed []string
	var errs []error
	for _, id := range ids {
		if err := ctx.Err(); err != nil {
			return removed, fmt.Errorf("cleanup: %w", err)
		}
		if alive, ours := ownerAlive(id); alive && !ours && !force {
			continue
		}
		failed := false
		for _, l := range linksByID[id] {
			// Deleting one end of a veth pair removes the other: ENODEV.
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("cleanup: delete link %s: %w", l.Attrs().Name, err))
				failed = true
			}
		}
		names := byID[id]
		sort.Strings(names)
		for _, ns := range names {
			if err := deleteNetns(ns); err != nil {
				errs = append(errs, fmt.Errorf("cleanup: %w", err))
				failed = true
				continue
			}
			removed = append(removed, ns)
		}
		for _, d := range tmpDirs {
			if strings.HasPrefix(filepath.Base(d), manifestsDirPrefix+id) {
				if err := os.RemoveAll(d); err != nil {
					errs = append(errs, fmt.Errorf("cleanup: %w", err))
				}
			}
		}
		// Keep the record while namespaces of the lab remain.
		if rest, _ := filepath.Glob(filepath.Join(NetnsRunDir, id+"-*")); !failed && len(rest) == 0 {
			if err := os.Remove(filepath.Join(OwnerDir, id)); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("cleanup: %w", err))
			}
		}
	}
	return removed, errors.Join(errs...)
}
