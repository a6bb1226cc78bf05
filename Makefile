# svctrace: build, generate, test.
# sudo's secure_path usually lacks Go's own directory.
export PATH := /usr/local/go/bin:$(PATH)

GO        ?= go
BIN       ?= bin/svctrace
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/svctrace/svctrace/internal/cli.Version=$(VERSION)

# The VM kernel matrix runs the privileged attach and end-to-end tests on
# Debian's 5.10, 6.1 and 6.12 kernels, every backend x proxy cell they
# support. The ipvs cells also run the real kube-proxy in IPVS mode against
# a real etcd and kube-apiserver booted inside the VM (built on the host by
# the kapi target; test/vm/kernels.json selects the tests per cell).
VM_PACKAGES := ./internal/attach/ ./test/e2e/
VM_RUN      := ^(TestHealthyClusterIP|TestHostOriginatedConnectSource|TestUnreachableBackend|TestVerdict.*|TestLoadAttachAndRelease|TestDevicesOnChosenInterfaces|TestAttachReleaseBackend|TestForcedBackendReportsSkips|TestFilterUpdatesInPlace|TestSkipHooks|TestDaemonSetCapabilities)$$
VM_KERNELS  := 5.10,6.1,6.12
VM_PARALLEL := 2

.PHONY: all build generate deps kapi check test test-unit fuzz bench vet clean demo

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/svctrace

# Rebuild the BPF object and Go bindings (needs clang); commit the result.
generate:
	$(GO) generate ./internal/bpfobj/

# Debian packages the build, the tests and the demo need.
deps:
	./hack/install-deps.sh

# Real etcd, kube-apiserver and kube-proxy for the Kubernetes API tests
# (built once from the Go module proxy, cached by version and go.sum hash).
kapi:
	./hack/build-kapi.sh

vet:
	$(GO) vet ./...

# The README's two commands: set up and run the demo; set up and run every test.
demo: deps build
	$(BIN) demo

check: deps kapi test vm-matrix fuzz

# The VMs run the host-built svctrace binary (building under emulation is
# too slow).
vm-matrix: build
vm-matrix: export SVCTRACE_BIN := $(CURDIR)/$(BIN)

# Unit tests, the generated-code drift check, and the privileged tests on
# this kernel (lab e2e, real kube-apiserver + kube-proxy, recordings).
test: vet
	$(GO) test -count=1 -p 1 -timeout 30m ./...

test-unit:
	$(GO) test -count=1 -short ./...

# A short fuzz run of the recording reader (longer: FUZZTIME=10m make fuzz).
FUZZTIME ?= 10s
fuzz:
	$(GO) test -run='^$$' -fuzz=FuzzReader -fuzztime=$(FUZZTIME) ./internal/record/

# Performance budgets on this machine (root; iperf3 comes with deps).
bench: deps
	$(GO) run ./test/bench

clean:
	rm -rf bin

include test/vm/Makefile.vm
