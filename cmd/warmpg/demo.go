package main

import (
	"context"
	"fmt"
	"io"
	"log"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// demoConfig is demo's flags.
type demoConfig struct {
	loadConfig
	n, runs     int
	burst       int
	burstAfter  time.Duration
	restartPool int
	roOps       int
}

const demoUsage = `usage: warmpg demo [flags]

Shows, at an injected round-trip time, on a throwaway local PostgreSQL
cluster (or -dsn):
  1. cold vs warmed pool: warming N connections one by one, with
     warmpg.WarmDB and with pgxpool; the first burst of queries on a lazy
     pool vs one opened with pool_prewarm=true
  2. reset on reuse: throughput of pool_reset=check, none, ping and
     rollback, and the queries that fail after a fast server restart, per
     mode and for plain pgx (the restart needs the throwaway cluster)
  3. read-only transactions: pool_autocommit vs a plain select and a real
     BEGIN READ ONLY ... COMMIT
  4. read-write transactions: BEGIN sent with the first statement
     (pool_lazy_begin, the default) vs sent alone, and plain pgx
`

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var c demoConfig
	fs := newLoadFlags("demo", demoUsage, stderr, &c.loadConfig, 1000)
	fs.intIn(&c.n, "n", 100, 1, 400, "connections to warm")
	fs.intIn(&c.runs, "runs", 3, 1, 20, "runs of each measurement; tables show medians")
	fs.intIn(&c.burst, "burst", 32, 1, 200, "queries in the first burst, and the pool's size")
	fs.durationIn(&c.burstAfter, "burst-after", 200*time.Millisecond, 0, 10*time.Second, "time between opening the pool and the first burst")
	fs.intIn(&c.restartPool, "restart-pool", 8, 1, 64, "connections per pool in the restart test")
	fs.intIn(&c.roOps, "ro-ops", 30, 3, 100_000, "operations per read-only variant per run")
	if err := fs.parseNoArgs(args); err != nil {
		return err
	}

	// The demo shows tables, not the library's logs: warmpg's pools here
	// log to slog.Default() (sql.Open takes no logger), and an Info line per
	// discarded connection would land in the middle of the restart table.
	// What the tables need they count (warmpg.Stats); warnings still show.
	defer quietWarmpgLogs(stderr)()

	t, err := openTarget(ctx, "demo", c.loadConfig, stderr)
	if err != nil {
		return err
	}
	defer t.close()
	runs := "1 run"
	if c.runs > 1 {
		runs = fmt.Sprintf("medians of %d runs", c.runs)
	}
	fmt.Fprintf(stdout, "warmpg demo: %s; %s\n\n", t.heading(), runs)

	for _, step := range []func(context.Context, *target, demoConfig, io.Writer) error{
		demoWarm, demoFirstBurst, demoReuse, demoRestart, demoReadOnly, demoLazyBegin,
	} {
		if err := step(ctx, t, c, stdout); err != nil {
			return err
		}
	}
	t.done()
	return nil
}

// methodDoing says what a fill method does, for the progress lines.
var methodDoing = map[warmbench.Method]string{
	warmbench.OneByOne: "one by one",
	warmbench.WarmDB:   "with warmpg.WarmDB",
	warmbench.Pgxpool:  "with pgxpool MinConns",
}

// warmTimes fills a pool of n connections by each method, runs times in an
// order rotated each run, and returns the fill times per method. The runs
// are numbers run0+1 to run0+runs of total, for the rotation and progress.
func warmTimes(ctx context.Context, t *target, n, runs, run0, total int, p progress) (map[warmbench.Method][]time.Duration, error) {
	app := t.app("warm" + strconv.Itoa(n))
	dsn := t.url(app)
	out := map[warmbench.Method][]time.Duration{}
	for r := run0; r < run0+runs; r++ {
		for _, m := range warmbench.Rotate(warmbench.Methods, r) {
			p.printf("warming %d connections %s (run %d of %d)...", n, methodDoing[m], r+1, total)
			fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			d, err := warmbench.Fill(fctx, m, dsn, n)
			if err == nil {
				// Untimed: let the server reap the pool before the next fill.
				err = t.waitGone(fctx, app)
			}
			cancel()
			if err != nil {
				return nil, fmt.Errorf("%s: %w", m, err)
			}
			out[m] = append(out[m], d)
		}
	}
	return out, nil
}

