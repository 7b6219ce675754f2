package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// pool_autocommit must not change what a statement means. A ReadOnly
// transaction runs its plain reads in autocommit; the first statement that
// is not one (SET LOCAL, set_config(…, true), a lock, a write, nextval,
// CALL) makes it a real read-only transaction first. These tests run each
// such statement on both backends and check what a real read-only
// transaction would do.

// acDB opens a pool_autocommit pool of one connection on backend b.
func acDB(t *testing.T, dsn func(...string) string, b warmpg.Backend, params ...string) *sql.DB {
	t.Helper()
	db, err := warmpg.Open(dsn(append([]string{"pool_backend=" + string(b), "pool_autocommit=true", "pool_max_conns=1"}, params...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// acSetup runs sql on srv, and cleanup when the test ends.
func acSetup(t *testing.T, ctx context.Context, srv *pgtest.Server, sql, cleanup string) {
	t.Helper()
	if err := srv.Exec(ctx, sql); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := srv.Exec(ctx, cleanup); err != nil {
			t.Error(err)
		}
	})
}

func beginRO(t *testing.T, ctx context.Context, db interface {
	BeginTx(context.Context, *sql.TxOptions) (*sql.Tx, error)
}) *sql.Tx {
	t.Helper()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	return tx
}

func wantState(t *testing.T, what string, err error, state string) {
	t.Helper()
	if got := sqlState(err); got != state {
		t.Errorf("%s: %v (SQLSTATE %q); want SQLSTATE %s", what, err, got, state)
	}
}

// SET LOCAL statement_timeout holds for the rest of the transaction: a
// 0.6 s sleep after SET LOCAL statement_timeout='100ms' is cancelled
// (57014), where in autocommit the setting was lost at once and the sleep
// ran. After the transaction the session's own timeout is back.
func TestAutocommitSetLocalHolds(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db := acDB(t, srv.URL, b)
			var session string
			if err := db.QueryRowContext(ctx, "show statement_timeout").Scan(&session); err != nil {
				t.Fatal(err)
			}
			tx := beginRO(t, ctx, db)
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "set local statement_timeout = '100ms'"); err != nil {
				t.Fatal(err)
			}
			_, err := tx.ExecContext(ctx, "select pg_sleep(0.6)")
			wantState(t, "pg_sleep(0.6) after SET LOCAL statement_timeout='100ms'", err, "57014")
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			var timeout string
			if err := db.QueryRowContext(ctx, "show statement_timeout").Scan(&timeout); err != nil || timeout != session {
				t.Errorf("statement_timeout after the transaction: %q %v; want the session's %q", timeout, err, session)
			}
			if st, _ := warmpg.Stats(db); st.AutocommitTxs != 1 || st.AutocommitUpgrades != 1 {
				t.Errorf("counters %v: want autocommit_txs=1 autocommit_upgrades=1", st)
			}
		})
	}
}

// set_config(…, true) is seen by the rest of the transaction, and a
// session-level value an earlier user of the connection left is not: the
// transaction reads its own tenant's rows, never the earlier one's. After
// the transaction the session value is back, as after a real one.
func TestAutocommitLocalConfigHolds(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	acSetup(t, ctx, srv, `create table ac_tenants (tenant int, secret text);
		insert into ac_tenants values (1, 'alice-secret'), (2, 'bob-data')`, "drop table ac_tenants")
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db := acDB(t, srv.URL, b)
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			// User A's leftover: tenant 1, for the session.
			if _, err := conn.ExecContext(ctx, "select set_config('app.tenant_id', '1', false)"); err != nil {
				t.Fatal(err)
			}
			tx := beginRO(t, ctx, conn)
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "select set_config('app.tenant_id', '2', true)"); err != nil {
				t.Fatal(err)
			}
			var tenant, secrets string
			if err := tx.QueryRowContext(ctx, "select current_setting('app.tenant_id'), "+
				"string_agg(secret, ',') from ac_tenants where tenant = current_setting('app.tenant_id')::int").Scan(&tenant, &secrets); err != nil {
				t.Fatal(err)
			}
			if tenant != "2" || secrets != "bob-data" {
				t.Errorf("after set_config('app.tenant_id', '2', true) the transaction saw tenant %q and read %q; want 2 and bob-data", tenant, secrets)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if err := conn.QueryRowContext(ctx, "select current_setting('app.tenant_id')").Scan(&tenant); err != nil || tenant != "1" {
				t.Errorf("after the transaction: tenant %q %v; want the session's 1", tenant, err)
			}
		})
	}
}

