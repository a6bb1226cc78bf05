// Package render writes what svctrace found: compact text blocks for people
// (colour only on a terminal, NO_COLOR honoured) or JSON lines for machines.
package render

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/svctrace/svctrace/pkg/event"
)

// Renderer writes paths, events and stats.
type Renderer interface {
	Path(p *event.Path) error
	Event(e *event.Event) error
	Stats(s *event.Stats) error
	Verdict(v *event.Verdict) error
	// Record writes any other typed record (verdicts, notices).
	Record(v any) error
	Flush() error
}

// Clock converts kernel timestamps (CLOCK_MONOTONIC ns) to wall time.
type Clock struct {
	// Offset is wall-clock ns minus monotonic ns.
	Offset int64
}

// Wall returns the wall time of a kernel timestamp.
func (c Clock) Wall(ktime uint64) time.Time {
	return time.Unix(0, int64(ktime)+c.Offset)
}

// NewJSON returns a renderer of JSON lines.
func NewJSON(w io.Writer) Renderer {
	bw := bufio.NewWriterSize(w, 64<<10)
	enc := json.NewEncoder(bw)
	enc.SetEscapeHTML(false)
	return &jsonRenderer{w: bw, enc: enc}
}

type jsonRenderer struct {
	w   *bufio.Writer
	enc *json.Encoder
	buf []byte
	pe  pathEncoder
}

func (j *jsonRenderer) Path(p *event.Path) error {
	p.Type = "path"
	j.buf = j.pe.appendPath(j.buf[:0], p)
	_, err := j.w.Write(j.buf)
	return err
}

func (j *jsonRenderer) Event(e *event.Event) error {
	e.Type = "event"
	return j.enc.Encode(e)
}

func (j *jsonRenderer) Stats(s *event.Stats) error {
	s.Type = "stats"
	return j.enc.Encode(s)
}

func (j *jsonRenderer) Verdict(v *event.Verdict) error {
	v.Type = "verdict"
	return j.enc.Encode(v)
}

func (j *jsonRenderer) Record(v any) error { return j.enc.Encode(v) }
func (j *jsonRenderer) Flush() error       { return j.w.Flush() }

// TextOptions configure the text renderer.
type TextOptions struct {
	Color bool
	Clock Clock
	// Events also prints every raw event as one line.
	Events bool
}

// NewText returns the human renderer.
func NewText(w io.Writer, opts TextOptions) Renderer {
	return &textRenderer{w: bufio.NewWriterSize(w, 64<<10), opts: opts}
}

type textRenderer struct {
	w    *bufio.Writer
	opts TextOptions
}

const (
	cReset  = "\x1b[0m"
	cBold   = "\x1b[1m"
	cDim    = "\x1b[2m"
	cRed    = "\x1b[31m"
	cGreen  = "\x1b[32m"
	cYellow = "\x1b[33m"
	cBlue   = "\x1b[34m"
	cCyan   = "\x1b[36m"
)

func (t *textRenderer) c(code, s string) string {
	if !t.opts.Color || s == "" {
		return s
	}
	return code + s + cReset
}

// TCPFlags formats TCP flags as "SYN", "SYN,ACK", …
func TCPFlags(f uint8) string {
	names := []string{"FIN", "SYN", "RST", "PSH", "ACK", "URG", "ECE", "CWR"}
	var out []string
	for i, n := range names {
		if f&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, ",")
}

