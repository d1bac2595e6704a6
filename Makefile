# Sightglass. `make demo` runs the whole system locally; `make test` runs every test.
SHELL   := /bin/bash
GO      ?= go
BIN     := .bin
DEMO_FOR ?=
FUZZTIME ?= 30s
# How much `make test` fuzzes each target after the tests (CI runs each
# briefly): a count of inputs, not a duration, which also keeps clear of
# the fuzz coordinator's deadline race (see fuzz).
TEST_FUZZTIME ?= 3000x
export PATH := /usr/local/go/bin:$(PATH)

.PHONY: all build test vet fmt-check demo bench fuzz clean package

all: build

build:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./agent/cmd/... ./ingest/cmd/... ./pkg/demo/cmd/...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.*')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

# Every test, with the race detector. Integration tests start their own
# servers on loopback; nothing leaves the machine.
# What tests keep for a person to look at (t.ArtifactDir: the dashboard's
# screenshots) lands under .test-artifacts/_artifacts/.
test: fmt-check vet
	@rm -rf .test-artifacts && mkdir -p .test-artifacts
	$(GO) test -race -timeout 15m -artifacts -outputdir $(CURDIR)/.test-artifacts ./...
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)

# The whole system on this machine: an ingest with its embedded defaults, an
# agent enrolled with it, and simulated devices. DEMO_FOR=30s stops after that
# long and prints a summary.
demo: build
	$(BIN)/sightglass-demo --bin $(BIN) --dir .demo $(if $(DEMO_FOR),--for $(DEMO_FOR))

# Test sources outside dot-directories and installed peers, tracked or not.
TEST_SRCS = find . -name '*_test.go' -not -path '*/.*' -not -path '*/node_modules/*'
# Every package with a benchmark, found in the sources.
BENCH_PKGS = $(shell $(TEST_SRCS) | xargs grep -l '^func Benchmark' | xargs -n1 dirname | sort -u)

# The benchmarks (every package that has one), then a table of their domain figures (B/sample beside
# naive+zstd, samples/s, requests per poll); the raw output goes to
# .bench.out for benchstat.
bench:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./pkg/benchtable/cmd/benchtable
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchmem $(BENCH_PKGS) | tee .bench.out
	@echo; $(BIN)/benchtable < .bench.out

# Every fuzz target in the repository, each for FUZZTIME with its seed
# corpus in the package's testdata/fuzz/<Name>/. The targets are found in
# the sources, so a new one cannot be left out; a target without a
# committed corpus fails here. Go 1.26's fuzz coordinator can end a timed
# run with a bare "context deadline exceeded" on a loaded machine
# (golang/go#75804, fixed in 1.27): a run that ends so without writing a
# failing input is reported and not counted as a finding.
fuzz:
	@mkdir -p $(BIN); set -e -o pipefail; for f in $$($(TEST_SRCS) | sort); do \
	  dir=$$(dirname $$f); \
	  for name in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
	    if ! ls $$dir/testdata/fuzz/$$name/* >/dev/null 2>&1; then \
	      echo "fuzz: $$name in $$dir has no seed corpus in $$dir/testdata/fuzz/$$name/"; exit 1; fi; \
	    echo "fuzz: $$name in $$dir for $(FUZZTIME)"; \
	    seeds=$$(ls $$dir/testdata/fuzz/$$name | wc -l); \
	    if ! $(GO) test -run '^$$' -fuzz "^$$name\$$" -fuzztime $(FUZZTIME) $$dir 2>&1 | tee $(BIN)/fuzz.out; then \
	      if [ "$$(ls $$dir/testdata/fuzz/$$name | wc -l)" = "$$seeds" ] && grep -q '^    context deadline exceeded$$' $(BIN)/fuzz.out; then \
	        echo "fuzz: $$name stopped on Go's fuzz-deadline race (golang/go#75804) and wrote no failing input: not a finding"; \
	      else exit 1; fi; \
	    fi; \
	  done; \
	done

# Debian packages of the agent and the ingest for each architecture into
# dist/, built with nfpm run through go.mod's tool directive (no downloaded
# binary). The version must start with a digit for dpkg.
PKG_ARCHES ?= amd64 arm64
PKG_NAMES ?= agent ingest
PKG_DIR ?= dist
PKG_VERSION ?= 0.1.0~git$(shell git rev-parse --short HEAD 2>/dev/null || echo unknown)
package:
	@mkdir -p $(PKG_DIR)
	@set -e; for a in $(PKG_ARCHES); do \
		CGO_ENABLED=0 GOOS=linux GOARCH=$$a $(GO) build -trimpath -ldflags "-s -w -X github.com/sightglass-bms/sightglass/agent/cli.Version=$(PKG_VERSION)" \
			-o $(BIN)/package/ $(foreach p,$(PKG_NAMES),./$(p)/cmd/sightglass-$(p)); \
		for p in $(PKG_NAMES); do \
			ARCH=$$a VERSION=$(PKG_VERSION) $(GO) tool nfpm package --config packaging/nfpm-$$p.yaml --packager deb --target $(PKG_DIR)/; \
		done; \
	done
	@ls -l $(PKG_DIR)/*.deb

clean:
	rm -rf $(BIN) .demo dist
