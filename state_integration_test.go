package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// phaseOf reads the transaction phase and session state of conn's
// connection (state.go) through Raw, which database/sql allows while a
// transaction is open on the same *sql.Conn.
func phaseOf(t *testing.T, ctx context.Context, conn *sql.Conn) (string, bool) {
	t.Helper()
	var phase string
	var dirty bool
	if err := conn.Raw(func(dc any) error {
		phase, dirty = warmpg.PhaseOf(dc)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return phase, dirty
}

// TestConnStateMachine walks one connection through every phase of the
// state machine of issue 24 (state.go) against a real server, and checks
// at each step what the phase says against what the server says: idle;
// pool_autocommit's read-only transaction (autocommit, then in a
// transaction once a statement that is not a plain read upgraded it);
// pool_lazy_begin's (pending until the first statement, then in a
// transaction); eager BEGIN; a lazy BEGIN that failed (on a hot standby,
// SERIALIZABLE): failed, and every way in — Exec, Query, a prepared
// statement, Ping — refused with the server's 25P02 without reaching the
// wire; and the session dirty from a SET to the next reuse.
func TestConnStateMachine(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := pgtest.Get(t)
	want := func(t *testing.T, conn *sql.Conn, phase string, dirty bool) {
		t.Helper()
		if p, d := phaseOf(t, ctx, conn); p != phase || d != dirty {
			t.Errorf("phase %q dirty %v, want %q %v", p, d, phase, dirty)
		}
	}

	t.Run("autocommit", func(t *testing.T) {
		db := lazyDB(t, srv.URL, "pool_autocommit=true")
		conn := holdConn(t, ctx, db)
		want(t, conn, "idle", false)
		tx, err := conn.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		want(t, conn, "autocommit", false)
		var n int
		if err := tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&n); err != nil {
			t.Fatal(err)
		}
		want(t, conn, "autocommit", false)
		if _, err := tx.ExecContext(ctx, "set local statement_timeout = '5s'"); err != nil {
			t.Fatal(err)
		}
		var ro string
		if err := tx.QueryRowContext(ctx, "select current_setting('transaction_read_only')").Scan(&ro); err != nil {
			t.Fatal(err)
		}
		want(t, conn, "in transaction", false)
		if ro != "on" {
			t.Errorf("upgraded transaction: transaction_read_only %q, want on", ro)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		want(t, conn, "idle", false)
	})

	for _, lazy := range []bool{true, false} {
		name := map[bool]string{true: "lazy", false: "eager"}[lazy]
		t.Run(name, func(t *testing.T) {
			db := lazyDB(t, srv.URL, "pool_lazy_begin="+map[bool]string{true: "true", false: "false"}[lazy])
			conn, tx := connTx(t, ctx, db, nil)
			if lazy {
				want(t, conn, "pending", false)
			} else {
				want(t, conn, "in transaction", false)
			}
			if _, err := tx.ExecContext(ctx, "set local work_mem = '8MB'"); err != nil {
				t.Fatal(err)
			}
			// SET LOCAL ends with the transaction: the session stays clean.
			want(t, conn, "in transaction", false)
			var status string
			if err := tx.QueryRowContext(ctx, "select current_setting('work_mem')").Scan(&status); err != nil || status != "8MB" {
				t.Fatalf("inside the transaction: work_mem %q, %v", status, err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			want(t, conn, "idle", false)
			if _, err := conn.ExecContext(ctx, "set work_mem = '9MB'"); err != nil {
				t.Fatal(err)
			}
			want(t, conn, "idle", true)
		})
	}

	t.Run("dirty until reuse", func(t *testing.T) {
		db := lazyDB(t, srv.URL)
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := conn.ExecContext(ctx, "select set_config('work_mem', '9MB', false)"); err != nil {
			t.Fatal(err)
		}
		want(t, conn, "idle", true)
		conn.Close()
		conn, err = db.Conn(ctx) // the same connection, reset at reuse
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close()
		want(t, conn, "idle", false)
		var wm string
		if err := conn.QueryRowContext(ctx, "show work_mem").Scan(&wm); err != nil || wm == "9MB" {
			t.Errorf("after reuse: work_mem %q, %v: the session was not reset", wm, err)
		}
	})

	t.Run("failed", func(t *testing.T) {
		_, standby := replicaPair(t, ctx)
		db := lazyDB(t, standby.URL, "pool_lazy_begin=true")
		conn := holdConn(t, ctx, db)
		stmt, err := conn.PrepareContext(ctx, "select $1::int")
		if err != nil {
			t.Fatal(err)
		}
		defer stmt.Close()
		tx, err := conn.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelSerializable})
		if err != nil {
			t.Fatal(err)
		}
		defer tx.Rollback()
		want(t, conn, "pending", false)
		var n int
		if err := tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&n); !errors.Is(err, warmpg.ErrLazyBeginFailed) {
			t.Fatalf("first statement: %v, want ErrLazyBeginFailed", err)
		}
		want(t, conn, "failed", false)
		aborted := func(way string, err error) {
			t.Helper()
			var pe *pgconn.PgError
			if !errors.As(err, &pe) || pe.Code != "25P02" {
				t.Errorf("%s after the failed BEGIN: %v, want 25P02", way, err)
			}
		}
		_, err = tx.ExecContext(ctx, "select 1")
		aborted("Exec", err)
		aborted("Query", tx.QueryRowContext(ctx, "select $1::int", 2).Scan(&n))
		aborted("Tx.Stmt", tx.StmtContext(ctx, stmt).QueryRowContext(ctx, 3).Scan(&n))
		aborted("Ping", conn.PingContext(ctx))
		want(t, conn, "failed", false)
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		want(t, conn, "idle", false)
		// Nothing was refused at the wire (which would have closed the
		// connection): the same connection runs the next statement.
		if err := conn.QueryRowContext(ctx, "select $1::int", 4).Scan(&n); err != nil || n != 4 {
			t.Fatalf("after the rollback: %d, %v", n, err)
		}
	})
}
