package warmpg_test

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

var discardLog = slog.New(slog.DiscardHandler)

var churnDuration = flag.Duration("warmpg.churn", 60*time.Second, "how long BenchmarkChurn runs each variant")

// realisticURL returns srv's URL through a proxy injecting rtt, connecting as
// production does (scram-sha-256, sslmode=prefer: 4 round trips per connect),
// with application_name app.
func realisticURL(tb testing.TB, srv *pgtest.Server, rtt time.Duration, app string) (string, *pgproxy.Proxy) {
	tb.Helper()
	p, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(rtt), pgproxy.WithSpin(0))
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { p.Close() })
	pw := srv.WithPasswordUser(tb)
	return strings.Replace(pw.URL("application_name="+app, "sslmode=prefer"), srv.Addr(), p.Addr(), 1), p
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(p*float64(len(sorted))))]
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

// BenchmarkFirstBurst is the first burst after a service opens its pool, at
// 5 ms RTT: 32 queries at once, `start` after sql.Open (the service's own
// start-up time), on a pool the application sized to 32
// (SetMaxOpenConns/SetMaxIdleConns). Variants, interleaved per iteration:
//
//	lazy     sql.Open("warmpg", dsn): every query of the burst dials
//	prewarm  the same DSN with pool_prewarm=true: the connector has been
//	         opening 32 connections since sql.Open
//
// Metrics: <variant>-first-ms (the first query's latency from the burst's
// start), <variant>-p99-ms (the burst's 99th percentile, here its slowest),
// and lazy/prewarm ratios of both.
//
//	go test -run '^$' -bench BenchmarkFirstBurst -benchtime 5x .
func BenchmarkFirstBurst(b *testing.B) {
	srv := pgtest.Get(b)
	const n = 32
	for _, start := range []time.Duration{0, 200 * time.Millisecond} {
		b.Run(fmt.Sprintf("start=%s", start), func(b *testing.B) {
			app := fmt.Sprintf("warmpg_bench_first_%d", start.Milliseconds())
			dsn, _ := realisticURL(b, srv, 5*time.Millisecond, app)
			first := map[string][]time.Duration{}
			p99 := map[string][]time.Duration{}
			for i := 0; i < b.N; i++ {
				for _, v := range warmbench.Rotate([]string{"lazy", "prewarm"}, i) {
					ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
					lat, err := warmbench.FirstBurst(ctx, dsn, n, start, v == "prewarm")
					if err == nil {
						_, err = srv.WaitBackendCount(ctx, app, 0)
					}
					cancel()
					if err != nil {
						b.Fatalf("%s: %v", v, err)
					}
					first[v] = append(first[v], lat[0])
					p99[v] = append(p99[v], pct(lat, 0.99))
				}
			}
			for _, v := range []string{"lazy", "prewarm"} {
				b.ReportMetric(ms(warmbench.Median(first[v])), v+"-first-ms")
				b.ReportMetric(ms(warmbench.Median(p99[v])), v+"-p99-ms")
			}
			b.ReportMetric(ms(warmbench.Median(first["lazy"]))/ms(warmbench.Median(first["prewarm"])), "lazy/prewarm-first")
			b.ReportMetric(ms(warmbench.Median(p99["lazy"]))/ms(warmbench.Median(p99["prewarm"])), "lazy/prewarm-p99")
		})
	}
}

// churnVariant is one pool under BenchmarkChurn.
type churnVariant struct {
	name string
	open func(dsn string) (*sql.DB, error)
}

// churnVariants: warmpg with a 5 s lifetime, its jitter (2 s) and keep-warm;
// the same without a lifetime (no churn); plain database/sql + pgx with
// SetConnMaxLifetime(5 s), whose connections, opened together, expire together.
func churnVariants(lifetime time.Duration) []churnVariant {
	return []churnVariant{
		{"warmpg-churn", func(dsn string) (*sql.DB, error) {
			return warmpg.Open(dsn + fmt.Sprintf("&pool_max_conns=16&pool_min_idle_conns=2&pool_max_conn_lifetime=%s&pool_max_conn_lifetime_jitter=%s", lifetime, lifetime*2/5))
		}},
		{"warmpg-nochurn", func(dsn string) (*sql.DB, error) {
			return warmpg.Open(dsn + "&pool_max_conns=16")
		}},
		{"pgx-churn", func(dsn string) (*sql.DB, error) {
			db, err := sql.Open("pgx", dsn)
			if err == nil {
				db.SetMaxOpenConns(16)
				db.SetMaxIdleConns(16)
				db.SetConnMaxLifetime(lifetime)
			}
			return db, err
		}},
	}
}

// selectOne is steadyLoad's default operation.
func selectOne(ctx context.Context, db *sql.DB) error {
	var x int
	return db.QueryRowContext(ctx, "select 1").Scan(&x)
}

