package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// Statement warming's benchmarks (docs/statements.md). The round trips are
// counted exactly by TestWarmStatementsExecuteNothing; these give times.

// hotK is how many hot parameterized statements the benchmarks run.
const hotK = 10

// hotSelects are hotK parameterized selects, distinct texts.
func hotSelects() []string {
	qs := make([]string, hotK)
	for i := range qs {
		qs[i] = fmt.Sprintf("select $1::int + %d", i)
	}
	return qs
}

// runHot runs q with one argument and checks the answer.
func runHot(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
}, i int, text string) error {
	var got int
	if err := q.QueryRowContext(ctx, text, 1).Scan(&got); err != nil {
		return err
	}
	if got != 1+i {
		return fmt.Errorf("%s: %d, want %d", text, got, 1+i)
	}
	return nil
}

// BenchmarkWarmStatementsLearnCost measures what learning costs on the hot
// path: 32 clients share 16 warmed connections, no latency injected (the
// worst case for a relative cost), each running one of hotK parameterized
// selects at random; "learn" is warmpg's default (pool_warm_statements=32:
// one execution in 16 counted, under a lock), "off" pool_warm_statements=0,
// and "off2" the same again: off2/off shows the machine's noise.
//
//	go test -run '^$' -bench BenchmarkWarmStatementsLearnCost -benchtime 5x .
//
// Metrics: <variant>-qps; learn/off is the median over rounds of off's time
// over learn's, per round (learn's throughput relative to off's; 1: free),
// off2/off the same for the control.
func BenchmarkWarmStatementsLearnCost(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	qs := hotSelects()
	op := func(db *sql.DB) func(context.Context) error {
		return func(ctx context.Context) error {
			i := rand.IntN(len(qs))
			return runHot(ctx, db, i, qs[i])
		}
	}
	vs := openVariants(b, ctx, reuseClients, func(ctx context.Context) ([]*warmbench.Variant, error) {
		var vs []*warmbench.Variant
		for _, v := range []struct{ name, k string }{{"learn", "32"}, {"off", "0"}, {"off2", "0"}} {
			wv, err := warmbench.OpenSQLVariant(ctx, v.name, func() (*sql.DB, error) {
				return sql.Open("warmpg", srv.URL("pool_warm_statements="+v.k, "pool_exhausted_log_interval=0"))
			}, reuseConns, op)
			vs = append(vs, wv)
			if err != nil {
				return vs, err
			}
		}
		return vs, nil
	})
	r := runRounds(b, ctx, vs, 20000, 4, reuseClients)
	for _, v := range vs {
		b.ReportMetric(r.PerSecond(v.Name), v.Name+"-qps")
	}
	b.ReportMetric(r.MedianRatio("off", "learn"), "learn/off")
	b.ReportMetric(r.MedianRatio("off", "off2"), "off2/off")
}

// BenchmarkWarmStatementsFirstUse: the first execution of hotK hot
// parameterized selects on a freshly warmed connection at 5 ms RTT
// (internal/pgproxy), against their second execution on it (the steady
// state). Variants, interleaved per iteration, each a new pool of one
// connection warmed by WarmDB:
//
//	declared  WithWarmStatements(the hotK selects): prepared at connect
//	learned   pool_warm_statements=32: the connector learned them first (on
//	          another connection, untimed), then warmed a new one
//	off       pool_warm_statements=0: pgx prepares each at its first use
//
// Metrics: <variant>-first-ms and <variant>-steady-ms (the mean per
// statement), <variant>-first/steady (target for declared and learned:
// <= 1.3; off: about 2, a Parse/Describe round trip before each).
//
//	go test -run '^$' -bench BenchmarkWarmStatementsFirstUse -benchtime 5x .
func BenchmarkWarmStatementsFirstUse(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	url := serverURL(b, srv, 5*time.Millisecond)
	qs := hotSelects()
	names := []string{"declared", "learned", "off"}
	fs := newFirstSteady()
	for i := 0; b.Loop(); i++ {
		for _, name := range warmbench.Rotate(names, i) {
			var opts []warmpg.Option
			k := "32"
			switch name {
			case "declared":
				opts = append(opts, warmpg.WithWarmStatements(qs...))
			case "off":
				k = "0"
			}
			db, err := warmpg.Open(url("pool_max_conns=16", "pool_warm_statements="+k), append(opts, warmpg.WithLogger(discardLog))...)
			if err != nil {
				b.Fatal(err)
			}
			if name == "learned" {
				// 16 clients × 32 runs of each: sampled one in 16, each
				// statement is sampled about 32 times.
				if err := hotLoad(ctx, db, qs, 16, 32); err != nil {
					b.Fatal(err)
				}
				db.SetMaxIdleConns(0) // close them: the next connection is new
			}
			db.SetMaxIdleConns(1)
			if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(1), warmpg.WithLogger(discardLog)); err != nil {
				b.Fatal(err)
			}
			c, err := db.Conn(ctx)
			if err != nil {
				b.Fatal(err)
			}
			fs.run(b, ctx, c, name, qs)
			c.Close()
			db.Close()
		}
	}
	fs.report(b, names)
}

