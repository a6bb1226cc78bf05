// Package procmem keeps svctrace's own resident set small.
package procmem

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// mapping is one line of /proc/self/smaps with what matters here.
type mapping struct {
	start, end uint64
	perms      string
	path       string
	anonymous  bool // holds pages that differ from the file (copy-on-write, relocations)
}

// TrimExecutable drops the process's mappings of its own executable's
// read-only pages (code and read-only data) from its resident set. Start-up
// touches most of a large Go binary once (package initialisation of the
// Kubernetes client libraries alone is tens of megabytes) and never again;
// the pages stay in the page cache, and those still in use are mapped back
// at their next access (a minor fault). Only mappings whose every page is
// the file's own are dropped: writable ones, and read-only ones written
// before they were made read-only (relocations), keep their contents. It
// returns the bytes unmapped.
func TrimExecutable() (int64, error) {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	maps, err := readSmaps()
	if err != nil {
		return 0, fmt.Errorf("trim: %w", err)
	}
	var total int64
	var errs []error
	for _, m := range maps {
		if m.path != exe || len(m.perms) < 4 || m.perms[1] == 'w' || m.perms[3] != 'p' || m.anonymous {
			continue
		}
		// A raw madvise: the range is not Go memory, so no []byte for it.
		_, _, _ = unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_RANDOM)
		if _, _, e := unix.Syscall(unix.SYS_MADVISE, uintptr(m.start), uintptr(m.end-m.start), unix.MADV_DONTNEED); e != 0 {
			errs = append(errs, fmt.Errorf("madvise %x-%x: %w", m.start, m.end, e))
			continue
		}
		total += int64(m.end - m.start)
	}
	if err := errors.Join(errs...); err != nil {
		return total, fmt.Errorf("trim: %w", err)
	}
	return total, nil
}

func readSmaps() ([]mapping, error) {
	f, err := os.Open("/proc/self/smaps")
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var maps []mapping
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		if v, ok := strings.CutPrefix(line, "Anonymous:"); ok {
			if n := len(maps); n > 0 && strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")) != "0" {
				maps[n-1].anonymous = true
			}
			continue
		}
		// 00400000-010de000 r--p 00000000 fe:00 9994957 /path/to/exe
		lo, hi, ok := strings.Cut(fields[0], "-")
		if !ok || len(fields) < 5 {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil {
			continue // a "Key: value" line
		}
		m := mapping{start: start, end: end, perms: fields[1]}
		if len(fields) >= 6 {
			m.path = strings.Join(fields[5:], " ")
		}
		maps = append(maps, m)
	}
	return maps, sc.Err()
}