func demoWarm(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	p := t.p
	ts, err := warmTimes(ctx, t, c.n, c.runs, 0, c.runs, p)
	if err != nil {
		return err
	}
	base := warmbench.Median(ts[warmbench.OneByOne])
	tb := table{
		title: fmt.Sprintf("1. Cold vs warmed pool: opening %d connections", c.n),
		head:  []string{"method", "time ms", "per connection ms", "vs one-by-one"},
		notes: []string{
			"one-by-one: db.Conn in a loop on database/sql + pgx, what a cold pool pays as requests arrive",
			"each connect: scram-sha-256 auth and sslmode=prefer on the throwaway cluster (4 round trips)",
		},
	}
	for _, m := range warmbench.Methods {
		d := warmbench.Median(ts[m])
		tb.add(string(m), msec(d), msec(d/time.Duration(c.n)), times(float64(base)/float64(d)))
	}
	tb.print(w)
	return nil
}

func demoFirstBurst(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	p := t.p
	app := t.app("burst")
	dsn := t.url(app)
	first := map[bool][]time.Duration{}
	last := map[bool][]time.Duration{}
	for r := range c.runs {
		for _, prewarm := range warmbench.Rotate([]bool{false, true}, r) {
			what := "lazy sql.Open"
			if prewarm {
				what = "pool_prewarm=true"
			}
			p.printf("first burst: %d queries %s after opening a %s pool (run %d of %d)...", c.burst, c.burstAfter, what, r+1, c.runs)
			bctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
			lat, err := warmbench.FirstBurst(bctx, dsn, c.burst, c.burstAfter, prewarm)
			if err == nil {
				err = t.waitGone(bctx, app)
			}
			cancel()
			if err != nil {
				return fmt.Errorf("first burst (%s): %w", what, err)
			}
			first[prewarm] = append(first[prewarm], lat[0])
			last[prewarm] = append(last[prewarm], lat[len(lat)-1])
		}
	}
	tb := table{
		title: fmt.Sprintf("   First burst: %d queries at once, %s after sql.Open, pool of %d", c.burst, c.burstAfter, c.burst),
		head:  []string{"pool", "first query ms", "slowest ms", "slowest: speed-up"},
		notes: []string{"pool_prewarm=true dials the pool's connections in the background as soon as sql.Open returns"},
	}
	lazySlowest := warmbench.Median(last[false])
	for _, prewarm := range []bool{false, true} {
		name := "lazy sql.Open"
		if prewarm {
			name = "pool_prewarm=true"
		}
		slowest := warmbench.Median(last[prewarm])
		tb.add(name, msec(warmbench.Median(first[prewarm])), msec(slowest), times(float64(lazySlowest)/float64(slowest)))
	}
	tb.print(w)
	return nil
}

// sendsOnReuse is what each reset mode sends when a used connection is
// handed out again.
var sendsOnReuse = map[string]string{
	"check":    "nothing (a socket peek)",
	"none":     "nothing",
	"ping":     "a ping",
	"rollback": "ROLLBACK",
}

func demoReuse(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	p := t.p
	p.printf("reset modes: opening a pool of %d per mode (%v)...", c.conns, warmbench.ResetModes)
	// More clients than connections queue for a connection by design:
	// that is the load this table measures, not an exhausted pool to
	// report between the tables (every pool here is warmpg's).
	queue := c.clients > c.conns
	url := func(params ...string) string {
		if queue {
			params = append(params, "pool_exhausted_log_interval=0")
		}
		return t.url(t.app("reuse"), params...)
	}
	r, err := measureRounds(ctx, c.runs, 2, c.queries, c.clients, p, "reset modes", func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenReuseVariants(ctx, url, c.conns, warmbench.ResetModes)
	})
	if err != nil {
		return err
	}
	tb := table{
		title: fmt.Sprintf("2. Reset on reuse: select 1, %d clients on %d connections, %d queries per mode per run", c.clients, c.conns, r.Ops),
		head:  []string{"pool_reset", "queries/s", "vs check", "sends on reuse"},
	}
	if queue {
		tb.notes = append(tb.notes, "the clients wait for connections on purpose: these pools run with pool_exhausted_log_interval=0, so warmpg does not report them exhausted")
	}
	for _, m := range warmbench.ResetModes {
		tb.add(m, num(warmbench.Median(r.PerSecondEach(m))), times(r.MedianRatio("check", m)), sendsOnReuse[m])
	}
	tb.print(w)
	return nil
}

