package warmpg_test

import (
	"context"
	"database/sql"
	"slices"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// BenchmarkStmtReplanWrap measures what wrapping every prepared statement
// on pgx costs on the happy path (replan.go: the retry runs only on the
// error): a *sql.Stmt "select $1::int" executed through plain
// sql.Open("pgx") and through warmpg, one connection each, no latency
// injected (the worst case for a relative cost).
//
//	go test -run '^$' -bench BenchmarkStmtReplanWrap -benchtime 5x .
//
// Each iteration is one round of 3 passes; each pass runs 2000 executions
// per variant, in an order reversed every other pass. Metrics: <variant>-us
// is the mean latency of one execution; warmpg/pgx is the median over
// rounds of the ratio of their times (target: about 1).
func BenchmarkStmtReplanWrap(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	const q = "select $1::int"
	type variant struct {
		name  string
		db    *sql.DB
		st    *sql.Stmt
		total time.Duration
	}
	open := func(name string) *variant {
		var db *sql.DB
		var err error
		if name == "pgx" {
			db, err = sql.Open("pgx", srv.URL())
		} else {
			db, err = warmpg.Open(srv.URL("pool_backend=pgx"))
		}
		if err != nil {
			b.Fatal(err)
		}
		db.SetMaxOpenConns(1)
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			b.Fatal(err)
		}
		return &variant{name: name, db: db, st: st}
	}
	vs := []*variant{open("pgx"), open("warmpg")}
	defer func() {
		for _, v := range vs {
			v.st.Close()
			v.db.Close()
		}
	}()
	const perPass, passes = 2000, 3
	var ratios []float64
	b.ResetTimer()
	for i := range b.N {
		var round [2]time.Duration
		for p := range passes {
			for j := range vs {
				k := j
				if (i*passes+p)%2 == 1 {
					k = len(vs) - 1 - j
				}
				v := vs[k]
				start := time.Now()
				for n := range perPass {
					var got int
					if err := v.st.QueryRowContext(ctx, n).Scan(&got); err != nil || got != n {
						b.Fatalf("%s: %d, %v", v.name, got, err)
					}
				}
				d := time.Since(start)
				round[k] += d
				v.total += d
			}
		}
		ratios = append(ratios, float64(round[1])/float64(round[0]))
	}
	b.StopTimer()
	slices.Sort(ratios)
	execs := float64(b.N * passes * perPass)
	for _, v := range vs {
		b.ReportMetric(float64(v.total.Microseconds())/execs, v.name+"-us")
	}
	b.ReportMetric(ratios[len(ratios)/2], "warmpg/pgx")
}
