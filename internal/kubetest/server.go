package kubetest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// Config configures Start.
type Config struct {
	// Dir receives data, certificates, kubeconfigs and logs; a new temporary
	// folder (removed by Stop) if empty.
	Dir string
	// ServiceCIDR is --service-cluster-ip-range (default 10.96.0.0/12, the
	// lab's).
	ServiceCIDR string
	// ReadyTimeout bounds the wait for /readyz (default 60s).
	ReadyTimeout time.Duration
	// Logf receives progress lines (optional).
	Logf func(format string, args ...any)
}

// Server is a running etcd and kube-apiserver on 127.0.0.1. Authorization is
// RBAC; Token authenticates as an admin (group system:masters).
type Server struct {
	// URL is https://127.0.0.1:<port>.
	URL string
	// Token is the admin bearer token.
	Token string
	// Kubeconfig is the path of an admin kubeconfig for URL.
	Kubeconfig string
	// CA is the PEM certificate of the serving certificate's authority.
	CA []byte
	// Dir holds data, certificates and logs.
	Dir string

	bins    *Binaries
	cfg     Config
	ownsDir bool
	apiArgs []string

	mu        sync.Mutex
	etcd      *Process
	apiserver *Process
}

// Start runs etcd and kube-apiserver and waits until /readyz answers. Stop
// them with Stop.
func Start(ctx context.Context, bins *Binaries, cfg Config) (_ *Server, err error) {
	if cfg.ServiceCIDR == "" {
		cfg.ServiceCIDR = "10.96.0.0/12"
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = 60 * time.Second
	}
	if cfg.Logf == nil {
		cfg.Logf = func(string, ...any) {}
	}
	s := &Server{bins: bins, cfg: cfg, Dir: cfg.Dir}
	if s.Dir == "" {
		if s.Dir, err = os.MkdirTemp("", "svctrace-kapi-"); err != nil {
			return nil, err
		}
		s.ownsDir = true
	}
	defer func() {
		if err != nil {
			_ = s.Stop()
		}
	}()
	begin := time.Now()
	ca, err := s.writeCredentials()
	if err != nil {
		return nil, err
	}
	s.CA = ca

	etcdPort, peerPort, apiPort, err := freePorts()
	if err != nil {
		return nil, err
	}
	etcdURL := "http://127.0.0.1:" + strconv.Itoa(etcdPort)
	peerURL := "http://127.0.0.1:" + strconv.Itoa(peerPort)
	s.etcd, err = startProcess("etcd", filepath.Join(s.Dir, "etcd.log"), []string{bins.Etcd,
		"--name", "default",
		"--data-dir", filepath.Join(s.Dir, "etcd"),
		"--listen-client-urls", etcdURL, "--advertise-client-urls", etcdURL,
		"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
		"--initial-cluster", "default=" + peerURL,
		"--unsafe-no-fsync", "--log-level", "warn",
	}, os.Environ())
	if err != nil {
		return nil, err
	}

	s.URL = "https://127.0.0.1:" + strconv.Itoa(apiPort)
	s.Kubeconfig = filepath.Join(s.Dir, "admin.kubeconfig")
	if err := s.WriteKubeconfig(s.Kubeconfig, ""); err != nil {
		return nil, err
	}
	d := func(name string) string { return filepath.Join(s.Dir, name) }
	s.apiArgs = []string{bins.APIServer,
		"--etcd-servers", etcdURL,
		"--bind-address", "127.0.0.1", "--secure-port", strconv.Itoa(apiPort),
		// A loopback advertise address needs the endpoint reconciler off.
		"--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none",
		"--tls-cert-file", d("apiserver.crt"), "--tls-private-key-file", d("apiserver.key"),
		"--client-ca-file", d("ca.crt"),
		"--service-account-key-file", d("sa.key"), "--service-account-signing-key-file", d("sa.key"),
		"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
		"--token-auth-file", d("tokens.csv"),
		"--authorization-mode", "RBAC",
		"--service-cluster-ip-range", cfg.ServiceCIDR,
		// No controller-manager creates the "default" ServiceAccounts.
		"--disable-admission-plugins", "ServiceAccount",
		"--profiling=false",
	}
	if err := s.StartAPIServer(ctx); err != nil {
		return nil, err
	}
	cfg.Logf("kapi: etcd and kube-apiserver %s ready at %s in %s", bins.Version, s.URL, time.Since(begin).Round(10*time.Millisecond))
	return s, nil
}

