# ecsmeta. `sudo make demo` and `sudo make test` install what they need.
SHELL := /bin/bash
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X github.com/ecsmeta/ecsmeta/internal/config.Version=$(VERSION)
GOBUILD := CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)"
ARCHES := amd64 arm64
FUZZTIME ?= 5s

.PHONY: build deps demo lint kind-e2e test test-unit test-fuzz test-integration test-chart manifests test-e2e images e2e-containers bench clean

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
	hack/stage.sh lint $(MAKE) --no-print-directory lint && \
	hack/stage.sh unit $(MAKE) --no-print-directory test-unit && \
	hack/stage.sh fuzz $(MAKE) --no-print-directory test-fuzz && \
	hack/stage.sh integration $(MAKE) --no-print-directory test-integration && \
	hack/stage.sh chart $(MAKE) --no-print-directory test-chart && \
	hack/stage.sh e2e $(MAKE) --no-print-directory test-e2e && \
	hack/stage.sh containers $(MAKE) --no-print-directory e2e-containers && \
	echo "=== make test: all stages ok in $$(( $$(date +%s) - start ))s"

lint: ## shellcheck every script; the kind script's --dry-run must run
	shellcheck hack/*.sh .ci/run
	hack/kind-e2e.sh --dry-run >/dev/null

kind-e2e: ## the chart in a real kind cluster (needs docker, kind, helm, kubectl); see hack/kind-e2e.sh
	hack/kind-e2e.sh

test-unit:
	hack/gotest.sh -count=1 -race ./internal/... ./cmd/... ./test/containers/...

test-fuzz: ## each fuzz target for a bounded time
	@for t in $$(go test -list '^Fuzz' ./internal/... | grep '^Fuzz'); do \
	  pkg=$$(grep -rl "func $$t(" internal --include='*_test.go' | xargs -n1 dirname | head -1); \
	  echo "fuzz $$pkg $$t ($(FUZZTIME))"; \
	  go test ./$$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) >/dev/null || { go test ./$$pkg -run '^$$' -fuzz "^$$t$$" -fuzztime 1x; exit 1; }; \
	done

test-integration:
	hack/gotest.sh -count=1 -timeout 20m ./test/integration/...

test-chart: ## helm lint/template through Helm's Go packages, strict decoding, Pod Security, manifests/ up to date
	hack/gotest.sh -count=1 ./test/chart/...

manifests: ## manifests/ecsmeta.yaml from the chart with default values
	UPDATE_MANIFESTS=1 go test -count=1 -run TestManifestsAreUpToDate ./test/chart/

test-e2e: ## the real AWS SDKs and CLI against every layout; checks README's matrix
	hack/deps.sh e2e
	hack/gotest.sh -count=1 -timeout 10m ./test/e2e/...

ENGINE ?= $(shell command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1 && echo docker || echo podman)
IMAGE_PREFIX ?= ghcr.io/ecsmeta/
IMAGE_TAG ?= $(VERSION)
BUILD_ARGS ?=
images: build ## ecsmeta-init and ecsmeta-proxy images (docker if it runs, else podman), from bin/linux-*/
	for t in init proxy; do \
	  $(ENGINE) build $(if $(filter podman,$(ENGINE)),--format docker --pull=never) --target $$t \
	    --build-arg VERSION=$(VERSION) $(BUILD_ARGS) -t $(IMAGE_PREFIX)ecsmeta-$$t:$(IMAGE_TAG) . || exit 1; \
	done

e2e-containers: ## the images and the compose examples in real containers (podman)
	hack/e2e-containers.sh

clean:
	rm -rf bin

bench: deps build ## side-by-side benchmarks; see docs/benchmarks.md
	hack/bench.sh
