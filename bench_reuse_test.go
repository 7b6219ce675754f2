package warmpg_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// Shape of BenchmarkReuse: reuseClients goroutines share a pool of reuseConns
// connections, so every query waits for a connection that was just used.
const (
	reuseConns   = 16
	reuseClients = 32
)

// benchTimeout bounds one benchmark or sub-benchmark, all rounds; each
// batch, setup and close has its own bound (see warmbench.Bounded).
const benchTimeout = 15 * time.Minute

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
			vs := openVariants(b, ctx, reuseClients, func(ctx context.Context) ([]*warmbench.Variant, error) {
				return warmbench.OpenReuseVariants(ctx, url, reuseConns, warmbench.BenchmarkReuseVariants)
			})

			r := runRounds(b, ctx, vs, bc.queries, bc.passes, reuseClients)

			for _, v := range vs {
				b.ReportMetric(r.PerSecond(v.Name), v.Name+"-qps")
			}
			for _, sfx := range []string{"", "-exec"} {
				check := "check" + sfx
				for _, peer := range []string{"pgx-never-ping", "pgx-ping-always", "pgx-default", "pgx-rollback", "pgxpool"} {
					// check's qps over the peer's = the peer's time over check's.
					b.ReportMetric(r.MedianRatio(peer+sfx, check), check+"/"+peer+sfx)
				}
				b.ReportMetric(r.MedianRatio("pq", check), check+"/pq")
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
	vs := openVariants(b, ctx, 1, func(ctx context.Context) ([]*warmbench.Variant, error) {
		return warmbench.OpenReadOnlyTxVariants(ctx, url)
	})

	r := runRounds(b, ctx, vs, 150, 3, 1)

	for _, v := range vs {
		b.ReportMetric(1e6/r.PerSecond(v.Name), v.Name+"-us")
	}
	for _, name := range []string{"autocommit-ro-tx", "warmpg-ro-tx", "pgx-ro-tx"} {
		b.ReportMetric(r.MedianRatio(name, "select"), name+"/select")
	}
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

// runRounds runs one round (see warmbench.Rounds.Run) per b.Loop iteration.
func runRounds(b *testing.B, ctx context.Context, vs []*warmbench.Variant, n, passes, clients int) *warmbench.Rounds {
	r := warmbench.NewRounds(n, passes)
	for b.Loop() {
		if err := r.Run(ctx, vs, passes, clients); err != nil {
			b.Fatal(err)
		}
	}
	return r
}

// closeVariants closes every pool (see warmbench.CloseVariants).
// openVariants opens a benchmark's variants with open and warms each with
// warmClients connections, within warmbench.SetupTimeout; it fails tb if
// that fails, and closes the variants when tb ends.
func openVariants(tb testing.TB, ctx context.Context, warmClients int, open func(context.Context) ([]*warmbench.Variant, error)) []*warmbench.Variant {
	tb.Helper()
	sctx, cancel := context.WithTimeout(ctx, warmbench.SetupTimeout)
	defer cancel()
	vs, err := warmbench.OpenBounded(sctx, open)
	tb.Cleanup(func() { closeVariants(tb, vs) })
	if err == nil {
		err = warmbench.WarmVariants(sctx, vs, warmClients)
	}
	if err != nil {
		tb.Fatal(err)
	}
	return vs
}

func closeVariants(tb testing.TB, vs []*warmbench.Variant) {
	if err := warmbench.CloseVariants(vs); err != nil {
		tb.Error(err)
	}
}