// StartAPIServer (re)starts kube-apiserver on the same address, against the
// same etcd, and waits for /readyz. Start calls it; tests call it after
// StopAPIServer.
func (s *Server) StartAPIServer(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apiserver != nil {
		return errors.New("kube-apiserver is running")
	}
	p, err := startProcess("kube-apiserver", filepath.Join(s.Dir, "kube-apiserver.log"), s.apiArgs, os.Environ())
	if err != nil {
		return err
	}
	s.apiserver = p
	if err := s.waitReady(ctx, p); err != nil {
		return err
	}
	return nil
}

// StopAPIServer stops kube-apiserver (etcd keeps running).
func (s *Server) StopAPIServer() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.apiserver == nil {
		return nil
	}
	err := s.apiserver.Stop(3 * time.Second) // open watches can hold a graceful stop for long
	s.apiserver = nil
	return err
}

// Stop stops kube-apiserver and etcd and removes Dir if Start created it.
func (s *Server) Stop() error {
	errs := []error{s.StopAPIServer()}
	s.mu.Lock()
	if s.etcd != nil {
		errs = append(errs, s.etcd.Stop(10*time.Second))
		s.etcd = nil
	}
	s.mu.Unlock()
	if s.ownsDir {
		errs = append(errs, os.RemoveAll(s.Dir))
	}
	return errors.Join(errs...)
}

func (s *Server) waitReady(ctx context.Context, p *Process) error {
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(s.CA)
	hc := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	defer hc.CloseIdleConnections()
	deadline := time.Now().Add(s.cfg.ReadyTimeout)
	var last string
	for time.Now().Before(deadline) {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL+"/readyz", nil)
		req.Header.Set("Authorization", "Bearer "+s.Token)
		resp, err := hc.Do(req)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			last = resp.Status
		} else {
			last = err.Error()
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-p.Exited():
			return fmt.Errorf("kube-apiserver %v before it was ready; log %s:\n%s", p.exitErr(), p.Log, logTail(p.Log))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return fmt.Errorf("kube-apiserver not ready after %s (%s); log %s:\n%s", s.cfg.ReadyTimeout, last, p.Log, logTail(p.Log))
}

// RESTConfig is an admin client configuration.
func (s *Server) RESTConfig() *rest.Config {
	return &rest.Config{
		Host:            s.URL,
		BearerToken:     s.Token,
		TLSClientConfig: rest.TLSClientConfig{CAData: s.CA},
		QPS:             100, Burst: 200,
	}
}

// Client is an admin clientset.
func (s *Server) Client() (kubernetes.Interface, error) {
	return kubernetes.NewForConfig(s.RESTConfig())
}

// WriteKubeconfig writes an admin kubeconfig for server (s.URL if empty;
// e.g. a forwarder's address inside a network namespace) to path.
func (s *Server) WriteKubeconfig(path, server string) error {
	if server == "" {
		server = s.URL
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["kapi"] = &clientcmdapi.Cluster{Server: server, CertificateAuthorityData: s.CA}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: s.Token}
	cfg.Contexts["kapi"] = &clientcmdapi.Context{Cluster: "kapi", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "kapi"
	return clientcmd.WriteToFile(*cfg, path)
}

// writeCredentials writes a CA and a serving certificate for 127.0.0.1 and
// localhost, the service-account signing key and the admin token file. It
// returns the CA certificate.
func (s *Server) writeCredentials() ([]byte, error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "svctrace-kapi-ca"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	caCert, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, err
	}
	srvKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	srvTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "kube-apiserver"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(7 * 24 * time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames:    []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
	}
	srvDER, err := x509.CreateCertificate(rand.Reader, srvTmpl, caCert, &srvKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	token := make([]byte, 16)
	if _, err := rand.Read(token); err != nil {
		return nil, err
	}
	s.Token = hex.EncodeToString(token)
	caPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
	files := map[string][]byte{
		"ca.crt":        caPEM,
		"apiserver.crt": pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: srvDER}),
		"tokens.csv":    []byte(s.Token + `,admin,admin,"system:masters"` + "\n"),
	}
	for name, key := range map[string]*ecdsa.PrivateKey{"apiserver.key": srvKey, "sa.key": saKey} {
		der, err := x509.MarshalECPrivateKey(key)
		if err != nil {
			return nil, err
		}
		files[name] = pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der})
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(s.Dir, name), data, 0o600); err != nil {
			return nil, err
		}
	}
	return caPEM, nil
}

// freePorts returns three distinct free TCP ports on 127.0.0.1.
func freePorts() (a, b, c int, err error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			ln.Close()
		}
	}()
	for range 3 {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return 0, 0, 0, err
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	return ports[0], ports[1], ports[2], nil
}

func logTail(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	return tail(b, 30)
}

// hostPort returns "host:port" of an URL like https://127.0.0.1:6443.
func hostPort(u string) string {
	return strings.TrimPrefix(strings.TrimPrefix(u, "https://"), "http://")
}