// measureRounds opens variants with open, warms them, runs runs interleaved
// rounds of n operations each over clients goroutines, and closes them.
func measureRounds(ctx context.Context, runs, passes, n, clients int, p progress, what string,
	open func(context.Context) ([]*warmbench.Variant, error)) (*warmbench.Rounds, error) {
	sctx, cancel := context.WithTimeout(ctx, warmbench.SetupTimeout)
	vs, err := warmbench.OpenBounded(sctx, open)
	if err == nil {
		err = warmbench.WarmVariants(sctx, vs, clients)
	}
	cancel()
	defer func() {
		if cerr := warmbench.CloseVariants(vs); cerr != nil {
			p.printf("warning: %v", cerr)
		}
	}()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	r := warmbench.NewRounds(n, passes)
	for i := range runs {
		p.printf("%s: run %d of %d, %d operations per variant...", what, i+1, runs, r.Ops)
		if err := r.Run(ctx, vs, passes, clients); err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	return r, nil
}

// restartPools are the pools of the restart test: warmpg's reset modes and
// plain database/sql + pgx.
var restartPools = slices.Concat(warmbench.ResetModes, []string{"pgx-default"})

func demoRestart(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	p := t.p
	title := fmt.Sprintf("   After a fast server restart: %d queries at once on each pool of %d", c.restartPool, c.restartPool)
	if !t.srv.Managed() {
		fmt.Fprintf(w, "%s\n  skipped: restarting needs the throwaway cluster (run without -dsn)\n\n", title)
		return nil
	}
	p.printf("restart: opening a pool of %d per mode and for plain pgx...", c.restartPool)
	rctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	url := func(params ...string) string { return t.url(t.app("restart"), params...) }
	vs, err := warmbench.OpenBounded(rctx, func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenReuseVariants(ctx, url, c.restartPool, restartPools)
	})
	defer func() {
		if cerr := warmbench.CloseVariants(vs); cerr != nil {
			p.printf("warning: %v", cerr)
		}
	}()
	if err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	// Every connection used once, so that pgx's ping on first reuse is
	// spent and reuse goes by its 1 s idle rule, as in a running service;
	// then one burst on all pools at once, so none has been idle for long.
	for _, v := range vs {
		if err := v.Warm(rctx); err != nil {
			return fmt.Errorf("restart: warm %s: %w", v.Name, err)
		}
	}
	if failed := burstAll(rctx, vs, c.restartPool); sum(failed) != 0 {
		return fmt.Errorf("restart: %v queries failed before the restart", failed)
	}
	discardedBefore := discarded(vs)
	p.printf("restarting the server (pg_ctl restart -m fast)...")
	began := time.Now()
	if err := t.srv.Restart(rctx, "fast"); err != nil {
		return fmt.Errorf("restart: %w", err)
	}
	took := time.Since(began)
	failed := burstAll(rctx, vs, c.restartPool)
	after := burstAll(rctx, vs, c.restartPool)
	discardedAfter := discarded(vs)
	tb := table{
		title: title,
		head:  []string{"pool", "failed", "of", "failed on the next burst", "dead connections discarded"},
		notes: []string{
			fmt.Sprintf("the restart took %s; pgx pings a connection idle for over 1 s, so a slower restart hides its failures", took.Round(time.Millisecond)),
			"discarded: connections warmpg refused on reuse (warmpg.Stats), so database/sql dialled new ones; pgx's own are not counted",
		},
	}
	for i, v := range vs {
		name := "warmpg " + v.Name
		disc := "-"
		if discardedAfter[i] >= 0 {
			disc = strconv.FormatInt(discardedAfter[i]-discardedBefore[i], 10)
		}
		if !warmbench.IsWarmpg(v.Name) {
			name = "database/sql + pgx (stdlib default)"
		}
		tb.add(name, strconv.Itoa(failed[i]), strconv.Itoa(c.restartPool), strconv.Itoa(after[i]), disc)
	}
	tb.print(w)
	return nil
}

// discarded returns each variant's warmpg Discarded counter, -1 for a pool
// that is not warmpg's.
func discarded(vs []*warmbench.Variant) []int64 {
	out := make([]int64, len(vs))
	for i, v := range vs {
		out[i] = -1
		if v.DB != nil {
			if st, ok := warmpg.Stats(v.DB); ok {
				out[i] = st.Discarded
			}
		}
	}
	return out
}

// quietWarmpgLogs makes slog.Default() drop warmpg's events below Warn and
// write the others to w, until the returned function restores it (and the
// log package's output, which slog.SetDefault redirects).
func quietWarmpgLogs(w io.Writer) (restore func()) {
	old, oldOut, oldFlags := slog.Default(), log.Writer(), log.Flags()
	slog.SetDefault(slog.New(quietWarmpg{slog.NewTextHandler(w, nil)}))
	return func() {
		slog.SetDefault(old)
		log.SetOutput(oldOut)
		log.SetFlags(oldFlags)
	}
}

