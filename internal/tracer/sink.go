package tracer

import (
	"time"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/pipeline"
	"github.com/svctrace/svctrace/pkg/event"
)

// RunInfo describes a trace, for the header of a recording.
type RunInfo struct {
	Version   string
	Kernel    string
	Node      string
	NodeNetns uint32
	Namespace string
	Service   string
	Backend   string
	Start     time.Time
	// ClockOffset turns kernel timestamps into wall time (ns).
	ClockOffset int64
	Plan        []attach.HookStatus
	// Idle is the correlator's packet completion delay (0: its default).
	Idle time.Duration
}

// Sink receives what a trace produces, to record or export it. Calls come
// from the trace's single goroutine, in order: Begin, Metadata, then
// Event/Path/Verdict/Metadata as they happen, then Close.
type Sink interface {
	Begin(info RunInfo) error
	// Metadata is the cluster snapshot traced against: the first one, and
	// every change during the trace.
	Metadata(snap *meta.Snapshot) error
	Event(ev *event.Event) error
	Path(p *event.Path) error
	Verdict(v *event.Verdict) error
	// Advance says the pipeline's clock moved to now (kernel ktime, ns):
	// packets idle since before now-Idle complete (recordings replay it).
	Advance(now uint64) error
	// Devices may wrap the device resolver (to record what was resolved).
	Devices(d pipeline.Devices) pipeline.Devices
	// Close flushes and closes; it is called on every exit path.
	Close() error
}
