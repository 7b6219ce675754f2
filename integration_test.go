package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main also checks with goleak that no goroutine outlives the tests.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

var appSeq atomic.Int64

// appName returns an application_name unique to this test, so the server's
// pg_stat_activity can count exactly this test's backends.
func appName(t *testing.T) string {
	return fmt.Sprintf("warmpg_%d_%s", appSeq.Add(1), strings.NewReplacer("/", "_", " ", "_").Replace(t.Name()))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// newTable creates a table on srv named prefix and a number unique in this
// test binary, with ddl (its %[1]s is the name), drops it when the test
// ends, and returns the name.
func newTable(t testing.TB, ctx context.Context, srv *pgtest.Server, prefix, ddl string) string {
	t.Helper()
	name := fmt.Sprintf("%s_%d", prefix, appSeq.Add(1))
	if err := srv.Exec(ctx, fmt.Sprintf(ddl, name)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Exec(ctx, "drop table if exists "+name)
	})
	return name
}

// ownCluster starts a private cluster for a test that stops or restarts
// its server, closed when the test ends (see pgtest.Own for when it skips).
func ownCluster(t *testing.T, ctx context.Context) *pgtest.Server {
	t.Helper()
	return pgtest.Own(t, ctx)
}

// killBackends terminates (pg_terminate_backend) the want backends named
// app and waits until the server has reaped them.
//
// It waits for the terminated backends themselves to be gone, not for the
// application's count to reach 0: a keep-warm filler may already be
// replacing them, and on a loaded machine the count then never shows 0.
func killBackends(t *testing.T, ctx context.Context, srv *pgtest.Server, app string, want int) {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	pids := backendPIDs(t, ctx, srv, app)
	if len(pids) != want {
		err = fmt.Errorf("found %d backends", len(pids))
	}
	var n int
	if err == nil {
		err = c.QueryRow(ctx, "select count(*) from unnest($1::int[]) p where pg_terminate_backend(p)", pids).Scan(&n)
	}
	if err != nil || n != want {
		t.Fatalf("terminated %d backends (%v), want %d", n, err, want)
	}
	for {
		var left int
		if err := c.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = any($1)", pids).Scan(&left); err != nil {
			t.Fatalf("waiting for the terminated backends to go: %v", err)
		}
		if left == 0 {
			return
		}
		select {
		case <-ctx.Done():
			t.Fatalf("%d terminated backends still there: %v", left, ctx.Err())
		case <-time.After(10 * time.Millisecond):
		}
	}
}

var backends = []warmpg.Backend{warmpg.BackendPgx, warmpg.BackendPQ}

// Both backends, both DSN forms: pool_* keys are taken out (the server would
// refuse them as unknown settings), everything else reaches the server.
func TestIntegrationOpenForms(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		for _, form := range []string{"url", "kv", "warmpg-scheme"} {
			t.Run(string(b)+"/"+form, func(t *testing.T) {
				app := appName(t)
				params := []string{"application_name=" + app, "pool_backend=" + string(b), "pool_max_conns=3", "pool_reset=check"}
				var dsn string
				switch form {
				case "url":
					dsn = srv.URL(params...)
				case "kv":
					dsn = srv.KeyValue(params...)
				default:
					dsn = "warmpg://" + strings.TrimPrefix(srv.URL(params...), "postgres://")
				}
				db, err := sql.Open("warmpg", dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				var got string
				if err := db.QueryRowContext(ctxT(t, 10*time.Second), "select current_setting('application_name')").Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != app {
					t.Errorf("application_name %q, want %q: the DSN's other keys must reach the server", got, app)
				}
				err = withRaw(db, func(inner any) error {
					name := fmt.Sprintf("%T", inner)
					want := map[warmpg.Backend]string{warmpg.BackendPgx: "*stdlib.Conn", warmpg.BackendPQ: "*pq.conn"}[b]
					if name != want {
						return fmt.Errorf("Unwrap gave %s, want %s", name, want)
					}
					return nil
				})
				if err != nil {
					t.Error(err)
				}
			})
		}
	}
}

