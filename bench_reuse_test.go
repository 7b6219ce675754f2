package warmpg_test

import (
	"bytes"
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"runtime"
	"runtime/pprof"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq" // the "postgres" driver for the pq variant

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Shape of BenchmarkReuse: reuseClients goroutines share a pool of reuseConns
// connections, so every query waits for a connection that was just used.
const (
	reuseConns   = 16
	reuseClients = 32
)

// Time bounds. Every call into a driver gets a context with a deadline, and
// runs under bounded, which gives up on a call still running stuckGrace
// after its context ended (a call that ignores its context) and fails with
// the stacks of the goroutines involved, instead of hanging the benchmark.
const (
	benchTimeout = 15 * time.Minute // one benchmark or sub-benchmark, all rounds
	batchTimeout = 30 * time.Second // one variant's batch (normally well under 1 s)
	setupTimeout = 2 * time.Minute  // opening and warming every pool
	closeTimeout = 30 * time.Second // closing one pool
	stuckGrace   = 10 * time.Second
)

// BenchmarkReuse measures what handing out a used connection costs, per reuse
// rule, as query throughput: reuseClients (32) goroutines share a pool of
// reuseConns (16) connections, warmed before timing, and each query is
// QueryRowContext(ctx, "select 1").Scan. Every variant has its own pool,
// opened once per sub-benchmark; before timing, every connection of every
// pool has run a query (so pgx's ping on first reuse and the statement
// cache's first Parse are behind it) and each variant has run a short untimed
// batch. Sub-benchmarks: rtt=0 (straight to the server) and rtt=1ms (through
// internal/pgproxy injecting 1 ms round-trip time).
//
//	go test -run '^$' -bench BenchmarkReuse -benchtime 5x .
//
// Each iteration is one round: every variant runs the same number of
// queries (20000 at rtt=0, 5000 at rtt=1ms), in passes (4 at rtt=0, 2 at
// rtt=1ms): in each pass every variant runs a batch of its share, taken from
// a shared counter by the 32 goroutines (a batch lasts about 0.05-0.4 s), one
// variant after another, in an order rotated each pass and reversed every
// other pass, with a GC before each batch, so that drift on a noisy machine
// hits every variant alike. -benchtime Nx runs N rounds (3x: about 35 s for
// both sub-benchmarks on a 2-core VM); ns/op is the time of a whole round
// and means nothing alone. Batches carry the pprof label variant=<name>, so a
// -cpuprofile splits by variant: go tool pprof -tags, or -tagfocus
// variant=^check$. A batch still running 10 s past its 30 s deadline fails
// the benchmark with the drivers' goroutine stacks instead of hanging it.
//
// Variants, each in pgx's default exec mode (cache_statement: a query is one
// Bind/Execute/Sync round trip once its statement is prepared) and again with
// default_query_exec_mode=exec (suffix -exec: an unnamed Parse/Bind/Describe/
// Execute/Sync round trip every time, what pgbouncer setups use):
//
//	check            sql.Open("warmpg", url): pool_reset=check, the default
//	pgx-never-ping   stdlib.OpenDB with OptionShouldPing returning false: nothing
//	                 at all on reuse, the floor for any database/sql pool
//	pgx-default      sql.Open("pgx", url): pings on first reuse and after 1 s idle
//	                 (at rtt=0 a round of the other variants takes longer than 1 s,
//	                 so each of its connections pings once per batch)
//	pgx-ping-always  OptionShouldPing returning true: a ping before every query
//	                 (SQLAlchemy pool_pre_ping)
//	pgx-rollback     never-ping plus OptionResetSession sending ROLLBACK before
//	                 every reuse (SQLAlchemy's reset-on-return, without psycopg's
//	                 skipping it when no transaction is open)
//	pgxpool          pgxpool, MaxConns=MinConns=16, pool.QueryRow: no
//	                 database/sql (pings after 1 s idle, as pgx-default)
//	pq               sql.Open("postgres", url), lib/pq: one simple-protocol Query
//	                 (once only: it has no exec modes)
//
// Metrics: <variant>-qps is queries per second over all rounds (queries / sum
// of batch times). check/<peer> (and check-exec/<peer>-exec) is check's
// throughput over the peer's: the median over rounds of the per-round ratio
// of their times (medians resist one noisy round). Targets, at rtt=0:
// check/pgx-never-ping >= 0.95 (check costs nearly nothing) and
// check/pgx-ping-always >= 1.5.
func BenchmarkReuse(b *testing.B) {
	srv := pgtest.Get(b)
	for _, bc := range []struct {
		name    string
		rtt     time.Duration
		queries int // per variant per round
		passes  int
	}{
		{"rtt=0", 0, 20000, 4},
		{"rtt=1ms", time.Millisecond, 5000, 2},
	} {
		b.Run(bc.name, func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
			defer cancel()
			url := serverURL(b, srv, bc.rtt)
			sctx, scancel := context.WithTimeout(ctx, setupTimeout)
			vs, err := openBounded(sctx, func(ctx context.Context) ([]*benchVariant, error) {
				return openReuseVariants(ctx, url, reuseConns)
			})
			if err == nil {
				err = warmVariants(sctx, vs, reuseClients)
			}
			scancel()
			defer closeVariants(b, vs)
			if err != nil {
				b.Fatal(err)
			}

			r := runRounds(b, ctx, vs, bc.queries, bc.passes, reuseClients)

			for _, v := range vs {
				b.ReportMetric(r.perSecond(v.name), v.name+"-qps")
			}
			for _, sfx := range []string{"", "-exec"} {
				check := "check" + sfx
				for _, peer := range []string{"pgx-never-ping", "pgx-ping-always", "pgx-default", "pgx-rollback", "pgxpool"} {
					// check's qps over the peer's = the peer's time over check's.
					b.ReportMetric(r.medianRatio(peer+sfx, check), check+"/"+peer+sfx)
				}
				b.ReportMetric(r.medianRatio("pq", check), check+"/pq")
			}
		})
	}
}

