package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// proxied returns a proxy in front of srv and a function that turns srv's
// URL (with params) into one through the proxy.
func proxied(t *testing.T, srv *pgtest.Server) (*pgproxy.Proxy, func(params ...string) string) {
	t.Helper()
	return proxiedAt(t, srv.Addr(), srv.URL)
}

// proxiedAt is proxied for whatever listens at addr (a server, a bouncer)
// and the URL function that names it.
func proxiedAt(t *testing.T, addr string, url func(params ...string) string) (*pgproxy.Proxy, func(params ...string) string) {
	t.Helper()
	p, err := pgproxy.New(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p, func(params ...string) string {
		return strings.Replace(url(params...), addr, p.Addr(), 1)
	}
}

// simpleQueries returns the text of every simple-protocol Query the proxy
// saw since its last Reset. Application statements below use the extended
// protocol (a parameter), so these are warmpg's own.
func simpleQueries(p *pgproxy.Proxy) []string {
	var qs []string
	for _, m := range p.Messages() {
		if m.Type == 'Q' {
			qs = append(qs, m.Text)
		}
	}
	return qs
}

// useOnce runs one extended-protocol query on db.
func useOnce(t *testing.T, ctx context.Context, db *sql.DB) {
	t.Helper()
	var n int
	if err := db.QueryRowContext(ctx, "select $1::int", 7).Scan(&n); err != nil || n != 7 {
		t.Fatalf("query: %v %d", err, n)
	}
}

// The exact messages each mode sends when a used connection is handed out
// again, counted by the proxy. check sends nothing on the clean path.
func TestIntegrationResetModeMessages(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	want := map[warmpg.ResetMode][]string{
		warmpg.ResetCheck:    nil,
		warmpg.ResetNone:     nil,
		warmpg.ResetPing:     {"-- ping"},
		warmpg.ResetRollback: {"ROLLBACK"},
		warmpg.ResetDiscard:  {"SET SESSION AUTHORIZATION DEFAULT; RESET ALL"},
	}
	for _, b := range backends {
		for _, mode := range []warmpg.ResetMode{warmpg.ResetCheck, warmpg.ResetNone, warmpg.ResetPing, warmpg.ResetRollback, warmpg.ResetDiscard} {
			t.Run(string(b)+"/"+string(mode), func(t *testing.T) {
				ctx := ctxT(t, 20*time.Second)
				db, err := warmpg.Open(via("pool_backend="+string(b), "pool_max_conns=1", "pool_reset="+string(mode)))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				useOnce(t, ctx, db) // connect and use
				proxy.Reset()
				const reuses = 3
				for range reuses {
					useOnce(t, ctx, db)
				}
				got := simpleQueries(proxy)
				w := want[mode]
				if b == warmpg.BackendPQ && mode == warmpg.ResetPing {
					// lib/pq's Ping is an empty simple query.
					w = []string{""}
				}
				if len(got) != len(w)*reuses {
					t.Fatalf("%d reuses sent %q, want %d× %q", reuses, got, reuses, w)
				}
				for i, q := range got {
					if !strings.HasPrefix(q, w[i%len(w)]) {
						t.Errorf("reset query %q, want %q", q, w[i%len(w)])
					}
				}
				if b == warmpg.BackendPgx {
					// A database/sql pool of one connection: nothing else
					// is sent between the application's queries either.
					if got, want := proxy.Count('S'), reuses; got != want {
						t.Errorf("%d Syncs for %d queries", got, want)
					}
				}
			})
		}
	}
}

// Reuse after more than a second idle: pgx's stdlib pings first (two round
// trips); warmpg's check mode sends only the query (one).
func TestIntegrationIdleReuseOneRoundTrip(t *testing.T) {
	if testing.Short() {
		t.Skip("waits over a second")
	}
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	for _, tc := range []struct {
		driver, dsn string
		want        int
	}{
		{"warmpg", via("pool_max_conns=1"), 1},
		{"pgx", via(), 2},
	} {
		t.Run(tc.driver, func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db, err := sql.Open(tc.driver, tc.dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(1)
			useOnce(t, ctx, db)
			useOnce(t, ctx, db) // pgx pings on every connection's first reuse
			time.Sleep(1100 * time.Millisecond)
			proxy.Reset()
			useOnce(t, ctx, db)
			if got := roundTrips(proxy); got != tc.want {
				t.Errorf("%s: %d round trips for a query after 1.1 s idle, want %d", tc.driver, got, tc.want)
			}
		})
	}
}

// A connection returned inside a transaction (BEGIN through Exec on a
// *sql.Conn) does not hand that transaction to the next user: check mode
// rolls it back (one round trip) and keeps the connection.
func TestIntegrationLeakedTransactionRolledBack(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			table := fmt.Sprintf("leak_%s_%d", b, appSeq.Add(1))
			db, err := warmpg.Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"BEGIN", "create table " + table + " (i int)"} {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			conn.Close() // back to the pool, transaction open
			var inTx bool
			if err := db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null").Scan(&inTx); err != nil {
				t.Fatal(err)
			}
			if inTx {
				t.Error("the next user ran inside the leaked transaction")
			}
			var exists bool
			if err := db.QueryRowContext(ctx, "select to_regclass($1) is not null", table).Scan(&exists); err != nil {
				t.Fatal(err)
			}
			if exists {
				t.Errorf("table %s created in the leaked transaction exists: it was committed", table)
			}
			st, _ := warmpg.Stats(db)
			if st.RolledBack != 1 || st.Connects != 1 {
				t.Errorf("counters %v: want the connection kept (1 connect) and rolled back once", st)
			}
		})
	}
}

