package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"sync"
	"time"

	"github.com/vishvananda/netns"
)

// Forwarder relays TCP connections accepted inside a network namespace to
// an address reachable from the test process's namespace. It lets processes
// in a lab namespace (kube-proxy on a node) reach the API server, which
// listens on the root namespace's loopback only.
type Forwarder struct {
	// Addr is the listening address inside the namespace ("127.0.0.1:port").
	Addr string

	ln     net.Listener
	stop   func() bool
	wg     sync.WaitGroup
	mu     sync.Mutex
	conns  map[net.Conn]struct{}
	closed bool
}

// ForwardFromNetns listens on 127.0.0.1 inside the namespace at nsPath
// (e.g. /run/netns/st1a2b-node1) and relays every connection to target. It
// stops when ctx ends or Close is called.
func ForwardFromNetns(ctx context.Context, nsPath, target string) (*Forwarder, error) {
	ln, err := listenInNetns(nsPath, "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	f := &Forwarder{Addr: ln.Addr().String(), ln: ln, conns: map[net.Conn]struct{}{}}
	f.wg.Add(1)
	go func() {
		defer f.wg.Done()
		f.serve(target)
	}()
	f.stop = context.AfterFunc(ctx, func() { _ = f.close() })
	return f, nil
}

// URL is https://Addr, for a kubeconfig.
func (f *Forwarder) URL() string { return "https://" + f.Addr }

// Close stops listening, cuts the relayed connections and waits for the
// relay goroutines.
func (f *Forwarder) Close() error {
	f.stop()
	err := f.close()
	f.wg.Wait()
	return err
}

func (f *Forwarder) close() error {
	err := f.ln.Close()
	f.mu.Lock()
	f.closed = true
	for c := range f.conns {
		c.Close()
	}
	f.mu.Unlock()
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// track records (add) or forgets a relayed connection; it refuses new ones
// once the forwarder is closed.
func (f *Forwarder) track(c net.Conn, add bool) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !add {
		delete(f.conns, c)
		return true
	}
	if f.closed {
		return false
	}
	f.conns[c] = struct{}{}
	return true
}

func (f *Forwarder) serve(target string) {
	for {
		in, err := f.ln.Accept()
		if err != nil {
			return
		}
		f.wg.Add(1)
		go func() {
			defer f.wg.Done()
			defer in.Close()
			out, err := net.DialTimeout("tcp", target, 5*time.Second)
			if err != nil {
				return // the client sees its connection closed, as with a dead server
			}
			defer out.Close()
			if !f.track(in, true) || !f.track(out, true) {
				return
			}
			defer f.track(in, false)
			defer f.track(out, false)
			done := make(chan struct{}, 2)
			pipe := func(dst, src net.Conn) {
				_, _ = io.Copy(dst, src)
				if tc, ok := dst.(*net.TCPConn); ok {
					_ = tc.CloseWrite()
				}
				done <- struct{}{}
			}
			go pipe(out, in)
			go pipe(in, out)
			<-done
			<-done
		}()
	}
}

// listenInNetns opens a TCP listener inside the namespace at nsPath. The
// socket stays in that namespace; the thread that created it is returned
// to its own namespace (or retired if that fails).
func listenInNetns(nsPath, addr string) (net.Listener, error) {
	type result struct {
		ln  net.Listener
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("current netns: %w", err)}
			return
		}
		defer orig.Close()
		target, err := netns.GetFromPath(nsPath)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("netns %s: %w", nsPath, err)}
			return
		}
		defer target.Close()
		if err := netns.Set(target); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("enter netns %s: %w", nsPath, err)}
			return
		}
		ln, lerr := net.Listen("tcp4", addr)
		if err := netns.Set(orig); err != nil {
			// Leave the thread locked: it dies with this goroutine.
			if ln != nil {
				ln.Close()
			}
			ch <- result{err: fmt.Errorf("leave netns %s: %w", nsPath, err)}
			return
		}
		runtime.UnlockOSThread()
		if lerr != nil {
			lerr = fmt.Errorf("listen in netns %s: %w", filepath.Base(nsPath), lerr)
		}
		ch <- result{ln, lerr}
	}()
	r := <-ch
	return r.ln, r.err
}

// KubeProxyConfig configures StartKubeProxy.
type KubeProxyConfig struct {
	// Netns is the node's network namespace name (in /run/netns) or path.
	Netns string
	// NodeName is the Node object kube-proxy serves (hostnameOverride).
	NodeName string
	// Kubeconfig is the path of a kubeconfig whose server is reachable from
	// inside Netns (see ForwardFromNetns and Server.WriteKubeconfig).
	Kubeconfig string
	// Mode is the proxy mode (default "iptables").
	Mode string
	// ClusterCIDR is the pod network (detect-local); optional.
	ClusterCIDR string
	// Dir receives the configuration file and the log.
	Dir string
}

// StartKubeProxy runs kube-proxy inside a network namespace with ip netns
// exec. The configuration leaves everything global alone: no conntrack
// table size or timeout changes (they are not per-namespace, or not
// writable inside one), no OOM score change; healthz and metrics listen
// inside the namespace. Stop it with Process.Stop.
func StartKubeProxy(bins *Binaries, cfg KubeProxyConfig) (*Process, error) {
	if cfg.Mode == "" {
		cfg.Mode = "iptables"
	}
	ns := filepath.Base(cfg.Netns)
	conf := fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: %q
hostnameOverride: %q
mode: %q
clusterCIDR: %q
bindAddress: 0.0.0.0
healthzBindAddress: 127.0.0.1:10256
metricsBindAddress: 127.0.0.1:10249
oomScoreAdj: 0
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  minSyncPeriod: 0s
  syncPeriod: 30s
`, cfg.Kubeconfig, cfg.NodeName, cfg.Mode, cfg.ClusterCIDR)
	path := filepath.Join(cfg.Dir, "kube-proxy-"+cfg.NodeName+".yaml")
	if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
		return nil, err
	}
	return startProcess("kube-proxy", filepath.Join(cfg.Dir, "kube-proxy-"+cfg.NodeName+".log"),
		[]string{"ip", "netns", "exec", ns, bins.KubeProxy, "--config", path, "-v", "2"}, os.Environ())
}