// BenchmarkReadOnlyTx measures what pool_autocommit saves on a read-only
// transaction at 1 ms injected round-trip time (internal/pgproxy): one client,
// sequential, one warmed connection per variant, pgx's default exec mode.
//
//	go test -run '^$' -bench BenchmarkReadOnlyTx -benchtime 5x .
//
// Each iteration is one round: every variant runs 150 operations, in 3
// passes of 50 in a row per variant, in an order rotated each pass and
// reversed every other pass, with a GC before each batch (3x: about 5 s). ns/op is the time of a whole round and
// means nothing alone.
//
//	select            warmpg: db.QueryRowContext "select 1": one round trip
//	autocommit-ro-tx  warmpg with pool_autocommit=true: BeginTx(ReadOnly),
//	                  tx.QueryRowContext "select 1", Commit: BEGIN and COMMIT
//	                  are not sent (target: one round trip)
//	warmpg-ro-tx      the same transaction on warmpg without pool_autocommit:
//	                  BEGIN READ ONLY, select, COMMIT (three round trips)
//	pgx-ro-tx         the same on plain sql.Open("pgx", url) (three round trips)
//
// Metrics: <variant>-us is the mean latency of one operation in µs (sum of
// batch times / operations). <variant>/select is the median over rounds of
// the per-round ratio of the two variants' times: autocommit-ro-tx/select (target <= 1.2),
// warmpg-ro-tx/select and pgx-ro-tx/select (expected about 3).
func BenchmarkReadOnlyTx(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	url := serverURL(b, srv, time.Millisecond)
	sctx, scancel := context.WithTimeout(ctx, setupTimeout)
	vs, err := openBounded(sctx, func(ctx context.Context) ([]*benchVariant, error) {
		return openReadOnlyTxVariants(ctx, url)
	})
	if err == nil {
		err = warmVariants(sctx, vs, 1)
	}
	scancel()
	defer closeVariants(b, vs)
	if err != nil {
		b.Fatal(err)
	}

	r := runRounds(b, ctx, vs, 150, 3, 1)

	for _, v := range vs {
		b.ReportMetric(1e6/r.perSecond(v.name), v.name+"-us")
	}
	for _, name := range []string{"autocommit-ro-tx", "warmpg-ro-tx", "pgx-ro-tx"} {
		b.ReportMetric(r.medianRatio(name, "select"), name+"/select")
	}
}

