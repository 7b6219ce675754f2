package warmpg_test

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// TestLoadBalanceBehindPgBouncer (issue 28): a PgBouncer in front of each
// host works as the hosts themselves do. Three transaction-mode PgBouncers
// in front of one server, pool_pgbouncer=true: with load_balance_hosts=random
// WarmDB(30) puts 10 client connections on each bouncer (counted by the
// bouncers' own SHOW CLIENTS), without it all 30 on the first, on both
// backends, and statements run through them.
func TestLoadBalanceBehindPgBouncer(t *testing.T) {
	srv := pgtest.Get(t)
	bs := make([]*pgtest.Bouncer, 3)
	for i := range bs {
		bs[i] = pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(4))
	}
	const n = 30
	for _, b := range backends {
		for _, lb := range []string{"random", "disable"} {
			t.Run(string(b)+"/"+lb, func(t *testing.T) {
				ctx := ctxT(t, time.Minute)
				app := appName(t)
				var hosts, ports []string
				for _, bb := range bs {
					hosts = append(hosts, bb.Host)
					ports = append(ports, fmt.Sprint(bb.Port))
				}
				dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable application_name=%s"+
					" pool_pgbouncer=true pool_backend=%s pool_max_conns=%d connect_timeout=5 load_balance_hosts=%s",
					strings.Join(hosts, ","), strings.Join(ports, ","), bs[0].User, bs[0].Database, app, b, n, lb)
				if bs[0].Password != "" {
					dsn += " password=" + bs[0].Password
				}
				db, err := warmpg.Open(dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if rep, err := warmpg.WarmDB(ctx, db); err != nil || rep.Warmed != n {
					t.Fatalf("WarmDB: %v, %v", rep, err)
				}
				got := make([]int, len(bs))
				for i, bb := range bs {
					if got[i], err = bb.ClientConns(ctx, app); err != nil {
						t.Fatal(err)
					}
				}
				want := []int{n, 0, 0}
				if lb == "random" {
					want = []int{n / 3, n / 3, n / 3}
				}
				if fmt.Sprint(got) != fmt.Sprint(want) {
					t.Errorf("client connections per bouncer %v, want %v", got, want)
				}
				var v int
				if err := db.QueryRowContext(ctx, "select $1::int", 7).Scan(&v); err != nil || v != 7 {
					t.Fatalf("a query through the bouncers: %d, %v", v, err)
				}
			})
		}
	}
}
