package record

import (
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/svctrace/svctrace/internal/correlate"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/pipeline"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// Options configure a Recorder.
type Options struct {
	// MaxSize rotates to a new file once the current one has this many
	// bytes (compressed bytes for gzip); 0 never rotates. Rotation happens
	// between an input record and the next, so a file may exceed it by a
	// record and what that record caused.
	MaxSize int64
	// Keep is how many files to keep, the current one included; older ones
	// are deleted at rotation. 0 keeps all.
	Keep int
	// FlushInterval is how often buffered records are written out
	// (default 1s; negative: only at rotation and Close).
	FlushInterval time.Duration
	// Snaplen is recorded in the header: what Headers keeps.
	Snaplen int
	// Headers, when set, is applied to every event's header bytes (cut them
	// to the snap length) before they are recorded.
	Headers func([]byte) []byte
}

// DefaultFlushInterval is how often a Recorder writes buffered records out.
const DefaultFlushInterval = time.Second

// settleAfter is how long after the newest event the correlator is sure to
// hold nothing: packets complete Idle after their last event and buffered
// route lookups expire FlowWindow (1s) + Idle after theirs. Once the clock
// passed it, ticks change nothing and are not recorded. It is larger than
// needed on purpose; recording a few more ticks is harmless.
const settleAfter = 2 * time.Second

// queueLen is how many records may wait for the writer. When it is full
// the tracer waits: a recording never leaves records out.
const queueLen = 4096

// Recorder writes a trace to a recording. It implements tracer.Sink: its
// methods are called from the tracer's goroutine, which only copies what
// it is given; a writer goroutine encodes, compresses and writes.
type Recorder struct {
	path string
	opts Options
	jobs chan job
	done chan struct{}

	// The tracer's side.
	began   bool
	metaN   int
	maxTime uint64
	settled bool
	settle  uint64
	devs    map[devKey]*devState
	netns   map[uint32]string
	closed  bool

	// Shared: the writer's first error, the files on disk.
	mu       sync.Mutex
	err      error
	reported bool
	files    []string

	w writer // the writer goroutine's state
}

// writer is what the writer goroutine owns.
type writer struct {
	path    string
	opts    Options
	seg     *segment
	segNo   int
	buf     bytes.Buffer
	enc     *json.Encoder
	hdr     Header
	meta    []byte // the last metadata record, for the next segment's preamble
	devs    map[devKey]*devState
	devKeys []devKey
	netns   map[uint32]string
	nsKeys  []uint32
	wrote   bool
}

type devKey struct{ netns, ifindex uint32 }

type devState struct {
	name, kind                string
	prefixes                  []netip.Prefix
	hasName, hasKind, hasPref bool
}

// merge takes the answers a device record carries.
func (st *devState) merge(d *Device) {
	if d.Name != nil {
		st.name, st.hasName = *d.Name, true
	}
	if d.Kind != nil {
		st.kind, st.hasKind = *d.Kind, true
	}
	if d.Prefixes != nil {
		st.prefixes, st.hasPref = *d.Prefixes, true
	}
}

// job is one record for the writer, or a request to flush.
type job struct {
	v     any            // the record to encode
	input bool           // rotation may happen before it
	snap  *meta.Snapshot // a metadata record to encode
	flush chan error     // flush and answer
}

var _ tracer.Sink = (*Recorder)(nil)

// Create creates the recording file at path (gzip-compressed when the
// name ends in ".gz") and returns its Recorder. Records are written from
// Begin on; Close must be called.
func Create(path string, opts Options) (*Recorder, error) {
	seg, err := createSegment(path)
	if err != nil {
		return nil, err
	}
	r := &Recorder{
		path: path, opts: opts, jobs: make(chan job, queueLen), done: make(chan struct{}),
		settled: true, devs: map[devKey]*devState{}, netns: map[uint32]string{}, files: []string{path},
	}
	r.w = writer{path: path, opts: opts, seg: seg, devs: map[devKey]*devState{}, netns: map[uint32]string{}}
	r.w.enc = json.NewEncoder(&r.w.buf)
	r.w.enc.SetEscapeHTML(false)
	every := opts.FlushInterval
	if every == 0 {
		every = DefaultFlushInterval
	}
	go r.run(every)
	return r, nil
}

// result returns the writer's error once; later calls stay quiet (the
// tracer would print it for every event).
func (r *Recorder) result() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil && !r.reported {
		r.reported = true
		return fmt.Errorf("recording stopped: %w", r.err)
	}
	return nil
}

