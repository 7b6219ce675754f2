package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeDB opens a *sql.DB over a fake connector with opts, closed when t
// ends.
func fakeDB(t testing.TB, f *fakeConnector, opts ...Option) (*sql.DB, *Connector) {
	t.Helper()
	c, err := NewConnector(f, opts...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

// holdConns checks out n connections and runs a statement on each.
func holdConns(t testing.TB, ctx context.Context, db *sql.DB, n int) []*sql.Conn {
	t.Helper()
	var cs []*sql.Conn
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		cs = append(cs, c)
	}
	return cs
}

// Checkouts are counted at Connect and ResetSession and returns at IsValid
// and Close, so InUse follows database/sql's own count; with tracking off
// nothing is counted and no goroutine starts.
func TestHoldersCounted(t *testing.T) {
	withEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, c := fakeDB(t, &fakeConnector{}, WithMaxConns(3), WithLogLevel(LogOff))
	db.SetMaxOpenConns(3)
	for round := range 2 { // new connections (Connect), then used ones (ResetSession)
		held := holdConns(t, ctx, db, 3)
		time.Sleep(2 * time.Millisecond)
		st := c.Stats()
		if st.InUse != 3 || st.InUse != int64(db.Stats().InUse) || st.OldestInUse < 2*time.Millisecond {
			t.Errorf("round %d holding 3: %v (database/sql in use: %d)", round, st, db.Stats().InUse)
		}
		for _, hc := range held {
			hc.Close()
		}
		if st := c.Stats(); st.InUse != 0 || st.OldestInUse != 0 {
			t.Errorf("round %d after return: %v", round, st)
		}
	}
	// A connection closed while out (Raw's driver conn closed by a
	// statement that returns ErrBadConn is one way; Close of the DB with a
	// connection out is another) is checked in by Close.
	held := holdConns(t, ctx, db, 1)
	db.Close()
	held[0].Close()
	if st := c.Stats(); st.InUse != 0 {
		t.Errorf("after DB close: %v", st)
	}

	db, c = fakeDB(t, &fakeConnector{}, WithMaxConns(2), WithExhaustedLogInterval(0), WithLogLevel(slog.LevelInfo))
	db.SetMaxOpenConns(2)
	held = holdConns(t, ctx, db, 2)
	if st := c.Stats(); st.InUse != 0 || c.holds.running.Load() {
		t.Errorf("tracking off: %v, monitor started: %v", st, c.holds.running.Load())
	}
	for _, hc := range held {
		hc.Close()
	}
}

// WarmDB holds connections on purpose: while it waits for a slow connect,
// the connections it already holds are not reported as leaked. The same
// hold by the application is.
func TestLeakIgnoresWarmDB(t *testing.T) {
	withEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec := &recorder{level: slog.LevelDebug}
	const threshold = 10 * time.Millisecond
	db, c := fakeDB(t, &fakeConnector{delay: 100 * time.Millisecond}, WithLeakThreshold(threshold),
		WithMaxIdleConns(3), WithWarmParallelism(1), WithLogger(slog.New(rec)))
	if _, err := WarmDB(ctx, db); err != nil {
		t.Fatal(err)
	}
	if rs := rec.find("warmpg: connection held past"); len(rs) != 0 {
		t.Fatalf("WarmDB's own holds reported: %v", rs)
	}
	held := holdConns(t, ctx, db, 1)
	defer held[0].Close()
	for deadline := time.Now().Add(5 * time.Second); len(rec.find("warmpg: connection held past")) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the application's hold was not reported")
		}
	}
	if st := c.Stats(); st.HeldPastThreshold != 1 {
		t.Errorf("counters %v, want held_past_threshold=1", st)
	}
}

