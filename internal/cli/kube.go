package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/spf13/cobra"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/cli-runtime/pkg/genericclioptions"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/svctrace/svctrace/internal/kube"
	"github.com/svctrace/svctrace/internal/meta"
)

// kubeExamples lead the root command's examples: the cluster is read
// through the kubeconfig, like kubectl does.
const kubeExamples = `  # trace a Service, reading the cluster through your kubeconfig (like kubectl)
  sudo svctrace --svc hostnames -n default --kubeconfig ~/.kube/config

`

// addKubeFlags adds kubectl's connection flags (--kubeconfig, --context,
// -n/--namespace, --as, ...) and the dynamic completion of --svc and
// --namespace.
func (o *traceOptions) addKubeFlags(c *cobra.Command) {
	o.kube = genericclioptions.NewConfigFlags(false)
	o.kube.CacheDir = nil // svctrace uses no discovery cache
	o.kube.AddFlags(c.Flags())
	if f := c.Flags().Lookup("namespace"); f != nil {
		f.Usage = "the Service's namespace (default: the kubeconfig context's namespace, else default)"
	}
	if f := c.Flags().Lookup("request-timeout"); f != nil {
		f.Usage = "how long svctrace waits for the API server at start-up (e.g. 5s; 0 means 10s)"
	}
	_ = c.RegisterFlagCompletionFunc("svc", o.completeService)
	_ = c.RegisterFlagCompletionFunc("namespace", o.completeNamespace)
	c.Example = kubeExamples + c.Example
}

// completeKube resolves the namespace and, unless --manifests is given, the
// API server's client configuration.
func (o *traceOptions) completeKube() error {
	ns := *o.kube.Namespace
	if o.manifests != "" {
		if _, err := os.Stat(o.manifests); err != nil {
			return usageErr(fmt.Errorf("--manifests: %w", err))
		}
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		o.namespace = ns
		return nil
	}
	loader := o.kube.ToRawKubeConfigLoader()
	cfg, err := loader.ClientConfig()
	if err != nil {
		return kubeconfigErr(err)
	}
	if o.noKubeconfig(loader) {
		// clientcmd falls back to http://localhost:8080, as kubectl does:
		// more confusing than helpful on a node.
		return kubeconfigErr(clientcmd.ErrEmptyConfig)
	}
	if ns == "" {
		if ns, _, err = loader.Namespace(); err != nil {
			return kubeconfigErr(err)
		}
	}
	o.namespace = ns
	o.restConfig = cfg
	return nil
}

// noKubeconfig reports that no kubeconfig, --server or in-cluster
// configuration names an API server.
func (o *traceOptions) noKubeconfig(loader clientcmd.ClientConfig) bool {
	if *o.kube.APIServer != "" {
		return false
	}
	if _, err := rest.InClusterConfig(); err == nil {
		return false
	}
	raw, err := loader.RawConfig()
	return err == nil && len(raw.Clusters) == 0
}

func kubeconfigErr(err error) error {
	if clientcmd.IsEmptyConfig(err) {
		return usageErr(errors.New("no cluster metadata: no kubeconfig (--kubeconfig, $KUBECONFIG, ~/.kube/config) and not running in a Pod; " +
			"point --kubeconfig at one, or pass --manifests PATH (a file or folder written by 'kubectl get svc,endpointslices,pods,nodes -A -o yaml')"))
	}
	return usageErr(fmt.Errorf("kubeconfig: %w", oneLineError{err}))
}

// oneLineError prints a multi-line error (clientcmd's validation errors list
// one problem per line) on one line.
type oneLineError struct{ err error }

func (e oneLineError) Error() string {
	return strings.Join(strings.Fields(strings.ReplaceAll(e.err.Error(), "\n", "; ")), " ")
}

func (e oneLineError) Unwrap() error { return e.err }

// clientConfig is the client configuration for svctrace's informers.
func (o *traceOptions) clientConfig() (*rest.Config, time.Duration) {
	cfg := rest.CopyConfig(o.restConfig)
	cfg.UserAgent = "svctrace/" + Version
	cfg.WarningHandler = rest.NoWarnings{}
	cfg.QPS, cfg.Burst = 50, 100
	timeout := cfg.Timeout
	// --request-timeout bounds start-up, not the watches (an HTTP client
	// timeout would cut every watch).
	cfg.Timeout = 0
	return cfg, timeout
}

// metadataSource returns the trace's cluster metadata: the manifests given
// with --manifests, or the API server's, followed with informers until
// stop is called. An API server that cannot be reached or denies access is
// a usage error (exit code 2).
func (o *traceOptions) metadataSource(ctx context.Context) (src meta.Source, stop func(), err error) {
	if o.manifests != "" {
		return meta.NewManifestSource(o.manifests), func() {}, nil
	}
	cfg, timeout := o.clientConfig()
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, nil, usageErr(fmt.Errorf("kubeconfig: %w", err))
	}
	ctx, cancel := context.WithCancel(ctx)
	o.notices = make(chan string, 16)
	s, err := kube.Start(ctx, client, kube.Options{
		Namespace:    o.namespace,
		Server:       cfg.Host,
		StartTimeout: timeout,
		Notify: func(msg string) {
			fmt.Fprintf(o.stderr, "svctrace: warning: %s\n", msg)
			select {
			case o.notices <- msg: // also a notice record in the trace's output
			default:
			}
		},
	})
	if err != nil {
		cancel()
		return nil, nil, err
	}
	stop = func() {
		cancel()
		s.Close()
	}
	if err := o.checkService(ctx, s, client); err != nil {
		stop()
		return nil, nil, err
	}
	return s, stop, nil
}

