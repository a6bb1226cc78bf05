package lab

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"time"
)

// Lab is a running lab. Its methods are safe for concurrent use.
type Lab struct {
	id     string
	spec   Spec
	writer RuleWriter
	logf   func(format string, args ...any)

	manifestsDir string
	ownsDir      bool
	manifests    Manifests

	// netns maps node, host, pod and network names (and the namespace
	// names themselves) to namespace names.
	netns      map[string]string
	namespaces []string // created, in order

	mu      sync.Mutex
	rules   map[string]string // node -> loaded rules
	servers []*server
	closed  bool

	setup        time.Duration
	probeTimeout time.Duration
}

// Option tunes Up.
type Option func(*options)

type options struct {
	manifestsDir string
	logf         func(format string, args ...any)
	probeTimeout time.Duration
}

// WithProbeTimeout bounds the scenario's probes that expect an answer
// (default DefaultProbeTimeout): slow machines (emulated test VMs) need more.
func WithProbeTimeout(d time.Duration) Option { return func(o *options) { o.probeTimeout = d } }

// WithManifestsDir writes the manifests into dir (created if needed) and
// keeps them after Close. By default they go to a temporary directory that
// Close removes.
func WithManifestsDir(dir string) Option { return func(o *options) { o.manifestsDir = dir } }

// WithLogf receives a line per setup step.
func WithLogf(logf func(format string, args ...any)) Option {
	return func(o *options) { o.logf = logf }
}

// Up builds the lab described by spec. ctx bounds the setup only; the lab
// lives until Close. On failure everything created so far is removed.
func Up(ctx context.Context, spec Spec, opts ...Option) (_ *Lab, err error) {
	start := time.Now()
	o := options{logf: func(string, ...any) {}}
	for _, opt := range opts {
		opt(&o)
	}
	s, err := normalize(spec)
	if err != nil {
		return nil, err
	}
	writer, err := NewRuleWriter(s.Proxy.Mode)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", s.Name, err)
	}
	if err := writer.Available(); err != nil {
		return nil, fmt.Errorf("lab %s: %w", s.Name, err)
	}
	if _, err := exec.LookPath("ip"); err != nil {
		return nil, fmt.Errorf("lab %s: iproute2 is needed: %w", s.Name, err)
	}
	if err := ensureNetnsRunDir(); err != nil {
		return nil, fmt.Errorf("lab %s: %w", s.Name, err)
	}
	id, err := reserveID()
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", s.Name, err)
	}
	l := &Lab{
		id:           id,
		spec:         s,
		writer:       writer,
		logf:         o.logf,
		netns:        map[string]string{},
		rules:        map[string]string{},
		probeTimeout: o.probeTimeout,
	}
	defer func() {
		if err != nil {
			if cerr := l.Close(); cerr != nil {
				err = errors.Join(err, fmt.Errorf("cleanup after failed setup: %w", cerr))
			}
		}
	}()

	if o.manifestsDir != "" {
		if err := os.MkdirAll(o.manifestsDir, 0o755); err != nil {
			return nil, fmt.Errorf("lab %s: manifests dir: %w", s.Name, err)
		}
		l.manifestsDir = o.manifestsDir
	} else {
		dir, err := os.MkdirTemp("", manifestsDirPrefix+id+"-")
		if err != nil {
			return nil, fmt.Errorf("lab %s: manifests dir: %w", s.Name, err)
		}
		l.manifestsDir, l.ownsDir = dir, true
	}

	if err := l.build(ctx); err != nil {
		return nil, fmt.Errorf("lab %s (%s): %w", s.Name, id, err)
	}
	l.manifests = buildManifests(&l.spec, start)
	if err := writeManifests(l.manifestsDir, l.manifests); err != nil {
		return nil, fmt.Errorf("lab %s (%s): %w", s.Name, id, err)
	}
	l.setup = time.Since(start)
	l.logf("lab %s (%s) up in %s", s.Name, id, l.setup.Round(time.Millisecond))
	return l, nil
}

// ID is the lab's id ("st" + 4 hex digits); every namespace of the lab is
// named "<id>-...".
func (l *Lab) ID() string { return l.id }

// Spec returns the spec as built: defaults filled in, namespaces, interface
// names and addresses set.
func (l *Lab) Spec() Spec {
	s := l.spec
	s.Networks = slices.Clone(s.Networks)
	s.Nodes = slices.Clone(s.Nodes)
	s.Hosts = slices.Clone(s.Hosts)
	s.Pods = slices.Clone(s.Pods)
	s.Services = slices.Clone(s.Services)
	s.Faults = slices.Clone(s.Faults)
	s.Checks = slices.Clone(s.Checks)
	return s
}

