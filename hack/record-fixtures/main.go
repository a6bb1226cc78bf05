// Command record-fixtures records every lab scenario (iptables mode) with
// the real svctrace binary into internal/diagnose/testdata, for the
// diagnosis unit tests that replay them without privileges:
//
//	sudo go run ./hack/record-fixtures
package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/svctrace/svctrace/internal/demo"
	"github.com/svctrace/svctrace/internal/lab"
)

func main() {
	if err := run(context.Background()); err != nil {
		fmt.Fprintf(os.Stderr, "record-fixtures: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	out := filepath.Join("internal", "diagnose", "testdata")
	if err := os.MkdirAll(out, 0o755); err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "record-fixtures-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	bin := filepath.Join(dir, "svctrace")
	if b, err := exec.Command("go", "build", "-o", bin, "./cmd/svctrace").CombinedOutput(); err != nil {
		return fmt.Errorf("build: %v: %s", err, b)
	}
	for _, sc := range lab.Scenarios() {
		variants := []lab.Variant{lab.VariantDefault}
		if sc.Name == "no-backend" {
			variants = append(variants, lab.VariantNoReadyEndpoints)
		}
		for _, v := range variants {
			name := sc.Name
			if v != lab.VariantDefault {
				name += "-" + string(v)
			}
			if err := record(ctx, bin, sc, v, filepath.Join(out, name+".jsonl.gz")); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			fmt.Println("recorded", name)
		}
	}
	return nil
}

func record(ctx context.Context, bin string, sc lab.Scenario, v lab.Variant, file string) error {
	spec, err := sc.Spec(v)
	if err != nil {
		return err
	}
	svc, node, err := demo.Focus(spec)
	if err != nil {
		return err
	}
	mf, err := os.MkdirTemp("", "record-fixtures-mf-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(mf)
	l, err := lab.Up(ctx, spec, lab.WithManifestsDir(mf))
	if err != nil {
		return err
	}
	defer l.Close()
	ns, err := l.NodeNetns(node)
	if err != nil {
		return err
	}
	namespace := svc.Namespace
	if namespace == "" {
		namespace = "default"
	}
	ready := filepath.Join(mf, "ready")
	cmd := exec.Command(bin, "--svc", svc.Name, "-n", namespace, "--manifests", mf, "--netns", ns,
		"-o", "json", "--ready-file", ready, "--write", file, "--backend", "netfilter")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		return err
	}
	for i := 0; ; i++ {
		if _, err := os.Stat(ready); err == nil {
			break
		}
		if i > 600 {
			_ = cmd.Process.Kill()
			return fmt.Errorf("svctrace not ready")
		}
		time.Sleep(50 * time.Millisecond)
	}
	for _, r := range l.RunChecks(ctx) {
		if !r.OK() {
			return fmt.Errorf("probe %s: %v", r.Check.Name, r.Problem)
		}
	}
	time.Sleep(300 * time.Millisecond)
	_ = cmd.Process.Signal(syscall.SIGINT)
	return cmd.Wait()
}
