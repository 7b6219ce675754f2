package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver, for the baseline
	"github.com/lib/pq"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Issue 15, part 1: a statement cached on a pooled connection whose result
// columns a migration changed (ALTER TABLE … ADD COLUMN from another
// session) fails once per connection per statement with SQLSTATE 0A000
// "cached plan must not change result type" through pgx — and a prepared
// *sql.Stmt fails every time, through pgx and lib/pq alike. warmpg prepares
// such a statement again and resends it, once, outside a transaction
// (replan.go). Go test -run TestReplan -v prints the table docs/replan.md
// shows.

const (
	replanConns = 8 // N: connections in the pool, each with the statement cached
	replanRuns  = 5 // K: executions per connection after the ALTER
)

// replanTable creates a table of 64 rows (id, a) and returns its name.
func replanTable(t *testing.T, ctx context.Context, srv *pgtest.Server) string {
	t.Helper()
	name := fmt.Sprintf("replan_%d", appSeq.Add(1))
	if err := srv.Exec(ctx, "create table "+name+" (id int primary key, a int); insert into "+name+" select i, i from generate_series(1, 64) i"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Exec(ctx, "drop table if exists "+name)
	})
	return name
}

// replanOp runs a statement on a connection: directly (Query, Exec) or
// through a *sql.Stmt prepared on it before the ALTER. It returns the
// number of result columns it saw (-1 for Exec).
type replanOp struct {
	name string
	stmt bool // prepared on each connection before the ALTER
	run  func(ctx context.Context, c *sql.Conn, st *sql.Stmt, q string, id int) (int, error)
}

func replanColumns(rows *sql.Rows, err error) (int, error) {
	if err != nil {
		return 0, err
	}
	defer rows.Close()
	cols, err := rows.Columns()
	if err != nil {
		return 0, err
	}
	n := 0
	for rows.Next() {
		vals := make([]any, len(cols))
		for i := range vals {
			vals[i] = new(any)
		}
		if err := rows.Scan(vals...); err != nil {
			return 0, err
		}
		n++
	}
	if err := rows.Err(); err != nil {
		return 0, err
	}
	if n != 1 {
		return 0, fmt.Errorf("%d rows, want 1", n)
	}
	return len(cols), nil
}

var replanOps = []replanOp{
	{"Query", false, func(ctx context.Context, c *sql.Conn, _ *sql.Stmt, q string, id int) (int, error) {
		return replanColumns(c.QueryContext(ctx, q, id))
	}},
	{"Exec", false, func(ctx context.Context, c *sql.Conn, _ *sql.Stmt, q string, id int) (int, error) {
		_, err := c.ExecContext(ctx, q, id)
		return -1, err
	}},
	{"StmtQuery", true, func(ctx context.Context, _ *sql.Conn, st *sql.Stmt, _ string, id int) (int, error) {
		return replanColumns(st.QueryContext(ctx, id))
	}},
	{"StmtExec", true, func(ctx context.Context, _ *sql.Conn, st *sql.Stmt, _ string, id int) (int, error) {
		_, err := st.ExecContext(ctx, id)
		return -1, err
	}},
}

// replanResult is what N×K executions after the ALTER gave.
type replanResult struct {
	execs, fails int
	first        error
}

