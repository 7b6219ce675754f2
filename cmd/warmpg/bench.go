package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/warmpg/warmpg/internal/warmbench"
)

// benchConfig is bench's flags.
type benchConfig struct {
	loadConfig
	reps  int
	sizes []int
	svg   string
	// tpcbDuration is how long each TPC-B variant runs per repetition (0:
	// no TPC-B), on tpcbClients clients and as many connections.
	tpcbDuration time.Duration
	tpcbClients  int
}

// tpcbAccountsPerBranch is the TPC-B workload's accounts per branch (its
// scale is -tpcb-clients branches): pgbench has 100,000, which would take
// the setup longer than the measurement; the round trips, not the table
// sizes, are compared.
const tpcbAccountsPerBranch = 10_000

const benchUsage = `usage: warmpg bench [flags]

Runs the comparison suite at an injected round-trip time, on a throwaway
local PostgreSQL cluster (or -dsn):
  - select 1 throughput of warmpg's pool_reset=check, none, ping and rollback
    against pgx's stdlib (never ping, its default, ping always, ROLLBACK on
    return), lib/pq and pgxpool; -clients goroutines share -conns connections
  - a pgbench-like TPC-B read-write transaction (BEGIN, update accounts,
    select its balance, update tellers, update branches, insert history,
    COMMIT) on -tpcb-clients clients with as many connections, -tpcb-duration
    per variant per repetition: warmpg, pgx's stdlib, pgxpool and lib/pq, in
    transactions per second and as a ratio to pgxpool's; on tables of its
    own (warmpg_tpcb_<pid>_*), dropped at the end
  - warm-up time of -sizes connections: one by one, warmpg.WarmDB and
    pgxpool's MinConns fill
Every variant runs in every repetition, in an order rotated each time; the
tables show min, median and max over the repetitions and each one's ratio to
the best peer (not warmpg) in the same repetition. -svg writes a chart.
`

func bench(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c benchConfig
	fs := newLoadFlags("bench", benchUsage, stderr, &c.loadConfig, 1500)
	fs.intIn(&c.reps, "reps", 5, 1, 50, "repetitions")
	sizes := fs.String("sizes", "10,50,100", "pool sizes to warm, comma-separated (each 1 to 400, at most 8)")
	fs.StringVar(&c.svg, "svg", "", "write a chart (SVG) to this file")
	fs.durationIn(&c.tpcbDuration, "tpcb-duration", 2*time.Second, 0, time.Minute,
		"how long each TPC-B variant runs per repetition; 0: no TPC-B")
	fs.intIn(&c.tpcbClients, "tpcb-clients", 8, 1, 100, "TPC-B clients, each on a connection of its own; also the scale (branches)")
	err := fs.parseNoArgs(args)
	if err == nil {
		c.sizes, err = parseSizes(*sizes)
	}
	if err != nil {
		return err
	}
	if c.svg != "" {
		// Fail now, not after minutes of measuring.
		if st, err := os.Stat(filepath.Dir(c.svg)); err != nil || !st.IsDir() {
			return badInput("-svg %s: no directory %s to write it in", c.svg, filepath.Dir(c.svg))
		}
	}

	t, err := openTarget(ctx, "bench", c.loadConfig, stderr)
	if err != nil {
		return err
	}
	defer t.close()
	p := t.p
	fmt.Fprintf(stdout, "warmpg bench: %s\n", t.heading())
	fmt.Fprintf(stdout, "command: warmpg bench %s\n", strings.Join(args, " "))
	fmt.Fprintf(stdout, "%s, %s/%s, %d CPUs, load average at start %s\n\n",
		runtime.Version(), runtime.GOOS, runtime.GOARCH, runtime.NumCPU(), loadAverage())

	variants := slices.Concat(warmbench.ResetModes, warmbench.Peers)
	url := func(params ...string) string { return t.url(t.app("reuse"), params...) }
	p.printf("throughput: opening %d pools of %d connections...", len(variants), c.conns)
	r, err := measureRounds(ctx, c.reps, 2, c.queries, c.clients, p, "throughput", func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenReuseVariants(ctx, url, c.conns, variants)
	})
	if err != nil {
		return err
	}
	ch := chart{title: fmt.Sprintf("warmpg bench: PostgreSQL %s, %s RTT, %d repetitions", t.version, c.rtt, c.reps)}
	tb, bars := throughputTable(r, variants, c)
	tb.print(stdout)
	ch.bars = bars

	if c.tpcbDuration > 0 {
		tr, history, err := runTPCB(ctx, t, c)
		if err != nil {
			return err
		}
		tb, bars := tpcbTable(tr, history, c)
		tb.print(stdout)
		ch.tpcb = bars
	}

	warm := map[int]map[warmbench.Method][]time.Duration{}
	for rep := range c.reps {
		for _, n := range c.sizes {
			ts, err := warmTimes(ctx, t, n, 1, rep, c.reps, p)
			if err != nil {
				return err
			}
			if warm[n] == nil {
				warm[n] = map[warmbench.Method][]time.Duration{}
			}
			for m, d := range ts {
				warm[n][m] = append(warm[n][m], d...)
			}
		}
	}
	tb, lines := warmTable(warm, c)
	tb.print(stdout)
	ch.warm = lines

	if c.svg != "" {
		if err := ch.writeSVG(c.svg); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "chart: %s\n", c.svg)
	}
	t.done()
	return nil
}