// firstSteady collects, per variant, the mean time of a hot statement in
// a connection's first pass over them and in a second pass.
type firstSteady struct{ first, steady map[string][]time.Duration }

func newFirstSteady() *firstSteady {
	return &firstSteady{first: map[string][]time.Duration{}, steady: map[string][]time.Duration{}}
}

// run runs qs twice on c, for variant name.
func (fs *firstSteady) run(b *testing.B, ctx context.Context, c *sql.Conn, name string, qs []string) {
	for pass, into := range []map[string][]time.Duration{fs.first, fs.steady} {
		start := time.Now()
		for j, q := range qs {
			if err := runHot(ctx, c, j, q); err != nil {
				b.Fatalf("%s pass %d: %v", name, pass, err)
			}
		}
		into[name] = append(into[name], time.Since(start)/time.Duration(len(qs)))
	}
}

// report reports each variant's median first and steady times and their
// ratio.
func (fs *firstSteady) report(b *testing.B, names []string) {
	for _, name := range names {
		f, s := warmbench.Median(fs.first[name]), warmbench.Median(fs.steady[name])
		b.ReportMetric(ms(f), name+"-first-ms")
		b.ReportMetric(ms(s), name+"-steady-ms")
		b.ReportMetric(float64(f)/float64(s), name+"-first/steady")
	}
}

// hotLoad runs each of qs runs times from each of clients goroutines.
func hotLoad(ctx context.Context, db *sql.DB, qs []string, clients, runs int) error {
	errs := make(chan error, clients)
	for range clients {
		go func() {
			var err error
			for r := 0; r < runs && err == nil; r++ {
				for j, q := range qs {
					if err = runHot(ctx, db, j, q); err != nil {
						break
					}
				}
			}
			errs <- err
		}()
	}
	var first error
	for range clients {
		if err := <-errs; err != nil && first == nil {
			first = err
		}
	}
	return first
}

// BenchmarkWarmStatementsReplacement: the first use of hotK hot statements
// on a keep-warm replacement (pool_min_idle_conns=1), at 5 ms RTT, against
// the steady state on the same connection. The pool learned the statements
// first; each iteration takes the connection keep-warm dialled, runs the
// statements twice (first use, then steady), and closes it, so keep-warm
// dials the next (database/sql keeps no idle connection here). Variants:
// pool_warm_statements=32 (warm) and 0 (off).
//
// Metrics: <variant>-first/steady (target for warm: <= 1.3), and the
// per-statement means <variant>-first-ms, <variant>-steady-ms.
//
//	go test -run '^$' -bench BenchmarkWarmStatementsReplacement -benchtime 10x .
func BenchmarkWarmStatementsReplacement(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	url := serverURL(b, srv, 5*time.Millisecond)
	qs := hotSelects()
	names := []string{"warm", "off"}
	dbs := map[string]*sql.DB{}
	for _, name := range names {
		k := map[string]string{"warm": "32", "off": "0"}[name]
		db, err := warmpg.Open(url("pool_max_conns=16", "pool_min_idle_conns=1", "pool_warm_statements="+k), warmpg.WithLogger(discardLog))
		if err != nil {
			b.Fatal(err)
		}
		defer db.Close()
		if err := hotLoad(ctx, db, qs, 16, 32); err != nil {
			b.Fatal(err)
		}
		db.SetMaxIdleConns(0)
		dbs[name] = db
	}
	// Let keep-warm replace the ready connection it dialled before the
	// statements were learned: take it, and wait for its replacement.
	for _, name := range names {
		nextReplacement(b, ctx, dbs[name]).Close()
	}
	fs := newFirstSteady()
	for i := 0; b.Loop(); i++ {
		for _, name := range warmbench.Rotate(names, i) {
			db := dbs[name]
			c := nextReplacement(b, ctx, db)
			fs.run(b, ctx, c, name, qs)
			c.Close()
		}
	}
	fs.report(b, names)
}

