package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/lib/pq"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Cancellation on lib/pq (pool_backend=pq): the deadline watchdog
// (watchdog.go) lets lib/pq's CancelRequest reach the server before it
// cuts the socket, and never touches a statement it was not armed for.

// cancelTable creates a fresh one-column table and returns its name.
func cancelTable(t *testing.T, ctx context.Context, srv *pgtest.Server) string {
	t.Helper()
	return newTable(t, ctx, srv, "cancel", "create table %[1]s (n int)")
}

func cancelCount(t *testing.T, ctx context.Context, db *sql.DB, table string) int {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// TestCancelLateWatchdogSparesNextStatement (issue 18, 1): a context that
// ends around the moment its statement is done must not fail the next
// statement on the same connection. Before the token per arming, the
// watchdog's AfterFunc could run after the rows were closed and the
// connection handed to the INSERT, and set a past deadline under it: 167
// of 200 INSERTs with context.Background() failed with `i/o timeout`
// (rows closed after cancel), 2 of 200 when database/sql closed the rows.
func TestCancelLateWatchdogSparesNextStatement(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	table := cancelTable(t, ctx, srv)
	db, err := warmpg.Open(srv.URL("pool_backend=pq", "pool_max_conns=1", "application_name="+appName(t)), warmpg.WithLogger(faultQuietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for _, closeRows := range []bool{true, false} {
		const loops = 150
		failed, inserted := 0, 0
		var first error
		before := cancelCount(t, ctx, db, table)
		for i := range loops {
			if ctx.Err() != nil {
				t.Fatal(ctx.Err())
			}
			qctx, cancel := context.WithCancel(ctx)
			rows, err := db.QueryContext(qctx, "select 1")
			if err != nil {
				cancel()
				t.Fatalf("loop %d: query: %v", i, err)
			}
			if !rows.Next() { // the one row, read; the rows stay open
				cancel()
				t.Fatalf("loop %d: no row: %v", i, rows.Err())
			}
			cancel()
			if closeRows {
				rows.Close()
			}
			if _, err := db.ExecContext(context.Background(), "insert into "+table+" values ($1)", i); err != nil {
				failed++
				if first == nil {
					first = err
				}
			} else {
				inserted++
			}
			rows.Close()
		}
		committed := cancelCount(t, ctx, db, table) - before
		t.Logf("rows.Close after cancel: %v: %d of %d INSERTs reported failed (%v), %d committed", closeRows, failed, loops, first, committed)
		if failed != 0 {
			t.Errorf("rows.Close after cancel: %v: %d of %d INSERTs with context.Background() failed: %v", closeRows, failed, loops, first)
		}
		if committed != loops {
			t.Errorf("rows.Close after cancel: %v: %d rows committed, want %d", closeRows, committed, loops)
		}
	}
}

// cancelOpen opens what the cancellation tests compare: warmpg on lib/pq,
// and lib/pq alone (the control).
func cancelOpen(t *testing.T, srv *pgtest.Server, which, app string) *sql.DB {
	t.Helper()
	var db *sql.DB
	var err error
	switch which {
	case "warmpg-pq":
		db, err = warmpg.Open(srv.URL("pool_backend=pq", "pool_max_conns=2", "application_name="+app), warmpg.WithLogger(faultQuietLog))
	case "lib/pq":
		db, err = sql.Open("postgres", srv.URL("application_name="+app))
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// TestCancelPQCommitsNothing (issue 13, 1): a write whose context ends
// while it runs returns an error and leaves nothing committed, through a
// connection's Exec and through a prepared *sql.Stmt, and the server runs
// no cancelled query 500 ms later — as with lib/pq alone. Before the
// grace, the watchdog cut the socket the moment the context ended, lib/pq's
// CancelRequest lost the race to the statement's return, and the server
// finished the work: 7–10 of 10 rows committed, pg_sleep(3) still running.
func TestCancelPQCommitsNothing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	for _, which := range []string{"warmpg-pq", "lib/pq"} {
		for _, via := range []string{"conn", "stmt"} {
			t.Run(which+"/"+via, func(t *testing.T) {
				table := cancelTable(t, ctx, srv)
				app := appName(t)
				db := cancelOpen(t, srv, which, app)
				insert := "insert into " + table + " select $1 from pg_sleep(1)"
				var stmt *sql.Stmt
				if via == "stmt" {
					var err error
					if stmt, err = db.PrepareContext(ctx, insert); err != nil {
						t.Fatal(err)
					}
					defer stmt.Close()
				}
				const n = 10
				start := time.Now()
				errs, deadline := 0, 0
				var first error
				for i := range n {
					qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
					var err error
					if stmt != nil {
						_, err = stmt.ExecContext(qctx, i)
					} else {
						_, err = db.ExecContext(qctx, insert, i)
					}
					cancel()
					if err != nil {
						errs++
						if errors.Is(err, context.DeadlineExceeded) {
							deadline++
						}
						if first == nil {
							first = err
						}
					}
				}
				// Each INSERT's pg_sleep(1) has ended by now, had it run on.
				time.Sleep(time.Until(start.Add(n*200*time.Millisecond + 1500*time.Millisecond)))
				committed := cancelCount(t, ctx, db, table)
				t.Logf("%s via %s: %d of %d returned an error (%d context.DeadlineExceeded; first: %v), %d rows committed",
					which, via, errs, n, deadline, first, committed)
				if errs != n {
					t.Errorf("%d of %d INSERTs with a 200 ms deadline returned an error, want all", errs, n)
				}
				if committed != 0 {
					t.Errorf("%d rows committed by INSERTs that returned an error", committed)
				}
				if which == "warmpg-pq" && deadline != errs {
					t.Errorf("%d of %d errors are context.DeadlineExceeded, want all (first: %v)", deadline, errs, first)
				}

				// A long statement: cancelled on the server, not left running.
				qctx, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
				_, err := db.ExecContext(qctx, "select pg_sleep(3)")
				cancel()
				if err == nil {
					t.Fatal("pg_sleep(3) with a 200 ms deadline succeeded")
				}
				time.Sleep(500 * time.Millisecond)
				var running int
				if err := db.QueryRowContext(ctx, "select count(*) from pg_stat_activity where application_name = $1 and state = 'active' and query like '%pg_sleep%' and pid <> pg_backend_pid()", app).Scan(&running); err != nil {
					t.Fatal(err)
				}
				t.Logf("%s: cancelled pg_sleep(3): %d still running 500 ms later", which, running)
				if running != 0 {
					t.Errorf("%d cancelled queries still running on the server 500 ms after their error", running)
				}
			})
		}
	}
}

// TestCancelPQCopyUnderPgBouncerMode (issue 18, 3): with pool_pgbouncer=true
// a lib/pq COPY (pq.CopyIn) is left to lib/pq, directly and through a
// transaction-mode PgBouncer. Before, clientStmt took it and sent
// `COPY … FROM STDIN` with each row as a query with parameters: `bind
// message supplies 2 parameters, but prepared statement "" requires 0`,
// 0 of 3 rows copied.
func TestCancelPQCopyUnderPgBouncerMode(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	table := fmt.Sprintf("copy_%d", appSeq.Add(1))
	if err := srv.Exec(ctx, "create table "+table+" (a int, b text)"); err != nil {
		t.Fatal(err)
	}
	defer srv.Exec(context.Background(), "drop table if exists "+table)
	copyThree := func(t *testing.T, url string) {
		db, err := warmpg.Open(url)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		stmt, err := tx.PrepareContext(ctx, pq.CopyIn(table, "a", "b"))
		if err != nil {
			t.Fatalf("prepare COPY: %v", err)
		}
		for i := range 3 {
			if _, err := stmt.ExecContext(ctx, i, fmt.Sprint("row", i)); err != nil {
				t.Errorf("COPY row %d: %v", i, err)
			}
		}
		if _, err := stmt.ExecContext(ctx); err != nil {
			t.Errorf("COPY flush: %v", err)
		}
		stmt.Close()
		var n int
		if err := tx.QueryRowContext(ctx, "select count(*) from "+table).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Errorf("%d of 3 rows copied", n)
		}
		// Rolled back: the table stays empty for the next case.
	}
	t.Run("direct", func(t *testing.T) { copyThree(t, srv.URL("pool_backend=pq", "pool_max_conns=1")) })
	t.Run("direct pool_pgbouncer", func(t *testing.T) {
		copyThree(t, srv.URL("pool_backend=pq", "pool_pgbouncer=true", "pool_max_conns=1"))
	})
	t.Run("bouncer pool_pgbouncer", func(t *testing.T) {
		b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(2))
		copyThree(t, b.URL("pool_backend=pq", "pool_pgbouncer=true", "pool_max_conns=1"))
	})
}

// TestCancelDriverOpenLeavesNothing (issue 18, 4): Driver.Open, as a
// wrapper that knows only driver.Driver calls it, leaves no connection and
// no goroutine behind once its connection is closed; the Driver a DB
// reports opens through that DB's Connector. Before, each Open built a
// Connector that prewarmed and kept warm and was never closed: five Open +
// Close left 10 backends and 6 goroutines.
func TestCancelDriverOpenLeavesNothing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	app := appName(t)
	dsn := srv.URL("application_name="+app, "pool_prewarm=true", "pool_min_idle_conns=1", "pool_max_idle_conns=1")
	base := faultGoroutines()
	for range 5 {
		c, err := (&warmpg.Driver{}).Open(dsn)
		if err != nil {
			t.Fatal(err)
		}
		if err := c.Close(); err != nil {
			t.Fatal(err)
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 5*time.Second)
	defer wcancel()
	if n, err := srv.WaitBackendCount(wctx, app, 0); err != nil || n != 0 {
		t.Errorf("%d backends left by five Open + Close (%v)", n, err)
	}
	if n := faultSettleGoroutines(base, 5*time.Second); n > base {
		t.Errorf("%d goroutines after five Open + Close, %d before", n, base)
	}

	// The Driver a DB reports belongs to its Connector: Open uses it.
	app2 := appName(t)
	db, err := sql.Open("warmpg", srv.URL("application_name="+app2, "pool_max_conns=1"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := db.Driver().Open("postgres://127.0.0.1:1/ignored")
	if err != nil {
		t.Fatalf("db.Driver().Open: %v", err)
	}
	if n, err := srv.BackendCount(ctx, app2); err != nil || n != 1 {
		t.Errorf("db.Driver().Open: %d backends named by the DB's DSN (%v), want 1", n, err)
	}
	c.Close()
	st, _ := warmpg.Stats(db)
	if st.Connects != 1 {
		t.Errorf("db.Driver().Open did not connect through the DB's Connector: its counters say %d connects", st.Connects)
	}
}
