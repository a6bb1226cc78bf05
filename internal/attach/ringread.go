package attach

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"
	"syscall"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ringBuf reads a BPF ring buffer map in place, the kernel's layout mapped
// into the process: a consumer page (read-write), then a producer page and
// the data area mapped twice in a row (read-only), so a record that wraps
// around the end of the area is still one contiguous slice.
//
// It differs from cilium/ebpf's ringbuf.Reader in two ways that matter at
// hundreds of thousands of events a second: a record is handed out where
// it lies (no copy; valid until the next Read), and the consumer position,
// which every producing CPU reads to know the free space, is published once
// per 64 KiB consumed or when the reader catches up, instead of after every
// record (on a traced stream the netfilter program's run went from ~400 to
// ~355 ns). It waits in Go's network poller (the map's descriptor is
// pollable), parking its goroutine rather than holding an OS thread in
// epoll_wait (the two measured the same CPU on the bench). It takes no
// lock: it is not safe for concurrent use, and Close must follow the last
// Read.
type ringBuf struct {
	cons    []byte // consumer page
	prod    []byte // producer page, then the data area twice
	data    []byte // the data area twice
	consPos *uint64
	prodPos *uint64
	mask    uint64
	pos     uint64   // the next record's position
	acked   uint64   // the consumer position last published
	avail   uint64   // producer position last read
	file    *os.File // a duplicate of the map's descriptor, in the poller
	conn    syscall.RawConn
	// deadline is the one last given to the poller.
	deadline time.Time
}

const (
	ringBusyBit    = 1 << 31 // BPF_RINGBUF_BUSY_BIT: reserved, not yet submitted
	ringDiscardBit = 1 << 30 // BPF_RINGBUF_DISCARD_BIT
	ringHdrSize    = 8       // BPF_RINGBUF_HDR_SZ
	// ringAckBytes: how much is consumed before the position is published
	// while records keep coming. The producers see the space back this
	// late at most: a sixty-fourth of the default ring.
	ringAckBytes = 64 << 10
	// ringBusySpins: a record reserved but not yet submitted is waited for
	// this many times before the reader sleeps (its producer is writing it
	// on another CPU, a few hundred nanoseconds).
	ringBusySpins = 64
)

func newRingBuf(fd int, size uint32) (*ringBuf, error) {
	page := os.Getpagesize()
	if size == 0 || size&(size-1) != 0 || int(size)%page != 0 {
		return nil, fmt.Errorf("ring buffer size %d: not a power of two multiple of the page size", size)
	}
	r := &ringBuf{mask: uint64(size) - 1}
	var err error
	defer func() {
		if err != nil {
			r.Close()
		}
	}()
	if r.cons, err = unix.Mmap(fd, 0, page, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map ring buffer consumer page: %w", err)
	}
	if r.prod, err = unix.Mmap(fd, int64(page), page+2*int(size), unix.PROT_READ, unix.MAP_SHARED); err != nil {
		return nil, fmt.Errorf("map ring buffer data: %w", err)
	}
	r.data = r.prod[page:]
	r.consPos = (*uint64)(unsafe.Pointer(&r.cons[0]))
	r.prodPos = (*uint64)(unsafe.Pointer(&r.prod[0]))
	r.pos = atomic.LoadUint64(r.consPos)
	r.acked = r.pos
	dup, err := unix.FcntlInt(uintptr(fd), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate ring buffer descriptor: %w", err)
	}
	if err = unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return nil, fmt.Errorf("ring buffer descriptor: %w", err)
	}
	r.file = os.NewFile(uintptr(dup), "ringbuf") // non-blocking: os registers it with the poller
	if r.conn, err = r.file.SyscallConn(); err != nil {
		return nil, fmt.Errorf("ring buffer descriptor: %w", err)
	}
	return r, nil
}

// Read returns the next record, valid until the next Read, or
// os.ErrDeadlineExceeded once the deadline passes with none.
func (r *ringBuf) Read(deadline time.Time) ([]byte, error) {
	if r.data == nil {
		return nil, ErrReaderClosed
	}
	// Everything before r.pos has been handed out and is done with.
	if r.pos-r.acked >= ringAckBytes {
		r.ack()
	}
	spins := 0
	for {
		if r.pos == r.avail {
			// Caught up with what was last seen: give the space back, then
			// look again (the producers may have moved on meanwhile).
			r.ack()
			r.avail = atomic.LoadUint64(r.prodPos)
			if r.pos == r.avail {
				if err := r.wait(deadline); err != nil {
					return nil, err
				}
				continue
			}
		}
		off := r.pos & r.mask
		hdr := atomic.LoadUint32((*uint32)(unsafe.Pointer(&r.data[off])))
		if hdr&ringBusyBit != 0 {
			if spins++; spins < ringBusySpins {
				continue
			}
			spins = 0
			if err := r.wait(deadline); err != nil {
				return nil, err
			}
			continue
		}
		n := uint64(hdr &^ (ringBusyBit | ringDiscardBit))
		if n > r.mask {
			return nil, fmt.Errorf("ring buffer record of %d bytes at %d: larger than the ring", n, r.pos)
		}
		start := off + ringHdrSize
		r.pos += (n + ringHdrSize + 7) &^ 7
		if hdr&ringDiscardBit != 0 {
			continue
		}
		return r.data[start : start+n : start+n], nil
	}
}

// ack publishes the consumer position.
func (r *ringBuf) ack() {
	if r.acked != r.pos {
		atomic.StoreUint64(r.consPos, r.pos)
		r.acked = r.pos
	}
}

// wait sleeps until the kernel signals new data or the deadline passes.
func (r *ringBuf) wait(deadline time.Time) error {
	if !deadline.IsZero() && !time.Now().Before(deadline) {
		return os.ErrDeadlineExceeded
	}
	if !deadline.Equal(r.deadline) {
		if err := r.file.SetReadDeadline(deadline); err != nil {
			return fmt.Errorf("ring buffer deadline: %w", err)
		}
		r.deadline = deadline
	}
	err := r.conn.Read(func(uintptr) bool {
		r.avail = atomic.LoadUint64(r.prodPos)
		return r.avail != r.pos
	})
	if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
		return fmt.Errorf("wait for ring buffer: %w", err)
	}
	return err
}

// LostSamples is 0: the ring buffer loses nothing itself (a full ring is
// counted by the programs).
func (r *ringBuf) LostSamples() uint64 { return 0 }

// Close unmaps the ring and closes the descriptor's duplicate.
func (r *ringBuf) Close() error {
	var errs []error
	if r.file != nil {
		errs = append(errs, r.file.Close())
		r.file = nil
	}
	for _, m := range []*[]byte{&r.cons, &r.prod} {
		if *m != nil {
			errs = append(errs, unix.Munmap(*m))
			*m = nil
		}
	}
	r.data = nil
	return errors.Join(errs...)
}
