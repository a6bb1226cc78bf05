package record

import (
	"bufio"
	"bytes"
	"compress/flate"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/pkg/event"
)

// ErrFormat matches (errors.Is) every error about a file's content: not a
// recording, a format version from the future, a corrupt record.
var ErrFormat = errors.New("invalid recording")

// FormatError says what is wrong with a recording and where.
type FormatError struct {
	File string
	// Line is the 1-based line of the record; Offset the byte offset of its
	// start (in the decompressed stream for gzip files).
	Line   int
	Offset int64
	Err    error
}

// Error returns one line: "rec.jsonl: line 57 (byte 12345): corrupt event record: …".
func (e *FormatError) Error() string {
	s := e.File
	if e.Line > 0 {
		s += ": line " + strconv.Itoa(e.Line) + " (byte " + strconv.FormatInt(e.Offset, 10) + ")"
	}
	// One line, whatever a damaged file puts in names it quotes.
	return strings.NewReplacer("\n", `\n`, "\r", `\r`).Replace(s + ": " + e.Err.Error())
}

// Unwrap returns the underlying error.
func (e *FormatError) Unwrap() error { return e.Err }

// Is matches ErrFormat.
func (e *FormatError) Is(target error) bool { return target == ErrFormat }

// MaxRecord is the longest record a reader accepts (a metadata snapshot of
// a large cluster is the longest).
const MaxRecord = 256 << 20

// maxHeader is how far a reader looks for the first line.
const maxHeader = 1 << 20

// Record is one record read from a recording. Type says which field is set.
type Record struct {
	Type string
	// File, Line and Offset say where the record is.
	File   string
	Line   int
	Offset int64

	// Metadata is the restored snapshot of a "metadata" record.
	Metadata *meta.Snapshot
	Event    *event.Event
	Tick     uint64
	Device   *Device
	Netns    *Netns
	// Raw is the line of a "path" or "verdict" record (what the live
	// pipeline produced), for callers that decode it (event.Path,
	// event.Verdict).
	Raw json.RawMessage
}

// Input reports whether the record drives the pipeline (an event, a clock
// tick or a metadata change), as opposed to recording what it caused.
func (r *Record) Input() bool {
	return r.Type == TypeEvent || r.Type == TypeTick || r.Type == TypeMetadata
}

// Reader reads a recording: one file, or the files (segments) of a rotated
// recording in order.
type Reader struct {
	hdr      Header
	cur      *fileReader
	pending  []string // explicit segment files still to read
	follow   bool     // follow the end records' "next" links
	warnings []string
	complete bool
	segments int
	contig   bool // every segment since the first one read followed its predecessor
}

// fileReader reads the lines of one file.
type fileReader struct {
	name  string
	f     *os.File
	gz    *gzip.Reader
	br    *bufio.Reader
	line  int
	off   int64
	hdr   Header
	ended *End
	skip  int // preamble records still to skip (continuation segments)
}

// Open opens a recording. With one file, it follows the recording's
// rotated segments from that file on; with several, it reads exactly those,
// in segment order. Every file must belong to the same recording.
func Open(files ...string) (*Reader, error) {
	if len(files) == 0 {
		return nil, errors.New("open recording: no file")
	}
	var frs []*fileReader
	for _, name := range files {
		fr, err := openFile(name)
		if err != nil {
			for _, o := range frs {
				o.close()
			}
			return nil, err
		}
		frs = append(frs, fr)
	}
	sort.SliceStable(frs, func(i, j int) bool { return frs[i].hdr.Segment < frs[j].hdr.Segment })
	for i, fr := range frs[1:] {
		var why string
		switch {
		case fr.hdr.ID != frs[0].hdr.ID:
			why = "belongs to another recording than " + frs[0].name
		case fr.hdr.Segment == frs[i].hdr.Segment:
			why = "is the same segment as " + frs[i].name
		default:
			continue
		}
		for _, o := range frs {
			o.close()
		}
		return nil, &FormatError{File: fr.name, Err: errors.New(why)}
	}
	r := &Reader{hdr: frs[0].hdr, cur: frs[0], follow: len(files) == 1, segments: 1, contig: true}
	for _, fr := range frs[1:] {
		r.pending = append(r.pending, fr.name)
		fr.close()
	}
	if r.hdr.Segment > 0 {
		r.warn(fmt.Sprintf("%s is segment %d of its recording: packets in flight when it began may be incomplete", frs[0].name, r.hdr.Segment))
	}
	return r, nil
}