// An exhaustion that lasts is reported once requests have waited for the
// grace, then at most once per interval while they still wait, each
// report counting as one exhaustion.
func TestExhaustionReportedOncePerInterval(t *testing.T) {
	withEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec := &recorder{level: slog.LevelInfo}
	const interval = 100 * time.Millisecond
	db, c := fakeDB(t, &fakeConnector{}, WithMaxConns(2), WithExhaustedLogInterval(interval), WithLogger(slog.New(rec)))
	if _, err := WarmDB(ctx, db); err != nil { // warmpg now knows db, and sees its waits
		t.Fatal(err)
	}
	start := time.Now()
	held := holdConns(t, ctx, db, 2)
	// A request that waits all along.
	wctx, wcancel := context.WithCancel(ctx)
	waited := make(chan struct{})
	go func() {
		defer close(waited)
		if c, err := db.Conn(wctx); err == nil {
			c.Close()
		}
	}()
	for deadline := time.Now().Add(5 * time.Second); len(rec.find("warmpg: pool exhausted")) < 3; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("fewer than 3 reports in 5 s: %v", rec.all())
		}
	}
	wcancel()
	<-waited
	for _, hc := range held {
		hc.Close()
	}
	elapsed := time.Since(start)
	rs := rec.find("warmpg: pool exhausted")
	if max := int(elapsed/interval) + 1; len(rs) > max {
		t.Errorf("%d reports in %s, want at most %d (one per %s)", len(rs), elapsed, max, interval)
	}
	var last time.Duration
	for _, r := range rs {
		d, err := time.ParseDuration(r.attrs["for"])
		if err != nil || d < interval || d < last {
			t.Errorf("for=%q after %s: want at least the grace, growing", r.attrs["for"], last)
		}
		last = d
		if !strings.Contains(r.attrs["holder_1"], "held=") || r.attrs["holder_3"] != "" {
			t.Errorf("holders %q %q", r.attrs["holder_1"], r.attrs["holder_3"])
		}
		if r.attrs["waits"] != "1" {
			t.Errorf("waits=%q, want the one request waiting", r.attrs["waits"])
		}
	}
	for deadline := time.Now().Add(5 * time.Second); len(rec.find("warmpg: pool no longer exhausted")) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("no recovery reported")
		}
	}
	if st := c.Stats(); st.Exhaustions != 1 {
		t.Errorf("counters %v, want exhaustions=1", st)
	}
}

// slowConn is a fakeConn whose statements take d.
type slowConn struct {
	*fakeConn
	d time.Duration
}

func (c slowConn) ExecContext(ctx context.Context, q string, args []driver.NamedValue) (driver.Result, error) {
	time.Sleep(c.d)
	return c.fakeConn.ExecContext(ctx, q, args)
}

