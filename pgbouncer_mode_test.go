package warmpg_test

import (
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pool_pgbouncer=true leaves no prepared statement on the server — neither
// pgx's statement cache nor *sql.Stmt — so a transaction-mode pooler can
// run each statement on any server connection; without it both backends
// leave some (the control). Arguments, NULLs and row counts still work.
// The tests through a real PgBouncer are in pgbouncer_test.go.
func TestIntegrationPgBouncerModeLeavesNoPreparedStatements(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		for _, bouncer := range []bool{false, true} {
			name := string(b) + "/default"
			if bouncer {
				name = string(b) + "/pool_pgbouncer"
			}
			t.Run(name, func(t *testing.T) {
				ctx := ctxT(t, 20*time.Second)
				db, err := warmpg.Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1"), warmpg.WithPgBouncer(bouncer))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				var s string
				var n sql.NullInt64
				if err := db.QueryRowContext(ctx, "select $1::text, $2::int", "a", nil).Scan(&s, &n); err != nil || s != "a" || n.Valid {
					t.Fatalf("query with arguments: %q %v %v", s, n, err)
				}
				st, err := db.PrepareContext(ctx, "select $1::int + 1")
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				for i := range 3 {
					var got int
					if err := st.QueryRowContext(ctx, i).Scan(&got); err != nil || got != i+1 {
						t.Fatalf("stmt(%d) = %d, %v", i, got, err)
					}
				}
				ins, err := db.PrepareContext(ctx, "select * from generate_series(1, $1::int)")
				if err != nil {
					t.Fatal(err)
				}
				defer ins.Close()
				if res, err := ins.ExecContext(ctx, 3); err != nil {
					t.Fatal(err)
				} else if rows, _ := res.RowsAffected(); rows != 3 {
					t.Errorf("rows affected %d, want 3", rows)
				}
				if _, err := st.QueryContext(ctx); err == nil {
					t.Error("a statement run without its argument succeeded")
				}
				var prepared int
				if err := db.QueryRowContext(ctx, "select count(*) from pg_prepared_statements").Scan(&prepared); err != nil {
					t.Fatal(err)
				}
				if bouncer && prepared != 0 {
					t.Errorf("%d prepared statements on the server with pool_pgbouncer=true, want 0", prepared)
				}
				if !bouncer && prepared == 0 {
					t.Error("control: no prepared statement on the server without pool_pgbouncer; the test cannot tell the modes apart")
				}
			})
		}
	}
}

// The DSN's own default_query_exec_mode wins over pool_pgbouncer's exec,
// unless it is pgx's default, cache_statement: counted by the proxy, exec
// sends Parse/Bind/Execute/Sync in one round trip, simple_protocol a Query.
func TestIntegrationPgBouncerModeKeepsChosenExecMode(t *testing.T) {
	srv := pgtest.Get(t)
	for _, tc := range []struct {
		params      []string
		parse, sync int // per query with an argument
	}{
		{[]string{"pool_pgbouncer=true"}, 1, 1},
		{[]string{"pool_pgbouncer=true", "default_query_exec_mode=simple_protocol"}, 0, 0},
	} {
		t.Run(strings.Join(tc.params, "&"), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			p, url := proxied(t, srv)
			db, err := warmpg.Open(url(append(tc.params, "pool_max_conns=1", "pool_prewarm=true")...))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			p.Reset()
			var got string
			if err := db.QueryRowContext(ctx, "select $1::text", "x").Scan(&got); err != nil || got != "x" {
				t.Fatalf("%q %v", got, err)
			}
			if parse, sync, q := p.Count('P'), p.Count('S'), p.Count('Q'); parse != tc.parse || sync != tc.sync || q != 1-tc.sync {
				t.Errorf("sent %d Parse, %d Sync, %d Query; want %d, %d, %d", parse, sync, q, tc.parse, tc.sync, 1-tc.sync)
			}
		})
	}
}
