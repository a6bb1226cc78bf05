// Package demo runs svctrace's built-in lab: for each scenario it builds the
// cluster-shaped topology in network namespaces (the same lab the end-to-end
// tests use), attaches the real tracer to the affected node, runs the
// scenario's client probes and prints what svctrace saw, so the demo cannot
// drift from what is tested.
package demo

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
	"github.com/svctrace/svctrace/pkg/event"
)

// Options configure a demo run.
type Options struct {
	Out      io.Writer
	Warn     io.Writer
	Renderer render.Renderer
	JSON     bool
	Backend  attach.Backend
	Variant  lab.Variant
	// Proxy is kube-proxy's mode in the lab (iptables by default; ipvs needs
	// the ip_vs module).
	Proxy lab.ProxyMode
	// Events also prints every raw kernel event.
	Events bool
	// Keep leaves each lab's namespaces up (and prints how to reach them).
	Keep bool
	// PerPacket shows every packet instead of one block per flow direction.
	PerPacket bool
}

// Record is the JSON line announcing a scenario or reporting a probe.
type Record struct {
	Type      string `json:"type"` // "scenario" or "check"
	Scenario  string `json:"scenario"`
	Seed      string `json:"seed,omitempty"`
	About     string `json:"about,omitempty"`
	Service   string `json:"service,omitempty"`
	Node      string `json:"node,omitempty"`
	Netns     string `json:"netns,omitempty"`
	Manifests string `json:"manifests,omitempty"`
	Check     string `json:"check,omitempty"`
	From      string `json:"from,omitempty"`
	To        string `json:"to,omitempty"`
	Answer    string `json:"answer,omitempty"`
	Error     string `json:"error,omitempty"`
	Expected  string `json:"expected,omitempty"`
	AsExpect  bool   `json:"as_expected"`
}

// String renders the record for the text output.
func (r Record) String() string {
	if r.Type == "scenario" {
		seed := ""
		if r.Seed != "" {
			seed = " (seed " + r.Seed + ")"
		}
		return fmt.Sprintf("\n== %s%s: %s\n   tracing %s on %s (netns %s)\n", r.Scenario, seed, r.About, r.Service, r.Node, r.Netns)
	}
	got := r.Answer
	if r.Error != "" {
		got = r.Error
	}
	mark := "as expected"
	if !r.AsExpect {
		mark = "UNEXPECTED, wanted " + r.Expected
	}
	return fmt.Sprintf("   probe %-28s %s -> %s: %s (%s)", r.Check, r.From, r.To, got, mark)
}

// Result is what one scenario produced.
type Result struct {
	Scenario string
	Checks   []lab.CheckResult
	Stats    *event.Stats
}

// Scenarios lists the scenarios the demo can run.
func Scenarios() []lab.Scenario { return lab.Scenarios() }

// Run runs the named scenarios (all when names is empty), in order. Cleanup
// of every lab always runs unless Keep is set.
func Run(ctx context.Context, names []string, opts Options) ([]Result, error) {
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("%w: the demo builds network namespaces and loads BPF: run it as root (sudo)", attach.ErrPrivileges)
	}
	var scs []lab.Scenario
	if len(names) == 0 {
		scs = lab.Scenarios()
	}
	for _, n := range names {
		sc, err := lab.LookupScenario(n)
		if err != nil {
			return nil, err
		}
		scs = append(scs, sc)
	}
	// Leftovers of a demo or test that was killed.
	if _, err := lab.Cleanup(ctx, lab.NamePrefix); err != nil {
		fmt.Fprintf(opts.Warn, "svctrace: cleaning up old labs: %v\n", err)
	}
	var results []Result
	for _, sc := range scs {
		if ctx.Err() != nil {
			break
		}
		r, err := runOne(ctx, sc, opts)
		if err != nil {
			return results, fmt.Errorf("scenario %s: %w", sc.Name, err)
		}
		results = append(results, r)
	}
	return results, ctx.Err()
}

// Focus picks what to trace: the Service and node of the scenario's first
// failing probe (or its first probe when nothing fails).
func Focus(spec lab.Spec) (svc lab.ServiceSpec, node string, err error) {
	if len(spec.Checks) == 0 || len(spec.Services) == 0 {
		return svc, "", errors.New("scenario has no probes or no services")
	}
	c := spec.Checks[0]
	for _, x := range spec.Checks {
		if x.Expected(spec.Proxy.Mode).Err != nil {
			c = x
			break
		}
	}
	host, portStr, err := net.SplitHostPort(c.Address)
	if err != nil {
		return svc, "", fmt.Errorf("probe address %q: %w", c.Address, err)
	}
	port, _ := strconv.Atoi(portStr)
	svc = spec.Services[0]
	for _, s := range spec.Services {
		if s.ClusterIP == host || (s.LoadBalancerIP != "" && s.LoadBalancerIP == host) {
			svc = s
		}
		for _, p := range s.Ports {
			if p.NodePort != 0 && int(p.NodePort) == port {
				svc = s
			}
		}
	}
	node = c.From
	for _, p := range spec.Pods {
		if p.Name == c.From {
			node = p.Node
		}
	}
	if node == "" && len(spec.Nodes) > 0 {
		node = spec.Nodes[0].Name
	}
	return svc, node, nil
}

