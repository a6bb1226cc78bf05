package kube

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apimeta "k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/svctrace/svctrace/internal/meta"
)

// Defaults for Options.
const (
	DefaultStartTimeout = 10 * time.Second
	DefaultDebounce     = 100 * time.Millisecond
	DefaultPollInterval = time.Second
)

// Options configures a Source.
type Options struct {
	// Namespace is the traced Service's namespace: Services and
	// EndpointSlices are watched there only ("default" if empty).
	Namespace string
	// Server names the API server in messages (e.g. rest.Config.Host).
	Server string
	// StartTimeout bounds Start: reaching the API server, checking access
	// and the initial list (DefaultStartTimeout if 0).
	StartTimeout time.Duration
	// Debounce is how long a change waits for more before the snapshot is
	// rebuilt (DefaultDebounce if 0): at most one rebuild per Debounce.
	Debounce time.Duration
	// Retention is how long deleted Pods and former endpoints are
	// remembered (meta.DefaultRetention if 0).
	Retention time.Duration
	// Now is the clock deletions are stamped with (time.Now if nil).
	Now func() time.Time
	// Notify, if set, receives one line when the API server stops answering
	// after Start, and one when it answers again. Calls come from one
	// goroutine, never concurrently, and must not block for long.
	Notify func(message string)
	// PollInterval is how often an API server that went away is probed
	// (DefaultPollInterval if 0).
	PollInterval time.Duration
}

func (o Options) withDefaults() Options {
	if o.Namespace == "" {
		o.Namespace = metav1.NamespaceDefault
	}
	if o.Server == "" {
		o.Server = "the configured address"
	}
	if o.StartTimeout <= 0 {
		o.StartTimeout = DefaultStartTimeout
	}
	if o.Debounce <= 0 {
		o.Debounce = DefaultDebounce
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	if o.PollInterval <= 0 {
		o.PollInterval = DefaultPollInterval
	}
	return o
}

// Source is a meta.Watcher backed by client-go informers. Create it with
// Start; it runs until the context given to Start ends or Close is called.
type Source struct {
	client kubernetes.Interface
	opts   Options

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	b        *meta.Builder
	gen      uint64 // bumped by every change fed to b
	builtGen uint64 // gen of latest
	latest   *meta.Snapshot

	kick     chan struct{}       // a change is waiting to be built (1-buffered)
	watchErr chan error          // an informer's list/watch failed (1-buffered)
	updates  chan *meta.Snapshot // the latest unread snapshot (1-buffered)
}

var _ meta.Watcher = (*Source)(nil)

// Start checks that the API server answers and grants access, starts the
// informers, waits for their initial lists and builds the first snapshot,
// all within Options.StartTimeout. Errors wrap ErrUnreachable or
// ErrForbidden when the API server cannot be reached or refuses access.
func Start(ctx context.Context, client kubernetes.Interface, opts Options) (*Source, error) {
	opts = opts.withDefaults()
	s := &Source{
		client:   client,
		opts:     opts,
		b:        &meta.Builder{Retention: opts.Retention, Now: opts.Now},
		kick:     make(chan struct{}, 1),
		watchErr: make(chan error, 1),
		updates:  make(chan *meta.Snapshot, 1),
	}
	startCtx, cancelStart := context.WithTimeout(ctx, opts.StartTimeout)
	defer cancelStart()
	if err := s.preflight(startCtx); err != nil {
		return nil, err
	}

	runCtx, cancel := context.WithCancel(ctx)
	s.cancel = cancel
	synced := s.runInformers(runCtx)
	if !cache.WaitForCacheSync(startCtx.Done(), synced...) {
		s.Close()
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return nil, fmt.Errorf("%w at %s: the initial list did not finish within %s", ErrUnreachable, opts.Server, opts.StartTimeout)
	}
	s.mu.Lock()
	s.latest = s.b.Build()
	s.builtGen = s.gen
	s.mu.Unlock()

	s.wg.Add(2)
	go func() {
		defer s.wg.Done()
		s.rebuildLoop(runCtx)
	}()
	go func() {
		defer s.wg.Done()
		s.monitor(runCtx)
	}()
	return s, nil
}

// Snapshot returns the latest snapshot.
func (s *Source) Snapshot(ctx context.Context) (*meta.Snapshot, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest, nil
}

// Updates delivers each rebuilt snapshot; a slow reader gets the latest one.
// The channel is closed when the source stops.
func (s *Source) Updates() <-chan *meta.Snapshot { return s.updates }

// Close stops the informers and waits until every goroutine of the source
// has ended. It is safe to call more than once.
func (s *Source) Close() {
	s.cancel()
	s.wg.Wait()
}

// informer describes one watched resource.
type informer struct {
	example runtime.Object
	list    func(context.Context, metav1.ListOptions) (runtime.Object, error)
	watch   func(context.Context, metav1.ListOptions) (watch.Interface, error)
}

func (s *Source) informers() []informer {
	c, ns := s.client, s.opts.Namespace
	return []informer{
		{&corev1.Service{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Services(ns).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Services(ns).Watch(ctx, o)
			}},
		{&discoveryv1.EndpointSlice{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.DiscoveryV1().EndpointSlices(ns).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.DiscoveryV1().EndpointSlices(ns).Watch(ctx, o)
			}},
		{&corev1.Pod{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
			}},
		{&corev1.Node{},
			func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				return c.CoreV1().Nodes().List(ctx, o)
			},
			func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				return c.CoreV1().Nodes().Watch(ctx, o)
			}},
	}
}