// TestReuseBenchVariantsWork runs every variant of BenchmarkReuse and
// BenchmarkReadOnlyTx briefly, through a proxy without latency that counts
// round trips, so the benchmarks cannot rot and each variant is shown to do
// what its name says (check sends nothing on reuse, ping-always pings, ...).
func TestReuseBenchVariantsWork(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithMaxMessages(0))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	url := func(params ...string) string { return strings.Replace(srv.URL(params...), srv.Addr(), proxy.Addr(), 1) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const conns, clients, n = 4, 8, 20
	reuse, err := openReuseVariants(ctx, url, conns)
	defer closeVariants(t, reuse)
	if err != nil {
		t.Fatal(err)
	}
	rotx, err := openReadOnlyTxVariants(ctx, url)
	defer closeVariants(t, rotx)
	if err != nil {
		t.Fatal(err)
	}
	if len(reuse) != 13 || len(rotx) != 4 {
		t.Fatalf("%d reuse and %d read-only-tx variants, want 13 and 4", len(reuse), len(rotx))
	}

	// Round trips (Query and Sync messages) for n operations: [min, max].
	// pgx-default and pgxpool ping a connection idle for over a second,
	// which a slow machine may cause once per connection.
	want := func(name string, conns int) [2]int {
		switch strings.TrimSuffix(name, "-exec") {
		case "check", "pgx-never-ping", "pq", "select", "autocommit-ro-tx":
			return [2]int{n, n}
		case "pgx-default", "pgxpool":
			return [2]int{n, n + conns}
		case "pgx-ping-always", "pgx-rollback":
			return [2]int{2 * n, 2 * n}
		case "warmpg-ro-tx":
			return [2]int{3 * n, 3 * n}
		case "pgx-ro-tx":
			return [2]int{3 * n, 3*n + conns}
		}
		t.Fatalf("no expectation for variant %s", name)
		return [2]int{}
	}
	for _, set := range []struct {
		vs             []*benchVariant
		conns, clients int
	}{{reuse, conns, clients}, {rotx, 1, 1}} {
		if err := warmVariants(ctx, set.vs, set.clients); err != nil {
			t.Fatal(err)
		}
		for _, v := range set.vs {
			var before warmpg.Counters
			if v.db != nil {
				before, _ = warmpg.Stats(v.db)
			}
			proxy.Reset()
			if _, err := runBatch(ctx, v.op, n, set.clients); err != nil {
				t.Errorf("%s: %v", v.name, err)
				continue
			}
			rt := proxy.Count('Q') + proxy.Count('S')
			if w := want(v.name, set.conns); rt < w[0] || rt > w[1] {
				t.Errorf("%s: %d round trips for %d operations, want %d to %d", v.name, rt, n, w[0], w[1])
			}
			if v.db != nil {
				if st := v.db.Stats(); st.MaxOpenConnections != set.conns || st.OpenConnections != set.conns {
					t.Errorf("%s: pool has %d of at most %d connections, want %d of %d",
						v.name, st.OpenConnections, st.MaxOpenConnections, set.conns, set.conns)
				}
				if after, ok := warmpg.Stats(v.db); ok {
					if d := after.Pinged + after.Discarded + after.RolledBack + after.Reset - before.Pinged - before.Discarded - before.RolledBack - before.Reset; d != 0 {
						t.Errorf("%s: check did more than look on reuse: %s", v.name, after)
					}
					if strings.HasPrefix(v.name, "autocommit") && after.AutocommitTxs-before.AutocommitTxs != n {
						t.Errorf("%s: %d autocommit transactions, want %d", v.name, after.AutocommitTxs-before.AutocommitTxs, n)
					}
				}
			}
		}
	}
}