// Locks: SELECT … FOR UPDATE fails as in a real read-only transaction
// (25006) instead of returning rows it does not lock; LOCK TABLE and
// pg_advisory_xact_lock hold until the transaction ends (another
// connection's NOWAIT fails with 55P03) instead of failing outside a
// transaction block or being released at once.
func TestAutocommitLocksHold(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	acSetup(t, ctx, srv, "create table ac_locks (id int primary key); insert into ac_locks values (1)", "drop table ac_locks")
	other, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close(context.Background())
	otherLocks := func() (tableLock, advisory error) {
		otx, err := other.Begin(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, tableLock = otx.Exec(ctx, "lock table ac_locks in row share mode nowait")
		otx.Rollback(ctx)
		var got bool
		advisory = other.QueryRow(ctx, "select pg_try_advisory_xact_lock(4242)").Scan(&got)
		if advisory == nil && !got {
			advisory = fmt.Errorf("advisory lock 4242 is held")
		}
		return tableLock, advisory
	}
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db := acDB(t, srv.URL, b)
			tx := beginRO(t, ctx, db)
			var id int
			err := tx.QueryRowContext(ctx, "select id from ac_locks where id = $1 for update", 1).Scan(&id)
			wantState(t, "SELECT … FOR UPDATE in a ReadOnly transaction", err, "25006")
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}

			tx = beginRO(t, ctx, db)
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "lock table ac_locks in exclusive mode"); err != nil {
				t.Fatal(err)
			}
			if _, err := tx.ExecContext(ctx, "select pg_advisory_xact_lock(4242)"); err != nil {
				t.Fatal(err)
			}
			tableLock, advisory := otherLocks()
			wantState(t, "another connection's LOCK TABLE … IN ROW SHARE MODE NOWAIT (what FOR UPDATE takes) while LOCK TABLE … IN EXCLUSIVE MODE is held", tableLock, "55P03")
			if advisory == nil {
				t.Error("another connection took advisory lock 4242 while the transaction held it")
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if tableLock, advisory := otherLocks(); tableLock != nil || advisory != nil {
				t.Errorf("after Commit another connection's locks: %v, %v; want both free", tableLock, advisory)
			}
		})
	}
}

