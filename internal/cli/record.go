package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/pcapng"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/tracer"
)

// recordOptions are the trace command's flags that record the trace to
// files alongside the live output.
type recordOptions struct {
	write    string
	pcapng   string
	snaplen  int
	maxSize  string
	keep     int
	maxSizeV int64
}

func (r *recordOptions) addRecordFlags(c *cobra.Command) {
	f := c.Flags()
	f.StringVar(&r.write, "write", "", "also record the trace to this file (JSON lines, gzip-compressed if the name ends in .gz) for 'svctrace replay'")
	f.StringVar(&r.pcapng, "pcapng", "", "also write the traced packets' headers to this pcapng file, with per-packet comments (hook, NAT, names, verdict), for Wireshark/tshark")
	f.IntVar(&r.snaplen, "snaplen", 0, fmt.Sprintf("bytes of each packet to keep in --write and --pcapng files; 0: IPv4 and transport headers only, no payload (the kernel side captures at most %d)", pcapng.KernelSnaplen))
	f.StringVar(&r.maxSize, "write-max-size", "", "with --write, start a new file when the current one reaches this size (e.g. 100M, 1G): FILE, then FILE.1, FILE.2, …")
	f.IntVar(&r.keep, "write-keep", 0, "with --write-max-size, keep only this many files, the current one included, deleting the oldest (0: keep all)")
}

func (r *recordOptions) completeRecord() error {
	if r.snaplen < 0 || r.snaplen > 65535 {
		return usageErr(fmt.Errorf("--snaplen %d: use 0 (headers only) to 65535", r.snaplen))
	}
	if r.maxSize != "" {
		if r.write == "" {
			return usageErr(errors.New("--write-max-size needs --write"))
		}
		n, err := parseSize(r.maxSize)
		if err != nil {
			return usageErr(fmt.Errorf("--write-max-size: %w", err))
		}
		r.maxSizeV = n
	}
	if r.keep < 0 {
		return usageErr(fmt.Errorf("--write-keep %d must not be negative", r.keep))
	}
	if r.keep > 0 && r.maxSizeV == 0 {
		return usageErr(errors.New("--write-keep needs --write-max-size"))
	}
	if r.write != "" && r.write == r.pcapng {
		return usageErr(errors.New("--write and --pcapng name the same file"))
	}
	return nil
}

// applyRecord adds the recording sinks to cfg. The returned function
// closes them (the tracer closes them too; closing twice is harmless): call
// it when the trace ends, also when it fails before it started.
func (r *recordOptions) applyRecord(cfg *tracer.Config) (func(), error) {
	cfg.Version = Version
	var sinks []tracer.Sink
	closeAll := func() {
		for _, s := range sinks {
			_ = s.Close()
		}
	}
	trim := func(b []byte) []byte { return pcapng.Trim(b, r.snaplen) }
	if r.write != "" {
		rec, err := record.Create(r.write, record.Options{MaxSize: r.maxSizeV, Keep: r.keep, Snaplen: r.snaplen, Headers: trim})
		if err != nil {
			return nil, usageErr(fmt.Errorf("--write: %w", err))
		}
		sinks = append(sinks, rec)
	}
	if r.pcapng != "" {
		w, err := pcapng.Create(r.pcapng, pcapng.Options{Snaplen: r.snaplen})
		if err != nil {
			closeAll()
			return nil, usageErr(fmt.Errorf("--pcapng: %w", err))
		}
		sinks = append(sinks, w)
	}
	if len(sinks) > 0 {
		cfg.Sinks = append(cfg.Sinks, sinks...)
		cfg.Headers = true
	}
	return closeAll, nil
}

// parseSize reads a size: bytes, or a number with K, M, G (powers of 1024;
// "KB", "KiB", "MB", "MiB", … are accepted too).
func parseSize(s string) (int64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := int64(1)
	switch {
	case strings.HasSuffix(t, "K"):
		mult = 1 << 10
	case strings.HasSuffix(t, "M"):
		mult = 1 << 20
	case strings.HasSuffix(t, "G"):
		mult = 1 << 30
	}
	if mult > 1 {
		t = strings.TrimSpace(t[:len(t)-1])
	}
	n, err := strconv.ParseFloat(t, 64)
	if err != nil || !(n >= 1 && n*float64(mult) <= 1<<62) {
		return 0, fmt.Errorf("%q is not a size (e.g. 100M, 1G, 65536)", s)
	}
	return int64(n * float64(mult)), nil
}
