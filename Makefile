# Spate. `make dev` runs the whole pipeline; `make test` runs every check CI runs.

GO       ?= go
BIN      := $(CURDIR)/.bin
PG_BIN   := $(firstword $(wildcard /usr/lib/postgresql/*/bin))

# Pinned code generators, installed into .bin by `make proto`.
BUF_VERSION             := v1.75.0
PROTOC_GEN_GO_VERSION   := v1.36.12
CONNECT_GO_VERSION      := v1.21.1
# buf/validate/validate.proto, which the schemas' constraints import, comes
# from this release of github.com/bufbuild/protovalidate, through the Go
# module proxy: no need for buf's registry.
PROTOVALIDATE_VERSION   := v1.2.2

.PHONY: dev test deps build buf proto proto-check fuzz lint

## dev: run edge, projector and fan-out on embedded Kafka and throwaway Postgres and Redis
dev: deps build
	$(BIN)/spate dev

## test: vet, gofmt, and every test with the race detector, on real Postgres and Redis
test: deps $(BIN)/buf
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.go$$')); \
		if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) test -race -count=1 -timeout 20m ./...

## buf: install the pinned buf into .bin (spate schema check uses it), with the protovalidate module buf.yaml names, so that buf build works here
buf: $(BIN)/buf $(BIN)/protovalidate/buf/validate/validate.proto

## deps: install the local servers tests and dev need (redis-server, PostgreSQL) when missing
deps:
	@missing=""; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	command -v postgres >/dev/null || [ -n "$(PG_BIN)" ] || missing="$$missing postgresql"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "installing$$missing"; \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else \
			echo "missing:$$missing. Install them (Debian: sudo apt-get install$$missing) and run again."; exit 1; \
		fi; \
	fi

## build: the spate binary in .bin/
build:
	$(GO) build -o $(BIN)/spate ./cmd/spate

$(BIN)/buf:
	GOBIN=$(BIN) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(BIN)/protoc-gen-connect-go:
	GOBIN=$(BIN) $(GO) install connectrpc.com/connect/cmd/protoc-gen-connect-go@$(CONNECT_GO_VERSION)

$(BIN)/protovalidate/buf/validate/validate.proto:
	@dir=$$($(GO) mod download -json github.com/bufbuild/protovalidate@$(PROTOVALIDATE_VERSION) | sed -n 's/^.*"Dir": "\(.*\)",$$/\1/p'); \
		[ -n "$$dir" ] || { echo "cannot download github.com/bufbuild/protovalidate@$(PROTOVALIDATE_VERSION)"; exit 1; }; \
		mkdir -p $(@D) && cp $$dir/proto/protovalidate/buf/validate/validate.proto $@ && chmod 644 $@

## proto: lint the .proto files and regenerate the Go code
proto: $(BIN)/buf $(BIN)/protoc-gen-go $(BIN)/protoc-gen-connect-go $(BIN)/protovalidate/buf/validate/validate.proto
	$(BIN)/buf lint
	$(BIN)/buf generate

## proto-check: fail if the committed generated code differs from what `make proto` writes
proto-check: proto
	@git diff --exit-code -- '*.pb.go' '*.connect.go' || \
		{ echo "generated code is stale: run make proto and commit"; exit 1; }
	@untracked=$$(git ls-files --others --exclude-standard -- '*.pb.go' '*.connect.go'); \
		if [ -n "$$untracked" ]; then echo "generated but not committed: $$untracked"; exit 1; fi

## lint: staticcheck over every package
lint:
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

## fuzz: run each fuzz target for FUZZTIME (default 20s)
FUZZTIME ?= 20s
fuzz:
	$(GO) test -run='^$$' -fuzz='^FuzzDecode$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzMarshalJSON$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzLoadedType$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzWireJSON$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzJSONWire$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzChecks$$' -fuzztime=$(FUZZTIME) ./schemas/
	$(GO) test -run='^$$' -fuzz='^FuzzParseDeadLetter$$' -fuzztime=$(FUZZTIME) ./consumers/
	$(GO) test -run='^$$' -fuzz='^FuzzEvent$$' -fuzztime=$(FUZZTIME) ./cekafka/
	$(GO) test -run='^$$' -fuzz='^FuzzDecodeJSONEvent$$' -fuzztime=$(FUZZTIME) ./producers/edge/
	$(GO) test -run='^$$' -fuzz='^FuzzJSONBatch$$' -fuzztime=$(FUZZTIME) ./producers/edge/
