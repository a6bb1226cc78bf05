package vm

import (
	"bytes"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// HostKernel is the name of the matrix entry that runs on the host kernel,
// without a VM.
const HostKernel = "host"

//go:embed kernels.json
var embeddedMatrix string // a string: immutable

// Matrix is the kernel matrix: which kernels to boot, and which test cells to
// run on each of them. It is declared in kernels.json next to this file.
type Matrix struct {
	// Kernels to run on, in table order.
	Kernels []Kernel `json:"kernels"`
	// Axes span the cells: the cells are the cartesian product of the
	// values of all axes. Each axis sets one environment variable.
	Axes []Axis `json:"axes"`
	// Run selects, per cell pattern (path.Match syntax, e.g. "fentry/*"),
	// which tests run there (-test.run); the first matching pattern wins,
	// cells matching none run what the -run flag says (default: all).
	Run []CellRun `json:"run,omitempty"`
	// Modules are modprobe'd in the VM before each cell runs (not on the host
	// kernel, which may not load modules at all).
	Modules []string `json:"modules,omitempty"`
}

// CellRun is a -test.run pattern for the cells matching Cells.
type CellRun struct {
	Cells string `json:"cells"`
	Run   string `json:"run"`
}

// RunFor returns the -test.run pattern for a cell, or def.
func (m *Matrix) RunFor(cell, def string) string {
	for _, r := range m.Run {
		if ok, _ := path.Match(r.Cells, cell); ok {
			return r.Run
		}
	}
	return def
}

// Axis is one dimension of the test cells.
type Axis struct {
	Env    string   `json:"env"`
	Values []string `json:"values"`
}

// Kernel is one entry of the matrix: a Debian kernel package pinned to an
// exact version and checksum, or the host kernel.
type Kernel struct {
	// Name is the short name used on the command line and in tables, e.g.
	// "6.1", or HostKernel.
	Name string `json:"name"`
	// Meta is the meta-package that "vmkernels -update" resolves to find
	// the current Package and Version in Suite, e.g. "linux-image-amd64".
	Meta string `json:"meta,omitempty"`
	// Suite is the apt suite the package comes from, e.g. "bookworm" or
	// "bullseye-security". Suites ending in -security come from the
	// security archive.
	Suite string `json:"suite,omitempty"`
	// Package and Version name the exact .deb, e.g.
	// "linux-image-6.1.0-50-amd64" and "6.1.176-1".
	Package string `json:"package,omitempty"`
	Version string `json:"version,omitempty"`
	// SHA256 of the .deb.
	SHA256 string `json:"sha256,omitempty"`
	// NA declares cells that cannot run on this kernel: cell pattern
	// (path.Match syntax against the cell name, e.g. "netfilter/*") to
	// reason.
	NA map[string]string `json:"na,omitempty"`
}

// Cell is one combination of axis values.
type Cell struct {
	// Name is the axis values joined by "/", e.g. "kprobe/iptables".
	Name string
	// Env holds one KEY=value per axis.
	Env []string
}

// IsHost reports whether the entry means the host kernel (no VM).
func (k Kernel) IsHost() bool { return k.Name == HostKernel }

// NAReason returns the reason the matrix declares cell n/a on this kernel.
func (k Kernel) NAReason(cell string) (string, bool) {
	// Sort the patterns so that the answer does not depend on map order.
	pats := make([]string, 0, len(k.NA))
	for p := range k.NA {
		pats = append(pats, p)
	}
	slices.Sort(pats)
	for _, p := range pats {
		if ok, _ := path.Match(p, cell); ok {
			return k.NA[p], true
		}
	}
	return "", false
}

// DefaultMatrix returns the matrix compiled into the package (a copy of
// test/vm/kernels.json at build time).
func DefaultMatrix() (*Matrix, error) {
	m, err := ParseMatrix([]byte(embeddedMatrix))
	if err != nil {
		return nil, fmt.Errorf("embedded kernels.json: %w", err)
	}
	return m, nil
}

// ReadMatrix reads and validates a matrix file.
func ReadMatrix(file string) (*Matrix, error) {
	b, err := os.ReadFile(file)
	if err != nil {
		return nil, fmt.Errorf("read kernel matrix: %w", err)
	}
	m, err := ParseMatrix(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", file, err)
	}
	return m, nil
}

// LoadMatrix reads a matrix file and returns its kernels.
func LoadMatrix(file string) ([]Kernel, error) {
	m, err := ReadMatrix(file)
	if err != nil {
		return nil, err
	}
	return m.Kernels, nil
}

// ParseMatrix parses and validates the JSON form of a matrix. Unknown fields
// are errors, so that typos do not silently change the matrix.
func ParseMatrix(b []byte) (*Matrix, error) {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m Matrix
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("parse kernel matrix: %w", err)
	}
	if err := m.Validate(); err != nil {
		return nil, err
	}
	return &m, nil
}

var (
	nameRE    = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`)
	debNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9.+-]+$`)
	debVerRE  = regexp.MustCompile(`^[0-9A-Za-z.+~:-]+$`)
	sha256RE  = regexp.MustCompile(`^[0-9a-f]{64}$`)
	envRE     = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	valueRE   = regexp.MustCompile(`^[A-Za-z0-9._-]+$`)
)