// NewReader reads a recording from one stream (a single file's content).
func NewReader(rd io.Reader, name string) (*Reader, error) {
	fr, err := newFileReader(rd, name)
	if err != nil {
		return nil, err
	}
	return &Reader{hdr: fr.hdr, cur: fr, segments: 1, contig: true}, nil
}

func openFile(name string) (*fileReader, error) {
	f, err := os.Open(name)
	if err != nil {
		return nil, fmt.Errorf("open recording: %w", err)
	}
	fr, err := newFileReader(f, name)
	if err != nil {
		f.Close()
		return nil, err
	}
	fr.f = f
	return fr, nil
}

func newFileReader(rd io.Reader, name string) (*fileReader, error) {
	br := bufio.NewReaderSize(rd, 64<<10)
	fr := &fileReader{name: name, br: br}
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		gz, err := gzip.NewReader(br)
		if err != nil {
			return nil, &FormatError{File: name, Line: 1, Err: fmt.Errorf("not an svctrace recording: gzip data cut short or damaged: %w", err)}
		}
		fr.gz = gz
		fr.br = bufio.NewReaderSize(gz, 64<<10)
	}
	line, _, err := fr.readLine(maxHeader)
	notRecording := func(why string) error {
		return &FormatError{File: name, Line: 1, Err: fmt.Errorf("not an svctrace recording: %s", why)}
	}
	var fe *FormatError
	switch {
	case err == nil:
	case errors.As(err, &fe):
		return nil, notRecording("no recording header in its first MiB")
	case !errors.Is(err, io.EOF) && !errors.Is(err, io.ErrUnexpectedEOF):
		return nil, readError(fr, 0, err)
	case len(line) == 0:
		return nil, notRecording("the file is empty")
	}
	// err may be io.EOF here: a file of one line without its newline.
	var h Header
	if json.Unmarshal(line, &h) != nil || h.Type != TypeHeader || h.Format != FormatName {
		return nil, notRecording("its first line is not a recording header")
	}
	if h.Version > Version {
		return nil, &FormatError{File: name, Line: 1, Err: fmt.Errorf("recording format version %d is newer than this svctrace reads (%d): use a newer svctrace", h.Version, Version)}
	}
	if h.Version < 1 {
		return nil, &FormatError{File: name, Line: 1, Err: fmt.Errorf("recording header has no valid format version (%d)", h.Version)}
	}
	if h.Segment < 0 || h.Preamble < 0 {
		return nil, &FormatError{File: name, Line: 1, Err: errors.New("recording header has a negative segment or preamble")}
	}
	fr.hdr = h
	return fr, nil
}

// readLine returns the next line without its newline, its start offset,
// and io.EOF at the end. A last line without a newline comes with the
// error that ended it (io.EOF, or io.ErrUnexpectedEOF for a cut gzip
// stream). A line longer than max is a *FormatError.
func (fr *fileReader) readLine(max int) ([]byte, int64, error) {
	start := fr.off
	fr.line++
	var acc []byte
	for {
		chunk, err := fr.br.ReadSlice('\n')
		fr.off += int64(len(chunk))
		if len(acc)+len(chunk) > max+1 {
			return nil, start, &FormatError{File: fr.name, Line: fr.line, Offset: start,
				Err: fmt.Errorf("record longer than %d bytes", max)}
		}
		switch {
		case err == nil:
			if acc == nil {
				return bytes.TrimSuffix(chunk, []byte("\n")), start, nil
			}
			acc = append(acc, chunk...)
			return bytes.TrimSuffix(acc, []byte("\n")), start, nil
		case errors.Is(err, bufio.ErrBufferFull):
			acc = append(acc, chunk...)
		default:
			acc = append(acc, chunk...)
			return acc, start, err
		}
	}
}

func (fr *fileReader) close() {
	if fr.gz != nil {
		fr.gz.Close()
	}
	if fr.f != nil {
		fr.f.Close()
	}
}

// Header returns the header of the first file read.
func (r *Reader) Header() Header { return r.hdr }

// Warnings returns what the reader warned about so far: a torn final
// record, a recording without an end record, a missing segment.
func (r *Reader) Warnings() []string { return r.warnings }

