package record

import (
	"bufio"
	"compress/gzip"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// segment is one file of a recording: records are buffered, optionally
// gzip-compressed, and counted as they reach the file.
type segment struct {
	name string
	f    *os.File
	cw   *countWriter
	in   *bufio.Writer // records enter here
	gz   *gzip.Writer  // nil for plain files
	out  *bufio.Writer // compressed bytes (gzip only)
	// unflushed counts bytes written since the last flush (gzip only).
	unflushed int
}

type countWriter struct {
	f *os.File
	n int64
}

func (c *countWriter) Write(b []byte) (int, error) {
	n, err := c.f.Write(b)
	c.n += int64(n)
	return n, err
}

// isGzip reports whether a recording file name asks for gzip.
func isGzip(name string) bool { return strings.HasSuffix(name, ".gz") }

// segmentName is the file name of segment n of the recording at path:
// path itself for 0, else ".n" inserted before a ".gz" ending or appended
// ("trace.jsonl.gz" → "trace.jsonl.1.gz", "trace.jsonl" → "trace.jsonl.1").
func segmentName(path string, n int) string {
	if n == 0 {
		return path
	}
	if isGzip(path) {
		return strings.TrimSuffix(path, ".gz") + "." + strconv.Itoa(n) + ".gz"
	}
	return path + "." + strconv.Itoa(n)
}

func createSegment(name string) (*segment, error) {
	f, err := os.OpenFile(name, os.O_CREATE|os.O_TRUNC|os.O_WRONLY, 0o644)
	if err != nil {
		return nil, fmt.Errorf("create recording: %w", err)
	}
	s := &segment{name: name, f: f, cw: &countWriter{f: f}}
	if isGzip(name) {
		s.out = bufio.NewWriterSize(s.cw, 32<<10)
		// Fastest compression: a tracer's CPU is better spent reading events;
		// JSON lines still shrink about tenfold.
		s.gz, _ = gzip.NewWriterLevel(s.out, gzip.BestSpeed) // a valid level: no error
		s.gz.Name = strings.TrimSuffix(filepath.Base(name), ".gz")
		s.in = bufio.NewWriterSize(s.gz, 64<<10)
	} else {
		s.in = bufio.NewWriterSize(s.cw, 64<<10)
	}
	return s, nil
}

// gzipFlushEvery is how many uncompressed bytes a gzip segment takes
// between sync flushes: it bounds what a killed process loses and keeps
// the file's size (for rotation) close to what was written.
const gzipFlushEvery = 32 << 10

func (s *segment) write(b []byte) error {
	if _, err := s.in.Write(b); err != nil {
		return fmt.Errorf("write recording %s: %w", s.name, err)
	}
	if s.gz != nil {
		s.unflushed += len(b)
		if s.unflushed >= gzipFlushEvery {
			return s.flush()
		}
	}
	return nil
}

// size is about how many bytes the file has or will have once flushed
// (compressed bytes for gzip, not counting what the compressor holds).
func (s *segment) size() int64 {
	if s.gz != nil {
		return s.cw.n + int64(s.out.Buffered())
	}
	return s.cw.n + int64(s.in.Buffered())
}

// empty reports whether nothing was written to the segment.
func (s *segment) empty() bool { return s.cw.n == 0 && s.in.Buffered() == 0 }

// flush pushes every complete record written so far to the file (for gzip,
// with a sync flush, so the compressed prefix decodes).
func (s *segment) flush() error {
	s.unflushed = 0
	if err := s.in.Flush(); err != nil {
		return fmt.Errorf("flush recording %s: %w", s.name, err)
	}
	if s.gz == nil {
		return nil
	}
	if err := s.gz.Flush(); err != nil {
		return fmt.Errorf("flush recording %s: %w", s.name, err)
	}
	if err := s.out.Flush(); err != nil {
		return fmt.Errorf("flush recording %s: %w", s.name, err)
	}
	return nil
}

// close flushes, ends the gzip stream, syncs and closes the file.
func (s *segment) close() error {
	err := s.in.Flush()
	if s.gz != nil {
		if e := s.gz.Close(); err == nil {
			err = e
		}
		if e := s.out.Flush(); err == nil {
			err = e
		}
	}
	if e := s.f.Sync(); err == nil {
		err = e
	}
	if e := s.f.Close(); err == nil {
		err = e
	}
	if err != nil {
		return fmt.Errorf("close recording %s: %w", s.name, err)
	}
	return nil
}