// runInformers starts one informer per resource and returns what tells
// that each handler has seen its informer's initial list.
func (s *Source) runInformers(ctx context.Context) []cache.InformerSynced {
	handler := cache.ResourceEventHandlerFuncs{
		AddFunc: s.upsert,
		UpdateFunc: func(old, obj any) {
			if sameVersion(old, obj) {
				return // a relist after a reconnect: nothing changed
			}
			s.upsert(obj)
		},
		DeleteFunc: s.remove,
	}
	var synced []cache.InformerSynced
	for _, in := range s.informers() {
		// The reflector retries a refused watch by itself without telling its
		// WatchErrorHandler, so failures are also taken from the calls.
		lw := &cache.ListWatch{
			ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
				obj, err := in.list(ctx, o)
				s.reportError(err)
				return obj, err
			},
			WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
				w, err := in.watch(ctx, o)
				s.reportError(err)
				return w, err
			},
		}
		inf := cache.NewSharedIndexInformerWithOptions(
			cache.ToListWatcherWithWatchListSemantics(lw, s.client), in.example,
			cache.SharedIndexInformerOptions{ObjectDescription: fmt.Sprintf("%T", in.example)})
		// Neither fails before the informer runs.
		_ = inf.SetTransform(slim)
		_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, _ *cache.Reflector, err error) {
			s.reportError(err)
		})
		reg, _ := inf.AddEventHandler(handler)
		synced = append(synced, reg.HasSynced)
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			inf.RunWithContext(ctx)
		}()
	}
	return synced
}

// reportError hands a list or watch failure to the health monitor.
func (s *Source) reportError(err error) {
	if err == nil {
		return
	}
	select {
	case s.watchErr <- err:
	default:
	}
}

func sameVersion(old, obj any) bool {
	o, err1 := apimeta.Accessor(old)
	n, err2 := apimeta.Accessor(obj)
	return err1 == nil && err2 == nil && o.GetResourceVersion() != "" && o.GetResourceVersion() == n.GetResourceVersion()
}

func (s *Source) upsert(obj any) {
	o, ok := obj.(runtime.Object)
	if !ok {
		return
	}
	s.mu.Lock()
	if s.b.Upsert(o) == nil {
		s.gen++
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Source) remove(obj any) {
	if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		// Deleted while the watch was down: it went away at some point
		// before now; now is the best stamp there is.
		obj = d.Obj
	}
	o, ok := obj.(runtime.Object)
	if !ok {
		return
	}
	s.mu.Lock()
	if s.b.Delete(o, s.opts.Now()) == nil {
		s.gen++
	}
	s.mu.Unlock()
	s.poke()
}

func (s *Source) poke() {
	select {
	case s.kick <- struct{}{}:
	default:
	}
}

// rebuildLoop builds a snapshot at most once per Debounce while changes
// come in, and publishes it.
func (s *Source) rebuildLoop(ctx context.Context) {
	defer close(s.updates)
	for {
		select {
		case <-ctx.Done():
			return
		case <-s.kick:
		}
		t := time.NewTimer(s.opts.Debounce)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		if snap := s.rebuild(); snap != nil {
			s.publish(snap)
		}
	}
}

// rebuild builds a snapshot if anything changed since the last one.
func (s *Source) rebuild() *meta.Snapshot {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == s.builtGen {
		return nil
	}
	s.latest = s.b.Build()
	s.builtGen = s.gen
	return s.latest
}

// publish replaces an unread snapshot with snap. Only rebuildLoop sends.
func (s *Source) publish(snap *meta.Snapshot) {
	select {
	case <-s.updates:
	default:
	}
	s.updates <- snap
}

// lastBuilt is when the latest snapshot was built.
func (s *Source) lastBuilt() time.Time {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.latest.Time()
}

// errorIsRoutine reports list/watch errors that are part of normal operation.
func errorIsRoutine(err error) bool {
	return isExpired(err) || errors.Is(err, context.Canceled)
}