func (r *Recorder) send(j job) error {
	if r.closed {
		return nil
	}
	r.jobs <- j
	return r.result()
}

// Flush writes every record given so far to the file.
func (r *Recorder) Flush() error {
	if r.closed {
		return nil
	}
	reply := make(chan error, 1)
	r.jobs <- job{flush: reply}
	if err := <-reply; err != nil {
		return err
	}
	return r.result()
}

// Begin writes the header.
func (r *Recorder) Begin(info tracer.RunInfo) error {
	var id [8]byte
	_, _ = rand.Read(id[:])
	hdr := &Header{
		Type: TypeHeader, Format: FormatName, Version: Version, ID: hex.EncodeToString(id[:]),
		Svctrace: info.Version, Kernel: info.Kernel, Node: info.Node, NodeNetns: info.NodeNetns,
		Namespace: info.Namespace, Service: info.Service, Backend: info.Backend,
		Start: info.Start.UTC(), ClockOffset: info.ClockOffset, Idle: int64(info.Idle),
		Snaplen: r.opts.Snaplen, Plan: info.Plan,
	}
	idle := info.Idle
	if idle <= 0 {
		idle = correlate.DefaultIdle
	}
	r.settle = uint64(settleAfter + idle)
	r.began = true
	return r.send(job{v: hdr})
}

// Metadata records the cluster snapshot (the first, and every change). The
// first one is on disk, after the header, when Metadata returns: even a
// trace killed right away leaves a recording that opens.
func (r *Recorder) Metadata(snap *meta.Snapshot) error {
	r.metaN++
	if err := r.send(job{snap: snap, input: true}); err != nil || r.metaN > 1 {
		return err
	}
	return r.Flush()
}

// Event records one event, as the pipeline is about to see it. It is
// copied: the tracer reuses its storage.
func (r *Recorder) Event(ev *event.Event) error {
	e := *ev
	e.Type = TypeEvent
	if len(ev.Header) > 0 {
		h := ev.Header
		if r.opts.Headers != nil {
			h = r.opts.Headers(h)
		}
		e.Header = slices.Clone(h)
	}
	if ev.Conntrack != nil {
		ct := *ev.Conntrack
		e.Conntrack = &ct
	}
	if ev.IPVS != nil {
		c := *ev.IPVS
		e.IPVS = &c
	}
	if ev.Time > r.maxTime {
		r.maxTime = ev.Time
	}
	r.settled = false
	return r.send(job{v: &e, input: true})
}

// Advance records the pipeline's clock while anything may be in flight.
func (r *Recorder) Advance(now uint64) error {
	if r.settled {
		return nil
	}
	if now >= r.maxTime+r.settle {
		r.settled = true
	}
	return r.send(job{v: &Tick{Type: TypeTick, TS: now}, input: true})
}

// Path records a path the live pipeline produced.
func (r *Recorder) Path(p *event.Path) error {
	c := *p
	c.Type = TypePath
	return r.send(job{v: &c})
}

// Verdict records a verdict the live pipeline produced.
func (r *Recorder) Verdict(v *event.Verdict) error {
	c := *v
	c.Type = TypeVerdict
	return r.send(job{v: &c})
}

// Devices wraps the device resolver to record every answer it gives.
func (r *Recorder) Devices(d pipeline.Devices) pipeline.Devices {
	return &deviceRecorder{r: r, inner: d}
}