// steadyLoad runs clients goroutines issuing op (select 1) with a 1 ms
// pause for d, and returns every query's latency, sorted, and the failures.
func steadyLoad(ctx context.Context, db *sql.DB, clients int, d time.Duration, op func(context.Context, *sql.DB) error) ([]time.Duration, int) {
	var mu sync.Mutex
	var all []time.Duration
	failed := 0
	stop := time.Now().Add(d)
	var wg sync.WaitGroup
	for range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []time.Duration
			bad := 0
			for i := 0; i < 1_000_000 && time.Now().Before(stop) && ctx.Err() == nil; i++ {
				t0 := time.Now()
				if err := op(ctx, db); err != nil {
					bad++
				}
				mine = append(mine, time.Since(t0))
				time.Sleep(time.Millisecond)
			}
			mu.Lock()
			all = append(all, mine...)
			failed += bad
			mu.Unlock()
		}()
	}
	wg.Wait()
	slices.Sort(all)
	return all, failed
}

// BenchmarkChurn: steady load (16 clients each, select 1 then a 1 ms pause)
// for -warmpg.churn (default 60 s) at 5 ms RTT, connections living 5 s. The
// three variants run at the same time, each on its own pool, so that the
// shared machine's noise hits all three alike; each pool is warmed first.
// Metrics per variant: -p50-ms, -p99-ms, -p999-ms, -max-ms, -failed; and
// warmpg-churn/nochurn-p99 (target <= 1.5) and pgx-churn/nochurn-p99.
//
//	go test -run '^$' -bench BenchmarkChurn -benchtime 1x -timeout 30m .
func BenchmarkChurn(b *testing.B) {
	srv := pgtest.Get(b)
	app := "warmpg_bench_churn"
	dsn, _ := realisticURL(b, srv, 5*time.Millisecond, app)
	vs := churnVariants(5 * time.Second)
	lat := runChurn(b, vs, func() map[string]churnResult { return churnAll(b, srv, vs, dsn, app, *churnDuration) })
	p99 := func(name string) float64 { return ms(pct(lat[name], 0.99)) }
	b.ReportMetric(p99("warmpg-churn")/p99("warmpg-nochurn"), "warmpg-churn/nochurn-p99")
	b.ReportMetric(p99("pgx-churn")/p99("warmpg-nochurn"), "pgx-churn/nochurn-p99")
}

// runChurn runs one churn per b.N iteration and reports each variant's
// latency percentiles, slowest query and failures over them all; it returns
// the latencies, sorted, by variant.
func runChurn(b *testing.B, vs []churnVariant, churn func() map[string]churnResult) map[string][]time.Duration {
	lat := map[string][]time.Duration{}
	failed := map[string]int{}
	for i := 0; i < b.N; i++ {
		for name, r := range churn() {
			lat[name] = append(lat[name], r.lat...)
			failed[name] += r.failed
		}
	}
	for _, v := range vs {
		l := lat[v.name]
		slices.Sort(l)
		b.ReportMetric(ms(pct(l, 0.5)), v.name+"-p50-ms")
		b.ReportMetric(ms(pct(l, 0.99)), v.name+"-p99-ms")
		b.ReportMetric(ms(pct(l, 0.999)), v.name+"-p999-ms")
		b.ReportMetric(ms(l[len(l)-1]), v.name+"-max-ms")
		b.ReportMetric(float64(failed[v.name]), v.name+"-failed")
	}
	return lat
}

type churnResult struct {
	lat    []time.Duration
	failed int
}

// churnAll opens and warms every variant's pool, runs the load on all of
// them at once for d, and closes them.
func churnAll(tb testing.TB, srv *pgtest.Server, vs []churnVariant, dsn, app string, d time.Duration) map[string]churnResult {
	tb.Helper()
	return churnAllOp(tb, srv, vs, dsn, app, d, selectOne)
}

// churnAllOp is churnAll with the load's operation.
func churnAllOp(tb testing.TB, srv *pgtest.Server, vs []churnVariant, dsn, app string, d time.Duration, op func(context.Context, *sql.DB) error) map[string]churnResult {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d+2*time.Minute)
	defer cancel()
	dbs := make([]*sql.DB, len(vs))
	for i, v := range vs {
		db, err := v.open(dsn)
		if err != nil {
			tb.Fatal(err)
		}
		defer db.Close()
		if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(16), warmpg.WithLogger(discardLog)); err != nil {
			tb.Fatal(err)
		}
		dbs[i] = db
	}
	res := make(map[string]churnResult, len(vs))
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i, v := range vs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			lat, bad := steadyLoad(ctx, dbs[i], 16, d, op)
			mu.Lock()
			res[v.name] = churnResult{lat, bad}
			mu.Unlock()
		}()
	}
	wg.Wait()
	for _, db := range dbs {
		db.Close()
	}
	if _, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
		tb.Fatal(err)
	}
	return res
}

// The benchmarks' code paths, briefly, in every go test run.
func TestKeepWarmBenchVariantsWork(t *testing.T) {
	srv := pgtest.Get(t)
	app := appName(t)
	dsn, _ := realisticURL(t, srv, 0, app)
	for name, r := range churnAll(t, srv, churnVariants(300*time.Millisecond), dsn, app, 700*time.Millisecond) {
		if r.failed != 0 || len(r.lat) == 0 {
			t.Errorf("%s: %d failed of %d", name, r.failed, len(r.lat))
		}
	}
	lat, err := warmbench.FirstBurst(ctxT(t, 30*time.Second), dsn, 8, 0, true)
	if err != nil || len(lat) != 8 {
		t.Fatal(err)
	}
}
