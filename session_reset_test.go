package warmpg_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// setupConnector is a lib/pq connector that, like pgx's
// OptionAfterConnect, runs setup on each new connection.
type setupConnector struct {
	driver.Connector
	setup string
}

func (s setupConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := s.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	if _, err := c.(driver.ExecerContext).ExecContext(ctx, s.setup, nil); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// A reset returns the session to what it was when the connection was first
// handed out — after the inner connector's own setup — not to the server's
// defaults: a NewConnector around a connector that sets search_path and the
// role after connect keeps both through check mode's reset (after a SET
// TIME ZONE) and through every discard-mode reuse, on one connection.
func TestIntegrationResetKeepsConnectorSetup(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	n := appSeq.Add(1)
	schema, role := fmt.Sprintf("warmpg_setup_%d", n), fmt.Sprintf("warmpg_setup_role_%d", n)
	if err := srv.Exec(ctx, fmt.Sprintf("create schema %s; create role %s", schema, role)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Exec(context.Background(), fmt.Sprintf("drop schema %s; drop role %s", schema, role)) })
	setup := fmt.Sprintf("SET search_path = %s; SET ROLE %s", schema, role)
	inner := map[warmpg.Backend]func(t *testing.T) driver.Connector{
		warmpg.BackendPgx: func(t *testing.T) driver.Connector {
			cfg, err := pgx.ParseConfig(srv.URL())
			if err != nil {
				t.Fatal(err)
			}
			return stdlib.GetConnector(*cfg, stdlib.OptionAfterConnect(func(ctx context.Context, c *pgx.Conn) error {
				_, err := c.Exec(ctx, setup)
				return err
			}))
		},
		warmpg.BackendPQ: func(t *testing.T) driver.Connector {
			c, err := pq.NewConnector(srv.URL())
			if err != nil {
				t.Fatal(err)
			}
			return setupConnector{c, setup}
		},
	}
	for _, b := range backends {
		for _, mode := range []warmpg.ResetMode{warmpg.ResetCheck, warmpg.ResetDiscard} {
			t.Run(string(b)+"/"+string(mode), func(t *testing.T) {
				c, err := warmpg.NewConnector(inner[b](t), warmpg.WithReset(mode))
				if err != nil {
					t.Fatal(err)
				}
				db := sql.OpenDB(c)
				defer db.Close()
				db.SetMaxOpenConns(1)
				want := fmt.Sprintf("%s %s", schema, role)
				session := func() string {
					var path, user string
					if err := db.QueryRowContext(ctx, "select current_setting('search_path'), current_user::text").Scan(&path, &user); err != nil {
						t.Fatal(err)
					}
					return path + " " + user
				}
				if got := session(); got != want {
					t.Fatalf("the connector's setup did not run: %q, want %q", got, want)
				}
				for i := range 3 {
					if _, err := db.ExecContext(ctx, "SET TIME ZONE 'Asia/Tokyo'"); err != nil {
						t.Fatal(err)
					}
					if got := session(); got != want {
						t.Errorf("reuse %d after a reset: search_path and user %q, want the connector's %q", i, got, want)
					}
				}
				var tz string
				if err := db.QueryRowContext(ctx, "select current_setting('TimeZone')").Scan(&tz); err != nil || tz == "Asia/Tokyo" {
					t.Errorf("the SET TIME ZONE was not reset: %q %v", tz, err)
				}
				if st := c.Stats(); st.Connects != 1 || st.Discarded != 0 || st.Reset < 3 {
					t.Errorf("counters %v: want resets on one connection", st)
				}
			})
		}
	}
}

// discard mode after a SET keeps the connection on both backends: 20 uses,
// one connect (lib/pq used to redial at every reuse after the first SET).
func TestIntegrationDiscardAfterSetKeepsConnection(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			db, err := warmpg.Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1", "pool_reset=discard"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			for range 20 {
				if _, err := db.ExecContext(ctx, "SET statement_timeout = '5s'"); err != nil {
					t.Fatal(err)
				}
			}
			if st, _ := warmpg.Stats(db); st.Connects != 1 || st.Discarded != 0 || st.Reset != 19 {
				t.Errorf("counters %v: want 19 resets on one connection", st)
			}
		})
	}
}

// The reset after an SQL PREPARE (discardSQL, then a DO block that
// deallocates the statements prepared with SQL) runs on a hot standby too:
// the connection is kept and the statement is gone, on both backends, in
// check and discard modes.
func TestIntegrationStandbyResetAfterPrepare(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	_, standby := replicaPair(t, ctx)
	for _, b := range backends {
		for _, mode := range []warmpg.ResetMode{warmpg.ResetCheck, warmpg.ResetDiscard} {
			t.Run(string(b)+"/"+string(mode), func(t *testing.T) {
				db, err := warmpg.Open(standby.URL("pool_backend="+string(b), "pool_max_conns=1", "pool_reset="+string(mode)))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if _, err := db.ExecContext(ctx, "PREPARE warmpg_standby_p AS SELECT 1"); err != nil {
					t.Fatal(err)
				}
				var n int
				if err := db.QueryRowContext(ctx, "select count(*) from pg_prepared_statements where from_sql").Scan(&n); err != nil || n != 0 {
					t.Errorf("SQL-prepared statements after the reset: %d (%v), want 0", n, err)
				}
				if st, _ := warmpg.Stats(db); st.Connects != 1 || st.Reset != 1 || st.Discarded != 0 {
					t.Errorf("counters %v: want one reset on one connection", st)
				}
			})
		}
	}
}