// Close writes the end record, flushes and closes the file. A recording
// that never began (the trace failed before it started) is removed. Close
// may be called more than once.
func (r *Recorder) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	close(r.jobs)
	<-r.done
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err != nil && !r.reported {
		r.reported = true
		return r.err
	}
	return nil
}

// Files returns the recording's files on disk, oldest first.
func (r *Recorder) Files() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.files)
}

// fail keeps the writer's first error; recording stops there.
func (r *Recorder) fail(err error) {
	if err == nil {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.err == nil {
		r.err = err
	}
}

func (r *Recorder) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err != nil
}

// run is the writer goroutine.
func (r *Recorder) run(every time.Duration) {
	defer close(r.done)
	var tick <-chan time.Time
	if every > 0 {
		t := time.NewTicker(every)
		defer t.Stop()
		tick = t.C
	}
	w := &r.w
	for {
		select {
		case j, ok := <-r.jobs:
			if !ok {
				r.finish()
				return
			}
			if j.flush != nil {
				var err error
				if !r.failed() {
					err = w.seg.flush()
					r.fail(err)
				}
				j.flush <- err
				continue
			}
			if r.failed() {
				continue // drain: the tracer must not block
			}
			r.handle(j)
		case <-tick:
			if !r.failed() && w.wrote {
				r.fail(w.seg.flush())
			}
		}
	}
}

// handle writes one record.
func (r *Recorder) handle(j job) {
	w := &r.w
	if j.input {
		r.rotate()
	}
	var v any = j.v
	if j.snap != nil {
		v = &Metadata{Type: TypeMetadata, Snapshot: j.snap.Data()}
	}
	switch x := v.(type) {
	case *Header:
		w.hdr = *x
	case *Device:
		w.device(x)
	case *Netns:
		if _, ok := w.netns[x.Netns]; !ok {
			w.nsKeys = append(w.nsKeys, x.Netns)
		}
		w.netns[x.Netns] = x.Name
	}
	line, err := w.encode(v)
	if err != nil {
		r.fail(err)
		return
	}
	if j.snap != nil {
		w.meta = slices.Clone(line)
	}
	r.fail(w.write(line))
}

func (w *writer) encode(v any) ([]byte, error) {
	w.buf.Reset()
	if err := w.enc.Encode(v); err != nil {
		return nil, fmt.Errorf("encode record: %w", err)
	}
	return w.buf.Bytes(), nil
}

func (w *writer) write(line []byte) error {
	w.wrote = true
	return w.seg.write(line)
}

// device keeps the latest answers about a device for the next preamble.
func (w *writer) device(d *Device) {
	k := devKey{d.Netns, d.Ifindex}
	st := w.devs[k]
	if st == nil {
		st = &devState{}
		w.devs[k] = st
		w.devKeys = append(w.devKeys, k)
	}
	st.merge(d)
}