func (t *textRenderer) Path(p *event.Path) error {
	w := t.w
	ts := t.opts.Clock.Wall(p.Start).Format("15:04:05.000000")
	dir := "→"
	if p.Reply {
		dir = "← reply"
	}
	flags := ""
	if p.TCPFlags != 0 {
		flags = " [" + TCPFlags(p.TCPFlags) + "]"
	}
	svc := p.Service
	if svc == "" {
		svc = "(no service)"
	}
	fmt.Fprintf(w, "%s %s %s %s%s\n", t.c(cDim, ts), t.c(cBold, svc), dir, p.Original, flags)
	if p.Client.Name != "" || p.Backend.Name != "" {
		line := "  from " + nameOr(p.Client)
		if p.Backend.Addr.IsValid() {
			line += "  to " + nameOr(p.Backend)
		}
		fmt.Fprintln(w, t.c(cDim, line))
	}
	if p.Entered != "" {
		fmt.Fprintf(w, "  %-8s %s\n", "entered", p.Entered)
	}
	prev := ""
	for _, r := range p.Routes {
		line := t.route(r)
		if r.NetnsName != "" {
			line = "[" + r.NetnsName + "] " + line
		}
		if line == prev {
			continue // the kernel looked the same route up again
		}
		prev = line
		fmt.Fprintf(w, "  %-8s %s\n", "route", line)
	}
	if v := p.IPVS; v != nil {
		fmt.Fprintf(w, "  %-8s %s\n", t.c(cCyan, "IPVS"), t.ipvs(v))
	}
	for _, n := range p.NAT {
		hook := ""
		if n.Hook != "" {
			hook = " at " + n.Hook
		}
		label := n.Type.String()
		if n.Reverse {
			// A reply's rewrite undoes the request's: SNAT-type undoes DNAT.
			label = "un-DNAT"
			if n.Type == event.DNAT {
				label = "un-SNAT"
			}
		}
		fmt.Fprintf(w, "  %-8s %s -> %s%s (%s, %s)\n", t.c(cCyan, label),
			addrOf(n.Before, n.Type), t.c(cBold, addrOf(n.After, n.Type)), hook, n.By, n.Source)
	}
	fmt.Fprintf(w, "  %-8s %s\n", "result", t.result(p))
	return nil
}

func (t *textRenderer) ipvs(v *event.IPVSStep) string {
	s := "virtual server " + v.Virtual.String()
	if v.NoDestination {
		return s + ": " + t.c(cRed, "no destination (no real server)")
	}
	if v.Real.IsValid() {
		if v.Real.Port() == 0 {
			s += " -> real server " + v.Real.Addr().String()
		} else {
			s += " -> real server " + v.Real.String()
		}
	}
	var notes []string
	if v.Connection != "" {
		notes = append(notes, v.Connection+" connection")
	}
	if v.Weight != nil {
		notes = append(notes, fmt.Sprintf("weight %d", *v.Weight))
	}
	if v.Available != nil && !*v.Available {
		notes = append(notes, t.c(cRed, "unavailable"))
	}
	if len(notes) > 0 {
		s += " (" + strings.Join(notes, ", ") + ")"
	}
	return s
}

func nameOr(e event.Endpoint) string {
	if e.Name != "" {
		return e.Name + " (" + e.Addr.String() + ")"
	}
	return e.Addr.String()
}

// addrOf shows the side a NAT step rewrote (no port for ICMP).
func addrOf(t event.Tuple, typ event.NATType) string {
	ap := t.Src
	if typ == event.DNAT {
		ap = t.Dst
	}
	if t.Proto == event.ProtoICMP || ap.Port() == 0 {
		return ap.Addr().String() // no port, or a port svctrace could not see
	}
	return ap.String()
}

func (t *textRenderer) route(r event.RouteStep) string {
	var b strings.Builder
	switch r.Kind {
	case "connect":
		fmt.Fprintf(&b, "connect() to %s chose source %s", r.Dst, r.Src)
		if r.Comm != "" {
			fmt.Fprintf(&b, " (%s[%d])", r.Comm, r.PID)
		}
		return b.String()
	case "output":
		fmt.Fprintf(&b, "output route to %s: source %s", r.Dst, r.Src)
	default:
		fmt.Fprintf(&b, "table %s lookup %s", tableName(r.Table), r.Dst)
		if r.Src.IsValid() {
			fmt.Fprintf(&b, " from %s", r.Src)
		}
	}
	if r.Error != 0 {
		fmt.Fprintf(&b, ": %s", t.c(cRed, fmt.Sprintf("error %d", r.Error)))
		return b.String()
	}
	if r.OutDev != "" {
		fmt.Fprintf(&b, " → dev %s", r.OutDev)
	}
	if r.Gateway.IsValid() {
		fmt.Fprintf(&b, " via %s", r.Gateway)
	}
	if r.PrefSrc.IsValid() {
		fmt.Fprintf(&b, " src %s", r.PrefSrc)
	}
	return b.String()
}

func tableName(id uint32) string {
	switch id {
	case 255:
		return "local"
	case 254:
		return "main"
	case 253:
		return "default"
	}
	return fmt.Sprint(id)
}

