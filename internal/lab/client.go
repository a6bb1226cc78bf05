package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"time"
)

// DefaultProbeTimeout bounds a Dial or Exchange without WithTimeout.
const DefaultProbeTimeout = 2 * time.Second

// ExpectTimeoutProbe is the timeout a Check expecting ErrTimeout uses when it
// sets none: a dropped SYN or datagram is not retried before it.
const ExpectTimeoutProbe = 600 * time.Millisecond

// probeRequest is what clients send; the servers answer anything.
const probeRequest = "svctrace\n"

// DialOption tunes Dial and Exchange.
type DialOption func(*dialOptions)

type dialOptions struct {
	timeout time.Duration
	source  string
}

// WithTimeout bounds the whole probe (connect, send, receive).
func WithTimeout(d time.Duration) DialOption { return func(o *dialOptions) { o.timeout = d } }

// WithSource binds the client socket first: "ip", "ip:port" or ":port". A
// fixed port makes the client's 5-tuple known before the probe.
func WithSource(addr string) DialOption { return func(o *dialOptions) { o.source = addr } }

// sourceAddr parses a WithSource value.
func sourceAddr(s string) (net.IP, int, error) {
	host, port := s, 0
	if strings.Contains(s, ":") {
		h, p, err := net.SplitHostPort(s)
		if err != nil {
			return nil, 0, fmt.Errorf("bad source address %q: %w", s, err)
		}
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 || n > 65535 {
			return nil, 0, fmt.Errorf("bad source port in %q", s)
		}
		host, port = h, n
	}
	if host == "" {
		return nil, port, nil
	}
	ip := net.ParseIP(host)
	if ip == nil {
		return nil, 0, fmt.Errorf("bad source address %q", s)
	}
	return ip, port, nil
}

// Dial connects over TCP from a node, host or pod (or a netns name) to
// address, sends a short request and returns the server's answer, trimmed.
// Failures are *ProbeError values matching ErrConnRefused, ErrNoRoute,
// ErrNetUnreachable, ErrConnReset or ErrTimeout. network "udp" is passed on
// to Exchange.
func (l *Lab) Dial(ctx context.Context, from, network, address string, opts ...DialOption) (string, error) {
	switch network {
	case "tcp", "tcp4":
	case "udp", "udp4":
		return l.Exchange(ctx, from, network, address, opts...)
	default:
		return "", fmt.Errorf("dial %s: unsupported network %q", address, network)
	}
	answer, _, err := l.probe(ctx, from, "tcp4", address, opts)
	return answer, err
}

// Exchange sends one UDP datagram from a node, host or pod to address and
// returns the first answer, trimmed. An ICMP error comes back as
// ErrConnRefused / ErrNoRoute / ErrNetUnreachable, silence as ErrTimeout.
func (l *Lab) Exchange(ctx context.Context, from, network, address string, opts ...DialOption) (string, error) {
	if network != "udp" && network != "udp4" {
		return "", fmt.Errorf("exchange %s: unsupported network %q", address, network)
	}
	answer, _, err := l.probe(ctx, from, "udp4", address, opts)
	return answer, err
}

// probe runs one request and returns the answer and the client's local
// address (when known).
func (l *Lab) probe(ctx context.Context, from, network, address string, opts []DialOption) (answer, local string, err error) {
	o := dialOptions{timeout: DefaultProbeTimeout}
	for _, opt := range opts {
		opt(&o)
	}
	ns, err := l.Netns(from)
	if err != nil {
		return "", "", err
	}
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()

	d := net.Dialer{}
	if o.source != "" {
		ip, port, err := sourceAddr(o.source)
		if err != nil {
			return "", "", fmt.Errorf("dial %s: %w", address, err)
		}
		if strings.HasPrefix(network, "tcp") {
			d.LocalAddr = &net.TCPAddr{IP: ip, Port: port}
		} else {
			d.LocalAddr = &net.UDPAddr{IP: ip, Port: port}
		}
		local = d.LocalAddr.String()
	}
	// fail classifies err unless the caller's context was cancelled.
	fail := func(err error) (string, string, error) {
		if ctx.Err() != nil && !errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return "", local, ctx.Err()
		}
		return "", local, classify(err)
	}
	var conn net.Conn
	err = inNetns(NetnsPath(ns), func() error {
		var err error
		conn, err = d.DialContext(ctx, network, address)
		return err
	})
	if err != nil {
		return fail(err)
	}
	defer conn.Close()
	local = conn.LocalAddr().String()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Now()) })
	defer stop()

	if _, err := io.WriteString(conn, probeRequest); err != nil {
		return fail(err)
	}
	var b []byte
	if strings.HasPrefix(network, "tcp") {
		b, err = io.ReadAll(io.LimitReader(conn, 64<<10))
		if err == nil && len(b) == 0 {
			err = fmt.Errorf("read %s: connection closed without an answer: %w", address, io.ErrUnexpectedEOF)
		}
	} else {
		buf := make([]byte, 2048)
		var n int
		n, err = conn.Read(buf)
		b = buf[:n]
	}
	if err != nil {
		return fail(err)
	}
	return strings.TrimSpace(string(b)), local, nil
}

