# The README's two commands: `make demo` and `make test`. Both install what
# is missing (scripts/setup.sh) and start their own throwaway PostgreSQL.
GO ?= go
# Extra flags for `go test`, e.g. make test TESTFLAGS=-v
TESTFLAGS ?=

.PHONY: all setup test vet fmt-check fuzz demo bench

all: test

setup:
	bash scripts/setup.sh

# cmd/warmpg and examples are modules of their own (their charting, ORM and
# metrics libraries stay out of the library's go.mod): ./... does not reach
# them, so each target names them too.
CMD_MODULE := cmd/warmpg
EXAMPLES_MODULE := examples
# tools/pgcontainer (testcontainers-go, the Docker client) is one too: the
# container path for laptops, kept out of every adopter's module graph.
TOOLS_MODULE := tools/pgcontainer
# tools/pgxsuite runs pgx's own stdlib tests through warmpg (testify stays
# out of the library's go.mod); its test file is generated from the module
# cache by gen.sh.
PGXSUITE_MODULE := tools/pgxsuite

vet:
	$(GO) vet ./...
	$(GO) -C $(CMD_MODULE) vet ./...
	$(GO) -C $(EXAMPLES_MODULE) vet ./...
	$(GO) -C $(TOOLS_MODULE) vet ./...
	GO=$(GO) bash $(PGXSUITE_MODULE)/gen.sh
	$(GO) -C $(PGXSUITE_MODULE) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# vet, gofmt, the adopter check, then every module's tests with the race
# detector against real servers, then again on the oldest Go the go.mod
# files declare. The DSN parser's fuzz test runs here too, on its committed
# seeds only (testdata/fuzz/FuzzParseDSN): `make test` never explores at
# random, so it gives the same answer every time. Exploring is `make fuzz`.
# The container tool's tests skip the container itself without a Docker
# engine.
test: setup vet fmt-check adopter-check test-race pgx-suite pgx-latest test-oldest

.PHONY: test-race adopter-check test-oldest pgx-suite pgx-latest
test-race: setup
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...
	$(GO) -C $(CMD_MODULE) test -race -count=1 -timeout 10m $(TESTFLAGS) ./...
	$(GO) -C $(EXAMPLES_MODULE) test -race -count=1 -timeout 10m $(TESTFLAGS) ./...
	$(GO) -C $(TOOLS_MODULE) test -race -count=1 -timeout 10m $(TESTFLAGS) ./...

# pgx's own stdlib tests through warmpg, with pool_lazy_begin off and on:
# the same outcome both ways, and no failure but the known differences
# scripts/pgx-suite.sh lists.
pgx-suite: setup
	GO=$(GO) bash scripts/pgx-suite.sh

# The tests most tied to pgx's internals (statement warming, lazy BEGIN,
# replan, the retry classification, cancellation, and pgx's stdlib suite)
# against the newest pgx/v5 the module proxy serves, in a temporary copy
# of the module: a pgx that changes what warmpg relies on fails here,
# naming the assumption that broke. Against go.mod's own pgx when nothing
# newer is served (it says so).
pgx-latest: setup
	GO=$(GO) bash scripts/pgx-latest.sh

# A new module whose only import is warmpg must have at most 22 modules in
# its graph (`go list -m all`); prints the count.
adopter-check:
	GO=$(GO) bash scripts/adopter-check.sh

# The oldest supported Go (the go directive of go.mod), fetched through the
# module proxy on first use. Without -race: this run checks that the code
# builds and behaves on that toolchain; the race detector ran above.
GO_OLDEST ?= go$(shell awk '$$1 == "go" { print $$2; exit }' go.mod)
test-oldest: setup
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) version
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) vet ./...
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) test -count=1 -timeout 20m $(TESTFLAGS) ./...
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) -C $(CMD_MODULE) test -count=1 -timeout 10m $(TESTFLAGS) ./...
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) -C $(EXAMPLES_MODULE) test -count=1 -timeout 10m $(TESTFLAGS) ./...
	GOTOOLCHAIN=$(GO_OLDEST) $(GO) -C $(TOOLS_MODULE) test -count=1 -timeout 10m $(TESTFLAGS) ./...

# The laptop path without PostgreSQL installed: ./bin/pgcontainer -- go test ./...
.PHONY: bin/pgcontainer
bin/pgcontainer:
	$(GO) -C $(TOOLS_MODULE) build -o $(CURDIR)/bin/pgcontainer .

# The DSN/option parser under go's fuzzer, exploring new inputs;
# FUZZTIME=5m for a longer run. Not part of `make test`. An input that fails
# is written to testdata/fuzz/FuzzParseDSN/: fix the parser and commit that
# file with the fix, and every `make test` replays it from then on.
FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseDSN -fuzztime $(FUZZTIME) .

# The command, built from its own module into bin/ (git ignores it).
.PHONY: bin/warmpg bench-go
bin/warmpg:
	$(GO) -C $(CMD_MODULE) build -o $(CURDIR)/bin/warmpg .

# On a throwaway local server at 5 ms injected round-trip time: cold vs
# warmed pool, reset modes, read-only transactions (about 30 s).
# DEMOFLAGS=-h lists the knobs.
DEMOFLAGS ?=
demo: setup bin/warmpg
	./bin/warmpg demo $(DEMOFLAGS)

# warmpg's reset modes vs pgx, lib/pq and pgxpool, and warm-up times, in one
# interleaved run (about 70 s); BENCHMARKS.md shows one. Not part of
# `make test`. BENCHFLAGS="--svg docs/bench.svg" redraws the chart.
BENCHFLAGS ?=
bench: setup bin/warmpg
	./bin/warmpg bench $(BENCHFLAGS)

# The go test benchmarks behind the README's numbers.
bench-go: setup
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m .

# A seeded, random sequence of faults (restarts, stops, terminated backends,
# SIGSTOP, a black hole, exhausted connection slots) under steady load, for
# 150 s against a throwaway cluster; prints the tables of RELIABILITY.md.
# Not part of `make test`. Replay a run: go test -race -run TestSoak -v
# -timeout 10m . -args -warmpg.soak=150s -warmpg.soak.seed=N
.PHONY: soak
soak: setup
	$(GO) test -race -count=1 -run TestSoak -v -timeout 10m . -args -warmpg.soak=150s
