package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"syscall"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
)

// TestFaultFrozenBackendLibPQ freezes (SIGSTOP) the one backend of a
// pool_backend=pq pool and runs, with a context deadline, what the
// watchdog did not cover at first: the reset statements of ResetSession
// (issue 18, 2: ping, rollback and discard modes; check after a SET or a
// BEGIN), a prepared *sql.Stmt's executions, and Commit and Rollback
// (issue 13, 1). Each must return within its deadline plus
// pool_cancel_grace and a margin; before, each returned only when the
// backend was thawed (8 s later here).
func TestFaultFrozenBackendLibPQ(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	srv := faultCluster(t, ctx)
	const (
		deadline = time.Second
		thawAt   = 8 * time.Second
	)
	bound := deadline + warmpg.DefaultCancelGrace + faultHangMargin
	type scenario struct {
		name  string
		reset string
		// prime runs on the pool's one connection before the freeze.
		prime func(db *sql.DB) (run func(ctx context.Context) error, err error)
	}
	query := func(prep string) func(db *sql.DB) (func(context.Context) error, error) {
		return func(db *sql.DB) (func(context.Context) error, error) {
			if prep != "" {
				if _, err := db.ExecContext(ctx, prep); err != nil {
					return nil, err
				}
			}
			return func(qctx context.Context) error {
				var n int
				return db.QueryRowContext(qctx, "select 1").Scan(&n)
			}, nil
		}
	}
	tx := func(commit bool) func(db *sql.DB) (func(context.Context) error, error) {
		return func(db *sql.DB) (func(context.Context) error, error) {
			// The transaction's context outlives the freeze by deadline.
			txctx, cancel := context.WithTimeout(ctx, time.Hour)
			tx, err := db.BeginTx(txctx, nil)
			if err != nil {
				cancel()
				return nil, err
			}
			if _, err := tx.ExecContext(ctx, "select 1"); err != nil {
				cancel()
				return nil, err
			}
			return func(qctx context.Context) error {
				// End the transaction's context at the same deadline.
				stop := context.AfterFunc(qctx, cancel)
				defer stop()
				if commit {
					return tx.Commit()
				}
				return tx.Rollback()
			}, nil
		}
	}
	scenarios := []scenario{
		{"reset ping", "ping", query("")},
		{"reset rollback", "rollback", query("")},
		{"reset discard", "discard", query("")},
		{"reset check after SET", "check", query("set work_mem = '8MB'")},
		{"reset check after BEGIN", "check", query("begin")},
		{"stmt exec", "check", func(db *sql.DB) (func(context.Context) error, error) {
			st, err := db.PrepareContext(ctx, "select $1::int")
			if err != nil {
				return nil, err
			}
			return func(qctx context.Context) error { _, err := st.ExecContext(qctx, 1); return err }, nil
		}},
		{"stmt query", "check", func(db *sql.DB) (func(context.Context) error, error) {
			st, err := db.PrepareContext(ctx, "select $1::int")
			if err != nil {
				return nil, err
			}
			return func(qctx context.Context) error { var n int; return st.QueryRowContext(qctx, 1).Scan(&n) }, nil
		}},
		// A write refused with 25006 (a function that makes its own
		// transaction read-only and writes): lib/pq reports no settings,
		// so the next reuse asks the server its role, one round trip of
		// warmpg's own (issue 27), before the reset.
		{"role check after a refused write", "check", func(db *sql.DB) (func(context.Context) error, error) {
			if _, err := db.ExecContext(ctx, `create or replace function warmpg_refused() returns void language plpgsql as $$
				begin set local transaction_read_only = on; create temp table warmpg_refused_t (); end $$`); err != nil {
				return nil, err
			}
			_, err := db.ExecContext(ctx, "select warmpg_refused()")
			var coded interface{ SQLState() string }
			if !errors.As(err, &coded) || coded.SQLState() != "25006" {
				return nil, fmt.Errorf("select warmpg_refused(): %v, want 25006", err)
			}
			return query("")(db)
		}},
		{"commit", "check", tx(true)},
		{"rollback", "check", tx(false)},
	}
	var rows []string
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			app := faultApp("frozen")
			db, err := warmpg.Open(srv.URL("application_name="+app, "pool_backend=pq", "pool_max_conns=1", "pool_reset="+sc.reset),
				warmpg.WithLogger(faultQuietLog))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var pid int
			if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			run, err := sc.prime(db)
			if err != nil {
				t.Fatal(err)
			}
			if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
				t.Fatal(err)
			}
			thawed := false
			thaw := func() {
				if !thawed {
					thawed = true
					_ = syscall.Kill(pid, syscall.SIGCONT)
				}
			}
			defer thaw()
			done := make(chan error, 1)
			start := time.Now()
			go func() {
				qctx, cancel := context.WithTimeout(ctx, deadline)
				defer cancel()
				done <- run(qctx)
			}()
			var took time.Duration
			select {
			case err = <-done:
				took = time.Since(start)
			case <-time.After(thawAt):
				thaw()
				err = <-done
				took = time.Since(start)
			}
			t.Logf("%s: returned after %s: %v", sc.name, took.Round(time.Millisecond), err)
			if took > bound {
				t.Errorf("%s on a frozen backend, deadline %s: returned after %s, want within %s (deadline + grace %s + margin)",
					sc.name, deadline, took.Round(time.Millisecond), bound, warmpg.DefaultCancelGrace)
			}
			thaw()
			// The pool answers again.
			if _, err := faultUntilOK(ctx, db, 10*time.Second); err != nil {
				t.Errorf("pool did not recover after the thaw: %v", err)
			}
			kind := "none"
			if err != nil {
				kind = faultKind(err)
			}
			rows = append(rows, fmt.Sprintf("| %s | `pool_reset=%s` | %s | %s |", sc.name, sc.reset, faultDur(took), kind))
		})
	}
	faultTable(t, "| frozen backend, lib/pq, deadline 1 s | setting | returned after | error |\n|---|---|---|---|", rows)
}