// Complete reports, at the end, whether the recording ended cleanly (an
// end record without a next segment).
func (r *Reader) Complete() bool { return r.complete }

// Contiguous reports, at the end, whether every segment followed the one
// before and the first was segment 0: the whole recording was read.
func (r *Reader) Contiguous() bool { return r.contig && r.hdr.Segment == 0 }

// Segments returns how many files were read.
func (r *Reader) Segments() int { return r.segments }

func (r *Reader) warn(s string) { r.warnings = append(r.warnings, s) }

// Close closes the current file.
func (r *Reader) Close() error {
	if r.cur != nil {
		r.cur.close()
		r.cur = nil
	}
	return nil
}

// Next returns the next record, io.EOF at the end of the recording, or a
// *FormatError for a corrupt record. Headers and end records are handled
// by the reader; record types it does not know are skipped.
func (r *Reader) Next() (*Record, error) {
	for r.cur != nil {
		fr := r.cur
		line, off, err := fr.readLine(MaxRecord)
		if err != nil {
			var fe *FormatError
			if errors.As(err, &fe) {
				return nil, err
			}
			cut := errors.Is(err, io.ErrUnexpectedEOF)
			if !cut && !errors.Is(err, io.EOF) {
				return nil, readError(fr, off, err)
			}
			if len(line) == 0 {
				fr.line--
				r.endFile(cut)
				continue
			}
			// A last line without its newline: the writer was stopped in
			// the middle of it, unless it happens to be whole.
			rec, perr := r.parse(fr, line, off)
			if perr != nil {
				r.warn(fmt.Sprintf("%s: line %d (byte %d): torn final record (%d bytes) ignored: the recording was cut short (svctrace killed?)", fr.name, fr.line, off, len(line)))
				fr.line--
				r.endFile(false)
				continue
			}
			r.endFile(cut)
			if rec != nil {
				return rec, nil
			}
			continue
		}
		rec, err := r.parse(fr, line, off)
		if err != nil {
			return nil, err
		}
		if rec != nil {
			return rec, nil
		}
	}
	return nil, io.EOF
}

// readError reports an error reading a file: corrupt compressed data is a
// format error, anything else an I/O error.
func readError(fr *fileReader, off int64, err error) error {
	var ce flate.CorruptInputError
	if errors.As(err, &ce) || errors.Is(err, gzip.ErrChecksum) || errors.Is(err, gzip.ErrHeader) {
		return &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("corrupt gzip data: %w", err)}
	}
	return fmt.Errorf("read %s: %w", fr.name, err)
}

// endFile finishes the current file and moves to the next segment. cut
// says the compressed stream ended early.
func (r *Reader) endFile(cut bool) {
	fr := r.cur
	fr.close()
	r.cur = nil
	if cut {
		r.warn(fmt.Sprintf("%s: compressed stream cut short after line %d: the recording was cut short (svctrace killed?)", fr.name, fr.line))
	}
	var next string
	switch {
	case len(r.pending) > 0:
		next = r.pending[0]
		r.pending = r.pending[1:]
	case r.follow && fr.ended != nil && fr.ended.Next != "":
		next = filepath.Join(filepath.Dir(fr.name), filepath.Base(fr.ended.Next))
		if _, err := os.Stat(next); err != nil {
			r.warn(fmt.Sprintf("%s: the next segment %s is missing: replayed up to here", fr.name, next))
			return
		}
	default:
		if fr.ended == nil {
			r.warn(fmt.Sprintf("%s: no end record: svctrace did not close the recording (killed?); its %d complete lines were read", fr.name, fr.line))
		} else if fr.ended.Next == "" {
			r.complete = true
		} else {
			r.warn(fmt.Sprintf("%s: the recording continues in %s, which was not given", fr.name, fr.ended.Next))
		}
		return
	}
	nfr, err := openFile(next)
	if err != nil {
		r.warn(fmt.Sprintf("cannot continue with %s: %v", next, err))
		return
	}
	switch {
	case nfr.hdr.ID != r.hdr.ID:
		nfr.close()
		r.warn(fmt.Sprintf("%s belongs to another recording: stopped before it", next))
		return
	case nfr.hdr.Segment == fr.hdr.Segment+1 && fr.ended != nil && fr.ended.Next != "":
		nfr.skip = nfr.hdr.Preamble // the state it restates is ours already
	default:
		r.contig = false
		r.warn(fmt.Sprintf("%s (segment %d) does not follow %s (segment %d) directly: some of the recording is missing", next, nfr.hdr.Segment, fr.name, fr.hdr.Segment))
	}
	r.segments++
	r.cur = nfr
}

