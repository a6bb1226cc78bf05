package attach

import (
	"errors"
	"fmt"
	"os"
	"time"

	"github.com/cilium/ebpf/perf"
)

// ErrReaderClosed is returned by Read after Close.
var ErrReaderClosed = errors.New("event reader closed")

// Reader reads raw event records from the kernel.
type Reader interface {
	// Read blocks until a record is available or the deadline passes
	// (os.ErrDeadlineExceeded). The returned slice is valid until the next Read.
	Read(deadline time.Time) ([]byte, error)
	// LostSamples reports records the transport itself dropped (perf buffer only).
	LostSamples() uint64
	Close() error
}

// NewReader opens a reader on the event transport.
func (p *Probes) NewReader() (Reader, error) {
	if p.useRing {
		m := p.shared["events"]
		r, err := newRingBuf(m.FD(), m.MaxEntries())
		if err != nil {
			return nil, fmt.Errorf("open ring buffer: %w", err)
		}
		return r, nil
	}
	r, err := perf.NewReader(p.shared["events_perf"], 256*os.Getpagesize())
	if err != nil {
		return nil, fmt.Errorf("open perf buffer: %w", err)
	}
	return &perfReader{r: r}, nil
}

type perfReader struct {
	r        *perf.Reader
	rec      perf.Record
	lost     uint64
	deadline time.Time
}

func (pr *perfReader) Read(deadline time.Time) ([]byte, error) {
	if !deadline.Equal(pr.deadline) {
		pr.deadline = deadline
		pr.r.SetDeadline(deadline)
	}
	for {
		if err := pr.r.ReadInto(&pr.rec); err != nil {
			if errors.Is(err, perf.ErrClosed) {
				return nil, ErrReaderClosed
			}
			return nil, err
		}
		if pr.rec.LostSamples > 0 {
			pr.lost += pr.rec.LostSamples
			continue
		}
		return pr.rec.RawSample, nil
	}
}

func (pr *perfReader) LostSamples() uint64 { return pr.lost }
func (pr *perfReader) Close() error        { return pr.r.Close() }
