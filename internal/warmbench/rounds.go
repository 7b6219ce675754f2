package warmbench

import (
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"math"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Time bounds. Every call into a driver gets a context with a deadline, and
// runs under Bounded, which gives up on a call still running StuckGrace
// after its context ended (a call that ignores its context) and fails with
// the stacks of the goroutines involved, instead of hanging the caller.
const (
	BatchTimeout = 30 * time.Second // one variant's batch (normally well under 1 s)
	SetupTimeout = 2 * time.Minute  // opening and warming every pool
	CloseTimeout = 30 * time.Second // closing one pool
	StuckGrace   = 10 * time.Second
)

// RunBatch runs op n times, spread over clients goroutines that take from a
// shared count, and returns the wall time from the first start to the last
// finish. It stops at the first error, and fails when the batch takes longer
// than BatchTimeout (see Bounded).
func RunBatch(ctx context.Context, op func(context.Context) error, n, clients int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, BatchTimeout)
	defer cancel()
	var d time.Duration
	err := Bounded(ctx, "batch", func() (err error) {
		d, err = runOps(ctx, op, n, clients)
		return err
	})
	if err != nil {
		return 0, err // d may still be written by a stuck runOps
	}
	return d, nil
}

func runOps(ctx context.Context, op func(context.Context) error, n, clients int) (time.Duration, error) {
	if clients <= 1 {
		start := time.Now()
		for range n {
			if err := op(ctx); err != nil {
				return 0, err
			}
		}
		return time.Since(start), nil
	}
	var left atomic.Int64
	left.Store(int64(n))
	errc := make(chan error, clients)
	var wg sync.WaitGroup
	start := time.Now()
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if err := op(ctx); err != nil {
					left.Store(math.MinInt32)
					errc <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	close(errc)
	if err := <-errc; err != nil {
		return 0, err
	}
	return elapsed, nil
}

// Rounds holds each round's batch time per variant.
type Rounds struct {
	Ops   int // operations per variant per round
	Times []map[string]time.Duration
}

// NewRounds returns an empty Rounds for rounds of n operations per variant
// in passes passes (n is rounded down to a multiple of passes).
func NewRounds(n, passes int) *Rounds { return &Rounds{Ops: n / passes * passes} }

// Run runs one more round and records it. A round is passes passes; in each
// pass every variant runs a batch of Ops/passes operations over clients
// goroutines, in an order rotated each pass and reversed every other pass,
// with a GC before each batch. A variant's time in a round is the sum of its
// batches: fine interleaving spreads slow drift (another process waking up
// for a second) over every variant. Batches carry the pprof label
// variant=<name>, so a -cpuprofile splits by variant (go tool pprof -tags,
// or -tagfocus 'variant=^check$').
func (r *Rounds) Run(ctx context.Context, vs []*Variant, passes, clients int) error {
	per := r.Ops / passes
	round := len(r.Times)
	times := make(map[string]time.Duration, len(vs))
	order := make([]int, len(vs))
	for pass := range passes {
		k := round*passes + pass
		for i := range order {
			order[i] = (i + k) % len(vs)
		}
		if k%2 == 1 {
			slices.Reverse(order)
		}
		for _, i := range order {
			v := vs[i]
			runtime.GC()
			var d time.Duration
			var err error
			pprof.Do(ctx, pprof.Labels("variant", v.Name), func(ctx context.Context) {
				d, err = RunBatch(ctx, v.Op, per, clients)
			})
			if err != nil {
				return fmt.Errorf("round %d: %s: %w", round, v.Name, err)
			}
			times[v.Name] += d
		}
	}
	r.Times = append(r.Times, times)
	return nil
}

// PerSecond is a variant's operations per second over all rounds.
func (r *Rounds) PerSecond(name string) float64 {
	var sum time.Duration
	for _, t := range r.Times {
		sum += t[name]
	}
	return float64(r.Ops*len(r.Times)) / sum.Seconds()
}

// PerSecondEach is a variant's operations per second in each round.
func (r *Rounds) PerSecondEach(name string) []float64 {
	out := make([]float64, len(r.Times))
	for i, t := range r.Times {
		out[i] = float64(r.Ops) / t[name].Seconds()
	}
	return out
}

// Ratios is, per round, a's batch time over b's (b's throughput over a's).
func (r *Rounds) Ratios(a, b string) []float64 {
	ratios := make([]float64, 0, len(r.Times))
	for _, t := range r.Times {
		if t[a] <= 0 || t[b] <= 0 {
			panic(errors.New("warmbench: no time for " + a + " or " + b))
		}
		ratios = append(ratios, float64(t[a])/float64(t[b]))
	}
	return ratios
}

// MedianRatio is the median over rounds of a's batch time over b's (the
// mean of the middle two for an even count).
func (r *Rounds) MedianRatio(a, b string) float64 {
	ratios := r.Ratios(a, b)
	slices.Sort(ratios)
	m := len(ratios) / 2
	if len(ratios)%2 == 0 {
		return (ratios[m-1] + ratios[m]) / 2
	}
	return ratios[m]
}

// Median returns the middle of xs (the upper middle for an even count).
// xs is not changed. It panics on an empty xs.
func Median[T cmp.Ordered](xs []T) T {
	s := slices.Clone(xs)
	slices.Sort(s)
	return s[len(s)/2]
}

// Rotate returns a copy of s rotated left by i (modulo its length), the
// order a run i takes so that no variant always goes first.
func Rotate[T any](s []T, i int) []T {
	if len(s) == 0 {
		return nil
	}
	i %= len(s)
	return append(slices.Clone(s[i:]), s[:i]...)
}

// Bounded runs f, which should return soon after ctx ends, and returns its
// error. If f is still running StuckGrace after ctx ended, Bounded gives up
// on it (f keeps running; its goroutines leak) and returns an error wrapping
// ErrStuck with the stacks of the goroutines in this module and in the
// drivers, which show the call that ignored its context.
func Bounded(ctx context.Context, what string, f func() error) error {
	// The caller may read what f wrote only when the error is not ErrStuck:
	// the receive from done orders f's writes before the read.
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(StuckGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%s: %w: still running %s after its context ended (%v); stacks:\n%s",
			what, ErrStuck, StuckGrace, context.Cause(ctx), driverStacks())
	}
}