// check mode never hands out a connection whose session identity or
// read-only default changed: the session is reset before reuse.
func TestIntegrationSessionChangesDoNotLeak(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	role := fmt.Sprintf("warmpg_other_%d", appSeq.Add(1))
	if err := srv.Exec(ctx, "create role "+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Exec(context.Background(), "drop role if exists "+role) })
	changes := []struct{ set, show, want string }{
		{"SET SESSION AUTHORIZATION " + role, "select current_user", srv.User},
		{"SET default_transaction_read_only = on", "show default_transaction_read_only", "off"},
		{"select set_config('TimeZone', 'Asia/Tokyo', false)", "select current_setting('TimeZone') <> 'Asia/Tokyo'", "true"},
	}
	for _, b := range backends {
		for i, ch := range changes {
			t.Run(fmt.Sprintf("%s/%d", b, i), func(t *testing.T) {
				db, err := warmpg.Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1"))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				if _, err := db.ExecContext(ctx, ch.set); err != nil {
					t.Fatal(err)
				}
				var got string
				if err := db.QueryRowContext(ctx, ch.show).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != ch.want {
					t.Errorf("after %q the next user sees %q, want %q", ch.set, got, ch.want)
				}
				if st, _ := warmpg.Stats(db); st.Reset != 1 {
					t.Errorf("counters %v, want one session reset", st)
				}
			})
		}
	}
}

// discard mode (and check mode's reset) keep prepared statements working:
// pgx's statement cache and a database/sql *Stmt.
func TestIntegrationPreparedStatementsSurviveReset(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db, err := warmpg.Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1", "pool_reset=discard"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			stmt, err := db.PrepareContext(ctx, "select $1::int + 1")
			if err != nil {
				t.Fatal(err)
			}
			defer stmt.Close()
			for i := range 4 {
				var n int
				if err := stmt.QueryRowContext(ctx, i).Scan(&n); err != nil || n != i+1 {
					t.Fatalf("prepared statement after reset %d: %v %d", i, err, n)
				}
				// The statement cache of pgx's default mode too.
				if err := db.QueryRowContext(ctx, "select $1::int * 2", i).Scan(&n); err != nil || n != 2*i {
					t.Fatalf("cached statement after reset %d: %v", i, err)
				}
			}
			if st, _ := warmpg.Stats(db); st.Reset < 4 || st.Connects != 1 {
				t.Errorf("counters %v: want resets on one connection", st)
			}
		})
	}
}

