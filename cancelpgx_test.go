package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Cancellation on pgx (issue 26, cancelpgx.go): a statement whose context
// ends is cancelled on the server and its connection kept; the cancel never
// reaches a later statement.

// cancelPgxOpen opens warmpg (pgx) or plain pgx stdlib on url with a warmed
// pool of n, and returns the DB and a function counting its connects.
func cancelPgxOpen(t testing.TB, url, which string, n int) (*sql.DB, func() int64) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var db *sql.DB
	var connects func() int64
	switch which {
	case "warmpg":
		var err error
		db, err = warmpg.Open(url, warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		connects = func() int64 { st, _ := warmpg.Stats(db); return st.Connects }
	case "pgx":
		cfg, err := pgx.ParseConfig(url)
		if err != nil {
			t.Fatal(err)
		}
		var c atomic.Int64
		db = sql.OpenDB(stdlib.GetConnector(*cfg, stdlib.OptionAfterConnect(func(context.Context, *pgx.Conn) error {
			c.Add(1)
			return nil
		})))
		connects = func() int64 { return c.Load() }
	}
	t.Cleanup(func() { db.Close() })
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(n)); err != nil {
		t.Fatal(err)
	}
	return db, connects
}

// cancelRunning counts the statements still running on srv whose text has
// marker, but the asking one.
func cancelRunning(t *testing.T, ctx context.Context, srv *pgtest.Server, marker string) int {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "select count(*) from pg_stat_activity where state = 'active' and query like '%'||$1||'%' and pid <> pg_backend_pid()", marker).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// cancelPgxTimeouts runs the scenario on db: loops times a
// `select pg_sleep(0.3)` with a 20 ms deadline (Exec and QueryRow in turn),
// then `select pg_backend_pid(), $1::int` with no deadline. It returns the
// distinct backends the follow-ups ran on, the follow-ups that failed or
// answered wrong, and the timeouts that did not return
// context.DeadlineExceeded.
func cancelPgxTimeouts(t *testing.T, ctx context.Context, db *sql.DB, loops int, marker string) (backends, wrong, notDeadline int, first error) {
	t.Helper()
	pids := map[int]bool{}
	sleep := "select pg_sleep(0.3) /* " + marker + " */"
	for i := range loops {
		if ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
		qctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
		var err error
		if i%2 == 0 {
			_, err = db.ExecContext(qctx, sleep)
		} else {
			var s string
			err = db.QueryRowContext(qctx, sleep).Scan(&s)
		}
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			notDeadline++
			if first == nil {
				first = fmt.Errorf("loop %d: the timed-out statement returned %v", i, err)
			}
		}
		var pid, got int
		if err := db.QueryRowContext(context.Background(), "select pg_backend_pid(), $1::int", i).Scan(&pid, &got); err != nil || got != i {
			wrong++
			if first == nil {
				first = fmt.Errorf("loop %d: follow-up: %d, %v", i, got, err)
			}
			continue
		}
		pids[pid] = true
	}
	return len(pids), wrong, notDeadline, first
}

// TestCancelPgxKeepsConnection (issue 26, the goal): a warmed pool of 4;
// 100 times `select pg_sleep(0.3)` with a 20 ms deadline, then a follow-up
// checked for its answer. warmpg must use at most 9 distinct backends (4 +
// 5), answer every follow-up right, return context.DeadlineExceeded for
// every timeout, and leave no sleep running 500 ms later. Plain pgx, the
// control, is logged: before issue 26 both used 100 backends (a reconnect
// per timeout).
func TestCancelPgxKeepsConnection(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 3*time.Minute)
	for _, which := range []string{"warmpg", "pgx"} {
		t.Run(which, func(t *testing.T) {
			app := appName(t)
			db, connects := cancelPgxOpen(t, srv.URL("application_name="+app), which, 4)
			before := connects()
			const loops = 100
			backends, wrong, notDeadline, first := cancelPgxTimeouts(t, ctx, db, loops, app)
			time.Sleep(500 * time.Millisecond)
			running := cancelRunning(t, ctx, srv, app)
			t.Logf("%s: %d timeouts: %d distinct backends answered the follow-ups, %d connects, %d follow-ups wrong, %d timeouts not context.DeadlineExceeded, %d sleeps running 500 ms later (first: %v)",
				which, loops, backends, connects()-before, wrong, notDeadline, running, first)
			if wrong != 0 || notDeadline != 0 {
				t.Errorf("%s: %d follow-ups wrong, %d timeouts not context.DeadlineExceeded: %v", which, wrong, notDeadline, first)
			}
			if running != 0 {
				t.Errorf("%s: %d timed-out statements still running 500 ms later", which, running)
			}
			if which == "warmpg" && backends > 9 {
				t.Errorf("warmpg: %d distinct backends for %d timeouts on a pool of 4, want at most 9", backends, loops)
			}
		})
	}
}