// runTPCB sets up the TPC-B tables, opens a pool per variant, runs every
// repetition and checks that the tables add up; it returns the rounds and
// the history rows (the transactions committed, warm-up included).
func runTPCB(ctx context.Context, t *target, c benchConfig) (*warmbench.TPCBRounds, int64, error) {
	p := t.p
	conn, err := t.srv.Connect(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("tpc-b: %w", err)
	}
	defer conn.Close(context.Background())
	w := warmbench.NewTPCB(fmt.Sprintf("warmpg_tpcb_%d_", os.Getpid()), c.tpcbClients, tpcbAccountsPerBranch)
	grantee := ""
	if t.user.User != t.srv.User {
		grantee = t.user.User
	}
	p.printf("tpc-b: creating %d branches, %d tellers, %d accounts...", w.Branches, 10*w.Branches, w.Branches*w.AccountsPerBranch)
	if err := w.Setup(ctx, conn, grantee); err != nil {
		return nil, 0, err
	}
	defer func() {
		if err := w.Drop(context.Background(), conn); err != nil {
			p.printf("warning: tpc-b: dropping the tables: %v", err)
		}
	}()
	url := func(params ...string) string { return t.url(t.app("tpcb"), params...) }
	p.printf("tpc-b: opening %d pools of %d connections...", len(warmbench.TPCBVariants), c.tpcbClients)
	sctx, cancel := context.WithTimeout(ctx, warmbench.SetupTimeout)
	vs, err := warmbench.OpenBounded(sctx, func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenTPCBVariants(ctx, url, c.tpcbClients, w)
	})
	if err == nil {
		err = warmbench.WarmVariants(sctx, vs, c.tpcbClients)
	}
	cancel()
	defer func() {
		if cerr := warmbench.CloseVariants(vs); cerr != nil {
			p.printf("warning: %v", cerr)
		}
	}()
	if err != nil {
		return nil, 0, fmt.Errorf("tpc-b: %w", err)
	}
	var r warmbench.TPCBRounds
	for i := range c.reps {
		p.printf("tpc-b: run %d of %d, %s per variant...", i+1, c.reps, c.tpcbDuration)
		if err := r.Run(ctx, vs, c.tpcbClients, c.tpcbDuration); err != nil {
			return nil, 0, fmt.Errorf("tpc-b: %w", err)
		}
	}
	history, err := w.Check(ctx, conn)
	if err != nil {
		return nil, 0, err
	}
	return &r, history, nil
}

// tpcbTable tabulates the TPC-B runs and returns the chart's bars.
func tpcbTable(r *warmbench.TPCBRounds, history int64, c benchConfig) (table, []bar) {
	tb := table{
		title: fmt.Sprintf("TPC-B (pgbench-like): BEGIN, 5 statements, COMMIT; %d clients on %d connections, %s per variant per repetition, %d repetitions",
			c.tpcbClients, c.tpcbClients, c.tpcbDuration, len(r.TPS)),
		head: []string{"variant", "min tps", "median tps", "max tps", "÷ " + warmbench.TPCBBase + " min / median / max"},
		notes: []string{
			fmt.Sprintf("each ratio is the variant's transactions per second over %s's (native, no database/sql) in the same repetition", warmbench.TPCBBase),
			fmt.Sprintf("%d transactions committed (warm-up included), %d history rows; the balances add up", history, history),
		},
	}
	var bars []bar
	for _, v := range warmbench.TPCBVariants {
		q := spreadOf(r.Each(v))
		tb.add(v, num(q.min), num(q.med), num(q.max), spreadOf(r.Ratios(warmbench.TPCBBase, v)).ratios())
		bars = append(bars, bar{name: v, warmpg: v == "warmpg", qps: q})
	}
	return tb, bars
}

