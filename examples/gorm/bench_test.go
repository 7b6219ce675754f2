package gormexample_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"
	"gorm.io/gorm"

	gormexample "github.com/warmpg/warmpg/examples/gorm"
	"github.com/warmpg/warmpg/examples/internal/extest"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// BenchmarkGormCreate measures a GORM Create — which GORM wraps in a
// transaction: BEGIN, INSERT … RETURNING, COMMIT — at 5 ms injected
// round-trip time (internal/pgproxy), one client, one warmed connection per
// variant:
//
//	go test -run '^$' -bench BenchmarkGormCreate -benchtime 3x ./gorm
//
//	warmpg        sql.Open("warmpg", url): pool_lazy_begin=true, the default:
//	              the BEGIN travels with the INSERT (two round trips)
//	warmpg-eager  the same with pool_lazy_begin=false (three)
//	pgx           sql.Open("pgx", url), what gorm.io/driver/postgres opens (three)
//
// Each iteration is one round: 20 Creates per variant in 2 passes, in an
// order rotated each pass. Metrics: <variant>-us per Create, and the
// medians over rounds of warmpg/pgx (target <= 0.7) and warmpg-eager/pgx.
func BenchmarkGormCreate(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	schema := extest.Schema(b, srv)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(5*time.Millisecond), pgproxy.WithSpin(0), pgproxy.WithMaxMessages(0))
	if err != nil {
		b.Fatal(err)
	}
	defer proxy.Close()
	url := func(params ...string) string {
		return strings.Replace(srv.URL(append([]string{schema}, params...)...), srv.Addr(), proxy.Addr(), 1)
	}
	var vs []*warmbench.Variant
	defer func() { warmbench.CloseVariants(vs) }()
	for i, o := range []struct{ name, driver, dsn string }{
		{"warmpg", "warmpg", url()},
		{"warmpg-eager", "warmpg", url("pool_lazy_begin=false")},
		{"pgx", "pgx", url()},
	} {
		v, err := warmbench.OpenSQLVariant(ctx, o.name, func() (*sql.DB, error) { return sql.Open(o.driver, o.dsn) }, 1,
			func(db *sql.DB) func(context.Context) error {
				gdb, err := gormexample.OpenOnDB(db)
				if err != nil {
					return func(context.Context) error { return err }
				}
				if i == 0 {
					if err := gormexample.Migrate(ctx, gdb); err != nil {
						return func(context.Context) error { return err }
					}
				}
				return createOp(gdb, o.name)
			})
		vs = append(vs, v)
		if err != nil {
			b.Fatal(err)
		}
	}
	if err := warmbench.WarmVariants(ctx, vs, 1); err != nil {
		b.Fatal(err)
	}
	r := warmbench.NewRounds(20, 2)
	for b.Loop() {
		if err := r.Run(ctx, vs, 2, 1); err != nil {
			b.Fatal(err)
		}
	}
	for _, v := range vs {
		b.ReportMetric(1e6/r.PerSecond(v.Name), v.Name+"-us")
	}
	b.ReportMetric(r.MedianRatio("warmpg", "pgx"), "warmpg/pgx")
	b.ReportMetric(r.MedianRatio("warmpg-eager", "pgx"), "warmpg-eager/pgx")
}

// createOp creates one account with gdb, checking that its ID came back.
func createOp(gdb *gorm.DB, owner string) func(context.Context) error {
	n := 0
	return func(ctx context.Context) error {
		n++
		a := gormexample.Account{Owner: fmt.Sprintf("%s-%d", owner, n), Balance: 1}
		if err := gdb.WithContext(ctx).Create(&a).Error; err != nil {
			return err
		}
		if a.ID == 0 {
			return fmt.Errorf("create %s: no ID back", a.Owner)
		}
		return nil
	}
}