// TestCancelPgxSweep (issue 26): a cancel never reaches a later statement.
// On one connection (pool_max_conns=1, so the next statement runs on the
// backend the cancel was meant for), 150 times a statement of about 10 ms
// with a deadline from 0 to 20 ms, then a follow-up with no deadline whose
// answer is checked. Every follow-up must answer right, whether the
// statement was cancelled, finished just before its deadline, or finished
// while the cancel was on its way; directly and through a
// transaction-mode PgBouncer (pool_pgbouncer=true; two client connections
// over two server connections, so that a stray cancel could find the other
// one's statement), and over TLS. A cancel that lands after the statement's
// row was read fails it at Close: that too must be the context's error.
func TestCancelPgxSweep(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 3*time.Minute)
	// The connection must be kept after 9 in 10 cancels at least.
	sweep := func(t *testing.T, db *sql.DB) {
		if err := db.PingContext(ctx); err != nil { // connected before the sweep
			t.Fatal(err)
		}
		const loops = 150
		cancelled, finished, wrong := 0, 0, 0
		var first error
		for i := range loops {
			if ctx.Err() != nil {
				t.Fatal(ctx.Err())
			}
			d := time.Duration(i%21) * time.Millisecond
			qctx, cancel := context.WithTimeout(ctx, d)
			var got int
			err := db.QueryRowContext(qctx, "select $1::int from pg_sleep(0.01)", i).Scan(&got)
			cancel()
			switch {
			case err == nil && got == i:
				finished++
			case err != nil && (errors.Is(err, context.DeadlineExceeded)):
				cancelled++
			default:
				wrong++
				if first == nil {
					first = fmt.Errorf("loop %d (deadline %v): the statement: %d, %v", i, d, got, err)
				}
			}
			// The follow-up runs the longer, so a late cancel would find it
			// running.
			if err := db.QueryRowContext(context.Background(), "select $1::int from pg_sleep(0.02)", i).Scan(&got); err != nil || got != i {
				wrong++
				if first == nil {
					first = fmt.Errorf("loop %d (deadline %v): follow-up: %d, %v", i, d, got, err)
				}
			}
		}
		st, _ := warmpg.Stats(db)
		t.Logf("%d statements with 0-20 ms deadlines: %d cancelled, %d finished, %d wrong (statement or follow-up); %d connects (first wrong: %v)",
			loops, cancelled, finished, wrong, st.Connects, first)
		if wrong != 0 {
			t.Errorf("%d wrong answers: %v", wrong, first)
		}
		if cancelled == 0 || finished == 0 {
			t.Errorf("%d cancelled, %d finished: the sweep must see both", cancelled, finished)
		}
		if (st.Connects-1)*10 > int64(cancelled) {
			t.Errorf("%d connects for %d cancelled statements: want the connection kept after 9 in 10 at least", st.Connects, cancelled)
		}
	}
	t.Run("direct", func(t *testing.T) {
		db, err := warmpg.Open(srv.URL("pool_max_conns=1", "application_name="+appName(t)), warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		sweep(t, db)
	})
	t.Run("tls", func(t *testing.T) {
		// The cancel connection is TLS too (pgx v5.12+): pgx's read ends at
		// the server's close_notify; warmpg reads on to the socket's end.
		tsrv := startTLSServer(t, ctx)
		db, err := warmpg.Open(tsrv.URL("sslmode=require", "pool_max_conns=1", "application_name="+appName(t)), warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		sweep(t, db)
	})
	t.Run("pgbouncer", func(t *testing.T) {
		b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(2))
		db, err := warmpg.Open(b.URL("pool_pgbouncer=true", "pool_max_conns=2", "application_name="+appName(t)), warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		sweep(t, db)
	})
}

// TestCancelPgxCommitsNothing (issue 26): a write whose context ends while
// it runs commits nothing and returns context.DeadlineExceeded: outside a
// transaction (a connection's Exec, a prepared statement) and inside one,
// with pool_lazy_begin on and off; the transaction is rolled back, and the
// connection, back to idle, is kept (no connect) and commits what the next
// user writes. Before issue 26 every one of these timeouts closed the
// connection (pgx's Rollback on the transaction's ended context failed).
func TestCancelPgxCommitsNothing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 3*time.Minute)
	for _, lazy := range []string{"false", "true"} {
		for _, via := range []string{"conn", "stmt", "tx"} {
			t.Run("lazy="+lazy+"/"+via, func(t *testing.T) {
				table := cancelTable(t, ctx, srv)
				app := appName(t)
				db, err := warmpg.Open(srv.URL("pool_max_conns=1", "pool_lazy_begin="+lazy, "application_name="+app), warmpg.WithLogger(faultQuietLog))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				// The one connection, opened before the timeouts (a connect
				// on this loaded machine can take longer than a deadline).
				if err := db.PingContext(ctx); err != nil {
					t.Fatal(err)
				}
				insert := "insert into " + table + " select $1 from pg_sleep(1) /* " + app + " */"
				var stmt *sql.Stmt
				if via == "stmt" {
					if stmt, err = db.PrepareContext(ctx, insert); err != nil {
						t.Fatal(err)
					}
					defer stmt.Close()
				}
				const n = 5
				notDeadline := 0
				var first error
				start := time.Now()
				for i := range n {
					qctx, cancel := context.WithTimeout(ctx, 100*time.Millisecond)
					switch via {
					case "conn":
						_, err = db.ExecContext(qctx, insert, i)
					case "stmt":
						_, err = stmt.ExecContext(qctx, i)
					case "tx":
						err = func() error {
							tx, err := db.BeginTx(qctx, nil)
							if err != nil {
								return err
							}
							defer tx.Rollback()
							if _, err := tx.ExecContext(qctx, "insert into "+table+" values ($1)", -i-1); err != nil {
								return fmt.Errorf("fast insert: %w", err)
							}
							if _, err := tx.ExecContext(qctx, insert, i); err != nil {
								return err
							}
							return tx.Commit()
						}()
					}
					cancel()
					if !errors.Is(err, context.DeadlineExceeded) {
						notDeadline++
						if first == nil {
							first = err
						}
					}
				}
				// The next user's write, on the same (only) connection.
				if _, err := db.ExecContext(context.Background(), "insert into "+table+" values (1000)"); err != nil {
					t.Fatalf("the next user's insert: %v", err)
				}
				time.Sleep(time.Until(start.Add(n*100*time.Millisecond + 1500*time.Millisecond)))
				var rows, kept int
				c, err := srv.Connect(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close(context.Background())
				if err := c.QueryRow(ctx, "select count(*), count(*) filter (where n = 1000) from "+table).Scan(&rows, &kept); err != nil {
					t.Fatal(err)
				}
				st, _ := warmpg.Stats(db)
				running := cancelRunning(t, ctx, srv, app)
				t.Logf("lazy=%s via %s: %d of %d timeouts not context.DeadlineExceeded (first: %v); %d rows committed, the next user's %d; %d connects, %d discarded, %d running",
					lazy, via, notDeadline, n, first, rows, kept, st.Connects, st.Discarded, running)
				if notDeadline != 0 {
					t.Errorf("%d of %d timeouts did not return context.DeadlineExceeded: %v", notDeadline, n, first)
				}
				if rows != 1 || kept != 1 {
					t.Errorf("%d rows committed, %d of them the next user's: want only the next user's", rows, kept)
				}
				if running != 0 {
					t.Errorf("%d cancelled writes still running", running)
				}
				if st.Connects != 1 {
					t.Errorf("%d connects for %d timeouts on one connection opened before them, want 1 (the connection kept)", st.Connects, n)
				}
			})
		}
	}
}