func runOne(ctx context.Context, sc lab.Scenario, opts Options) (Result, error) {
	res := Result{Scenario: sc.Name}
	spec, err := sc.Spec(opts.Variant)
	if err != nil {
		return res, err
	}
	if opts.Proxy != "" {
		spec.Proxy.Mode = opts.Proxy
	}
	svc, node, err := Focus(spec)
	if err != nil {
		return res, err
	}
	dir, err := os.MkdirTemp("", "svctrace-demo-"+sc.Name+"-")
	if err != nil {
		return res, err
	}
	setupCtx, cancelSetup := context.WithTimeout(ctx, time.Minute)
	l, err := lab.Up(setupCtx, spec, lab.WithManifestsDir(dir))
	cancelSetup()
	if err != nil {
		os.RemoveAll(dir)
		return res, err
	}
	defer func() {
		if opts.Keep {
			fmt.Fprintf(opts.Warn, "svctrace: kept lab %s: namespaces /run/netns/%s-*, manifests %s; remove with 'svctrace demo --cleanup'\n", l.ID(), l.ID(), dir)
			return
		}
		if err := l.Close(); err != nil {
			fmt.Fprintf(opts.Warn, "svctrace: lab cleanup: %v\n", err)
		}
		os.RemoveAll(dir)
	}()
	ns, err := l.NodeNetns(node)
	if err != nil {
		return res, err
	}
	ref := svc.Namespace
	if ref == "" {
		ref = "default"
	}
	if err := opts.Renderer.Record(Record{Type: "scenario", Scenario: sc.Name, Seed: sc.Seed, About: spec.Outcome,
		Service: ref + "/" + svc.Name, Node: node, Netns: ns, Manifests: dir}); err != nil {
		return res, err
	}
	_ = opts.Renderer.Flush()

	traceCtx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan struct{})
	type outcome struct {
		stats *event.Stats
		err   error
	}
	done := make(chan outcome, 1)
	go func() {
		st, err := tracer.Run(traceCtx, tracer.Config{
			Namespace: ref,
			Service:   svc.Name,
			Source:    meta.NewManifestSource(dir),
			Attach:    attach.Options{Backend: opts.Backend, NetnsPath: ns, WakeupBytes: 64 << 10, RouteRepeat: time.Second},
			Renderer:  opts.Renderer,
			Warn:      io.Discard,
			PerFlow:   !opts.PerPacket,
			Events:    opts.Events,
			Ready:     func() { close(ready) },
		})
		done <- outcome{st, err}
	}()
	select {
	case <-ready:
	case o := <-done:
		return res, fmt.Errorf("tracer: %w", o.err)
	case <-ctx.Done():
		return res, ctx.Err()
	}
	res.Checks = l.RunChecks(ctx)
	// Let the last packets' paths complete (the correlator waits for idle).
	select {
	case <-time.After(400 * time.Millisecond):
	case <-ctx.Done():
	}
	stop()
	o := <-done
	if o.err != nil && !errors.Is(o.err, context.Canceled) {
		return res, fmt.Errorf("tracer: %w", o.err)
	}
	res.Stats = o.stats
	for _, c := range res.Checks {
		rec := Record{Type: "check", Scenario: sc.Name, Check: c.Check.Name, From: c.Check.From,
			To: c.Check.Address + "/" + c.Check.Network, Answer: c.Answer, Expected: c.Check.Expected(spec.Proxy.Mode).String(), AsExpect: c.OK()}
		if c.Err != nil {
			rec.Error = shortErr(c.Err)
		}
		if err := opts.Renderer.Record(rec); err != nil {
			return res, err
		}
	}
	return res, opts.Renderer.Flush()
}

// shortErr turns a probe error into what a client would print.
func shortErr(err error) string {
	for _, e := range []error{lab.ErrConnRefused, lab.ErrNoRoute, lab.ErrNetUnreachable, lab.ErrConnReset, lab.ErrTimeout} {
		if errors.Is(err, e) {
			return e.Error()
		}
	}
	s := err.Error()
	if i := strings.LastIndex(s, ": "); i >= 0 {
		return s[i+2:]
	}
	return s
}