// checkService fails early for a Service that is not in its namespace,
// suggesting the namespaces that have one of that name (the informers only
// see the Service's namespace; a forgotten -n is the usual mistake).
func (o *traceOptions) checkService(ctx context.Context, s *kube.Source, client kubernetes.Interface) error {
	snap, err := s.Snapshot(ctx)
	if err != nil {
		return err
	}
	_, err = snap.Service(o.namespace, o.service)
	var unknown *meta.UnknownServiceError
	if !errors.As(err, &unknown) || len(unknown.Suggestions) > 0 {
		return nil // found, or near names in the namespace: tracer.Run says so
	}
	lctx, cancel := context.WithTimeout(ctx, completionTimeout)
	defer cancel()
	list, lerr := client.CoreV1().Services(metav1.NamespaceAll).List(lctx, metav1.ListOptions{
		FieldSelector: "metadata.name=" + o.service, Limit: 3,
	})
	if lerr == nil {
		for _, svc := range list.Items {
			unknown.Suggestions = append(unknown.Suggestions, svc.Namespace+"/"+svc.Name)
		}
	}
	return unknown
}

// completionTimeout bounds the API requests of shell completion.
const completionTimeout = 5 * time.Second

// completeService lists the Services of the namespace for --svc: from
// --manifests if given, else from the API server.
func (o *traceOptions) completeService(cmd *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	ns := *o.kube.Namespace
	if o.manifests != "" {
		if ns == "" {
			ns = metav1.NamespaceDefault
		}
		snap, err := meta.NewManifestSource(o.manifests).Snapshot(cmd.Context())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var out []cobra.Completion
		for _, s := range snap.Services() {
			if s.Namespace == ns && strings.HasPrefix(s.Name, prefix) {
				out = append(out, cobra.CompletionWithDesc(s.Name, serviceDesc(s)))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
	client, ns, err := o.completionClient(ns)
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	list, err := client.CoreV1().Services(ns).List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	var out []cobra.Completion
	for _, s := range list.Items {
		if strings.HasPrefix(s.Name, prefix) {
			out = append(out, cobra.CompletionWithDesc(s.Name, string(s.Spec.Type)+" "+s.Spec.ClusterIP))
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

// serviceDesc is the completion description of a Service: "ClusterIP
// 10.96.0.10", "headless".
func serviceDesc(s *meta.Service) string {
	if s.Headless {
		return "headless"
	}
	d := string(s.Type)
	if len(s.ClusterIPs) > 0 {
		d += " " + s.ClusterIPs[0].String()
	}
	return d
}

// completeNamespace lists namespaces for -n (needs list on namespaces,
// which svctrace's own ClusterRole does not grant: then nothing is offered).
func (o *traceOptions) completeNamespace(_ *cobra.Command, _ []string, prefix string) ([]cobra.Completion, cobra.ShellCompDirective) {
	client, _, err := o.completionClient("")
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
	defer cancel()
	list, err := client.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
	}
	var out []cobra.Completion
	for _, n := range list.Items {
		if strings.HasPrefix(n.Name, prefix) {
			out = append(out, n.Name)
		}
	}
	return out, cobra.ShellCompDirectiveNoFileComp
}

func (o *traceOptions) completionClient(ns string) (kubernetes.Interface, string, error) {
	loader := o.kube.ToRawKubeConfigLoader()
	cfg, err := loader.ClientConfig()
	if err != nil {
		return nil, "", err
	}
	if ns == "" {
		if ns, _, err = loader.Namespace(); err != nil {
			return nil, "", err
		}
	}
	cfg.WarningHandler = rest.NoWarnings{}
	cfg.Timeout = completionTimeout
	client, err := kubernetes.NewForConfig(cfg)
	return client, ns, err
}

// asKubectlPlugin makes help and usage read "kubectl svctrace" when the
// binary runs as a kubectl plugin (installed as kubectl-svctrace on PATH).
func asKubectlPlugin(root *cobra.Command, argv0 string) {
	name := filepath.Base(argv0)
	if !strings.HasPrefix(name, "kubectl-") {
		return
	}
	display := "kubectl " + strings.ReplaceAll(strings.TrimPrefix(name, "kubectl-"), "_", "-")
	if root.Annotations == nil {
		root.Annotations = map[string]string{}
	}
	root.Annotations[cobra.CommandDisplayNameAnnotation] = display
	// "svctrace" used as a command in the help text.
	pluginWords := regexp.MustCompile(`(^|[\s'])svctrace( |$)`)
	root.Example = pluginWords.ReplaceAllString(root.Example, "${1}"+display+"${2}")
	root.Long = pluginWords.ReplaceAllString(root.Long, "${1}"+display+"${2}")
}

// kubeOptions are the trace command's Kubernetes API settings.
type kubeOptions struct {
	kube       *genericclioptions.ConfigFlags
	restConfig *rest.Config
}
