# svctrace: build, generate, test.
GO        ?= go
BIN       ?= bin/svctrace
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS   := -X github.com/svctrace/svctrace/internal/cli.Version=$(VERSION)
# Every test package; privileged ones need root (they build network namespaces
# and load BPF) and run in CI.
PKGS      ?= ./...

.PHONY: all build generate deps check test test-unit bench vet clean demo

all: build

build:
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/svctrace

# Rebuild the BPF object and Go bindings (needs clang); commit the result.
generate:
	$(GO) generate ./internal/bpfobj/

# Debian packages the build, the tests and the demo need.
deps:
	./hack/install-deps.sh

vet:
	$(GO) vet ./...

# The whole suite: unit tests, the generated-code drift check, the privileged
# end-to-end tests on this kernel, and the VM kernel matrix.
test: vet
	$(GO) test -count=1 -p 1 -timeout 40m $(PKGS)

test-unit:
	$(GO) test -count=1 -short ./...

include test/vm/Makefile.vm

bench:
	$(GO) run ./test/bench

# The README's two commands: set up and run the demo; set up and run every test.
demo: deps build
	$(BIN) demo

check: deps test

clean:
	rm -rf bin