// A pool at its limit whose requests never wait is busy, not exhausted
// (issue 25, 2): no report, however long it stays there. Before, either
// pool was reported "exhausted" with waits=0 after a second, and again
// every interval (make demo printed 10 such lines): a command-line tool
// on a pool of one, a pool of 8 kept busy by 8 workers. Each runs 3 s on
// a DB warmpg knows (WarmDB), so it sees the DB's waits: there are none,
// and the pool is at its limit all along.
func TestExhaustionNotReportedWithoutWaits(t *testing.T) {
	withEnv(t)
	for _, tc := range []struct {
		name           string
		conns, workers int
		stmt           time.Duration
	}{
		{"one goroutine on a pool of one", 1, 1, 0},
		{"8 workers on 8 connections, 2ms statements", 8, 8, 2 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			rec := &recorder{level: slog.LevelInfo}
			f := &fakeConnector{}
			f.newConn = func() driver.Conn { return slowConn{&fakeConn{f: f}, tc.stmt} }
			db, c := fakeDB(t, f, WithMaxConns(tc.conns), WithLogger(slog.New(rec)))
			if _, err := WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			var wg sync.WaitGroup
			end := time.Now().Add(3 * time.Second)
			for range tc.workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for time.Now().Before(end) {
						if _, err := db.ExecContext(ctx, "select 1"); err != nil {
							t.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
			if rs := rec.find("warmpg: pool exhausted"); len(rs) != 0 {
				t.Errorf("%d reports of a pool whose requests never waited (database/sql: %d waits): %v", len(rs), db.Stats().WaitCount, rs[0].attrs)
			}
			if st := c.Stats(); st.Exhaustions != 0 {
				t.Errorf("counters %v, want exhaustions=0", st)
			}
			// The premise: the pool was at its limit, and nobody waited.
			if c.holds.full.Load() == 0 || db.Stats().WaitCount != 0 {
				t.Fatalf("checkouts at the limit %d, waits %d: want some, and none", c.holds.full.Load(), db.Stats().WaitCount)
			}
		})
	}
}

// holdFor checks out a connection of db and holds it for d.
func holdFor(ctx context.Context, db *sql.DB, d time.Duration) error {
	c, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	if _, err := c.ExecContext(ctx, "select 1"); err != nil {
		return err
	}
	time.Sleep(d)
	return nil
}

// Requests that wait are reported, with the holders, as before issue 25:
// 6 workers each holding a connection of a pool of 2 for 1.5 s, so 4 wait
// from the start. The report now also says how long requests waited
// (waited, database/sql's WaitDuration; the waits that had ended). On a
// DB warmpg was never given (sql.OpenDB, no WarmDB) it cannot see the
// waits, and reports nothing; before, it reported that pool too.
func TestExhaustionReportedWhenRequestsWait(t *testing.T) {
	withEnv(t)
	run := func(t *testing.T, warm bool) (*recorder, *Connector) {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		rec := &recorder{level: slog.LevelInfo}
		db, c := fakeDB(t, &fakeConnector{}, WithMaxConns(2), WithLeakThreshold(10*time.Minute), WithLogger(slog.New(rec)))
		db.SetMaxOpenConns(2)
		if warm {
			if _, err := WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
		}
		var wg sync.WaitGroup
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if err := holdFor(ctx, db, 1500*time.Millisecond); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
		if db.Stats().WaitCount < 4 {
			t.Fatalf("%d requests waited, want 4", db.Stats().WaitCount)
		}
		return rec, c
	}
	t.Run("warmpg-knows-the-db", func(t *testing.T) {
		t.Parallel()
		rec, c := run(t, true)
		rs := rec.find("warmpg: pool exhausted")
		if len(rs) != 1 {
			t.Fatalf("%d reports, want 1: %v", len(rs), rec.all())
		}
		r := rs[0]
		t.Logf("reported: %v", r.attrs)
		if r.level != slog.LevelWarn || r.attrs["in_use"] != "2" || r.attrs["limit"] != "2" || r.attrs["waits"] == "0" {
			t.Errorf("report %v, want Warn in_use=2 limit=2 and the waits", r.attrs)
		}
		if d, err := time.ParseDuration(r.attrs["for"]); err != nil || d < maxExhaustGrace {
			t.Errorf("for=%q, want at least the grace, %s", r.attrs["for"], maxExhaustGrace)
		}
		if _, err := time.ParseDuration(r.attrs["waited"]); err != nil {
			t.Errorf("waited=%q, want how long requests waited", r.attrs["waited"])
		}
		for _, k := range []string{"holder_1", "holder_2"} {
			if h := r.attrs[k]; !strings.Contains(h, "held=") || !strings.Contains(h, "warmpg.holdFor") {
				t.Errorf("%s=%q, want its age and a stack naming holdFor", k, h)
			}
		}
		if st := c.Stats(); st.Exhaustions != 1 {
			t.Errorf("counters %v, want exhaustions=1", st)
		}
	})
	t.Run("db-unknown", func(t *testing.T) {
		t.Parallel()
		rec, c := run(t, false)
		if rs := rec.find("warmpg: pool exhausted"); len(rs) != 0 || c.Stats().Exhaustions != 0 {
			t.Errorf("%d reports on a DB warmpg cannot see the waits of, %v: want none", len(rs), c.Stats())
		}
	})
}

// BenchmarkCheckout is what warmpg's checkout bookkeeping costs per
// checkout and return, through database/sql with no I/O (a fake driver):
// db.Conn and Close, called 20 frames below the benchmark, as from an
// application's handler.
//
//	go test -run '^$' -bench BenchmarkCheckout -benchtime 20x .
//
// Variants, each its own pool:
//
//	off      pool_exhausted_log_interval=0, pool_leak_threshold=0: not tracked
//	default  exhaustion reporting on (the default): a clock read and two atomics
//	leak     pool_leak_threshold=1h: also the caller's program counters
//
// Each iteration is one round: every variant runs a batch of 2000 checkouts,
// in an order rotated each round, so that drift on a shared machine hits
// every variant alike. Metrics: <variant>-ns is the median over rounds of
// one checkout and return, database/sql's own work included;
// <variant>-over-off-ns is the median of the per-round difference from off,
// the bookkeeping's own cost. ns/op is a whole round and means nothing alone.
func BenchmarkCheckout(b *testing.B) {
	const batch = 2000
	variants := []struct {
		name string
		opts []Option
	}{
		{"off", []Option{WithExhaustedLogInterval(0)}},
		{"default", nil},
		{"leak", []Option{WithLeakThreshold(time.Hour)}},
	}
	dbs := make([]*sql.DB, len(variants))
	for i, v := range variants {
		opts := append([]Option{WithMaxConns(4), WithLogLevel(LogOff)}, v.opts...)
		dbs[i], _ = fakeDB(b, &fakeConnector{}, opts...)
		dbs[i].SetMaxOpenConns(4)
	}
	ctx := context.Background()
	run := func(db *sql.DB) time.Duration {
		var d time.Duration
		atDepth(20, func() {
			start := time.Now()
			for range batch {
				c, err := db.Conn(ctx)
				if err != nil {
					b.Fatal(err)
				}
				c.Close()
			}
			d = time.Since(start)
		})
		return d / batch
	}
	for _, db := range dbs {
		run(db) // connect and warm up, untimed by the metrics
	}
	per := make([][]float64, len(variants))
	over := make([][]float64, len(variants))
	round := 0
	for b.Loop() {
		got := make([]time.Duration, len(variants))
		for k := range variants {
			i := (k + round) % len(variants)
			got[i] = run(dbs[i])
		}
		for i := range variants {
			per[i] = append(per[i], float64(got[i]))
			over[i] = append(over[i], float64(got[i]-got[0]))
		}
		round++
	}
	for i, v := range variants {
		b.ReportMetric(median(per[i]), v.name+"-ns")
		if i > 0 {
			b.ReportMetric(median(over[i]), v.name+"-over-off-ns")
		}
	}
}

func median(xs []float64) float64 {
	s := slices.Clone(xs)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[len(s)/2]
}

// atDepth calls f n frames down.
//
//go:noinline
func atDepth(n int, f func()) {
	if n == 0 {
		f()
		return
	}
	atDepth(n-1, f)
}

// The one checkout warmpg cannot see: a connection database/sql opens in
// its connectionOpener goroutine, for a request that waits while a
// discarded connection is replaced, reaches that request with no call into
// the driver. warmpg counts it out from its Connect, with the opener's
// stack (no application frame), and does not report it as held past the
// threshold; it is counted back at its return.
func TestOpenerCheckoutNotReported(t *testing.T) {
	withEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rec := &recorder{level: slog.LevelDebug}
	const threshold = 10 * time.Millisecond
	db, c := fakeDB(t, &fakeConnector{}, WithLeakThreshold(threshold), WithMaxConns(1), WithLogger(slog.New(rec)))
	db.SetMaxOpenConns(1)
	first := holdConns(t, ctx, db, 1)[0]
	got := make(chan *sql.Conn, 1)
	go func() {
		wc, err := db.Conn(ctx) // waits: the pool's one connection is out
		if err != nil {
			t.Error(err)
		}
		got <- wc
	}()
	for deadline := time.Now().Add(5 * time.Second); db.Stats().WaitCount == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the second request never waited")
		}
	}
	// Discard the held connection: database/sql's opener dials a new one
	// and hands it to the waiting request.
	if err := first.Raw(func(any) error { return driver.ErrBadConn }); err == nil {
		t.Fatal("Raw: want ErrBadConn back")
	}
	second := <-got
	if second == nil {
		t.FailNow()
	}
	time.Sleep(10 * threshold) // several scans past the threshold
	if st := c.Stats(); st.InUse != 1 || st.OldestInUse < threshold {
		t.Errorf("holding the opener's connection: %v, want in_use=1 and its age", st)
	}
	second.Close()
	// The first checkout is the application's own and may rightly be
	// reported when a loaded machine keeps it out past the threshold
	// before the discard; the opener's never may.
	reports := rec.find("warmpg: connection held past")
	for _, r := range reports {
		if !strings.Contains(r.attrs["stack"], "warmpg.holdConns") {
			t.Errorf("the opener's checkout was reported: %v", r)
		}
	}
	if st := c.Stats(); st.InUse != 0 || st.HeldPastThreshold != int64(len(reports)) || st.Connects != 2 {
		t.Errorf("after the return: %v, want in_use=0, held past the threshold only the %d application checkout(s) reported, 2 connects", st, len(reports))
	}
}

