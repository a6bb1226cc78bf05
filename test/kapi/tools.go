//go:build tools

// Package kapi pins the Kubernetes control-plane parts svctrace's tests run
// for real: etcd, kube-apiserver and kube-proxy, built from the Go module
// proxy at the versions in go.mod (see internal/kubetest, which builds and
// caches them, and hack/build-kapi.sh).
package kapi

import (
	_ "go.etcd.io/etcd/server/v3/etcdmain"
	_ "k8s.io/kubernetes/cmd/kube-apiserver/app"
	_ "k8s.io/kubernetes/cmd/kube-proxy/app"
)
