package kube

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

var (
	// ErrUnreachable matches (errors.Is) the error of Start when the API
	// server cannot be reached or does not answer in time.
	ErrUnreachable = errors.New("cannot reach the Kubernetes API server")
	// ErrForbidden matches (errors.Is) the error of Start when the API
	// server rejects the credentials or the RBAC rules deny a list.
	ErrForbidden = errors.New("the Kubernetes API server denied access")
)

// rbacHint says what svctrace needs, for forbidden errors.
const rbacHint = "svctrace needs get, list and watch on services, endpointslices.discovery.k8s.io, pods and nodes: see deploy/rbac.yaml"

// probeTimeout bounds one reachability probe after Start.
const probeTimeout = 3 * time.Second

// preflight lists one object of each watched resource, so that an API
// server that is down or denies access fails Start at once with a clear
// error instead of informers retrying forever.
func (s *Source) preflight(ctx context.Context) error {
	c, ns := s.client, s.opts.Namespace
	one := metav1.ListOptions{Limit: 1}
	checks := []struct {
		what string
		list func() error
	}{
		{"services in namespace " + ns, func() error { _, err := c.CoreV1().Services(ns).List(ctx, one); return err }},
		{"endpointslices in namespace " + ns, func() error { _, err := c.DiscoveryV1().EndpointSlices(ns).List(ctx, one); return err }},
		{"pods", func() error { _, err := c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, one); return err }},
		{"nodes", func() error { _, err := c.CoreV1().Nodes().List(ctx, one); return err }},
	}
	for _, ch := range checks {
		if err := ch.list(); err != nil {
			return s.classify("list "+ch.what, err)
		}
	}
	return nil
}

// classify wraps an API error in ErrUnreachable, ErrForbidden or neither.
func (s *Source) classify(what string, err error) error {
	server := s.opts.Server
	switch {
	case apierrors.IsUnauthorized(err):
		return fmt.Errorf("%w: %s at %s: the credentials were rejected: %w", ErrForbidden, what, server, err)
	case apierrors.IsForbidden(err):
		return fmt.Errorf("%w: %w (%s)", ErrForbidden, err, rbacHint)
	case errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%w at %s: no answer within %s", ErrUnreachable, server, s.opts.StartTimeout)
	case unavailable(err):
		return fmt.Errorf("%w at %s: %w", ErrUnreachable, server, transportCause(err))
	}
	return fmt.Errorf("%s at %s: %w", what, server, err)
}

// unavailable reports errors meaning "no usable API server there": transport
// errors (no HTTP status at all) and the statuses of a server that is
// starting, overloaded or failing.
func unavailable(err error) bool {
	var st apierrors.APIStatus
	if !errors.As(err, &st) {
		return true
	}
	return apierrors.IsServiceUnavailable(err) || apierrors.IsInternalError(err) ||
		apierrors.IsServerTimeout(err) || apierrors.IsTimeout(err) || apierrors.IsTooManyRequests(err)
}

// transportCause drops the request URL from a transport error: "dial tcp
// 127.0.0.1:6443: connect: connection refused" says it all.
func transportCause(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}

func isExpired(err error) bool {
	return apierrors.IsResourceExpired(err) || apierrors.IsGone(err) || errors.Is(err, io.EOF)
}

// probe checks that the API server answers a cheap request.
func (s *Source) probe(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, probeTimeout)
	defer cancel()
	_, err := s.client.CoreV1().Services(s.opts.Namespace).List(ctx, metav1.ListOptions{Limit: 1})
	if err != nil && unavailable(err) {
		return transportCause(err)
	}
	return nil // an answer, even an error status, means it is there
}

// monitor turns informer list/watch failures into at most one "lost
// contact" notice per outage, probes until the API server answers again,
// then says so. The informers relist by themselves; the relist's changes
// reach the builder like any other.
func (s *Source) monitor(ctx context.Context) {
	for {
		var err error
		select {
		case <-ctx.Done():
			return
		case err = <-s.watchErr:
		}
		if errorIsRoutine(err) {
			continue
		}
		cause := s.probe(ctx)
		if cause == nil || ctx.Err() != nil {
			continue // a passing failure: the informer retries by itself
		}
		down := s.opts.Now()
		s.notify(fmt.Sprintf("lost contact with the Kubernetes API server at %s (%v); tracing on with the cluster state of %s",
			s.opts.Server, cause, s.lastBuilt().Format(time.TimeOnly)))
		if !s.waitReachable(ctx) {
			return
		}
		s.notify(fmt.Sprintf("the Kubernetes API server at %s answers again after %s; resyncing the cluster state",
			s.opts.Server, s.opts.Now().Sub(down).Round(time.Second)))
		// Failures reported while it was down are history.
		select {
		case <-s.watchErr:
		default:
		}
	}
}

// waitReachable probes every PollInterval until the API server answers; it
// returns false when ctx ends first.
func (s *Source) waitReachable(ctx context.Context) bool {
	t := time.NewTicker(s.opts.PollInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		}
		if s.probe(ctx) == nil && ctx.Err() == nil {
			return true
		}
	}
}

func (s *Source) notify(msg string) {
	if s.opts.Notify != nil {
		s.opts.Notify(msg)
	}
}
