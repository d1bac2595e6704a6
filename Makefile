# Sightglass. `make demo` runs the whole system locally; `make test` runs every test.
SHELL   := /bin/bash
GO      ?= go
BIN     := .bin
DEMO_FOR ?=
FUZZTIME ?= 30s
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
test: fmt-check vet
	$(GO) test -race -timeout 15m ./...

# The whole system on this machine: an ingest with its embedded defaults, an
# agent enrolled with it, and simulated devices. DEMO_FOR=30s stops after that
# long and prints a summary.
demo: build
	$(BIN)/sightglass-demo --bin $(BIN) --dir .demo $(if $(DEMO_FOR),--for $(DEMO_FOR))

# The benchmarks, then a table of their domain figures (B/sample beside
# naive+zstd, samples/s, requests per poll); the raw output goes to
# .bench.out for benchstat.
bench:
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./pkg/benchtable/cmd/benchtable
	set -o pipefail; $(GO) test -run '^$$' -bench . -benchmem ./pkg/batch/ ./agent/buffer/ ./agent/driver/modbus/ ./ingest/blob/azure/ ./agent/driver/bacnet/ ./ingest/server/ ./agent/driver/opcua/ ./agent/daemon/ ./pkg/demo/ ./ingest/store/ ./ingest/web/ ./ingest/secretbox/ ./agent/driver/subprocess/ | tee .bench.out
	@echo; $(BIN)/benchtable < .bench.out

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/batch/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodePointTable$$' -fuzztime $(FUZZTIME) ./pkg/batch/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./agent/driver/csvtrend/
	$(GO) test -run '^$$' -fuzz '^FuzzServiceResponse$$' -fuzztime $(FUZZTIME) ./ingest/blob/azure/
	$(GO) test -run '^$$' -fuzz '^FuzzReadResponse$$' -fuzztime $(FUZZTIME) ./agent/driver/modbus/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeDeviceID$$' -fuzztime $(FUZZTIME) ./agent/driver/modbus/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRef$$' -fuzztime $(FUZZTIME) ./agent/driver/modbus/
	$(GO) test -run '^$$' -fuzz '^FuzzDecode$$' -fuzztime $(FUZZTIME) ./pkg/bacnet/
	$(GO) test -run '^$$' -fuzz '^FuzzParseRef$$' -fuzztime $(FUZZTIME) ./agent/driver/bacnet/
	$(GO) test -run '^$$' -fuzz '^FuzzSample$$' -fuzztime $(FUZZTIME) ./agent/driver/opcua/
	$(GO) test -run '^$$' -fuzz '^FuzzReadResults$$' -fuzztime $(FUZZTIME) ./agent/driver/opcua/
	$(GO) test -run '^$$' -fuzz '^FuzzDeliver$$' -fuzztime $(FUZZTIME) ./agent/driver/opcua/
	$(GO) test -run '^$$' -fuzz '^FuzzHistoryPage$$' -fuzztime $(FUZZTIME) ./agent/driver/opcua/
	$(GO) test -run '^$$' -fuzz '^FuzzRouteTable$$' -fuzztime $(FUZZTIME) ./agent/cli/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./agent/config/
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./ingest/config/
	$(GO) test -run '^$$' -fuzz '^FuzzImport$$' -fuzztime $(FUZZTIME) ./pkg/anon/
	$(GO) test -run '^$$' -fuzz '^FuzzRequest$$' -fuzztime $(FUZZTIME) ./ingest/web/
	$(GO) test -run '^$$' -fuzz '^FuzzParseWindow$$' -fuzztime $(FUZZTIME) ./ingest/web/
	$(GO) test -run '^$$' -fuzz '^FuzzVerifyPassword$$' -fuzztime $(FUZZTIME) ./ingest/web/
	$(GO) test -run '^$$' -fuzz '^FuzzOpen$$' -fuzztime $(FUZZTIME) ./ingest/secretbox/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeAnswer$$' -fuzztime $(FUZZTIME) ./agent/driver/subprocess/
	$(GO) test -run '^$$' -fuzz '^FuzzReadFrame$$' -fuzztime $(FUZZTIME) ./agent/driver/subprocess/
	$(GO) test -run '^$$' -fuzz '^FuzzDecodeCall$$' -fuzztime $(FUZZTIME) ./agent/driver/subprocess/
	$(GO) test -run '^$$' -fuzz '^FuzzRelayRecord$$' -fuzztime $(FUZZTIME) ./agent/driver/subprocess/

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