// parseSizes parses -sizes: 1 to 8 pool sizes of 1 to 400, comma-separated.
func parseSizes(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 1 || n > 400 {
			return nil, badInput("-sizes %q: %q is not a pool size (want whole numbers from 1 to 400, comma-separated)", s, f)
		}
		if slices.Contains(out, n) {
			return nil, badInput("-sizes %q: %d appears twice", s, n)
		}
		out = append(out, n)
	}
	if len(out) > 8 {
		return nil, badInput("-sizes %q: %d sizes, want at most 8", s, len(out))
	}
	slices.Sort(out)
	return out, nil
}

// loadAverage is the 1-minute load average, or "?" where /proc has none.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	if f := strings.Fields(string(b)); len(f) > 0 {
		return f[0]
	}
	return "?"
}

// displayName is how tables and the chart name a variant.
func displayName(v string) string {
	if warmbench.IsWarmpg(v) {
		return "warmpg " + v
	}
	return v
}

// bestPeer is the peer with the highest median throughput.
func bestPeer(r *warmbench.Rounds, peers []string) string {
	best, bestQPS := "", 0.0
	for _, v := range peers {
		if q := warmbench.Median(r.PerSecondEach(v)); q > bestQPS {
			best, bestQPS = v, q
		}
	}
	return best
}

// throughputTable tabulates the throughput runs and returns the chart's bars.
func throughputTable(r *warmbench.Rounds, variants []string, c benchConfig) (table, []bar) {
	best := bestPeer(r, warmbench.Peers)
	tb := table{
		title: fmt.Sprintf("Throughput: select 1, %d clients on %d connections, %d queries per variant per repetition, %d repetitions",
			c.clients, c.conns, r.Ops, len(r.Times)),
		head: []string{"variant", "min q/s", "median q/s", "max q/s", "÷ best peer min / median / max"},
		notes: []string{
			fmt.Sprintf("best peer: %s (highest median); each ratio is the variant's throughput over the best peer's in the same repetition", best),
		},
	}
	var bars []bar
	for _, v := range variants {
		q := spreadOf(r.PerSecondEach(v))
		ratio := spreadOf(r.Ratios(best, v))
		tb.add(displayName(v), num(q.min), num(q.med), num(q.max), ratio.ratios())
		bars = append(bars, bar{name: displayName(v), warmpg: warmbench.IsWarmpg(v), qps: q})
	}
	return tb, bars
}

// warmTable tabulates the warm-up times and returns the chart's lines.
func warmTable(warm map[int]map[warmbench.Method][]time.Duration, c benchConfig) (table, []warmLine) {
	tb := table{
		title: fmt.Sprintf("Warm-up: time to open N connections, %d repetitions", c.reps),
		head:  []string{"N / method", "min ms", "median ms", "max ms", "÷ best peer min / median / max"},
		notes: []string{
			"best peer: the faster of one-by-one and pgxpool at each size (median); each ratio is the method's time over the best peer's in the same repetition (lower is faster)",
		},
	}
	lines := make([]warmLine, len(warmbench.Methods))
	for i, m := range warmbench.Methods {
		lines[i].name = string(m)
	}
	for _, n := range c.sizes {
		best := warmbench.OneByOne
		if warmbench.Median(warm[n][warmbench.Pgxpool]) < warmbench.Median(warm[n][best]) {
			best = warmbench.Pgxpool
		}
		for i, m := range warmbench.Methods {
			s := spreadOfDurations(warm[n][m])
			rs := make([]float64, len(warm[n][m]))
			for j, d := range warm[n][m] {
				rs[j] = float64(d) / float64(warm[n][best][j])
			}
			tb.add(fmt.Sprintf("%d / %s", n, m), num(s.min), num(s.med), num(s.max), spreadOf(rs).ratios())
			lines[i].sizes = append(lines[i].sizes, n)
			lines[i].ms = append(lines[i].ms, s.med)
		}
	}
	return tb, lines
}
