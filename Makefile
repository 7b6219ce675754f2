# The README's two commands: `make demo` and `make test`. Both install what
# is missing (scripts/setup.sh) and start their own throwaway PostgreSQL.
GO ?= go
# Extra flags for `go test`, e.g. make test TESTFLAGS=-v
TESTFLAGS ?=

.PHONY: all setup test vet fmt-check fuzz demo bench

all: test

setup:
	bash scripts/setup.sh

vet:
	$(GO) vet ./...

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); \
	if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# vet, gofmt, a short fuzz of the DSN parser, then every test with the race
# detector against real servers.
test: setup vet fmt-check fuzz
	$(GO) test -race -count=1 -timeout 20m $(TESTFLAGS) ./...

# The DSN/option parser under go's fuzzer; FUZZTIME=5m for a longer run.
FUZZTIME ?= 15s
fuzz:
	$(GO) test -run '^$$' -fuzz FuzzParseDSN -fuzztime $(FUZZTIME) .

# The main job on a throwaway local server: warming N connections one at a
# time vs. with WarmDB at an injected round-trip time.
demo: setup
	$(GO) run ./cmd/warmpg demo

# The benchmarks behind the README's numbers (ratios against the peers in
# one run). Not part of `make test`: they take minutes.
bench: setup
	$(GO) test -run '^$$' -bench . -benchtime 3x -timeout 30m .