// Both keys are durations, from the DSN, the environment or an option; a bad
// value names the key and what is allowed.
func TestLeakKeys(t *testing.T) {
	withEnv(t, "WARMPG_POOL_LEAK_THRESHOLD=5s")
	cfg, _, err := parseConfig("postgres://h/db?pool_exhausted_log_interval=10s", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.leakThreshold != 5*time.Second || cfg.exhaustedInterval != 10*time.Second {
		t.Errorf("leak threshold %s, interval %s; want 5s and 10s", cfg.leakThreshold, cfg.exhaustedInterval)
	}
	withEnv(t)
	if cfg, _, _ := parseConfig("postgres://h/db", nil); cfg.leakThreshold != 0 || cfg.exhaustedInterval != DefaultExhaustedLogInterval {
		t.Errorf("defaults: leak threshold %s, interval %s", cfg.leakThreshold, cfg.exhaustedInterval)
	}
	for dsn, want := range map[string]string{
		"postgres://h/db?pool_leak_threshold=-1s":          `pool_leak_threshold="-1s"`,
		"postgres://h/db?pool_leak_threshold=30":           `pool_leak_threshold="30"`,
		"postgres://h/db?pool_exhausted_log_interval=soon": `pool_exhausted_log_interval="soon"`,
	} {
		if _, err := OpenConnector(dsn); err == nil || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), "duration") {
			t.Errorf("%s: error %v, want %s and what is allowed", dsn, err, want)
		}
	}
	for _, o := range []Option{WithLeakThreshold(-time.Second), WithExhaustedLogInterval(-time.Second)} {
		if _, err := NewConnector(&fakeConnector{}, o); err == nil || !strings.Contains(err.Error(), "=-1s") {
			t.Errorf("negative option: %v", err)
		}
	}
}

// Under concurrent load, with the monitor scanning and reporting all the
// while, the bookkeeping stays consistent (and -race finds nothing): when
// the load ends, nothing is counted out.
func TestHoldsUnderLoad(t *testing.T) {
	withEnv(t)
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	rec := &recorder{level: slog.LevelDebug}
	db, c := fakeDB(t, &fakeConnector{}, WithMaxConns(2), WithLeakThreshold(time.Millisecond),
		WithExhaustedLogInterval(5*time.Millisecond), WithLogger(slog.New(rec)))
	db.SetMaxOpenConns(2)
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 200 {
				if ctx.Err() != nil {
					return
				}
				if i%50 == 0 {
					c.Stats()
				}
				rows, err := db.QueryContext(ctx, "select 1")
				if err != nil {
					t.Error(err)
					return
				}
				for rows.Next() {
				}
				if i%20 == 0 {
					time.Sleep(2 * time.Millisecond) // held past the threshold
				}
				rows.Close()
			}
		}()
	}
	wg.Wait()
	if st := c.Stats(); st.InUse != 0 || st.OldestInUse != 0 || db.Stats().InUse != 0 {
		t.Errorf("after the load: %v, database/sql in use %d", st, db.Stats().InUse)
	}
}