// rotate starts the next segment when the current one is full.
func (r *Recorder) rotate() {
	w := &r.w
	if w.opts.MaxSize <= 0 || w.hdr.Type == "" || w.seg.size() < w.opts.MaxSize {
		return
	}
	next := segmentName(w.path, w.segNo+1)
	line, err := w.encode(&End{Type: TypeEnd, Time: time.Now().UTC(), Next: filepath.Base(next)})
	if err == nil {
		err = w.write(line)
	}
	if err == nil {
		err = w.seg.close()
	}
	if err != nil {
		r.fail(err)
		return
	}
	seg, err := createSegment(next)
	if err != nil {
		r.fail(err)
		return
	}
	w.seg, w.segNo = seg, w.segNo+1
	r.mu.Lock()
	r.files = append(r.files, next)
	if w.opts.Keep > 0 {
		for len(r.files) > w.opts.Keep {
			if err := os.Remove(r.files[0]); err != nil && !errors.Is(err, os.ErrNotExist) && r.err == nil {
				r.err = fmt.Errorf("remove old recording: %w", err)
			}
			r.files = r.files[1:]
		}
	}
	r.mu.Unlock()

	hdr := w.hdr
	hdr.Segment = w.segNo
	hdr.Preamble = len(w.nsKeys) + len(w.devKeys)
	if w.meta != nil {
		hdr.Preamble++
	}
	var lines [][]byte
	add := func(v any) {
		if l, err := w.encode(v); err == nil {
			lines = append(lines, slices.Clone(l))
		} else {
			r.fail(err)
		}
	}
	add(&hdr)
	if w.meta != nil {
		lines = append(lines, w.meta)
	}
	for _, ns := range w.nsKeys {
		add(&Netns{Type: TypeNetns, Netns: ns, Name: w.netns[ns]})
	}
	for _, k := range w.devKeys {
		st := w.devs[k]
		d := Device{Type: TypeDevice, Netns: k.netns, Ifindex: k.ifindex}
		if st.hasName {
			d.Name = &st.name
		}
		if st.hasKind {
			d.Kind = &st.kind
		}
		if st.hasPref {
			p := append([]netip.Prefix{}, st.prefixes...)
			d.Prefixes = &p
		}
		add(&d)
	}
	for _, l := range lines {
		r.fail(w.write(l))
	}
	r.fail(w.seg.flush())
}

// finish ends the recording: the end record, and the file closed (removed
// when the trace never began).
func (r *Recorder) finish() {
	w := &r.w
	if w.hdr.Type != "" && !r.failed() {
		if line, err := w.encode(&End{Type: TypeEnd, Time: time.Now().UTC()}); err != nil {
			r.fail(err)
		} else {
			r.fail(w.write(line))
		}
	}
	empty := w.seg.empty()
	r.fail(w.seg.close())
	if w.hdr.Type == "" && empty && w.segNo == 0 {
		_ = os.Remove(w.path)
	}
}

// deviceRecorder records what the device resolver answers, when it
// changes, so a replay answers the same.
type deviceRecorder struct {
	r     *Recorder
	inner pipeline.Devices
}

func (d *deviceRecorder) state(k devKey) *devState {
	st := d.r.devs[k]
	if st == nil {
		st = &devState{}
		d.r.devs[k] = st
	}
	return st
}

func (d *deviceRecorder) Device(netns, ifindex uint32) string {
	v := d.inner.Device(netns, ifindex)
	st := d.state(devKey{netns, ifindex})
	if !st.hasName || st.name != v {
		st.name, st.hasName = v, true
		_ = d.r.send(job{v: &Device{Type: TypeDevice, Netns: netns, Ifindex: ifindex, Name: &v}})
	}
	return v
}

func (d *deviceRecorder) Kind(netns, ifindex uint32) string {
	v := d.inner.Kind(netns, ifindex)
	st := d.state(devKey{netns, ifindex})
	if !st.hasKind || st.kind != v {
		st.kind, st.hasKind = v, true
		_ = d.r.send(job{v: &Device{Type: TypeDevice, Netns: netns, Ifindex: ifindex, Kind: &v}})
	}
	return v
}

func (d *deviceRecorder) Prefixes(netns, ifindex uint32) []netip.Prefix {
	v := d.inner.Prefixes(netns, ifindex)
	st := d.state(devKey{netns, ifindex})
	if !st.hasPref || !slices.Equal(st.prefixes, v) {
		st.prefixes, st.hasPref = slices.Clone(v), true
		p := append([]netip.Prefix{}, v...)
		_ = d.r.send(job{v: &Device{Type: TypeDevice, Netns: netns, Ifindex: ifindex, Prefixes: &p}})
	}
	return v
}

func (d *deviceRecorder) Netns(netns uint32) string {
	v := d.inner.Netns(netns)
	if old, ok := d.r.netns[netns]; !ok || old != v {
		d.r.netns[netns] = v
		_ = d.r.send(job{v: &Netns{Type: TypeNetns, Netns: netns, Name: v}})
	}
	return v
}
