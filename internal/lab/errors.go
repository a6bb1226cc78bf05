package lab

import (
	"context"
	"errors"
	"net"
	"os"
	"syscall"
)

// Client-visible failures of Dial and Exchange. Errors returned by them match
// one of these with errors.Is when the failure is classified.
var (
	ErrConnRefused    = errors.New("connection refused")  // RST or ICMP port unreachable
	ErrNoRoute        = errors.New("no route to host")    // EHOSTUNREACH, ICMP host unreachable
	ErrNetUnreachable = errors.New("network unreachable") // ENETUNREACH, ICMP net unreachable
	ErrTimeout        = errors.New("timeout")             // nothing came back in time
	ErrConnReset      = errors.New("connection reset")
)

// Setup errors.
var (
	ErrNotSupported   = errors.New("not supported on this kernel")
	ErrNotImplemented = errors.New("not implemented")
)

// ProbeError is a classified client failure. It matches Kind and the
// underlying error with errors.Is.
type ProbeError struct {
	Kind error // one of the client-visible sentinels, or nil
	Err  error
}

func (e *ProbeError) Error() string { return e.Err.Error() }

// Unwrap returns the classification and the cause.
func (e *ProbeError) Unwrap() []error {
	if e.Kind == nil {
		return []error{e.Err}
	}
	return []error{e.Kind, e.Err}
}

// classify wraps a socket error with its client-visible kind.
func classify(err error) error {
	if err == nil {
		return nil
	}
	var kind error
	var ne net.Error
	switch {
	case errors.Is(err, syscall.ECONNREFUSED):
		kind = ErrConnRefused
	case errors.Is(err, syscall.EHOSTUNREACH):
		kind = ErrNoRoute
	case errors.Is(err, syscall.ENETUNREACH):
		kind = ErrNetUnreachable
	case errors.Is(err, syscall.ECONNRESET):
		kind = ErrConnReset
	case errors.Is(err, os.ErrDeadlineExceeded), errors.Is(err, context.DeadlineExceeded),
		errors.As(err, &ne) && ne.Timeout():
		kind = ErrTimeout
	}
	return &ProbeError{Kind: kind, Err: err}
}