// Validate checks the matrix for mistakes a reader would not spot.
func (m *Matrix) Validate() error {
	var errs []error
	if len(m.Kernels) == 0 {
		errs = append(errs, errors.New("no kernels"))
	}
	seen := map[string]bool{}
	for i, k := range m.Kernels {
		if !nameRE.MatchString(k.Name) {
			errs = append(errs, fmt.Errorf("kernel %d: bad name %q", i, k.Name))
			continue
		}
		if seen[k.Name] {
			errs = append(errs, fmt.Errorf("kernel %q: declared twice", k.Name))
		}
		seen[k.Name] = true
		if err := k.validate(); err != nil {
			errs = append(errs, fmt.Errorf("kernel %q: %w", k.Name, err))
		}
	}
	envs := map[string]bool{}
	for i, a := range m.Axes {
		if !envRE.MatchString(a.Env) {
			errs = append(errs, fmt.Errorf("axis %d: bad environment variable name %q", i, a.Env))
		}
		if envs[a.Env] {
			errs = append(errs, fmt.Errorf("axis %s: declared twice", a.Env))
		}
		envs[a.Env] = true
		if len(a.Values) == 0 {
			errs = append(errs, fmt.Errorf("axis %s: no values", a.Env))
		}
		vals := map[string]bool{}
		for _, v := range a.Values {
			if !valueRE.MatchString(v) {
				errs = append(errs, fmt.Errorf("axis %s: bad value %q", a.Env, v))
			}
			if vals[v] {
				errs = append(errs, fmt.Errorf("axis %s: value %q declared twice", a.Env, v))
			}
			vals[v] = true
		}
	}
	for _, mod := range m.Modules {
		if !valueRE.MatchString(mod) {
			errs = append(errs, fmt.Errorf("bad module name %q", mod))
		}
	}
	return errors.Join(errs...)
}

func (k Kernel) validate() error {
	for pat := range k.NA {
		if _, err := path.Match(pat, ""); err != nil {
			return fmt.Errorf("n/a pattern %q: %w", pat, err)
		}
	}
	if k.IsHost() {
		if k.Package != "" || k.Version != "" || k.Suite != "" || k.SHA256 != "" || k.Meta != "" {
			return errors.New("the host kernel takes no package fields")
		}
		return nil
	}
	if !debNameRE.MatchString(k.Suite) {
		return fmt.Errorf("bad suite %q", k.Suite)
	}
	if k.Meta != "" && !debNameRE.MatchString(k.Meta) {
		return fmt.Errorf("bad meta-package %q", k.Meta)
	}
	if k.Meta != "" && k.Package == "" && k.Version == "" && k.SHA256 == "" {
		// Not pinned yet: vmkernels -update fills in the rest.
		return nil
	}
	return k.validatePin()
}

// validatePin checks the fields that name the exact .deb.
func (k Kernel) validatePin() error {
	switch {
	case k.Package == "" && k.Meta != "":
		return fmt.Errorf("not pinned yet: run `%s`", UpdateHint)
	case !debNameRE.MatchString(k.Package):
		return fmt.Errorf("bad package %q", k.Package)
	case !strings.HasPrefix(k.Package, "linux-image-"):
		return fmt.Errorf("package %q is not a linux-image package", k.Package)
	case !debVerRE.MatchString(k.Version):
		return fmt.Errorf("bad version %q", k.Version)
	case !sha256RE.MatchString(k.SHA256):
		return fmt.Errorf("bad sha256 %q (want 64 lower-case hex digits)", k.SHA256)
	}
	return nil
}

// Kernel returns the entry with the given short name.
func (m *Matrix) Kernel(name string) (Kernel, error) {
	for _, k := range m.Kernels {
		if k.Name == name {
			return k, nil
		}
	}
	names := make([]string, 0, len(m.Kernels))
	for _, k := range m.Kernels {
		names = append(names, k.Name)
	}
	return Kernel{}, fmt.Errorf("kernel %q is not in the matrix (have %s)", name, strings.Join(names, ", "))
}

// Cells returns the cartesian product of the axes, the first axis varying
// slowest. A matrix without axes has one cell named "default".
func (m *Matrix) Cells() []Cell {
	cells := []Cell{{}}
	for _, a := range m.Axes {
		next := make([]Cell, 0, len(cells)*len(a.Values))
		for _, c := range cells {
			for _, v := range a.Values {
				name := v
				if c.Name != "" {
					name = c.Name + "/" + v
				}
				next = append(next, Cell{
					Name: name,
					Env:  append(slices.Clip(c.Env), a.Env+"="+v),
				})
			}
		}
		cells = next
	}
	if len(m.Axes) == 0 {
		cells[0].Name = "default"
	}
	return cells
}

// Marshal returns the JSON form of the matrix, as written by vmkernels.
func (m *Matrix) Marshal() ([]byte, error) {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("marshal kernel matrix: %w", err)
	}
	return append(b, '\n'), nil
}

// EnvMatrix names a kernel matrix file to use instead of the repository's.
const EnvMatrix = "SVCTRACE_VM_MATRIX"

const modulePath = "github.com/svctrace/svctrace"

// FindMatrixFile returns $SVCTRACE_VM_MATRIX, or test/vm/kernels.json of the
// svctrace module that contains dir.
func FindMatrixFile(dir string) (string, error) {
	if f := os.Getenv(EnvMatrix); f != "" {
		return f, nil
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("find kernel matrix: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modfileModule(b) == modulePath {
			return filepath.Join(dir, "test", "vm", "kernels.json"), nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", fmt.Errorf("find kernel matrix: not inside the %s module (set %s)", modulePath, EnvMatrix)
		}
		dir = parent
	}
}

func modfileModule(b []byte) string {
	for l := range strings.SplitSeq(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

// LoadDefaultMatrix reads the matrix file FindMatrixFile finds from the
// working directory, or, outside the repository, the matrix compiled in. It
// returns where the matrix came from.
func LoadDefaultMatrix() (*Matrix, string, error) {
	if f, err := FindMatrixFile("."); err == nil {
		m, err := ReadMatrix(f)
		return m, f, err
	}
	m, err := DefaultMatrix()
	return m, "(compiled in)", err
}
