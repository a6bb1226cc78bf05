#!/usr/bin/env bash
# Builds, once, the real etcd, kube-apiserver and kube-proxy that the
# Kubernetes API tests (internal/kube, test/e2e/kube_test.go) run, from the
# separate Go module test/kapi, into
# ${SVCTRACE_CACHE:-$HOME/.cache/svctrace}/kapi/<version>-<go.sum hash>/.
# A cached build returns at once. A cold build takes minutes and ~2.5 GB of
# memory on 2 cores; keep $SVCTRACE_CACHE (or $HOME/.cache/svctrace) and the
# Go build cache between CI runs to skip it.
set -euo pipefail
cd "$(dirname "$0")/.."
exec go run ./internal/kubetest/cmd/kapi-build "$@"