// burst runs n queries at once on db and returns how many failed.
func burstFailures(ctx context.Context, db *sql.DB, n int) (failed int, errs []error) {
	var mu sync.Mutex
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			ready.Wait()
			var x int
			err := db.QueryRowContext(ctx, "select 1 from pg_sleep(0.01)").Scan(&x)
			if err != nil {
				mu.Lock()
				failed++
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return failed, errs
}

// A fast server restart between two bursts of load, pool of 8: in check
// mode no query fails; pgx's stdlib fails one per pooled connection (the
// control, which shows the restart really left stale connections). The
// control is pgx with its reuse ping off: what its default does for a
// connection reused within 1 s of its last use. pgx's default itself pings
// when the restart took longer than that, which a loaded machine makes
// happen at random, and the control would then prove nothing.
func TestIntegrationFastRestartCheckMode(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := ownCluster(t, ctx)
	const pool = 8
	open := map[string]func() (*sql.DB, error){
		"warmpg-check-pgx": func() (*sql.DB, error) { return warmpg.Open(srv.URL(fmt.Sprintf("pool_max_conns=%d", pool))) },
		"warmpg-check-pq": func() (*sql.DB, error) {
			return warmpg.Open(srv.URL(fmt.Sprintf("pool_max_conns=%d", pool), "pool_backend=pq"))
		},
		"pgx-within-1s": func() (*sql.DB, error) {
			cfg, err := pgx.ParseConfig(srv.URL())
			if err != nil {
				return nil, err
			}
			never := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false })
			db := sql.OpenDB(stdlib.GetConnector(*cfg, never))
			db.SetMaxOpenConns(pool)
			db.SetMaxIdleConns(pool)
			return db, nil
		},
	}
	for _, name := range []string{"warmpg-check-pgx", "warmpg-check-pq", "pgx-within-1s"} {
		t.Run(name, func(t *testing.T) {
			db, err := open[name]()
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(pool)); err != nil {
				t.Fatal(err)
			}
			// Every connection used once, so pgx's ping-on-first-reuse is
			// spent and reuse goes by its 1 s rule, as in a running service.
			if n, errs := burstFailures(ctx, db, pool); n != 0 {
				t.Fatalf("before restart: %d failed: %v", n, errs)
			}
			if err := srv.Restart(ctx, "fast"); err != nil {
				t.Fatal(err)
			}
			failed, errs := burstFailures(ctx, db, pool)
			t.Logf("%s: %d of %d queries failed after a fast restart", name, failed, pool)
			if strings.HasPrefix(name, "warmpg") {
				if failed != 0 {
					t.Errorf("%d queries failed after the restart: %v", failed, errors.Join(errs...))
				}
				if st, _ := warmpg.Stats(db); st.Discarded < pool {
					t.Errorf("counters %v: want every stale connection discarded", st)
				}
				if n, errs := burstFailures(ctx, db, pool); n != 0 {
					t.Errorf("pool did not recover: %d failed: %v", n, errs)
				}
			} else if failed == 0 {
				t.Error("control: plain pgx lost no query, so the restart left no stale connection and proves nothing")
			}
		})
	}
}

// Terminating every pooled backend (pg_terminate_backend): no query fails.
func TestIntegrationTerminatedBackends(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			app := appName(t)
			db, err := warmpg.Open(srv.URL("application_name="+app, "pool_backend="+string(b), "pool_max_conns=8"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := warmpg.WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			if n, errs := burstFailures(ctx, db, 8); n != 0 {
				t.Fatalf("%d failed: %v", n, errs)
			}
			killBackends(t, ctx, srv, app, 8)
			if n, errs := burstFailures(ctx, db, 8); n != 0 {
				t.Errorf("%d of 8 queries failed after pg_terminate_backend: %v", n, errors.Join(errs...))
			}
		})
	}
}

// pool_read_only: the setting travels in the startup packet (no statement
// after connect), writes are refused, and lib/pq's transactions begin READ
// ONLY, not READ WRITE (which a hot standby rejects). Per-connection
// settings from the DSN likewise cost no statement.
func TestIntegrationReadOnlyPool(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			proxy.Reset()
			db, err := warmpg.Open(via("pool_backend="+string(b), "pool_read_only=true", "pool_max_conns=1", "statement_timeout=4321"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var ro, timeout string
			if err := db.QueryRowContext(ctx, "select current_setting($1), current_setting('statement_timeout')", "default_transaction_read_only").Scan(&ro, &timeout); err != nil {
				t.Fatal(err)
			}
			if ro != "on" || timeout != "4321ms" {
				t.Errorf("default_transaction_read_only=%q statement_timeout=%q, want on and 4321ms", ro, timeout)
			}
			if qs := simpleQueries(proxy); len(qs) != 0 {
				t.Errorf("settings were sent as statements after connect: %q", qs)
			}
			_, err = db.ExecContext(ctx, "create temp table ro_probe_fails (i int)")
			var pgErr *pgconn.PgError
			if err == nil || (b == warmpg.BackendPgx && (!errors.As(err, &pgErr) || pgErr.Code != "25006")) {
				t.Errorf("a write on a read-only pool: %v, want SQLSTATE 25006", err)
			}
			proxy.Reset()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			for _, q := range simpleQueries(proxy) {
				if strings.Contains(strings.ToUpper(q), "READ WRITE") {
					t.Errorf("sent %q on a read-only pool", q)
				}
			}
		})
	}
}

