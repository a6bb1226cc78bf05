// Package cli is svctrace's command line: flags, help text, exit codes.
package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"

	"github.com/svctrace/svctrace/internal/attach"
	"github.com/svctrace/svctrace/internal/kernel"
	"github.com/svctrace/svctrace/internal/kube"
	"github.com/svctrace/svctrace/internal/meta"
	"github.com/svctrace/svctrace/internal/tracer"
)

// Exit codes.
const (
	ExitOK      = 0
	ExitFailure = 1 // the trace failed while running
	ExitUsage   = 2 // bad input or environment: flags, unknown Service, no BTF, no privileges
)

// exitError carries an exit code.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string { return e.err.Error() }
func (e *exitError) Unwrap() error { return e.err }

func usageErr(err error) error { return &exitError{code: ExitUsage, err: err} }

// Version is set at build time with -ldflags "-X …/internal/cli.Version=…".
var Version = "dev"

// Main runs the command line and returns the process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	root := newRoot(stdout, stderr)
	root.SetArgs(args)
	err := root.ExecuteContext(ctx)
	if err == nil {
		return ExitOK
	}
	fmt.Fprintf(stderr, "svctrace: %v\n", err)
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	if isUsageError(err) {
		return ExitUsage
	}
	return ExitFailure
}

// isUsageError classifies errors that mean "fix your input or environment".
func isUsageError(err error) bool {
	return errors.Is(err, meta.ErrUnknownService) || errors.Is(err, tracer.ErrHeadless) ||
		errors.Is(err, kernel.ErrNoBTF) || errors.Is(err, attach.ErrPrivileges) ||
		errors.Is(err, kube.ErrUnreachable) || errors.Is(err, kube.ErrForbidden) ||
		errors.Is(err, errFlag)
}

var errFlag = errors.New("invalid flag")

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

func colorWanted(w io.Writer, mode string) bool {
	switch mode {
	case "always":
		return true
	case "never":
		return false
	}
	if _, ok := os.LookupEnv("NO_COLOR"); ok {
		return false
	}
	return isTerminal(w)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	o := &traceOptions{stdout: stdout, stderr: stderr}
	root := &cobra.Command{
		Use:   "svctrace --svc NAME [-n NAMESPACE] [flags]",
		Short: "Trace a Kubernetes Service's packets through NAT, routing and drops",
		Long: `svctrace follows the packets of one Kubernetes Service through the node's
kernel with eBPF: where each packet entered, the route lookup, every NAT step
(kube-proxy's DNAT to a backend, MASQUERADE), and where it ended: handed to a
device, delivered, or dropped with the kernel's own drop reason.

Run it on the node where the problem shows, then reproduce the problem:

  sudo svctrace --svc hostnames -n default --manifests ./cluster.yaml

It attaches with what the kernel allows: fentry, kprobes, or (on locked-down
nodes) tracepoints plus BPF netfilter links. 'svctrace doctor' shows which.`,
		Example: `  # trace a Service, reading cluster objects from kubectl get -o yaml output
  kubectl get svc,endpointslices,pods,nodes -A -o yaml > cluster.yaml
  sudo svctrace --svc hostnames -n default --manifests cluster.yaml

  # JSON lines for scripts, stop after 10 packets
  sudo svctrace --svc hostnames --manifests cluster.yaml -o json --count 10

  # a node whose network namespace is not svctrace's own (tests, kind)
  sudo svctrace --svc hostnames --manifests cluster.yaml --netns /run/netns/node1

  # what can this kernel do?
  sudo svctrace doctor`,
		SilenceUsage:  true,
		SilenceErrors: true,
		Args:          cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := o.complete(cmd); err != nil {
				return err
			}
			return o.run(cmd.Context())
		},
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.Version = Version
	o.addFlags(root)
	asKubectlPlugin(root, os.Args[0])
	root.AddCommand(newDoctor(stdout, stderr), newDemo(stdout, stderr), newVersion(stdout), newReplay(stdout, stderr))
	root.SetFlagErrorFunc(func(c *cobra.Command, err error) error {
		return usageErr(fmt.Errorf("%w (see '%s --help')", err, c.CommandPath()))
	})
	return root
}

func newVersion(stdout io.Writer) *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print svctrace's version",
		Args:  cobra.NoArgs,
		Run: func(*cobra.Command, []string) {
			fmt.Fprintf(stdout, "svctrace %s (kernel %s)\n", Version, kernel.Release())
		},
	}
}