// benchVariant is one way to run the benchmarked operation, on its own pool.
type benchVariant struct {
	name  string
	op    func(context.Context) error // the timed operation
	warm  func(context.Context) error // runs a query on every connection of the pool
	db    *sql.DB                     // nil for pgxpool
	close func()
}

// serverURL returns a func building srv's URL, through a latency proxy
// (closed when b ends) when rtt > 0.
func serverURL(b *testing.B, srv *pgtest.Server, rtt time.Duration) func(...string) string {
	if rtt == 0 {
		return srv.URL
	}
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(rtt), pgproxy.WithSpin(0), pgproxy.WithMaxMessages(0))
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { proxy.Close() })
	return func(params ...string) string {
		return strings.Replace(srv.URL(params...), srv.Addr(), proxy.Addr(), 1)
	}
}

// openReuseVariants opens BenchmarkReuse's pools, each warmed to conns
// connections. On error it returns the variants opened so far, to close.
func openReuseVariants(ctx context.Context, url func(...string) string, conns int) ([]*benchVariant, error) {
	var vs []*benchVariant
	add := func(v *benchVariant, err error) error {
		if err != nil {
			return fmt.Errorf("open %s: %w", v.name, err)
		}
		vs = append(vs, v)
		return nil
	}
	neverPing := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false })
	alwaysPing := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return true })
	rollback := stdlib.OptionResetSession(func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "rollback")
		return err
	})
	for _, mode := range []struct{ sfx, param string }{
		{"", ""}, // pgx's default, cache_statement
		{"-exec", "default_query_exec_mode=exec"},
	} {
		dsn := url()
		if mode.param != "" {
			dsn = url(mode.param)
		}
		pgxDB := func(opts ...stdlib.OptionOpenDB) (*sql.DB, error) {
			cfg, err := pgx.ParseConfig(dsn)
			if err != nil {
				return nil, err
			}
			return stdlib.OpenDB(*cfg, opts...), nil
		}
		for _, o := range []struct {
			name string
			open func() (*sql.DB, error)
		}{
			{"check", func() (*sql.DB, error) { return sql.Open("warmpg", dsn) }},
			{"pgx-never-ping", func() (*sql.DB, error) { return pgxDB(neverPing) }},
			{"pgx-default", func() (*sql.DB, error) { return sql.Open("pgx", dsn) }},
			{"pgx-ping-always", func() (*sql.DB, error) { return pgxDB(alwaysPing) }},
			{"pgx-rollback", func() (*sql.DB, error) { return pgxDB(neverPing, rollback) }},
		} {
			if err := add(openSQLVariant(ctx, o.name+mode.sfx, o.open, conns, selectOp)); err != nil {
				return vs, err
			}
		}
		if err := add(openPgxpoolVariant(ctx, "pgxpool"+mode.sfx, dsn, conns)); err != nil {
			return vs, err
		}
	}
	err := add(openSQLVariant(ctx, "pq", func() (*sql.DB, error) { return sql.Open("postgres", url()) }, conns, selectOp))
	return vs, err
}