// Writes in a ReadOnly transaction fail as in a real read-only transaction
// (25006) and nothing survives Rollback: INSERT run directly, prepared in
// the transaction and prepared outside it (Tx.Stmt), nextval, CALL of a
// procedure that writes. In autocommit every one of them succeeded and
// survived Rollback.
func TestAutocommitWritesRefused(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	acSetup(t, ctx, srv, `create table ac_writes (v int);
		create sequence ac_seq;
		create procedure ac_write() language sql as 'insert into ac_writes values (-1)'`,
		"drop procedure ac_write; drop sequence ac_seq; drop table ac_writes")
	const rounds = 20
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db := acDB(t, srv.URL, b)
			outside, err := db.PrepareContext(ctx, "insert into ac_writes values ($1)")
			if err != nil {
				t.Fatal(err)
			}
			defer outside.Close()
			writes := []struct {
				name string
				run  func(tx *sql.Tx, i int) error
			}{
				{"insert", func(tx *sql.Tx, i int) error {
					_, err := tx.ExecContext(ctx, "insert into ac_writes values ($1)", i)
					return err
				}},
				{"insert prepared in the transaction", func(tx *sql.Tx, i int) error {
					st, err := tx.PrepareContext(ctx, "insert into ac_writes values ($1)")
					if err != nil {
						return err
					}
					_, err = st.ExecContext(ctx, i)
					return err
				}},
				{"insert prepared outside (Tx.Stmt)", func(tx *sql.Tx, i int) error {
					_, err := tx.StmtContext(ctx, outside).ExecContext(ctx, i)
					return err
				}},
				{"insert returning", func(tx *sql.Tx, i int) error {
					var v int
					return tx.QueryRowContext(ctx, "insert into ac_writes values ($1) returning v", i).Scan(&v)
				}},
				{"nextval", func(tx *sql.Tx, i int) error {
					var v int
					return tx.QueryRowContext(ctx, "select nextval('ac_seq')").Scan(&v)
				}},
				{"call", func(tx *sql.Tx, i int) error {
					_, err := tx.ExecContext(ctx, "call ac_write()")
					return err
				}},
			}
			for i := range rounds {
				w := writes[i%len(writes)]
				tx := beginRO(t, ctx, db)
				err := w.run(tx, i)
				wantState(t, w.name+" in a ReadOnly transaction", err, "25006")
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			}
			var rows int
			var seqCalled bool
			if err := db.QueryRowContext(ctx, "select (select count(*) from ac_writes), (select is_called from ac_seq)").Scan(&rows, &seqCalled); err != nil {
				t.Fatal(err)
			}
			if rows != 0 || seqCalled {
				t.Errorf("after %d ReadOnly transactions that wrote and rolled back: %d rows kept, sequence advanced %v; want none", rounds, rows, seqCalled)
			}
			if st, _ := warmpg.Stats(db); st.AutocommitTxs != rounds || st.AutocommitUpgrades != rounds {
				t.Errorf("counters %v: want autocommit_txs=%d autocommit_upgrades=%d", st, rounds, rounds)
			}
		})
	}
}

// What each path sends, counted by a proxy: plain reads send no BEGIN or
// COMMIT and cost their own round trips; a transaction upgraded by a SET
// LOCAL sends one BEGIN … READ ONLY (with the requested isolation) before
// it and a real COMMIT or ROLLBACK: two round trips more, as a transaction
// begun at BeginTx.
func TestAutocommitUpgradeMessages(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db := acDB(t, via, b)
			useOnce(t, ctx, db)
			// One connection held throughout: what is counted is the
			// statements and the transaction, not what a reuse sends.
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			read := func(q interface {
				QueryRowContext(context.Context, string, ...any) *sql.Row
			}) {
				t.Helper()
				var n int
				if err := q.QueryRowContext(ctx, "select $1::int", 7).Scan(&n); err != nil || n != 7 {
					t.Fatalf("read: %d %v", n, err)
				}
			}
			proxy.Reset()
			read(conn)
			read(conn)
			plain := roundTrips(proxy)

			// Plain reads only.
			proxy.Reset()
			tx := beginRO(t, ctx, conn)
			read(tx)
			read(tx)
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if qs := simpleQueries(proxy); len(qs) != 0 || roundTrips(proxy) != plain {
				t.Errorf("two plain reads in a ReadOnly transaction: sent %q, %d round trips; want nothing more than the reads' %d", qs, roundTrips(proxy), plain)
			}

			// A read, set_config(…, true), a read of the setting: what they
			// cost alone (run twice: pgx prepares a new text first).
			stmts := func(q interface {
				QueryRowContext(context.Context, string, ...any) *sql.Row
			}) string {
				t.Helper()
				read(q)
				var v string
				if err := q.QueryRowContext(ctx, "select set_config('app.ac', $1, true)", "x").Scan(&v); err != nil {
					t.Fatal(err)
				}
				if err := q.QueryRowContext(ctx, "select coalesce(current_setting('app.ac', true), '') || $1::text", "").Scan(&v); err != nil {
					t.Fatal(err)
				}
				return v
			}
			stmts(conn)
			proxy.Reset()
			stmts(conn)
			alone := roundTrips(proxy)

			// The same in a ReadOnly transaction, upgraded by set_config;
			// Commit and Rollback, at both isolation levels autocommit
			// serves.
			for _, end := range []string{"commit", "rollback"} {
				for _, iso := range []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadCommitted} {
					proxy.Reset()
					tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: iso})
					if err != nil {
						t.Fatal(err)
					}
					if v := stmts(tx); v != "x" {
						t.Errorf("set_config('app.ac', 'x', true), then current_setting: %q", v)
					}
					if end == "commit" {
						err = tx.Commit()
					} else {
						err = tx.Rollback()
					}
					if err != nil {
						t.Fatal(err)
					}
					qs := simpleQueries(proxy)
					begin := "begin read only"
					if iso == sql.LevelReadCommitted {
						begin = "begin isolation level read committed read only"
					}
					if len(qs) != 2 || strings.Join(strings.Fields(strings.ToLower(qs[0])), " ") != begin || !strings.EqualFold(qs[1], end) {
						t.Errorf("%v ReadOnly transaction upgraded by set_config(…, true), then %s: sent %q; want %q and %s", iso, end, qs, begin, end)
					}
					if got := roundTrips(proxy); got != alone+2 {
						t.Errorf("%v upgraded transaction, %s: %d round trips, want %d: the statements' %d, BEGIN and %s", iso, end, got, alone+2, alone, end)
					}
					t.Logf("%s, %v, upgraded, %s: sent %q, %d round trips (the statements alone: %d)", b, iso, end, qs, roundTrips(proxy), alone)
				}
			}
			if st, _ := warmpg.Stats(db); st.AutocommitTxs != 5 || st.AutocommitUpgrades != 4 {
				t.Errorf("counters %v: want autocommit_txs=5 autocommit_upgrades=4", st)
			}
		})
	}
}

