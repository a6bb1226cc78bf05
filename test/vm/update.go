package vm

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
)

// Update re-resolves every kernel that names a meta-package to the package,
// version and checksum currently in its suite, and reports what changed to
// log. It fetches fresh package lists with the private apt configuration
// under cacheDir.
func (m *Matrix) Update(ctx context.Context, cacheDir string, log io.Writer) (changed bool, err error) {
	base := filepath.Join(cacheDir, "vm")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return false, fmt.Errorf("update: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(base, "apt.lock"))
	if err != nil {
		return false, fmt.Errorf("update: %w", err)
	}
	defer unlock()
	updated := map[string]bool{}
	for i, k := range m.Kernels {
		if k.IsHost() {
			continue
		}
		if k.Meta == "" {
			fmt.Fprintf(log, "%s: no meta-package, keeping %s %s\n", k.Name, k.Package, k.Version)
			continue
		}
		a, err := newApt(filepath.Join(base, "apt", k.Suite), []string{k.Suite})
		if err != nil {
			return changed, fmt.Errorf("update: %w", err)
		}
		if err := a.setup(); err != nil {
			return changed, fmt.Errorf("update: %w", err)
		}
		if !updated[k.Suite] {
			if err := a.update(ctx, true); err != nil {
				return changed, fmt.Errorf("update %s: %w", k.Name, err)
			}
			updated[k.Suite] = true
		}
		info, err := a.resolveMeta(ctx, k.Meta, k.Suite)
		if err != nil {
			return changed, fmt.Errorf("update %s: %w", k.Name, err)
		}
		if !sha256RE.MatchString(info.SHA256) {
			return changed, fmt.Errorf("update %s: %s %s has no usable SHA256 in the index (%q)",
				k.Name, info.Package, info.Version, info.SHA256)
		}
		if info.Package == k.Package && info.Version == k.Version && info.SHA256 == k.SHA256 {
			fmt.Fprintf(log, "%s: %s %s is current\n", k.Name, k.Package, k.Version)
			continue
		}
		old := "(unpinned)"
		if k.Package != "" {
			old = k.Package + " " + k.Version
		}
		fmt.Fprintf(log, "%s: %s -> %s %s\n", k.Name, old, info.Package, info.Version)
		m.Kernels[i].Package = info.Package
		m.Kernels[i].Version = info.Version
		m.Kernels[i].SHA256 = info.SHA256
		changed = true
	}
	return changed, nil
}

// Check reports whether every pinned kernel's exact version is still on the
// mirror with the pinned checksum.
func (m *Matrix) Check(ctx context.Context, cacheDir string) error {
	base := filepath.Join(cacheDir, "vm")
	if err := os.MkdirAll(base, 0o755); err != nil {
		return fmt.Errorf("check: %w", err)
	}
	unlock, err := lockFile(ctx, filepath.Join(base, "apt.lock"))
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	defer unlock()
	var errs []error
	for _, k := range m.Kernels {
		if k.IsHost() {
			continue
		}
		a, err := newApt(filepath.Join(base, "apt", k.Suite), []string{k.Suite})
		if err != nil {
			return fmt.Errorf("check: %w", err)
		}
		if err := a.setup(); err != nil {
			return fmt.Errorf("check: %w", err)
		}
		if err := a.update(ctx, true); err != nil {
			return fmt.Errorf("check %s: %w", k.Name, err)
		}
		infos, err := a.show(ctx, k.Package+"="+k.Version)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %s %s is no longer in %s: %w", k.Name, k.Package, k.Version, k.Suite, ErrVersionGone))
			continue
		}
		if infos[0].SHA256 != k.SHA256 {
			errs = append(errs, fmt.Errorf("%s: %s %s has sha256 %s in the index, the matrix pins %s",
				k.Name, k.Package, k.Version, infos[0].SHA256, k.SHA256))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w\nrun `%s`", err, UpdateHint)
	}
	return nil
}
