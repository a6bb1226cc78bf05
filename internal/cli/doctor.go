package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/kernel"
)

// Check is one line of the doctor's report.
type Check struct {
	Name   string `json:"name"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
}

// DoctorReport is what 'svctrace doctor -o json' prints.
type DoctorReport struct {
	Type    string              `json:"type"` // "doctor"
	Kernel  string              `json:"kernel"`
	Backend string              `json:"backend"`
	Checks  []Check             `json:"checks"`
	Hooks   []attach.HookStatus `json:"hooks"`
}

func newDoctor(stdout, stderr io.Writer) *cobra.Command {
	var output, backend, netns string
	c := &cobra.Command{
		Use:   "doctor",
		Short: "Show what this kernel supports and how svctrace will attach",
		Long: `doctor checks the kernel svctrace runs on: BTF, BPF features, kprobes,
fentry, netfilter links, drop reasons, the ip_vs module. It then loads and
attaches every hook once, exactly as a trace would, and shows which
implementation each hook uses and why the others were not possible.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if output != "text" && output != "json" {
				return usageErr(fmt.Errorf("--output %q: use text or json", output))
			}
			b, err := attach.ParseBackend(backend)
			if err != nil {
				return usageErr(err)
			}
			if netns != "" && !strings.Contains(netns, "/") {
				netns = "/run/netns/" + netns
			}
			rep, err := runDoctor(b, netns)
			if err != nil {
				return err
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				return enc.Encode(rep)
			}
			printDoctor(stdout, rep)
			return nil
		},
	}
	c.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	c.Flags().StringVar(&backend, "backend", "auto", "backend to plan for: auto, fentry, kprobe or netfilter")
	c.Flags().StringVar(&netns, "netns", "", "network namespace to try netfilter links in (default: svctrace's own)")
	return c
}

func check(name string, err error, okDetail string) Check {
	if err != nil {
		return Check{Name: name, OK: false, Detail: err.Error()}
	}
	return Check{Name: name, OK: true, Detail: okDetail}
}

func runDoctor(backend attach.Backend, netns string) (*DoctorReport, error) {
	rep := &DoctorReport{Type: "doctor", Kernel: kernel.Release(), Backend: string(backend)}
	b, err := kernel.LoadBTF()
	rep.Checks = append(rep.Checks, check("btf", err, "/sys/kernel/btf/vmlinux"))
	if err != nil {
		return rep, err
	}
	if os.Geteuid() != 0 {
		rep.Checks = append(rep.Checks, Check{Name: "privileges", OK: false, Detail: "not root: loading BPF needs CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"})
	}
	rep.Checks = append(rep.Checks,
		check("ring buffer", kernel.HaveRingBuf(), "BPF ring buffer (5.8+)"),
		check("netfilter links", kernel.HaveNetfilterLink(), "BPF netfilter programs (6.4+)"),
		check("kprobes", kernel.HaveKprobes(), "kprobe PMU or kprobe_events"),
	)
	if reasons, err := b.DropReasons(); err != nil {
		rep.Checks = append(rep.Checks, Check{Name: "drop reasons", OK: false, Detail: err.Error()})
	} else {
		rep.Checks = append(rep.Checks, Check{Name: "drop reasons", OK: true, Detail: fmt.Sprintf("%d reasons in enum skb_drop_reason", len(reasons))})
	}
	for _, m := range []string{"nf_conntrack", "nf_nat", "ip_vs"} {
		c := Check{Name: "module " + m, OK: kernel.ModuleLoaded(m)}
		switch {
		case !c.OK:
			c.Detail = "not loaded"
			if m == "ip_vs" {
				c.Detail += ": IPVS hooks are skipped (kube-proxy in iptables or nftables mode does not need them)"
			}
		case kernel.HasModuleBTF(m):
			c.Detail = "loaded, with BTF"
		default:
			c.Detail = "loaded (built in, or without module BTF)"
		}
		rep.Checks = append(rep.Checks, c)
	}
	p, err := attach.Load(attach.Options{Backend: backend, NetnsPath: netns, BTF: b})
	if err != nil {
		rep.Checks = append(rep.Checks, Check{Name: "attach", OK: false, Detail: err.Error()})
		return rep, err
	}
	rep.Hooks = p.Plan()
	if err := p.Close(); err != nil {
		return rep, fmt.Errorf("detach: %w", err)
	}
	fentry := Check{Name: "fentry", OK: false, Detail: "not used by any hook"}
	for _, h := range rep.Hooks {
		if h.Impl == "fentry" {
			fentry = Check{Name: "fentry", OK: true, Detail: "used by hook " + h.Hook}
			break
		}
		for _, t := range h.Tried {
			if strings.HasPrefix(t, "fentry: ") {
				fentry.Detail = strings.TrimPrefix(t, "fentry: ")
			}
		}
	}
	rep.Checks = append(rep.Checks, fentry)
	return rep, nil
}

func printDoctor(w io.Writer, rep *DoctorReport) {
	fmt.Fprintf(w, "kernel %s, backend %s\n\n", rep.Kernel, rep.Backend)
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, c := range rep.Checks {
		mark := "ok"
		if !c.OK {
			mark = "--"
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", mark, c.Name, c.Detail)
	}
	tw.Flush()
	fmt.Fprintln(w, "\nhooks:")
	tw = tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	for _, h := range rep.Hooks {
		if h.Skipped != "" {
			fmt.Fprintf(tw, "  %s\tSKIPPED\t%s\n", h.Hook, h.Skipped)
		} else {
			fmt.Fprintf(tw, "  %s\t%s\t%s\n", h.Hook, h.Impl, h.Detail)
		}
		for _, t := range h.Tried {
			fmt.Fprintf(tw, "  \t\t  (not %s)\n", t)
		}
	}
	tw.Flush()
}
