package warmpg_test

import (
	"context"
	"database/sql"
	"testing"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// BenchmarkCleanPath is issue 24's clean path: one QueryRow on a pool of
// one connection, loopback, for plain pgx stdlib with its reuse ping off
// (what warmpg's check replaces) and for warmpg's defaults (check mode's
// peek at every reuse, lazy BEGIN, replan, statement warming):
//
//	go test -run '^$' -bench BenchmarkCleanPath -benchmem -count 6 .
//
// allocs/op and B/op should match (they do: 14 and 744 with pgx v5.13);
// compare ns/op with benchstat, on a quiet machine.
func BenchmarkCleanPath(b *testing.B) {
	srv := pgtest.Get(b)
	ctx := context.Background()
	open := map[string]func() (*sql.DB, error){
		"pgx-noping": func() (*sql.DB, error) {
			cfg, err := pgx.ParseConfig(srv.URL())
			if err != nil {
				return nil, err
			}
			return sql.OpenDB(stdlib.GetConnector(*cfg, stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false }))), nil
		},
		"warmpg": func() (*sql.DB, error) { return warmpg.Open(srv.URL("pool_max_conns=1")) },
	}
	for _, name := range []string{"pgx-noping", "warmpg"} {
		b.Run(name, func(b *testing.B) {
			db, err := open[name]()
			if err != nil {
				b.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			db.SetMaxIdleConns(1)
			var n int
			for range 100 {
				if err := db.QueryRowContext(ctx, "select $1::int", 1).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportAllocs()
			b.ResetTimer()
			for range b.N {
				if err := db.QueryRowContext(ctx, "select $1::int", 1).Scan(&n); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