// SetupDuration is how long Up took.
func (l *Lab) SetupDuration() time.Duration { return l.setup }

// Netns returns the namespace name of a node, host, pod or network (a
// namespace name of the lab is returned as is).
func (l *Lab) Netns(name string) (string, error) {
	if ns, ok := l.netns[name]; ok {
		return ns, nil
	}
	if p := l.spec.pod(name); p != nil && p.Netns != "" {
		return p.Netns, nil
	}
	if filepath.IsAbs(name) {
		if ns, ok := l.netns[filepath.Base(name)]; ok && filepath.Dir(name) == NetnsRunDir {
			return ns, nil
		}
	}
	return "", fmt.Errorf("lab %s: no node, host, pod or network %q", l.id, name)
}

// NodeNetns returns the path of a node's network namespace
// (/run/netns/<id>-<node>), where the tracer attaches.
func (l *Lab) NodeNetns(node string) (string, error) {
	n := l.spec.node(node)
	if n == nil {
		return "", fmt.Errorf("lab %s: no node %q", l.id, node)
	}
	return NetnsPath(n.Netns), nil
}

// ManifestsDir is the directory holding the cluster's manifests (one YAML
// file per object).
func (l *Lab) ManifestsDir() string { return l.manifestsDir }

// Manifests returns the objects written to ManifestsDir.
func (l *Lab) Manifests() Manifests { return l.manifests }

// Rules returns what the rule writer loaded on a node (for iptables mode,
// the iptables-restore input).
func (l *Lab) Rules(node string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.rules[node]
}

// ResyncProxy rewrites a node's service rules from the cluster's truth,
// dropping the node's kube-proxy faults, as a kube-proxy that catches up
// would.
func (l *Lab) ResyncProxy(ctx context.Context, node string) error {
	n := l.spec.node(node)
	if n == nil {
		return fmt.Errorf("lab %s: no node %q", l.id, node)
	}
	return l.applyProxy(ctx, *n, false)
}

func (l *Lab) applyProxy(ctx context.Context, n NodeSpec, honorFaults bool) error {
	view := l.spec.proxyView(n, honorFaults)
	rules, err := l.writer.Apply(ctx, nodeTarget{name: n.Name, netns: n.Netns}, view)
	if err != nil {
		return err
	}
	l.mu.Lock()
	l.rules[n.Name] = rules
	l.mu.Unlock()
	return nil
}

// nodeTarget is a node as a RuleWriter sees it.
type nodeTarget struct{ name, netns string }

func (t nodeTarget) NodeName() string { return t.name }
func (t nodeTarget) Netns() string    { return t.netns }
func (t nodeTarget) Run(ctx context.Context, stdin []byte, argv ...string) ([]byte, error) {
	return runInNetns(ctx, t.netns, stdin, argv...)
}

// Close stops the workloads and removes every namespace of the lab (their
// interfaces, routes and rules go with them), the owner record and, unless
// WithManifestsDir was used, the manifests. It is safe to call twice.
func (l *Lab) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	servers := l.servers
	l.servers = nil
	l.mu.Unlock()

	var wg sync.WaitGroup
	for _, s := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.close()
		}()
	}
	wg.Wait()

	var errs []error
	for i := len(l.namespaces) - 1; i >= 0; i-- {
		if err := deleteNetns(l.namespaces[i]); err != nil {
			errs = append(errs, err)
		}
	}
	if rest, _ := filepath.Glob(filepath.Join(NetnsRunDir, l.id+"-*")); len(rest) > 0 {
		errs = append(errs, fmt.Errorf("namespaces left behind: %v", rest))
	} else if err := os.Remove(filepath.Join(OwnerDir, l.id)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove owner record: %w", err))
	}
	if l.ownsDir && l.manifestsDir != "" {
		if err := os.RemoveAll(l.manifestsDir); err != nil {
			errs = append(errs, fmt.Errorf("remove manifests: %w", err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close lab %s: %w", l.id, err)
	}
	return nil
}

// abandon drops the lab the way a killed process would: the workloads stop
// (their sockets close) but namespaces, owner record and manifests stay.
// Tests use it to exercise Cleanup.
func (l *Lab) abandon() {
	l.mu.Lock()
	servers := l.servers
	l.servers, l.closed = nil, true
	l.mu.Unlock()
	for _, s := range servers {
		s.close()
	}
}
