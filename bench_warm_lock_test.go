package warmpg_test

import (
	"context"
	"slices"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// BenchmarkWarmUnderLock measures issue 23 part 2's goal: while another
// session holds a lock on a table a warmed statement names (SHARE, as a
// plain CREATE INDEX takes, or ACCESS EXCLUSIVE, as ALTER TABLE does), the
// first query of a new connection — dial, warming, `select 1` — takes no
// longer than with warming off. Each round, per lock mode, drops the pool's
// one idle connection and times that first query for warming on ("warm",
// three statements declared, one of them an UPDATE of the locked table)
// and off ("off", pool_warm_statements=0), interleaved, no latency
// injected (where the guard's lock_timeout weighs most).
//
//	go test -run '^$' -bench BenchmarkWarmUnderLock -benchtime 20x .
//
// "no-lock" is the same with no lock held: what warming's round trip costs
// a connect at all.
//
// Metric: warm/off, per lock mode, the median over rounds of warm's time over
// off's (1: the lock costs warming nothing; the goal is at most 1.2).
func BenchmarkWarmUnderLock(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	for _, mode := range []string{"", "share", "access exclusive"} {
		b.Run(map[string]string{"": "no-lock", "share": "share", "access exclusive": "exclusive"}[mode], func(b *testing.B) { benchWarmUnderLock(b, ctx, srv, mode) })
	}
}

func benchWarmUnderLock(b *testing.B, ctx context.Context, srv *pgtest.Server, mode string) {
	{
		hot := newTable(b, ctx, srv, "hot", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
		cold := newTable(b, ctx, srv, "cold", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
		declared := []string{"select v from " + cold + " where id = $1", "update " + hot + " set v = v + 1 where id = $1", "update " + cold + " set v = v + 1 where id = $1"}
		warm, err := warmpg.Open(srv.URL("pool_max_conns=1"), warmpg.WithWarmStatements(declared...))
		if err != nil {
			b.Fatal(err)
		}
		off, err := warmpg.Open(srv.URL("pool_max_conns=1", "pool_warm_statements=0"))
		if err != nil {
			b.Fatal(err)
		}
		lock, err := srv.Connect(ctx)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := lock.Exec(ctx, "begin"); err != nil {
			b.Fatal(err)
		}
		if _, err := lock.Exec(ctx, "lock table "+hot+" in "+mode+" mode"); mode != "" && err != nil {
			b.Fatal(err)
		}
		first := func(db interface {
			SetMaxIdleConns(int)
		}, q func() error) time.Duration {
			db.SetMaxIdleConns(0)
			db.SetMaxIdleConns(1)
			start := time.Now()
			if err := q(); err != nil {
				b.Fatal(err)
			}
			return time.Since(start)
		}
		var ratios []float64
		b.ResetTimer()
		for range b.N {
			var one int
			tw := first(warm, func() error { return warm.QueryRowContext(ctx, "select 1").Scan(&one) })
			to := first(off, func() error { return off.QueryRowContext(ctx, "select 1").Scan(&one) })
			ratios = append(ratios, float64(tw)/float64(to))
		}
		b.StopTimer()
		slices.Sort(ratios)
		b.ReportMetric(ratios[len(ratios)/2], "warm/off")
		_, _ = lock.Exec(ctx, "rollback")
		lock.Close(ctx)
		warm.Close()
		off.Close()
	}
}
