# Lookaside build, test and demo targets. `make help` lists them.

GO        ?= go
POLICY    ?= round_robin
CALLS     ?= 300
# More demo flags, e.g. DEMO_FLAGS="-clients 100 -pick-first -weights 1,1,4"
DEMO_FLAGS ?=
# The e2e suite starts real Consul agents and waits for keepalive pings
# over 90 s; the limit leaves room for a slow machine.
TEST_TIMEOUT ?= 15m

.PHONY: help consul build test vet unit demo proto bench fuzz clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-8s %s\n", $$1, $$2}'

consul: ## build Consul v1.13.9 from source into the cache (once)
	@scripts/consul.sh >/dev/null

build: ## build the binaries into bin/
	$(GO) build -o bin/ ./cmd/...

vet: ## go vet and gofmt
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi

# The e2e tests run after the others, on a machine no other package's tests
# are loading: the adversary tests time what an honest client sees. The
# adversary suite, whose attackers share the test process, runs without the
# race detector (the balancer it attacks is a binary of its own). The lbserver
# tests run a second time with BalanceLoad on grpc-go's server
# (balancer.transport: grpc) instead of the balancer's own transport.
test: vet ## vet, then every test (unit, then e2e against real Consul) with -race (the adversary suite without)
	LOOKASIDE_CONSUL=$$(scripts/consul.sh) $(GO) test -race -timeout $(TEST_TIMEOUT) $$($(GO) list ./... | grep -v '/e2e$$')
	LBSERVER_TEST_TRANSPORT=grpc $(GO) test -race -timeout $(TEST_TIMEOUT) ./lbserver
	LOOKASIDE_CONSUL=$$(scripts/consul.sh) $(GO) test -race -timeout $(TEST_TIMEOUT) ./e2e
	LOOKASIDE_CONSUL=$$(scripts/consul.sh) $(GO) test -count=1 -timeout $(TEST_TIMEOUT) -run '^TestAdversarySuite$$' ./e2e

unit: ## the fast tests only (no Consul, no e2e)
	$(GO) test -race -short ./...

demo: ## Consul, three backends, the balancer and a client; prints the spread
	LOOKASIDE_CONSUL=$$(scripts/consul.sh) $(GO) run ./cmd/demo -policy $(POLICY) -calls $(CALLS) $(DEMO_FLAGS)

# tools/bench builds the binaries, starts Consul, backends and balancers,
# runs the e2e ClientMemory and loadreport CollectorMemory benchmarks itself,
# and writes docs/BENCHMARKS.md and docs/bench/*.png (about 12 minutes on 2 cores).
# More flags: BENCH_FLAGS="-quick" (a smoke test), -note "...", -slow-call-cpu 10ms.
BENCH_FLAGS ?=
bench: ## benchmarks: policies, load weights; then docs/BENCHMARKS.md (side by side with grpc-go's WRR, data path, memory per client)
	$(GO) test -run '^$$' -bench . -benchmem ./policy/... ./loadweight/... ./lbserver/
	LOOKASIDE_CONSUL=$$(scripts/consul.sh) $(GO) run ./tools/bench -out docs $(BENCH_FLAGS)

FUZZTIME ?= 30s
# Minimizing a new input is bounded too, so that a short run fuzzes rather than shrinks.
FUZZMINIMIZE ?= 5s
fuzz: ## run every fuzz target for FUZZTIME (default 30s) each; make test runs their seeds
	$(GO) test -run '^$$' -fuzz '^FuzzBalanceLoad$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbserver
	$(GO) test -run '^$$' -fuzz '^FuzzNameMapper$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbserver
	$(GO) test -run '^$$' -fuzz '^FuzzStreamMessages$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbserver
	$(GO) test -run '^$$' -fuzz '^FuzzXDSSubscribe$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbserver
	$(GO) test -run '^$$' -fuzz '^FuzzServerConn$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./internal/h2bidi
	$(GO) test -run '^$$' -fuzz '^FuzzServeDNS$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./dnsserver
	$(GO) test -run '^$$' -fuzz '^FuzzParseSpec$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./discovery/static
	$(GO) test -run '^$$' -fuzz '^FuzzSnapshot$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./discovery/consul
	$(GO) test -run '^$$' -fuzz '^FuzzDigest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./discovery/consul
	$(GO) test -run '^$$' -fuzz '^FuzzParseTarget$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./resolver/consul
	$(GO) test -run '^$$' -fuzz '^FuzzClientStats$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./clientstats
	$(GO) test -run '^$$' -fuzz '^FuzzVerifier$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbtoken
	$(GO) test -run '^$$' -fuzz '^FuzzParseKey$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./lbtoken
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./config
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./internal/tlsfiles
	$(GO) test -run '^$$' -fuzz '^FuzzStatusPage$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./admin
	$(GO) test -run '^$$' -fuzz '^FuzzFlags$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./cmd/lbserver
	$(GO) test -run '^$$' -fuzz '^FuzzNextReport$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./loadreport
	$(GO) test -run '^$$' -fuzz '^FuzzDiscoveryRequest$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./xds
	$(GO) test -run '^$$' -fuzz '^FuzzLoads$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./xds
	$(GO) test -run '^$$' -fuzz '^FuzzUpdate$$' -fuzztime $(FUZZTIME) -fuzzminimizetime $(FUZZMINIMIZE) ./loadweight

proto: ## regenerate the example service's Go code
	scripts/gen-proto.sh

clean: ## remove build output (not the Consul cache)
	rm -rf bin/
