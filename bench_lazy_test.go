package warmpg_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// BenchmarkLazyBegin measures what pool_lazy_begin saves on a one-statement
// read-write transaction (BeginTx, an UPDATE of one row, Commit: what GORM
// wraps every Create, Update and Delete in) at 1 ms and 5 ms injected
// round-trip time (internal/pgproxy): one client, sequential, one warmed
// connection per variant, pgx's default exec mode.
//
//	go test -run '^$' -bench BenchmarkLazyBegin -benchtime 3x .
//
// Each iteration is one round: every variant runs 60 transactions at 1 ms
// (20 at 5 ms), in 2 passes per variant, in an order rotated each pass and
// reversed every other pass, with a GC before each batch (3x: about 10 s).
// ns/op is the time of a whole round and means nothing alone.
//
//	statement  the UPDATE alone, no transaction: one round trip
//	lazy-tx    warmpg, pool_lazy_begin=true (the default): BEGIN with the
//	           UPDATE, then COMMIT: two round trips
//	eager-tx   warmpg, pool_lazy_begin=false: BEGIN, UPDATE, COMMIT: three
//	pgx-tx     plain sql.Open("pgx", url): three
//
// Metrics: <variant>-us is the mean latency of one transaction in µs.
// lazy-tx/pgx-tx, lazy-tx/eager-tx and eager-tx/pgx-tx are medians over
// rounds of per-round ratios of the variants' times: the target is
// lazy-tx/pgx-tx ≈ 0.67 (two round trips of three).
func BenchmarkLazyBegin(b *testing.B) {
	srv := pgtest.Get(b)
	for _, rtt := range []time.Duration{time.Millisecond, 5 * time.Millisecond} {
		b.Run(fmt.Sprintf("rtt=%s", rtt), func(b *testing.B) {
			ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
			defer cancel()
			table := newTable(b, ctx, srv, "bench_lazy", "create table %[1]s (id int primary key, n int); insert into %[1]s values (1, 0)")
			url := serverURL(b, srv, rtt)
			vs := openVariants(b, ctx, 1, func(ctx context.Context) ([]*warmbench.Variant, error) {
				return warmbench.OpenLazyBeginVariants(ctx, url, table)
			})
			n := 60
			if rtt > time.Millisecond {
				n = 20
			}
			r := runRounds(b, ctx, vs, n, 2, 1)
			for _, v := range vs {
				b.ReportMetric(1e6/r.PerSecond(v.Name), v.Name+"-us")
			}
			b.ReportMetric(r.MedianRatio("lazy-tx", "pgx-tx"), "lazy-tx/pgx-tx")
			b.ReportMetric(r.MedianRatio("lazy-tx", "eager-tx"), "lazy-tx/eager-tx")
			b.ReportMetric(r.MedianRatio("eager-tx", "pgx-tx"), "eager-tx/pgx-tx")
		})
	}
}
