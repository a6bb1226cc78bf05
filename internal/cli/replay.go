package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/pcapng"
	"github.com/svctrace/svctrace/internal/record"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/pkg/event"
)

type replayOptions struct {
	stdout, stderr io.Writer

	output  string
	color   string
	per     string
	events  bool
	count   int
	stats   bool
	pcapng  string
	snaplen int
}

func newReplay(stdout, stderr io.Writer) *cobra.Command {
	o := &replayOptions{stdout: stdout, stderr: stderr}
	c := &cobra.Command{
		Use:   "replay FILE...",
		Short: "Analyse a recording made with --write: the same paths and verdicts as the live trace",
		Long: `replay runs a recording made with 'svctrace --write FILE' through the same
pipeline as a live trace (correlate, name, diagnose, render), with the Kubernetes
metadata and device names recorded in the file, so it gives the paths and
verdicts the live trace gave, on any machine, without privileges.

Give the first file of a rotated recording to replay it and the files after it,
or list the files to replay exactly those. A recording cut short (svctrace
killed) replays up to its last complete record, with a warning.`,
		Example: `  # record on the node, analyse later
  sudo svctrace --svc hostnames --manifests cluster.yaml --write trace.jsonl.gz
  svctrace replay trace.jsonl.gz

  # JSON lines, one block per flow
  svctrace replay -o json --per flow trace.jsonl.gz

  # what is in it: events per hook, verdicts, Services
  svctrace replay --stats trace.jsonl.gz

  # the packets for Wireshark, from the recording
  svctrace replay trace.jsonl.gz --pcapng trace.pcapng`,
		Args: func(c *cobra.Command, args []string) error {
			if len(args) == 0 {
				return usageErr(fmt.Errorf("replay needs a recording file (see '%s --help')", c.CommandPath()))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := o.complete(); err != nil {
				return err
			}
			return o.run(cmd, args)
		},
	}
	f := c.Flags()
	f.StringVarP(&o.output, "output", "o", "text", "output format: text or json (JSON lines, each with a \"type\")")
	f.StringVar(&o.color, "color", "auto", "colour text output: auto (only on a terminal, unless NO_COLOR is set), always, never")
	f.StringVar(&o.per, "per", "packet", "one block per packet, or per flow (the first packet of each direction and every failed packet)")
	f.BoolVar(&o.events, "events", false, "also print every raw kernel event")
	f.IntVar(&o.count, "count", 0, "stop after this many packet paths")
	f.BoolVar(&o.stats, "stats", false, "print counts instead of paths: events per hook, verdicts, Services")
	f.StringVar(&o.pcapng, "pcapng", "", "also write the recorded packets' headers to this pcapng file (see 'svctrace --help')")
	f.IntVar(&o.snaplen, "snaplen", 0, "with --pcapng, bytes of each packet to keep (0: headers only; at most what the recording kept)")
	return c
}

func (o *replayOptions) complete() error {
	if o.output != "text" && o.output != "json" {
		return usageErr(fmt.Errorf("--output %q: use text or json", o.output))
	}
	if o.per != "packet" && o.per != "flow" {
		return usageErr(fmt.Errorf("--per %q: use packet or flow", o.per))
	}
	switch o.color {
	case "auto", "always", "never":
	default:
		return usageErr(fmt.Errorf("--color %q: use auto, always or never", o.color))
	}
	if o.count < 0 || o.snaplen < 0 {
		return usageErr(errors.New("--count and --snaplen must not be negative"))
	}
	return nil
}

func (o *replayOptions) run(cmd *cobra.Command, files []string) error {
	rd, err := record.Open(files...)
	if err != nil {
		if errors.Is(err, record.ErrFormat) || errors.Is(err, fs.ErrNotExist) || errors.Is(err, fs.ErrPermission) {
			return usageErr(err)
		}
		return err
	}
	defer rd.Close()
	hdr := rd.Header()
	var r render.Renderer
	switch {
	case o.stats:
		r = discard{}
	case o.output == "json":
		r = render.NewJSON(o.stdout)
	default:
		r = render.NewText(o.stdout, render.TextOptions{
			Color: colorWanted(o.stdout, o.color), Clock: hdr.Clock(), Events: o.events,
		})
	}
	cfg := record.ReplayConfig{
		Renderer: r, Events: o.events && !o.stats, PerFlow: o.per == "flow", Count: o.count, Warn: o.stderr,
	}
	if o.pcapng != "" {
		w, err := pcapng.Create(o.pcapng, pcapng.Options{Snaplen: o.snaplen})
		if err != nil {
			return usageErr(fmt.Errorf("--pcapng: %w", err))
		}
		defer w.Close()
		cfg.Sinks = append(cfg.Sinks, w)
	}
	sum, err := record.Replay(cmd.Context(), rd, cfg)
	if err != nil {
		if errors.Is(err, record.ErrFormat) {
			return usageErr(err)
		}
		return err
	}
	if !o.stats {
		return nil
	}
	if o.output == "json" {
		enc := json.NewEncoder(o.stdout)
		enc.SetEscapeHTML(false)
		return enc.Encode(sum)
	}
	return printSummary(o.stdout, files[0], sum)
}

// printSummary writes replay --stats for people.
func printSummary(w io.Writer, name string, s *record.Summary) error {
	h := s.Header
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	state := "complete"
	if !s.Complete {
		state = "cut short or partial"
	}
	files := "1 file"
	if s.Segments != 1 {
		files = fmt.Sprintf("%d files", s.Segments)
	}
	fmt.Fprintf(tw, "recording\t%s: format %d, svctrace %s, kernel %s, %s, %s\n", name, h.Version, h.Svctrace, h.Kernel, files, state)
	node := h.Node
	if node == "" {
		node = "unknown"
	}
	fmt.Fprintf(tw, "service\t%s/%s on node %s, started %s\n", h.Namespace, h.Service, node, h.Start.Local().Format(time.RFC3339))
	if s.Last >= s.First && s.First != 0 {
		clock := h.Clock()
		fmt.Fprintf(tw, "events\t%s to %s (%s)\n", clock.Wall(s.First).Local().Format("15:04:05.000"),
			clock.Wall(s.Last).Local().Format("15:04:05.000"), time.Duration(s.Last-s.First).Round(time.Millisecond))
	}
	var recs []string
	var total uint64
	for _, k := range record.SortedKeys(s.Records) {
		recs = append(recs, fmt.Sprintf("%d %s", s.Records[k], k))
		total += s.Records[k]
	}
	fmt.Fprintf(tw, "records\t%d: %s\n", total, strings.Join(recs, ", "))
	fmt.Fprintf(tw, "paths\t%d replayed, %d recorded live\n", s.Paths, s.LivePaths)
	section := func(title string, m map[string]uint64) {
		fmt.Fprintf(tw, "\n%s\n", title)
		if len(m) == 0 {
			fmt.Fprintf(tw, "  (none)\n")
		}
		for _, k := range record.SortedKeys(m) {
			fmt.Fprintf(tw, "  %s\t%d\n", k, m[k])
		}
	}
	section("events by hook", s.Hooks)
	section("verdicts", s.Verdicts)
	fmt.Fprintf(tw, "\nservices\n")
	if len(s.Services) == 0 {
		fmt.Fprintf(tw, "  (none)\n")
	}
	names := make([]string, 0, len(s.Services))
	for n := range s.Services {
		names = append(names, n)
	}
	sort.Strings(names)
	for _, n := range names {
		c := s.Services[n]
		var vs []string
		for _, k := range record.SortedKeys(c.Verdicts) {
			vs = append(vs, fmt.Sprintf("%s %d", k, c.Verdicts[k]))
		}
		label := n
		if label == "" {
			label = "(not the Service's traffic)"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", label, plural(c.Paths, "path"), strings.Join(vs, ", "))
	}
	return tw.Flush()
}

func plural(n uint64, what string) string {
	if n == 1 {
		return "1 " + what
	}
	return fmt.Sprintf("%d %ss", n, what)
}

// discard is a renderer that shows nothing (replay --stats).
type discard struct{}

func (discard) Path(*event.Path) error       { return nil }
func (discard) Event(*event.Event) error     { return nil }
func (discard) Stats(*event.Stats) error     { return nil }
func (discard) Verdict(*event.Verdict) error { return nil }
func (discard) Record(any) error             { return nil }
func (discard) Flush() error                 { return nil }

var _ render.Renderer = discard{}