// openReadOnlyTxVariants opens BenchmarkReadOnlyTx's pools, one warmed
// connection each. On error it returns the variants opened so far, to close.
func openReadOnlyTxVariants(ctx context.Context, url func(...string) string) ([]*benchVariant, error) {
	var vs []*benchVariant
	for _, o := range []struct {
		name, driver, dsn string
		op                func(*sql.DB) func(context.Context) error
	}{
		{"select", "warmpg", url(), selectOp},
		{"autocommit-ro-tx", "warmpg", url("pool_autocommit=true"), readOnlyTxOp},
		{"warmpg-ro-tx", "warmpg", url(), readOnlyTxOp},
		{"pgx-ro-tx", "pgx", url(), readOnlyTxOp},
	} {
		v, err := openSQLVariant(ctx, o.name, func() (*sql.DB, error) { return sql.Open(o.driver, o.dsn) }, 1, o.op)
		if err != nil {
			return vs, fmt.Errorf("open %s: %w", o.name, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// closeVariants closes every pool, giving up on one that takes longer than
// closeTimeout (pgxpool.Close waits for every connection to come back).
func closeVariants(tb testing.TB, vs []*benchVariant) {
	for _, v := range vs {
		ctx, cancel := context.WithTimeout(context.Background(), closeTimeout)
		err := bounded(ctx, "close "+v.name, func() error { v.close(); return nil })
		cancel()
		if err != nil {
			tb.Error(err)
		}
	}
}

// openSQLVariant opens a *sql.DB with open and warms conns connections with
// WarmDB, which works on any *sql.DB; the pool is then exactly conns
// connections (SetMaxOpenConns, SetMaxIdleConns).
func openSQLVariant(ctx context.Context, name string, open func() (*sql.DB, error), conns int,
	op func(*sql.DB) func(context.Context) error) (*benchVariant, error) {
	v := &benchVariant{name: name, close: func() {}}
	db, err := open()
	if err != nil {
		return v, err
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	rep, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(conns), warmpg.WithMaxIdleConns(conns),
		warmpg.WithLogger(slog.New(slog.DiscardHandler)))
	if err == nil && rep.Warmed != conns {
		err = fmt.Errorf("warmed %d of %d connections", rep.Warmed, conns)
	}
	if err != nil {
		db.Close()
		return v, err
	}
	v.db, v.op = db, op(db)
	v.close = func() { db.Close() }
	v.warm = func(ctx context.Context) error {
		held := make([]*sql.Conn, 0, conns)
		defer func() {
			for _, c := range held {
				c.Close()
			}
		}()
		for range conns {
			c, err := db.Conn(ctx)
			if err != nil {
				return err
			}
			held = append(held, c)
			if err := scanOne(c.QueryRowContext(ctx, "select 1")); err != nil {
				return err
			}
		}
		if st := db.Stats(); st.OpenConnections != conns || st.MaxOpenConnections != conns {
			return fmt.Errorf("pool has %d connections of at most %d, want %d", st.OpenConnections, st.MaxOpenConnections, conns)
		}
		return nil
	}
	return v, nil
}

// openPgxpoolVariant opens a pgxpool of exactly conns connections.
func openPgxpoolVariant(ctx context.Context, name, dsn string, conns int) (*benchVariant, error) {
	v := &benchVariant{name: name, close: func() {}}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return v, err
	}
	cfg.MaxConns, cfg.MinConns = int32(conns), int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return v, err
	}
	v.close = pool.Close
	v.op = func(ctx context.Context) error { return scanOne(pool.QueryRow(ctx, "select 1")) }
	v.warm = func(ctx context.Context) error {
		held := make([]*pgxpool.Conn, 0, conns)
		defer func() {
			for _, c := range held {
				c.Release()
			}
		}()
		for range conns {
			c, err := pool.Acquire(ctx)
			if err != nil {
				return err
			}
			held = append(held, c)
			if err := scanOne(c.QueryRow(ctx, "select 1")); err != nil {
				return err
			}
		}
		if got := pool.Stat().TotalConns(); got != int32(conns) {
			return fmt.Errorf("pool has %d connections, want %d", got, conns)
		}
		return nil
	}
	return v, nil
}

func selectOp(db *sql.DB) func(context.Context) error {
	return func(ctx context.Context) error { return scanOne(db.QueryRowContext(ctx, "select 1")) }
}

func readOnlyTxOp(db *sql.DB) func(context.Context) error {
	return func(ctx context.Context) error {
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		if err := scanOne(tx.QueryRowContext(ctx, "select 1")); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
}

// scanOne scans a row of "select 1" (a *sql.Row or a pgx.Row).
func scanOne(row interface{ Scan(...any) error }) error {
	var n int
	if err := row.Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("select 1 returned %d", n)
	}
	return nil
}

// warmVariants runs each variant's warm (a query on every connection) and
// then a short untimed batch of its operation.
func warmVariants(ctx context.Context, vs []*benchVariant, clients int) error {
	for _, v := range vs {
		if err := bounded(ctx, "warm "+v.name, func() error { return v.warm(ctx) }); err != nil {
			return fmt.Errorf("warm %s: %w", v.name, err)
		}
		if _, err := runBatch(ctx, v.op, 4*clients, clients); err != nil {
			return fmt.Errorf("warm-up batch %s: %w", v.name, err)
		}
	}
	return nil
}

// runBatch runs op n times, spread over clients goroutines that take from a
// shared count, and returns the wall time from the first start to the last
// finish. It stops at the first error, and fails when the batch takes longer
// than batchTimeout (see bounded).
func runBatch(ctx context.Context, op func(context.Context) error, n, clients int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, batchTimeout)
	defer cancel()
	var d time.Duration
	err := bounded(ctx, "batch", func() (err error) {
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

// rounds holds each round's batch time per variant.
type rounds struct {
	ops    int // operations per variant per round
	rounds []map[string]time.Duration
}

// runRounds runs one round per b.Loop iteration. A round is passes passes;
// in each pass every variant runs a batch of n/passes operations over
// clients goroutines, in an order rotated each pass and reversed every other
// pass, with a GC before each batch. A variant's time in a round is the sum
// of its batches: fine interleaving spreads slow drift (another process
// waking up for a second) over every variant.
func runRounds(b *testing.B, ctx context.Context, vs []*benchVariant, n, passes, clients int) *rounds {
	per := n / passes
	r := &rounds{ops: per * passes}
	order := make([]int, len(vs))
	for round := 0; b.Loop(); round++ {
		times := make(map[string]time.Duration, len(vs))
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
				// The label lets a -cpuprofile tell the variants apart:
				// go tool pprof -tags, or -tagfocus 'variant=^check$'.
				pprof.Do(ctx, pprof.Labels("variant", v.name), func(ctx context.Context) {
					d, err = runBatch(ctx, v.op, per, clients)
				})
				if err != nil {
					b.Fatalf("round %d: %s: %v", round, v.name, err)
				}
				times[v.name] += d
			}
		}
		r.rounds = append(r.rounds, times)
	}
	return r
}

// perSecond is a variant's operations per second over all rounds.
func (r *rounds) perSecond(name string) float64 {
	var sum time.Duration
	for _, t := range r.rounds {
		sum += t[name]
	}
	return float64(r.ops*len(r.rounds)) / sum.Seconds()
}

// medianRatio is the median over rounds of a's batch time over b's.
func (r *rounds) medianRatio(a, b string) float64 {
	ratios := make([]float64, 0, len(r.rounds))
	for _, t := range r.rounds {
		if t[a] <= 0 || t[b] <= 0 {
			panic(errors.New("medianRatio: no time for " + a + " or " + b))
		}
		ratios = append(ratios, float64(t[a])/float64(t[b]))
	}
	slices.Sort(ratios)
	m := len(ratios) / 2
	if len(ratios)%2 == 0 {
		return (ratios[m-1] + ratios[m]) / 2
	}
	return ratios[m]
}

// bounded runs f, which should return soon after ctx ends, and returns its
// error. If f is still running stuckGrace after ctx ended, bounded gives up
// on it (f keeps running; its goroutines leak) and returns an error with the
// stacks of the goroutines in this module and in the drivers, which show the
// call that ignored its context.
func bounded(ctx context.Context, what string, f func() error) error {
	// The caller may read what f wrote only when the error is not errStuck:
	// the receive from done orders f's writes before the read.
	done := make(chan error, 1)
	go func() { done <- f() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
	}
	t := time.NewTimer(stuckGrace)
	defer t.Stop()
	select {
	case err := <-done:
		return err
	case <-t.C:
		return fmt.Errorf("%s: %w: still running %s after its context ended (%v); stacks:\n%s",
			what, errStuck, stuckGrace, context.Cause(ctx), driverStacks())
	}
}

var errStuck = errors.New("a call ignores its context")

// openBounded runs open under bounded and returns the variants it opened,
// also on error (to close them), except when open is stuck.
func openBounded(ctx context.Context, open func(context.Context) ([]*benchVariant, error)) ([]*benchVariant, error) {
	var vs []*benchVariant
	err := bounded(ctx, "open", func() (err error) {
		vs, err = open(ctx)
		return err
	})
	if errors.Is(err, errStuck) {
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