// ErrStuck is wrapped by Bounded's error when f ignored its context.
var ErrStuck = errors.New("a call ignores its context")

// OpenBounded runs open under Bounded and returns the variants it opened,
// also on error (to close them), except when open is stuck.
func OpenBounded(ctx context.Context, open func(context.Context) ([]*Variant, error)) ([]*Variant, error) {
	var vs []*Variant
	err := Bounded(ctx, "open", func() (err error) {
		vs, err = open(ctx)
		return err
	})
	if errors.Is(err, ErrStuck) {
		return nil, err
	}
	return vs, err
}

// driverStacks returns the stacks (aggregated, pprof debug=1 form) of the
// goroutines that run code of warmpg, pgx, lib/pq or database/sql, at most
// 32 KiB.
func driverStacks() string {
	var buf bytes.Buffer
	if err := pprof.Lookup("goroutine").WriteTo(&buf, 1); err != nil {
		return err.Error()
	}
	var out strings.Builder
	for _, block := range strings.Split(buf.String(), "\n\n") {
		if strings.Contains(block, "github.com/warmpg/warmpg.") || strings.Contains(block, "github.com/jackc/pgx") ||
			strings.Contains(block, "github.com/lib/pq") || strings.Contains(block, "database/sql.") {
			out.WriteString(block)
			out.WriteString("\n\n")
		}
	}
	const limit = 32 << 10
	if out.Len() > limit {
		return out.String()[:limit] + "\n[truncated]"
	}
	return out.String()
}