// On a pool_read_only pool every transaction is autocommit's, ReadOnly or
// not; an upgraded one is read-only too, so a write fails with 25006 and
// SET LOCAL holds.
func TestAutocommitReadOnlyPoolUpgrade(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db := acDB(t, srv.URL, b, "pool_read_only=true")
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "set local statement_timeout = '100ms'"); err != nil {
				t.Fatal(err)
			}
			var ro, timeout string
			if err := tx.QueryRowContext(ctx, "select current_setting('transaction_read_only'), current_setting('statement_timeout')").Scan(&ro, &timeout); err != nil {
				t.Fatal(err)
			}
			if ro != "on" || timeout != "100ms" {
				t.Errorf("upgraded transaction on a pool_read_only pool: transaction_read_only %s, statement_timeout %s; want on, 100ms", ro, timeout)
			}
			_, err = tx.ExecContext(ctx, "create table ac_never (i int)")
			wantState(t, "CREATE TABLE on a pool_read_only pool", err, "25006")
		})
	}
}

// Through PgBouncer in transaction mode: once upgraded, the transaction
// keeps one server connection, and what SET LOCAL / set_config(…, true)
// set holds for the rest of it.
func TestAutocommitUpgradePgBouncer(t *testing.T) {
	srv := pgtest.Get(t)
	bouncer := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db := acDB(t, bouncer.URL, b, "pool_pgbouncer=true")
			tx := beginRO(t, ctx, db)
			defer tx.Rollback()
			var v string
			if err := tx.QueryRowContext(ctx, "select set_config('app.ac', $1, true)", "y").Scan(&v); err != nil {
				t.Fatal(err)
			}
			pids := map[int]bool{}
			for range 3 {
				var pid int
				if err := tx.QueryRowContext(ctx, "select pg_backend_pid() + $1::int, coalesce(current_setting('app.ac', true), '')", 0).Scan(&pid, &v); err != nil {
					t.Fatal(err)
				}
				pids[pid] = true
				if v != "y" {
					t.Errorf("through the bouncer, after set_config('app.ac', 'y', true): %q", v)
				}
			}
			if len(pids) != 1 {
				t.Errorf("an upgraded transaction ran on %d server connections", len(pids))
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// BenchmarkAutocommit measures both pool_autocommit paths at 1 ms injected
// round-trip time, one client, one warmed connection per variant:
//
//	go test -run '^$' -bench BenchmarkAutocommit -benchtime 3x .
//
//	select              db.QueryRowContext "select 1" (one round trip)
//	autocommit-read-tx  pool_autocommit: ReadOnly tx, select 1, Commit (one)
//	autocommit-setlocal pool_autocommit: ReadOnly tx, SET LOCAL, select 1,
//	                    Commit: upgraded (BEGIN, SET, select, COMMIT: four)
//	real-setlocal       the same without pool_autocommit (four)
//
// Metrics: <variant>-us, the mean latency of one transaction in µs;
// <variant>/select, the median per-round ratio to select (expected: 1, 4,
// 4); autocommit-setlocal/real-setlocal (expected: 1).
func BenchmarkAutocommit(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	url := serverURL(b, srv, time.Millisecond)
	setLocalOp := func(db *sql.DB) func(context.Context) error {
		return func(ctx context.Context) error {
			tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "set local statement_timeout = '5s'"); err != nil {
				return err
			}
			if err := warmbench.ScanOne(tx.QueryRowContext(ctx, "select 1")); err != nil {
				return err
			}
			return tx.Commit()
		}
	}
	vs := openVariants(b, ctx, 1, func(ctx context.Context) ([]*warmbench.Variant, error) {
		var vs []*warmbench.Variant
		for _, o := range []struct {
			name, dsn string
			op        func(*sql.DB) func(context.Context) error
		}{
			{"select", url(), warmbench.SelectOp},
			{"autocommit-read-tx", url("pool_autocommit=true"), warmbench.ReadOnlyTxOp},
			{"autocommit-setlocal", url("pool_autocommit=true"), setLocalOp},
			{"real-setlocal", url(), setLocalOp},
		} {
			v, err := warmbench.OpenSQLVariant(ctx, o.name, func() (*sql.DB, error) { return sql.Open("warmpg", o.dsn) }, 1, o.op)
			if err != nil {
				return vs, fmt.Errorf("open %s: %w", o.name, err)
			}
			vs = append(vs, v)
		}
		return vs, nil
	})
	r := runRounds(b, ctx, vs, 60, 3, 1)
	for _, v := range vs {
		b.ReportMetric(1e6/r.PerSecond(v.Name), v.Name+"-us")
	}
	for _, name := range []string{"autocommit-read-tx", "autocommit-setlocal", "real-setlocal"} {
		b.ReportMetric(r.MedianRatio(name, "select"), name+"/select")
	}
	b.ReportMetric(r.MedianRatio("autocommit-setlocal", "real-setlocal"), "autocommit-setlocal/real-setlocal")
}

// On a hot standby (pool_read_only): the BEGIN READ ONLY of an upgrade is
// accepted, so SET LOCAL holds there too, and a lock a standby allows is
// held.
func TestAutocommitUpgradeStandby(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	primary, standby := replicaPair(t, ctx)
	if err := primary.Exec(ctx, "create table ac_standby (i int)"); err != nil {
		t.Fatal(err)
	}
	if err := standby.WaitReplayed(ctx, primary); err != nil {
		t.Fatal(err)
	}
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db := acDB(t, standby.URL, b, "pool_read_only=true")
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "lock table ac_standby in access share mode"); err != nil {
				t.Fatalf("LOCK TABLE … IN ACCESS SHARE MODE on the standby: %v", err)
			}
			if _, err := tx.ExecContext(ctx, "set local statement_timeout = '100ms'"); err != nil {
				t.Fatal(err)
			}
			_, err = tx.ExecContext(ctx, "select pg_sleep(0.6)")
			wantState(t, "pg_sleep(0.6) after SET LOCAL statement_timeout='100ms' on the standby", err, "57014")
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if st, _ := warmpg.Stats(db); st.AutocommitUpgrades != 1 {
				t.Errorf("counters %v: want autocommit_upgrades=1", st)
			}
		})
	}
}