// pool_autocommit on a real server: a read-only transaction sends no BEGIN,
// COMMIT or ROLLBACK; a read-write one still does.
func TestIntegrationAutocommitMessages(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db, err := warmpg.Open(via("pool_backend="+string(b), "pool_autocommit=true", "pool_max_conns=1"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			useOnce(t, ctx, db)
			proxy.Reset()
			for range 3 {
				useOnce(t, ctx, db)
			}
			plain := roundTrips(proxy)
			proxy.Reset()
			for range 3 {
				tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				var n int
				if err := tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			if qs := simpleQueries(proxy); len(qs) != 0 {
				t.Errorf("autocommit read-only transactions sent %q", qs)
			}
			if got := roundTrips(proxy); got != plain {
				t.Errorf("%d round trips for 3 autocommit transactions of one query, want %d as for the query alone", got, plain)
			}
			proxy.Reset()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, "select $1::int", 1); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if qs := txControl(proxy); len(qs) != 2 || !strings.HasPrefix(strings.ToLower(qs[0]), "begin") || !strings.EqualFold(qs[1], "commit") {
				t.Errorf("read-write transaction sent %q, want BEGIN and COMMIT", qs)
			}
		})
	}
}

// slowConn stalls after a write when armed, as a goroutine descheduled right
// after its write does on a loaded machine. It exposes the TCP socket.
type slowConn struct {
	*net.TCPConn
	stall *atomic.Bool
}

func (c slowConn) Write(b []byte) (int, error) {
	n, err := c.TCPConn.Write(b)
	if c.stall.Load() {
		time.Sleep(100 * time.Millisecond)
	}
	return n, err
}

func (c slowConn) SyscallConn() (syscall.RawConn, error) { return c.TCPConn.SyscallConn() }

// Regression: check mode's socket peek must not wait for pgx's background
// reader. pgx starts one when a write blocks for 15 ms and can leave it
// parked in a read on an idle connection; a peek under RawConn.Read waited
// behind it forever, ignoring every deadline (found by BenchmarkReuse on a
// loaded machine). The dialer here stalls after writes to force that state.
func TestIntegrationPeekDoesNotWaitForPgxBackgroundReader(t *testing.T) {
	srv := pgtest.Get(t)
	cfg, err := pgx.ParseConfig(srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	var stall atomic.Bool
	cfg.DialFunc = func(ctx context.Context, network, addr string) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return slowConn{c.(*net.TCPConn), &stall}, nil
	}
	never := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false })
	wc, err := warmpg.NewConnector(stdlib.GetConnector(*cfg, never))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(wc)
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx := context.Background()
	var n int
	if err := db.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stall.Store(true)
	if err := db.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	stall.Store(false)
	// The connection is idle in the pool; pgx's background reader is still
	// blocked in Read on its socket. Reuse it with a 3 s deadline.
	done := make(chan error, 1)
	go func() {
		qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
		defer cancel()
		done <- db.QueryRowContext(qctx, "select 1").Scan(&n)
	}()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("reuse after pgx's background read: %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("reuse still blocked 10 s after start (deadline 3 s): check mode's peek waits for pgx's background read")
	}
}

// The lib/pq deadline watchdog leaves normal use alone: a context cancelled
// after its statement finished — the usual defer cancel() — breaks neither
// the transaction it ran in nor the pooled connection.
func TestIntegrationWatchdogIdleAfterCancel(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 20*time.Second)
	db, err := warmpg.Open(srv.URL("pool_backend=pq", "pool_max_conns=1"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		qctx, cancel := context.WithCancel(ctx)
		rows, err := tx.QueryContext(qctx, "select generate_series(1, $1::int)", 3)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for rows.Next() {
			n++
		}
		if err := rows.Close(); err != nil || n != 3 {
			t.Fatalf("rows: %d %v", n, err)
		}
		cancel() // after the rows are done: must not touch the socket
		ectx, ecancel := context.WithCancel(ctx)
		if _, err := tx.ExecContext(ectx, "select $1::int", i); err != nil {
			t.Fatalf("statement %d in the transaction after a cancelled context: %v", i, err)
		}
		ecancel()
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		qctx, cancel := context.WithCancel(ctx)
		var x int
		if err := db.QueryRowContext(qctx, "select $1::int", 1).Scan(&x); err != nil {
			t.Fatal(err)
		}
		cancel()
	}
	if st, _ := warmpg.Stats(db); st.Connects != 1 || st.Discarded != 0 {
		t.Errorf("counters %v: one connection, never discarded", st)
	}
}