// TestCancelPgxAutocommitAndPgBouncer (issue 26): a read-only transaction
// under pool_autocommit, a plain read in autocommit and one that upgraded to
// a real transaction, and statements through a transaction-mode PgBouncer
// (pool_pgbouncer=true): each timeout returns context.DeadlineExceeded, the
// statement is cancelled on the server (none running 500 ms later), and the
// next statement answers right.
func TestCancelPgxAutocommitAndPgBouncer(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 3*time.Minute)
	// pool is the most connections the pool may open: a transaction's
	// rollback after its context ended runs in database/sql's goroutine, so
	// on a pool of 2 the next statement may take the other connection.
	check := func(t *testing.T, db *sql.DB, pool int64, marker string, run func(ctx context.Context, i int) error) {
		if err := db.PingContext(ctx); err != nil { // connected before the timeouts
			t.Fatal(err)
		}
		const n = 5
		notDeadline := 0
		var first error
		for i := range n {
			qctx, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
			err := run(qctx, i)
			cancel()
			if !errors.Is(err, context.DeadlineExceeded) {
				notDeadline++
				if first == nil {
					first = err
				}
			}
			var got int
			if err := db.QueryRowContext(context.Background(), "select $1::int", i).Scan(&got); err != nil || got != i {
				t.Fatalf("loop %d: follow-up: %d, %v", i, got, err)
			}
		}
		time.Sleep(500 * time.Millisecond)
		running := cancelRunning(t, ctx, srv, marker)
		st, _ := warmpg.Stats(db)
		t.Logf("%d timeouts: %d not context.DeadlineExceeded (first: %v); %d running 500 ms later; %d connects, %d discarded", n, notDeadline, first, running, st.Connects, st.Discarded)
		if notDeadline != 0 {
			t.Errorf("%d of %d timeouts not context.DeadlineExceeded: %v", notDeadline, n, first)
		}
		if running != 0 {
			t.Errorf("%d timed-out statements still running 500 ms later", running)
		}
		if st.Connects > pool || st.Discarded != 0 {
			t.Errorf("%d connects, %d discarded for %d timeouts on a pool of %d: want the connections kept", st.Connects, st.Discarded, n, pool)
		}
	}
	t.Run("autocommit", func(t *testing.T) {
		app := appName(t)
		db, err := warmpg.Open(srv.URL("pool_autocommit=true", "pool_max_conns=1", "application_name="+app), warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		check(t, db, 1, app, func(ctx context.Context, i int) error {
			tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				return err
			}
			defer tx.Rollback()
			q := "select pg_sleep(3) /* " + app + " */"
			if i%2 == 1 {
				q = "select pg_sleep(3) /* " + app + " */ for share" // not a plain read: upgrades
			}
			var s string
			return tx.QueryRowContext(ctx, q).Scan(&s)
		})
		if st, _ := warmpg.Stats(db); st.AutocommitUpgrades == 0 {
			t.Errorf("no transaction upgraded: the test does not cover upgraded transactions (%+v)", st)
		}
	})
	t.Run("pgbouncer", func(t *testing.T) {
		b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(2))
		app := appName(t)
		db, err := warmpg.Open(b.URL("pool_pgbouncer=true", "pool_max_conns=2", "application_name="+app), warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		check(t, db, 2, app, func(ctx context.Context, i int) error {
			q := "select pg_sleep(3), $1::int /* " + app + " */"
			if i%2 == 1 {
				_, err := db.ExecContext(ctx, q, i)
				return err
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			_, err = tx.ExecContext(ctx, q, i)
			return err
		})
	})
}

// BenchmarkCancelConnects (issue 26): connects per 1,000 timeouts, warmpg
// against plain pgx: a warmed pool of 4, `select pg_sleep(0.3)` with a 20 ms
// deadline, then `select 1` with none (so that a pool that lost its
// connection connects again, outside the 20 ms). Plain pgx reconnects after
// every timeout; warmpg keeps the connection. Run:
// go test -run '^$' -bench CancelConnects -benchtime 1000x .
func BenchmarkCancelConnects(b *testing.B) {
	srv := pgtest.Get(b)
	for _, which := range []string{"warmpg", "pgx"} {
		b.Run(which, func(b *testing.B) {
			db, connects := cancelPgxOpen(b, srv.URL(), which, 4)
			before := connects()
			timeouts := 0
			for b.Loop() {
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				_, err := db.ExecContext(ctx, "select pg_sleep(0.3)")
				cancel()
				if errors.Is(err, context.DeadlineExceeded) {
					timeouts++
				} else {
					b.Fatalf("want a timeout, got %v", err)
				}
				if _, err := db.ExecContext(context.Background(), "select 1"); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(connects()-before)*1000/float64(timeouts), "connects/1000timeouts")
		})
	}
}