func decode[T any](fr *fileReader, line []byte, off int64, what string) (*T, error) {
	v := new(T)
	if err := json.Unmarshal(line, v); err != nil {
		return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("corrupt %s record: %w", what, err)}
	}
	return v, nil
}

// parse decodes one line; nil, nil for records the reader consumes itself.
func (r *Reader) parse(fr *fileReader, line []byte, off int64) (*Record, error) {
	var head struct {
		Type string `json:"type"`
	}
	if err := json.Unmarshal(line, &head); err != nil {
		return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("corrupt record: %w", err)}
	}
	if fr.ended != nil {
		return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("%q record after the end record", head.Type)}
	}
	skip := fr.skip > 0 && head.Type != TypeEnd
	if skip {
		fr.skip--
	}
	rec := &Record{Type: head.Type, File: fr.name, Line: fr.line, Offset: off}
	switch head.Type {
	case TypeHeader:
		return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: errors.New("a second header in one file")}
	case TypeEnd:
		e, err := decode[End](fr, line, off, "end")
		if err != nil {
			return nil, err
		}
		fr.ended = e
		return nil, nil
	case TypeMetadata:
		m, err := decode[Metadata](fr, line, off, "metadata")
		if err != nil {
			return nil, err
		}
		if skip {
			return nil, nil
		}
		if m.Snapshot == nil {
			return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: errors.New("metadata record without a snapshot")}
		}
		s, err := meta.RestoreSnapshot(m.Snapshot)
		if err != nil {
			return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("corrupt metadata record: %w", err)}
		}
		rec.Metadata = s
	case TypeEvent:
		e, err := decode[eventIn](fr, line, off, "event")
		if err != nil {
			return nil, err
		}
		if rec.Event, err = e.event(); err != nil {
			return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: fmt.Errorf("corrupt event record: %w", err)}
		}
	case TypeTick:
		t, err := decode[Tick](fr, line, off, "tick")
		if err != nil {
			return nil, err
		}
		rec.Tick = t.TS
	case TypeDevice:
		d, err := decode[Device](fr, line, off, "device")
		if err != nil {
			return nil, err
		}
		rec.Device = d
	case TypeNetns:
		n, err := decode[Netns](fr, line, off, "netns")
		if err != nil {
			return nil, err
		}
		rec.Netns = n
	case TypePath, TypeVerdict:
		// Only replay's own results are decoded: these are for reference.
		rec.Raw = slices.Clone(line)
	case "":
		return nil, &FormatError{File: fr.name, Line: fr.line, Offset: off, Err: errors.New("record without a type")}
	default:
		return nil, nil // a newer writer's record type: skipped
	}
	if skip {
		return nil, nil
	}
	return rec, nil
}

// eventIn decodes an event record. The kind, source and hook are read
// here, not by their types: values the writer had no name for were written
// as "kind(16)", "source(5)", "hook(5)" (what their String methods give),
// and are read back as those numbers.
type eventIn struct {
	event.Event
	Kind   string `json:"kind"`
	Source string `json:"source"`
	Hook   string `json:"hook"`
}

func (e *eventIn) event() (*event.Event, error) {
	ev := e.Event
	if err := enum(&ev.Kind, e.Kind, "kind"); err != nil {
		return nil, err
	}
	if err := enum(&ev.Source, e.Source, "source"); err != nil {
		return nil, err
	}
	if e.Hook != "" {
		if err := enum(&ev.Hook, e.Hook, "hook"); err != nil {
			return nil, err
		}
	}
	return &ev, nil
}

// enum reads a name, or the "prefix(N)" form of a value without one.
func enum[T ~uint8, P interface {
	*T
	UnmarshalText([]byte) error
}](v P, s, prefix string) error {
	if n, ok := strings.CutPrefix(s, prefix+"("); ok {
		if n, ok := strings.CutSuffix(n, ")"); ok {
			u, err := strconv.ParseUint(n, 10, 8)
			if err != nil {
				return fmt.Errorf("%s %q: %w", prefix, s, err)
			}
			*v = T(u)
			return nil
		}
	}
	return v.UnmarshalText([]byte(s))
}