func (t *textRenderer) result(p *event.Path) string {
	r := p.Result
	where := ""
	if r.Dev != "" {
		where = " on " + r.Dev
	}
	if p.NetnsName != "" {
		where += " (netns " + p.NetnsName + ")"
	}
	switch r.Outcome {
	case event.OutcomeDropped:
		loc := ""
		if r.Location != "" {
			loc = " at " + r.Location
		}
		return t.c(cRed, "DROPPED: "+r.Reason) + loc + where
	case event.OutcomeRejected:
		drop := ""
		if r.DropReason != "" {
			drop = " (dropped: " + r.DropReason
			if r.Location != "" {
				drop += " at " + r.Location
			}
			drop += ")"
		}
		return t.c(cRed, "REJECTED: "+r.Reason) + drop + where
	case event.OutcomeNoRoute:
		return t.c(cRed, "NO ROUTE: "+r.Reason) + where
	case event.OutcomeForwarded:
		return t.c(cGreen, "forwarded") + where + " to " + p.Final.Dst.String()
	case event.OutcomeDelivered:
		return t.c(cGreen, "delivered") + where
	}
	return t.c(cYellow, "unknown: "+r.Reason) + where
}

func (t *textRenderer) Verdict(v *event.Verdict) error {
	color := cRed
	if v.Verdict == event.VerdictOK {
		color = cGreen
	}
	fmt.Fprintf(t.w, "  %s %s\n", t.c(cBold+color, "verdict "+v.Verdict+":"), v.Summary)
	if eps, ok := v.Evidence["ready_endpoints"].([]string); ok && v.Verdict != event.VerdictOK {
		list := strings.Join(eps, ", ")
		if list == "" {
			list = "none"
		}
		fmt.Fprintf(t.w, "  %s %s\n", t.c(cDim, "ready endpoints:"), list)
	}
	if v.Fix != "" {
		fmt.Fprintf(t.w, "  %s %s\n", t.c(cBold, "fix:"), v.Fix)
	}
	return nil
}

func (t *textRenderer) Event(e *event.Event) error {
	if !t.opts.Events {
		return nil
	}
	ts := t.opts.Clock.Wall(e.Time).Format("15:04:05.000000")
	fmt.Fprintf(t.w, "%s %-10s %-10s netns=%d %s", t.c(cDim, ts), e.Kind, e.Source, e.Netns, e.Packet)
	if e.Kind == event.KindNetfilter {
		fmt.Fprintf(t.w, " %s after_nat=%v in=%s out=%s", e.Hook, e.AfterNAT, e.InDev, e.OutDev)
	}
	if e.DropReason != "" {
		fmt.Fprintf(t.w, " reason=%s", e.DropReason)
	}
	fmt.Fprintln(t.w)
	return nil
}

func (t *textRenderer) Stats(s *event.Stats) error {
	if !s.Final {
		return nil
	}
	fmt.Fprintf(t.w, "%s %d events, %d paths, %d lost, in %.1fs", t.c(cDim, "svctrace:"), s.Events, s.Paths, s.Lost, s.Elapsed)
	if len(s.Verdicts) > 0 {
		ids := make([]string, 0, len(s.Verdicts))
		for id := range s.Verdicts {
			ids = append(ids, id)
		}
		sort.Strings(ids)
		var parts []string
		for _, id := range ids {
			parts = append(parts, fmt.Sprintf("%s %d", id, s.Verdicts[id]))
		}
		fmt.Fprintf(t.w, "; verdicts: %s", strings.Join(parts, ", "))
	}
	fmt.Fprintln(t.w)
	if s.Sampled > 0 {
		fmt.Fprintf(t.w, "%s %d events of established flows left out by --packets-per-flow (failures are always shown)\n", t.c(cDim, "svctrace:"), s.Sampled)
	}
	if s.Lost > 0 {
		fmt.Fprintf(t.w, "%s %d events were lost because the ring buffer was full (per CPU: %v); paths may be incomplete\n",
			t.c(cYellow, "warning:"), s.Lost, s.LostPerCPU)
	}
	return nil
}

func (t *textRenderer) Record(v any) error {
	if s, ok := v.(fmt.Stringer); ok {
		fmt.Fprintln(t.w, s.String())
	}
	return nil
}

func (t *textRenderer) Flush() error { return t.w.Flush() }