// replanRound holds all replanConns connections of db, runs op twice on
// each (the statement is cached or prepared there), adds a column to table
// from another session, then runs op replanRuns times on each connection
// and counts the failures. A success must show the new column.
func replanRound(t *testing.T, ctx context.Context, srv *pgtest.Server, db *sql.DB, op replanOp) replanResult {
	t.Helper()
	table := replanTable(t, ctx, srv)
	q := "select * from " + table + " where id = $1"
	db.SetMaxOpenConns(replanConns)
	db.SetMaxIdleConns(replanConns)
	conns := make([]*sql.Conn, replanConns)
	stmts := make([]*sql.Stmt, replanConns)
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		defer c.Close()
		if op.stmt {
			if stmts[i], err = c.PrepareContext(ctx, q); err != nil {
				t.Fatal(err)
			}
			defer stmts[i].Close()
		}
		for j := range 2 {
			if n, err := op.run(ctx, c, stmts[i], q, i+j+1); err != nil || (n != -1 && n != 2) {
				t.Fatalf("before the ALTER, conn %d: %d columns, %v", i, n, err)
			}
		}
	}
	if err := srv.Exec(ctx, "alter table "+table+" add column b text default 'new'"); err != nil {
		t.Fatal(err)
	}
	var r replanResult
	var mu sync.Mutex
	var wg sync.WaitGroup
	for i := range conns {
		wg.Go(func() {
			for k := range replanRuns {
				n, err := op.run(ctx, conns[i], stmts[i], q, 1+(i*replanRuns+k)%64)
				if err == nil && n != -1 && n != 3 {
					err = fmt.Errorf("%d columns after the ALTER, want 3", n)
				}
				mu.Lock()
				r.execs++
				if err != nil {
					r.fails++
					if r.first == nil {
						r.first = err
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return r
}

// isPlanChanged reports whether err is the server's 0A000 from
// RevalidateCachedQuery, through pgx or lib/pq.
func isPlanChanged(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == "0A000" && pgErr.Routine == "RevalidateCachedQuery"
	}
	var pqErr *pq.Error
	return errors.As(err, &pqErr) && pqErr.Code == "0A000" && pqErr.Routine == "RevalidateCachedQuery"
}

// TestReplanAfterAddColumn: N connections each with the statement cached,
// ALTER TABLE … ADD COLUMN from another session, N×K executions: through
// warmpg none fails (pgx and lib/pq, Query, Exec, *sql.Stmt), and each
// connection resent each failed statement once (Counters.Replans). The same
// rounds through plain pgx and plain lib/pq show what the test provokes:
// one failure per connection for pgx's statement cache, every execution of
// a *sql.Stmt on both.
func TestReplanAfterAddColumn(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	var table []string
	for _, op := range replanOps {
		for _, via := range []string{"pgx", "warmpg pgx", "postgres", "warmpg pq"} {
			if strings.HasSuffix(via, "pq") || via == "postgres" {
				if !op.stmt {
					// lib/pq runs a statement with arguments as an unnamed
					// one, parsed again each time: it cannot fail so.
					continue
				}
			}
			t.Run(op.name+"/"+via, func(t *testing.T) {
				var db *sql.DB
				var err error
				switch via {
				case "pgx", "postgres":
					db, err = sql.Open(via, srv.URL("application_name="+appName(t)))
				case "warmpg pgx":
					db, err = warmpg.Open(srv.URL("pool_backend=pgx", "application_name="+appName(t)))
				default:
					db, err = warmpg.Open(srv.URL("pool_backend=pq", "application_name="+appName(t)))
				}
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				r := replanRound(t, ctx, srv, db, op)
				table = append(table, fmt.Sprintf("%-10s %-11s %3d of %3d failed", op.name, via, r.fails, r.execs))
				if r.first != nil && !isPlanChanged(r.first) {
					t.Fatalf("failed with another error: %v", r.first)
				}
				if !strings.HasPrefix(via, "warmpg") {
					// The baseline: the failure the test is about happens.
					want := replanConns // once per connection: pgx drops it from its cache
					if op.stmt {
						want = replanConns * replanRuns // a named statement fails every time
					}
					if r.fails != want {
						t.Fatalf("baseline %s: %d of %d failed, want %d (first: %v)", via, r.fails, r.execs, want, r.first)
					}
					return
				}
				if r.fails != 0 {
					t.Fatalf("%d of %d failed through warmpg: %v", r.fails, r.execs, r.first)
				}
				st, _ := warmpg.Stats(db)
				if st.Replans != replanConns {
					t.Fatalf("Replans = %d, want %d (one per connection)", st.Replans, replanConns)
				}
			})
		}
	}
	t.Logf("after ALTER TABLE … ADD COLUMN, %d connections × %d executions:\n%s", replanConns, replanRuns, strings.Join(table, "\n"))
}
