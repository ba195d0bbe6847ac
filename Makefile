# ecsmeta. `sudo make demo` and `sudo make test` install what they need.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/ecsmeta/ecsmeta/internal/config.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)"
ARCHES := amd64 arm64
FUZZTIME ?= 5s

.PHONY: build deps demo test test-unit test-fuzz test-integration test-e2e bench clean

build: ## bin/ecsmeta-init and bin/ecsmeta-proxy (host arch), plus bin/linux-{amd64,arm64}/
	$(GOBUILD) -o bin/ecsmeta-init ./cmd/init
	$(GOBUILD) -o bin/ecsmeta-proxy ./cmd/proxy
	for arch in $(ARCHES); do \
	  GOOS=linux GOARCH=$$arch $(GOBUILD) -o bin/linux-$$arch/ecsmeta-init ./cmd/init && \
	  GOOS=linux GOARCH=$$arch $(GOBUILD) -o bin/linux-$$arch/ecsmeta-proxy ./cmd/proxy || exit 1; \
	done

deps:
	@hack/deps.sh

demo: deps build
	hack/demo.sh

test: ## everything CI runs; prints each stage's wall time
	@start=$$(date +%s); \
	hack/stage.sh deps hack/deps.sh && \
	hack/stage.sh build $(MAKE) --no-print-directory build && \
	hack/stage.sh vet go vet ./... && \
	hack/stage.sh unit $(MAKE) --no-print-directory test-unit && \
	hack/stage.sh fuzz $(MAKE) --no-print-directory test-fuzz && \
	hack/stage.sh integration $(MAKE) --no-print-directory test-integration && \
	hack/stage.sh e2e $(MAKE) --no-print-directory test-e2e && \
	echo "=== make test: all stages ok in $$(( $$(date +%s) - start ))s"

test-unit:
	hack/gotest.sh -count=1 -race ./internal/... ./cmd/...

test-fuzz: ## each fuzz target for a bounded time
	@for t in $$(go test -list '^Fuzz' ./internal/... | grep '^Fuzz'); do \
	  pkg=$$(grep -rl "func $$t(" internal --include='*_test.go' | xargs -n1 dirname | head -1); \
	  echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	  go test ./$$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) >/dev/null || { go test ./$$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime 1x; exit 1; }; \
	done

test-integration:
	hack/gotest.sh -count=1 -timeout 20m ./test/integration/...

test-e2e: ## the real AWS SDKs and CLI against every layout; checks README's matrix
	hack/deps.sh e2e
	hack/gotest.sh -count=1 -timeout 10m ./test/e2e/...

clean:
	rm -rf bin

bench: deps build ## side-by-side benchmarks; see docs/benchmarks.md
	hack/bench.sh