func withRaw(db *sql.DB, f func(inner any) error) error {
	c, err := db.Conn(context.Background())
	if err != nil {
		return err
	}
	defer c.Close()
	return c.Raw(func(dc any) error { return f(warmpg.Unwrap(dc)) })
}

// WarmDB on a warmpg DB warms pool_max_idle_conns: the server shows exactly
// that many backends, and a burst of as many concurrent queries opens none.
func TestIntegrationWarmDB(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			app := appName(t)
			const n = 20
			db, err := sql.Open("warmpg", srv.URL("application_name="+app, "pool_backend="+string(b),
				"pool_max_conns=25", fmt.Sprintf("pool_max_idle_conns=%d", n)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx := ctxT(t, 30*time.Second)
			rep, err := warmpg.WarmDB(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			if rep.Requested != n || rep.Warmed != n {
				t.Fatalf("report %+v", rep)
			}
			if got, err := srv.BackendCount(ctx, app); err != nil || got != n {
				t.Fatalf("server shows %d backends (%v), want %d", got, err, n)
			}
			if st := db.Stats(); st.Idle != n || st.MaxOpenConnections != 25 {
				t.Fatalf("stats %+v", st)
			}
			// A burst of n concurrent queries, each holding its connection
			// until all have one, must open nothing new.
			var wg sync.WaitGroup
			var ready sync.WaitGroup
			ready.Add(n)
			errs := make(chan error, n)
			for range n {
				wg.Add(1)
				go func() {
					defer wg.Done()
					tx, err := db.BeginTx(ctx, nil)
					ready.Done()
					if err != nil {
						errs <- err
						return
					}
					defer tx.Rollback()
					ready.Wait()
					var one int
					errs <- tx.QueryRowContext(ctx, "select 1").Scan(&one)
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				if err != nil {
					t.Fatal(err)
				}
			}
			if st := db.Stats(); st.OpenConnections != n {
				t.Errorf("burst opened connections: %d open, want %d", st.OpenConnections, n)
			}
			if got, _ := srv.BackendCount(ctx, app); got != n {
				t.Errorf("server shows %d backends after the burst, want %d", got, n)
			}
		})
	}
}

// roundTrips counts the client's turns the proxy saw: each simple Query and
// each Sync of the extended protocol waits for the server.
func roundTrips(p *pgproxy.Proxy) int { return p.Count('Q') + p.Count('S') }

// A warmed connection's first query costs what the query costs and nothing
// more. pgx's stdlib pings on the first reuse of every connection; the
// control case shows the proxy sees that ping, so this test can fail.
func TestIntegrationFirstQueryAfterWarmIsOneRoundTrip(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, err := pgproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	viaProxy := func(params ...string) string {
		u := srv.URL(params...)
		return strings.Replace(u, srv.Addr(), proxy.Addr(), 1)
	}
	const n = 4
	measure := func(t *testing.T, db *sql.DB) (first, second int) {
		ctx := ctxT(t, 30*time.Second)
		if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(n), warmpg.WithMaxConns(n)); err != nil {
			t.Fatal(err)
		}
		query := func() int {
			proxy.Reset()
			conns := make([]*sql.Conn, n) // use each warmed connection once
			for i := range conns {
				c, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				conns[i] = c
				var one int
				if err := c.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
					t.Fatal(err)
				}
			}
			for _, c := range conns {
				c.Close()
			}
			return roundTrips(proxy)
		}
		return query(), query()
	}
	for _, b := range backends {
		t.Run("warmpg-"+string(b), func(t *testing.T) {
			// pgx's exec mode sends a parameterless query in one round trip
			// every time (the default first prepares it); lib/pq always does.
			dsn := viaProxy("pool_backend=pgx", "default_query_exec_mode=exec")
			if b == warmpg.BackendPQ {
				dsn = viaProxy("pool_backend=pq")
			}
			db, err := sql.Open("warmpg", dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			first, second := measure(t, db)
			if first != n || second != n {
				t.Errorf("round trips for %d first queries on warmed connections: %d, then %d; want %d and %d", n, first, second, n, n)
			}
		})
	}
	t.Run("control-pgx-stdlib", func(t *testing.T) {
		db, err := sql.Open("pgx", viaProxy("default_query_exec_mode=exec"))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		first, second := measure(t, db)
		if first != 2*n {
			t.Errorf("plain pgx: %d round trips for %d first queries after warming, want %d (a ping each)", first, n, 2*n)
		}
		if second != n {
			t.Errorf("plain pgx second use: %d, want %d", second, n)
		}
	})
}