type quietWarmpg struct{ next slog.Handler }

func (q quietWarmpg) Enabled(ctx context.Context, l slog.Level) bool { return q.next.Enabled(ctx, l) }

func (q quietWarmpg) Handle(ctx context.Context, r slog.Record) error {
	if r.Level < slog.LevelWarn && strings.HasPrefix(r.Message, "warmpg: ") {
		return nil
	}
	return q.next.Handle(ctx, r)
}

func (q quietWarmpg) WithAttrs(as []slog.Attr) slog.Handler {
	return quietWarmpg{q.next.WithAttrs(as)}
}

func (q quietWarmpg) WithGroup(name string) slog.Handler { return quietWarmpg{q.next.WithGroup(name)} }

// burstAll runs a burst of n queries on every variant's pool at once and
// returns how many failed, per variant.
func burstAll(ctx context.Context, vs []*warmbench.Variant, n int) []int {
	failed := make([]int, len(vs))
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, errs := warmbench.Burst(ctx, v.DB, n)
			failed[i] = len(errs)
		}()
	}
	wg.Wait()
	return failed
}

func sum(xs []int) (s int) {
	for _, x := range xs {
		s += x
	}
	return s
}

// roRows are the read-only variants as the demo shows them, and the round
// trips each sends per operation.
var roRows = map[string]struct{ label, trips string }{
	"select":           {"select 1 (no transaction)", "1"},
	"autocommit-ro-tx": {"read-only tx, pool_autocommit=true", "1"},
	"warmpg-ro-tx":     {"read-only tx, pool_lazy_begin=false", "3"},
	"pgx-ro-tx":        {"read-only tx, plain pgx", "3"},
}

func demoReadOnly(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	p := t.p
	url := func(params ...string) string { return t.url(t.app("readonly"), params...) }
	r, err := measureRounds(ctx, c.runs, 3, c.roOps, 1, p, "read-only transactions", func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenReadOnlyTxVariants(ctx, url)
	})
	if err != nil {
		return err
	}
	tb := table{
		title: fmt.Sprintf("3. Read-only transactions: one client, one connection, %d operations per variant per run", r.Ops),
		head:  []string{"operation", "latency ms", "vs select", "round trips"},
		notes: []string{
			"a transaction is BeginTx(ReadOnly), select 1, Commit; with pool_autocommit warmpg sends no BEGIN and no COMMIT",
		},
	}
	for _, v := range warmbench.ReadOnlyTxVariants {
		lat := time.Duration(float64(time.Second) / warmbench.Median(r.PerSecondEach(v)))
		tb.add(roRows[v].label, msec(lat), times(r.MedianRatio(v, "select")), roRows[v].trips)
	}
	tb.print(w)
	return nil
}

// lazyRows are the read-write variants as the demo shows them, and the
// round trips each sends per operation.
var lazyRows = map[string]struct{ label, trips string }{
	"statement": {"select $1 (no transaction)", "1"},
	"lazy-tx":   {"read-write tx, warmpg default", "2"},
	"eager-tx":  {"read-write tx, pool_lazy_begin=false", "3"},
	"pgx-tx":    {"read-write tx, plain pgx", "3"},
}

func demoLazyBegin(ctx context.Context, t *target, c demoConfig, w io.Writer) error {
	url := func(params ...string) string { return t.url(t.app("lazybegin"), params...) }
	r, err := measureRounds(ctx, c.runs, 3, c.roOps, 1, t.p, "read-write transactions", func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenLazyBeginVariants(ctx, url, "")
	})
	if err != nil {
		return err
	}
	tb := table{
		title: fmt.Sprintf("4. Read-write transactions: one client, one connection, %d operations per variant per run", r.Ops),
		head:  []string{"operation", "latency ms", "vs the statement alone", "round trips"},
		notes: []string{
			"a transaction is BeginTx, one statement, Commit (what GORM wraps every Create in); warmpg sends the BEGIN with the statement",
		},
	}
	for _, v := range warmbench.LazyBeginVariants {
		lat := time.Duration(float64(time.Second) / warmbench.Median(r.PerSecondEach(v)))
		tb.add(lazyRows[v].label, msec(lat), times(r.MedianRatio(v, "statement")), lazyRows[v].trips)
	}
	tb.print(w)
	return nil
}
