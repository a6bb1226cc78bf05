package cli

import (
	"context"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/demo"
	"github.com/svctrace/svctrace/internal/lab"
	"github.com/svctrace/svctrace/internal/render"
	"github.com/svctrace/svctrace/internal/tracer"
)

func newDemo(stdout, stderr io.Writer) *cobra.Command {
	var (
		list, keep, cleanup, perPacket, events bool
		output, backend, variant, color, proxy string
	)
	c := &cobra.Command{
		Use:   "demo [SCENARIO...]",
		Short: "Reproduce real Service failures in a built-in lab and trace them (no cluster needed)",
		Long: `demo builds a small cluster out of network namespaces on this machine: nodes,
pods, kube-proxy's real iptables rules, and a Service. It then reproduces
each scenario (a healthy ClusterIP, and the failures svctrace exists for),
traces it with the real tracer attached to the node, runs the client probes
and shows what svctrace saw. Nothing leaves this machine; every namespace
is removed afterwards unless --keep is given.`,
		Example: `  sudo svctrace demo                 # every scenario
  sudo svctrace demo --list          # what there is
  sudo svctrace demo stale-backend   # one scenario
  sudo svctrace demo healthy --keep  # leave the namespaces up to poke at`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if list {
				tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
				for _, sc := range demo.Scenarios() {
					seed := ""
					if sc.Seed != "" {
						seed = "seed " + sc.Seed
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\n", sc.Name, seed, sc.Description)
				}
				return tw.Flush()
			}
			if cleanup {
				removed, err := lab.Cleanup(cmd.Context(), lab.NamePrefix)
				for _, r := range removed {
					fmt.Fprintf(stdout, "removed %s\n", r)
				}
				return err
			}
			if output != "text" && output != "json" {
				return usageErr(fmt.Errorf("--output %q: use text or json", output))
			}
			b, err := attach.ParseBackend(backend)
			if err != nil {
				return usageErr(err)
			}
			if proxy != "iptables" && proxy != "ipvs" {
				return usageErr(fmt.Errorf("--proxy-mode %q: use iptables or ipvs", proxy))
			}
			if proxy == "ipvs" {
				w, err := lab.NewRuleWriter(lab.ProxyIPVS)
				if err == nil {
					err = w.Available()
				}
				if err != nil {
					return usageErr(err)
				}
			}
			for _, a := range args {
				if _, err := lab.LookupScenario(a); err != nil {
					return usageErr(fmt.Errorf("%w (see 'svctrace demo --list')", err))
				}
			}
			var r render.Renderer
			if output == "json" {
				r = render.NewJSON(stdout)
			} else {
				r = render.NewText(stdout, render.TextOptions{Color: colorWanted(stdout, color), Clock: tracer.WallClock()})
			}
			return runDemo(cmd.Context(), args, demo.Options{
				Out: stdout, Warn: stderr, Renderer: r, JSON: output == "json", Backend: b,
				Variant: lab.Variant(variant), Keep: keep, PerPacket: perPacket,
				Proxy: lab.ProxyMode(proxy), Events: events,
			})
		},
	}
	f := c.Flags()
	f.BoolVar(&list, "list", false, "list the scenarios and exit")
	f.BoolVar(&keep, "keep", false, "leave each lab's namespaces up after the run")
	f.BoolVar(&cleanup, "cleanup", false, "remove the namespaces of labs left behind (--keep, or a killed run) and exit")
	f.BoolVar(&perPacket, "per-packet", false, "show every packet, not one block per flow direction")
	f.StringVarP(&output, "output", "o", "text", "output format: text or json")
	f.StringVar(&backend, "backend", "auto", "attach backend: auto, fentry, kprobe or netfilter")
	f.StringVar(&variant, "variant", "", "scenario variant (e.g. fixed: the same topology with the fix applied)")
	f.StringVar(&color, "color", "auto", "colour: auto, always, never")
	f.StringVar(&proxy, "proxy-mode", "iptables", "kube-proxy mode in the lab: iptables, or ipvs (needs the ip_vs module)")
	f.BoolVar(&events, "events", false, "also print every raw kernel event")
	return c
}

func runDemo(ctx context.Context, names []string, opts demo.Options) error {
	results, err := demo.Run(ctx, names, opts)
	if err != nil {
		return err
	}
	bad := 0
	for _, r := range results {
		for _, c := range r.Checks {
			if !c.OK() {
				bad++
			}
		}
	}
	if bad > 0 {
		return fmt.Errorf("%d probes did not behave as the scenario expects", bad)
	}
	return nil
}