// nextReplacement waits until keep-warm has a ready connection dialled
// since the last call (Connects rose), and returns it, checked out.
func nextReplacement(b *testing.B, ctx context.Context, db *sql.DB) *sql.Conn {
	b.Helper()
	st0, _ := warmpg.Stats(db)
	c, err := db.Conn(ctx) // the ready one (or one being dialled)
	if err != nil {
		b.Fatal(err)
	}
	if st, _ := warmpg.Stats(db); st.FromReady == st0.FromReady {
		b.Fatalf("not from keep-warm's ready store: %v", st)
	}
	// Wait for keep-warm's next dial (it starts as soon as this one is
	// taken), and for it to warm and reach the store (a 5 ms round trip).
	deadline := time.Now().Add(10 * time.Second)
	for st, _ := warmpg.Stats(db); st.Connects <= st0.Connects; st, _ = warmpg.Stats(db) {
		if time.Now().After(deadline) {
			b.Fatalf("keep-warm dialled no replacement: %v", st)
		}
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond)
	return c
}

// BenchmarkChurnStatements is BenchmarkChurn's churn (connections living
// 5 s, jitter 2 s, keep-warm 2) with hotK parameterized selects instead
// of select 1: each client runs one at random, then pauses 1 ms, for
// -warmpg.churn. Variants run at once, each on its own pool of 16:
//
//	warmpg-churn         pool_warm_statements=32 (the default)
//	warmpg-churn-nowarm  pool_warm_statements=0
//	warmpg-nochurn       no lifetime
//
// Metrics as BenchmarkChurn's, and <variant>/nochurn-p999 (target for
// warmpg-churn: <= 1.1).
//
//	go test -run '^$' -bench BenchmarkChurnStatements -benchtime 1x -timeout 30m .
func BenchmarkChurnStatements(b *testing.B) {
	srv := pgtest.Get(b)
	app := "warmpg_bench_churn_stmts"
	dsn, _ := realisticURL(b, srv, 5*time.Millisecond, app)
	lifetime := 5 * time.Second
	churn := fmt.Sprintf("&pool_max_conns=16&pool_min_idle_conns=2&pool_max_conn_lifetime=%s&pool_max_conn_lifetime_jitter=%s", lifetime, lifetime*2/5)
	vs := []churnVariant{
		{"warmpg-churn", func(dsn string) (*sql.DB, error) { return warmpg.Open(dsn+churn, warmpg.WithLogger(discardLog)) }},
		{"warmpg-churn-nowarm", func(dsn string) (*sql.DB, error) {
			return warmpg.Open(dsn+churn+"&pool_warm_statements=0", warmpg.WithLogger(discardLog))
		}},
		{"warmpg-nochurn", func(dsn string) (*sql.DB, error) {
			return warmpg.Open(dsn+"&pool_max_conns=16", warmpg.WithLogger(discardLog))
		}},
	}
	qs := hotSelects()
	op := func(ctx context.Context, db *sql.DB) error {
		i := rand.IntN(len(qs))
		return runHot(ctx, db, i, qs[i])
	}
	lat := runChurn(b, vs, func() map[string]churnResult { return churnAllOp(b, srv, vs, dsn, app, *churnDuration, op) })
	p999 := func(name string) float64 { return ms(pct(lat[name], 0.999)) }
	b.ReportMetric(p999("warmpg-churn")/p999("warmpg-nochurn"), "warmpg-churn/nochurn-p999")
	b.ReportMetric(p999("warmpg-churn-nowarm")/p999("warmpg-nochurn"), "warmpg-churn-nowarm/nochurn-p999")
}