// CheckResult is the outcome of one Check.
type CheckResult struct {
	Check  Check
	Answer string
	// Local is the client's address ("ip:port") when it is known: after a
	// connect, or when the check fixed its source.
	Local    string
	Err      error
	Duration time.Duration
	// Problem is nil when the outcome matches Check.Expect.
	Problem error
}

// OK reports whether the outcome matched the expectation.
func (r CheckResult) OK() bool { return r.Problem == nil }

// String is a one-line report.
func (r CheckResult) String() string {
	got := "answer " + r.Answer
	if r.Err != nil {
		got = "error: " + r.Err.Error()
	}
	status := "ok"
	if r.Problem != nil {
		status = "MISMATCH: " + r.Problem.Error()
	}
	return fmt.Sprintf("%s: %s %s -> %s: %s (%s) [%s]", r.Check.Name, r.Check.From, r.Check.Network,
		r.Check.Address, got, r.Duration.Round(time.Millisecond), status)
}

// Verify compares an outcome with the expectation.
func (e Expect) Verify(answer string, err error) error {
	if e.Err != nil {
		if err == nil {
			return fmt.Errorf("expected %v, got answer %q", e.Err, answer)
		}
		if !errors.Is(err, e.Err) {
			return fmt.Errorf("expected %v, got %w", e.Err, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("expected %s, got %w", e, err)
	}
	if len(e.Answers) > 0 && !slices.Contains(e.Answers, answer) {
		return fmt.Errorf("expected %s, got answer %q", e, answer)
	}
	return nil
}

// Probe runs one check.
func (l *Lab) Probe(ctx context.Context, c Check) CheckResult {
	expect := c.Expected(l.spec.Proxy.Mode)
	timeout := c.Timeout
	if timeout == 0 {
		timeout = DefaultProbeTimeout
		if l.probeTimeout != 0 {
			timeout = l.probeTimeout
		}
		if errors.Is(expect.Err, ErrTimeout) {
			timeout = ExpectTimeoutProbe
		}
	}
	opts := []DialOption{WithTimeout(timeout)}
	if c.Source != "" {
		opts = append(opts, WithSource(c.Source))
	}
	network := "tcp4"
	if c.Network == "udp" {
		network = "udp4"
	}
	start := time.Now()
	answer, local, err := l.probe(ctx, c.From, network, c.Address, opts)
	return CheckResult{Check: c, Answer: answer, Local: local, Err: err, Duration: time.Since(start), Problem: expect.Verify(answer, err)}
}

// RunChecks runs the spec's checks in order.
func (l *Lab) RunChecks(ctx context.Context) []CheckResult {
	var out []CheckResult
	for _, c := range l.spec.Checks {
		out = append(out, l.Probe(ctx, c))
	}
	return out
}

// Exec runs argv inside the network namespace of a node, host or pod (or a
// netns name), like "ip netns exec", and returns its combined output.
func (l *Lab) Exec(ctx context.Context, netns string, argv ...string) ([]byte, error) {
	ns, err := l.Netns(netns)
	if err != nil {
		return nil, err
	}
	return runInNetns(ctx, ns, nil, argv...)
}

// runInNetns runs a command with "ip netns exec".
func runInNetns(ctx context.Context, ns string, stdin []byte, argv ...string) ([]byte, error) {
	if len(argv) == 0 {
		return nil, errors.New("exec: no command")
	}
	cmd := exec.CommandContext(ctx, "ip", append([]string{"netns", "exec", ns}, argv...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return out, fmt.Errorf("exec %q in %s: %w", strings.Join(argv, " "), ns, err)
	}
	return out, nil
}