// A role limited to 5 connections: warming 10 keeps 5, reports 5 failures
// with the server's own message, leaks nothing, and the pool works.
func TestIntegrationPartialWarm(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	role := fmt.Sprintf("warmpg_limited_%d", appSeq.Add(1))
	if err := srv.Exec(ctx, "create role "+role+" login connection limit 5"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Exec(context.Background(), "drop role if exists "+role) })
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			app := appName(t)
			limited := srv.WithUser(role, "")
			db, err := warmpg.Open(limited.URL("application_name="+app, "pool_backend="+string(b), "pool_max_conns=10"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			rep, err := warmpg.WarmDB(ctx, db)
			if err == nil {
				t.Fatal("want a partial-failure error")
			}
			if rep.Warmed != 5 || rep.Failed != 5 {
				t.Errorf("report %+v, want 5 warmed, 5 failed", rep)
			}
			if !strings.Contains(err.Error(), "too many connections for role") {
				t.Errorf("the server's message must be visible: %v", err)
			}
			if b == warmpg.BackendPgx {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
					t.Errorf("errors.As must reach the *pgconn.PgError (53300): %v", err)
				}
			}
			if got, _ := srv.BackendCount(ctx, app); got != 5 {
				t.Errorf("server shows %d backends, want the 5 warmed", got)
			}
			var one int
			if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatalf("pool unusable after a partial warm: %v", err)
			}
			db.Close()
			if got, err := srv.WaitBackendCount(ctx, app, 0); err != nil || got != 0 {
				t.Errorf("%d backends left after db.Close (%v)", got, err)
			}
		})
	}
}

// Warming a DB that warmpg did not open, at 2 ms injected RTT: it is
// concurrent (far below n round trips of connect time).
func TestIntegrationWarmForeignPgx(t *testing.T) {
	srv := pgtest.Get(t)
	app := appName(t)
	db, err := sql.Open("pgx", srv.URL("application_name="+app))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := ctxT(t, 30*time.Second)
	rep, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(12))
	if err != nil || rep.Warmed != 12 {
		t.Fatalf("%v %+v", err, rep)
	}
	if got, _ := srv.BackendCount(ctx, app); got != 12 {
		t.Errorf("server shows %d backends, want 12", got)
	}
	if st := db.Stats(); st.Idle != 12 {
		t.Errorf("idle %d, want 12", st.Idle)
	}
}

// The pgx connection under warmpg is reachable for pgx-only features.
func TestIntegrationRawPgx(t *testing.T) {
	srv := pgtest.Get(t)
	db, err := sql.Open("warmpg", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = withRaw(db, func(inner any) error {
		v := inner.(*stdlib.Conn).Conn().PgConn().ParameterStatus("server_version")
		if v == "" {
			return errors.New("no server_version")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// A password-protected role: it logs in through warmpg, and a wrong password
// fails with the server's error and without the password in it.
func TestIntegrationPasswordNeverShown(t *testing.T) {
	srv := pgtest.Get(t).WithPasswordUser(t)
	ctx := ctxT(t, 20*time.Second)
	for _, b := range backends {
		db, err := warmpg.Open(srv.URL("pool_backend=" + string(b)))
		if err != nil {
			t.Fatal(err)
		}
		if err := db.PingContext(ctx); err != nil {
			t.Errorf("%s: right password: %v", b, err)
		}
		db.Close()
		const wrong = "Wr0ng-Pa55word-xyz"
		bad := srv.WithUser(srv.User, wrong)
		db, err = warmpg.Open(bad.URL("pool_backend="+string(b), "pool_max_conns=3", "pool_prewarm=true"))
		if err == nil {
			db.Close()
			t.Fatalf("%s: wrong password: no error", b)
		}
		if strings.Contains(err.Error(), wrong) {
			t.Errorf("%s: error shows the password: %v", b, err)
		}
		if !strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("%s: want the server's message, got %v", b, err)
		}
	}
}
