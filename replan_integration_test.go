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
	"github.com/jackc/pgx/v5/stdlib" // and the "pgx" driver, for the baseline
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
	return newTable(t, ctx, srv, "replan", "create table %[1]s (id int primary key, a int); insert into %[1]s select i, i from generate_series(1, 64) i")
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
					// Warming off: a connection that warmed the statement
					// (learned by sampling, at random) drops its copy when
					// another met the error first, and needs no resend
					// (TestReplanStaleWarmedStatement): the count below
					// is of resends on connections that cached it by use.
					db, err = warmpg.Open(srv.URL("pool_backend=pgx", "pool_warm_statements=0", "application_name="+appName(t)))
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

// openReplan opens a warmpg pool of one connection on backend b.
func openReplan(t *testing.T, srv *pgtest.Server, b warmpg.Backend, params ...string) *sql.DB {
	t.Helper()
	db, err := warmpg.Open(srv.URL(append([]string{"pool_backend=" + string(b), "pool_max_conns=1", "application_name=" + appName(t)}, params...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

func replans(t *testing.T, db *sql.DB) int64 {
	t.Helper()
	st, ok := warmpg.Stats(db)
	if !ok {
		t.Fatal("not a warmpg DB")
	}
	return st.Replans
}

// TestReplanInTransaction: inside a transaction, after a statement that
// ran, the replan error aborted the transaction, so warmpg returns it and
// resends nothing; after the
// rollback the statement runs again with the new columns, outside the
// transaction, on the same connection.
func TestReplanInTransaction(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, tc := range []struct {
		b    warmpg.Backend
		stmt bool
	}{{warmpg.BackendPgx, false}, {warmpg.BackendPgx, true}, {warmpg.BackendPQ, true}} {
		t.Run(fmt.Sprintf("%s/stmt=%v", tc.b, tc.stmt), func(t *testing.T) {
			db := openReplan(t, srv, tc.b)
			table := replanTable(t, ctx, srv)
			q := "select * from " + table + " where id = $1"
			var st *sql.Stmt
			run := func(tx *sql.Tx) (int, error) {
				switch {
				case tc.stmt && tx != nil:
					return replanColumns(tx.StmtContext(ctx, st).QueryContext(ctx, 1))
				case tc.stmt:
					return replanColumns(st.QueryContext(ctx, 1))
				case tx != nil:
					return replanColumns(tx.QueryContext(ctx, q, 1))
				}
				return replanColumns(db.QueryContext(ctx, q, 1))
			}
			if tc.stmt {
				var err error
				if st, err = db.PrepareContext(ctx, q); err != nil {
					t.Fatal(err)
				}
				defer st.Close()
			}
			for range 2 {
				if n, err := run(nil); err != nil || n != 2 {
					t.Fatalf("before the ALTER: %d columns, %v", n, err)
				}
			}
			if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
				t.Fatal(err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			// Not the transaction's first statement: that one is begun
			// again and resent on pgx (TestReplanFirstStatementOfTransaction).
			if _, err := tx.ExecContext(ctx, "update "+table+" set a = a where id = $1", 1); err != nil {
				t.Fatal(err)
			}
			if _, err := run(tx); !isPlanChanged(err) {
				t.Fatalf("in a transaction: %v, want the 0A000 from RevalidateCachedQuery", err)
			}
			if _, err := tx.ExecContext(ctx, "select 1"); err == nil || !strings.Contains(err.Error(), "25P02") {
				t.Fatalf("the transaction is not aborted: %v", err)
			}
			if err := tx.Rollback(); err != nil {
				t.Fatal(err)
			}
			if n := replans(t, db); n != 0 {
				t.Fatalf("Replans = %d inside a transaction, want 0", n)
			}
			if n, err := run(nil); err != nil || n != 3 {
				t.Fatalf("after the rollback: %d columns, %v", n, err)
			}
			if s := db.Stats(); s.OpenConnections != 1 {
				t.Fatalf("%d connections open, want the one", s.OpenConnections)
			}
		})
	}
}

// TestReplanResendRunsOnce: the failed statement executed nothing, so the
// resend runs it exactly once: an INSERT … RETURNING * whose result columns
// changed inserts one row per call.
func TestReplanResendRunsOnce(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, tc := range []struct {
		b     warmpg.Backend
		stmt  bool
		query bool
	}{{warmpg.BackendPgx, false, false}, {warmpg.BackendPgx, false, true}, {warmpg.BackendPgx, true, false}, {warmpg.BackendPQ, true, true}} {
		t.Run(fmt.Sprintf("%s/stmt=%v/query=%v", tc.b, tc.stmt, tc.query), func(t *testing.T) {
			db := openReplan(t, srv, tc.b)
			table := replanTable(t, ctx, srv)
			q := "insert into " + table + " (id, a) values ($1, 0) returning *"
			var st *sql.Stmt
			if tc.stmt {
				var err error
				if st, err = db.PrepareContext(ctx, q); err != nil {
					t.Fatal(err)
				}
				defer st.Close()
			}
			insert := func(id int) error {
				switch {
				case tc.stmt && tc.query:
					_, err := replanColumns(st.QueryContext(ctx, id))
					return err
				case tc.stmt:
					_, err := st.ExecContext(ctx, id)
					return err
				case tc.query:
					_, err := replanColumns(db.QueryContext(ctx, q, id))
					return err
				}
				_, err := db.ExecContext(ctx, q, id)
				return err
			}
			for id := 101; id <= 102; id++ {
				if err := insert(id); err != nil {
					t.Fatal(err)
				}
			}
			if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
				t.Fatal(err)
			}
			// A second INSERT of id 103 would fail on the primary key.
			if err := insert(103); err != nil {
				t.Fatalf("after the ALTER: %v", err)
			}
			var n int
			if err := db.QueryRowContext(ctx, "select count(*) from "+table+" where id > 100").Scan(&n); err != nil || n != 3 {
				t.Fatalf("%d rows inserted (%v), want 3", n, err)
			}
			if n := replans(t, db); n != 1 {
				t.Fatalf("Replans = %d, want 1", n)
			}
		})
	}
}

// TestReplanAlterKinds: dropping a column and changing a column's type
// change the result columns too.
func TestReplanAlterKinds(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, alter := range []struct {
		sql  string
		cols int
	}{{"drop column a", 1}, {"alter column a type bigint", 2}, {"alter column a type text", 2}} {
		for _, b := range backends {
			t.Run(string(b)+"/"+alter.sql, func(t *testing.T) {
				db := openReplan(t, srv, b)
				table := replanTable(t, ctx, srv)
				q := "select * from " + table + " where id = $1"
				st, err := db.PrepareContext(ctx, q)
				if err != nil {
					t.Fatal(err)
				}
				defer st.Close()
				for range 2 {
					if n, err := replanColumns(st.QueryContext(ctx, 1)); err != nil || n != 2 {
						t.Fatalf("before: %d columns, %v", n, err)
					}
					if n, err := replanColumns(db.QueryContext(ctx, q+" and true", 1)); err != nil || n != 2 {
						t.Fatalf("before: %d columns, %v", n, err)
					}
				}
				if err := srv.Exec(ctx, "alter table "+table+" "+alter.sql); err != nil {
					t.Fatal(err)
				}
				for range 2 {
					if n, err := replanColumns(st.QueryContext(ctx, 1)); err != nil || n != alter.cols {
						t.Fatalf("stmt after: %d columns, %v", n, err)
					}
					if n, err := replanColumns(db.QueryContext(ctx, q+" and true", 1)); err != nil || n != alter.cols {
						t.Fatalf("query after: %d columns, %v", n, err)
					}
				}
			})
		}
	}
}

// TestReplanQuerySameTextAsStmt: pgx runs a statement whose text is that
// of a *sql.Stmt open on the same connection by that named statement, not
// its cache; run directly, it is prepared again as well.
func TestReplanQuerySameTextAsStmt(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	db := openReplan(t, srv, warmpg.BackendPgx)
	table := replanTable(t, ctx, srv)
	q := "select * from " + table + " where id = $1"
	st, err := db.PrepareContext(ctx, q)
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	if n, err := replanColumns(st.QueryContext(ctx, 1)); err != nil || n != 2 {
		t.Fatalf("before: %d columns, %v", n, err)
	}
	if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if n, err := replanColumns(db.QueryContext(ctx, q, 1)); err != nil || n != 3 {
			t.Fatalf("query %d after: %d columns, %v", i, n, err)
		}
	}
	if n, err := replanColumns(st.QueryContext(ctx, 1)); err != nil || n != 3 {
		t.Fatalf("stmt after: %d columns, %v", n, err)
	}
	if n := replans(t, db); n != 1 {
		t.Fatalf("Replans = %d, want 1", n)
	}
}

// TestReplanAutocommitReadOnlyTx: with pool_autocommit, a read-only
// transaction's plain reads run outside a transaction, so the replan error
// there is resent as for a statement outside a transaction.
func TestReplanAutocommitReadOnlyTx(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, tc := range []struct {
		b    warmpg.Backend
		stmt bool
	}{{warmpg.BackendPgx, false}, {warmpg.BackendPgx, true}, {warmpg.BackendPQ, true}} {
		t.Run(fmt.Sprintf("%s/stmt=%v", tc.b, tc.stmt), func(t *testing.T) {
			db := openReplan(t, srv, tc.b, "pool_autocommit=true")
			table := replanTable(t, ctx, srv)
			q := "select * from " + table + " where id = $1"
			var st *sql.Stmt
			if tc.stmt {
				var err error
				if st, err = db.PrepareContext(ctx, q); err != nil {
					t.Fatal(err)
				}
				defer st.Close()
			}
			run := func() (int, error) {
				tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					return 0, err
				}
				defer tx.Rollback()
				if tc.stmt {
					return replanColumns(tx.StmtContext(ctx, st).QueryContext(ctx, 1))
				}
				return replanColumns(tx.QueryContext(ctx, q, 1))
			}
			for range 2 {
				if n, err := run(); err != nil || n != 2 {
					t.Fatalf("before: %d columns, %v", n, err)
				}
			}
			if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
				t.Fatal(err)
			}
			if n, err := run(); err != nil || n != 3 {
				t.Fatalf("after: %d columns, %v", n, err)
			}
			if n := replans(t, db); n != 1 {
				t.Fatalf("Replans = %d, want 1", n)
			}
		})
	}
}

// Issue 23, part 1: a resend never applies a write twice. The replan error
// says that the statement that raised it ran nothing — not that nothing
// before it in the same text, or inside the same CALL or DO, did. A
// connection holds a statement prepared with SQL PREPARE; a migration
// changes its result columns; the application runs, on that connection, a
// text that inserts, commits, then executes it: plain pgx inserts one row
// and returns the error, and warmpg must do exactly the same — one row, the
// same error in every field, no resend.
func TestReplanNeverResendsWhatRan(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	type tc struct {
		name string
		run  func(c *sql.Conn, log, proc string) error
	}
	exec := func(q string, args ...any) func(c *sql.Conn, log, proc string) error {
		return func(c *sql.Conn, log, proc string) error {
			_, err := c.ExecContext(ctx, strings.NewReplacer("LOG", log, "PROC", proc).Replace(q), args...)
			return err
		}
	}
	cases := []tc{
		{"several statements", exec("insert into LOG(v) values (1); commit; execute rep")},
		{"several statements, comment first", exec("/* a; b */ insert into LOG(v) values (1); commit; execute rep")},
		{"call, simple protocol", exec("call PROC(1)")},
		{"call, extended protocol", exec("call PROC($1)", 1)},
		{"call, query", func(c *sql.Conn, log, proc string) error {
			rows, err := c.QueryContext(ctx, "call "+proc+"(1)")
			if err == nil {
				for rows.Next() {
				}
				err = rows.Err()
				rows.Close()
			}
			return err
		}},
		{"call, prepared", func(c *sql.Conn, log, proc string) error {
			st, err := c.PrepareContext(ctx, "call "+proc+"($1)")
			if err != nil {
				return err
			}
			defer st.Close()
			_, err = st.ExecContext(ctx, 1)
			return err
		}},
		{"do", exec("do $$ begin insert into LOG(v) values (1); commit; execute 'execute rep'; end $$")},
	}
	for _, c := range cases {
		var errs [2]*pgconn.PgError
		for i, via := range []string{"pgx", "warmpg"} {
			t.Run(c.name+"/"+via, func(t *testing.T) {
				src := newTable(t, ctx, srv, "resrc", "create table %[1]s (id int primary key, a int); insert into %[1]s values (1, 1)")
				log := newTable(t, ctx, srv, "relog", "create table %s (v int)")
				proc := "p_" + log
				if err := srv.Exec(ctx, "create procedure "+proc+"(n int) language plpgsql as $$ begin insert into "+log+"(v) values (n); commit; execute 'execute rep'; end $$"); err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = srv.Exec(context.Background(), "drop procedure if exists "+proc) })
				var db *sql.DB
				var err error
				if via == "pgx" {
					db, err = sql.Open("pgx", srv.URL("application_name="+appName(t)))
				} else {
					db, err = warmpg.Open(srv.URL("application_name=" + appName(t)))
				}
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer conn.Close()
				if _, err := conn.ExecContext(ctx, "prepare rep as select * from "+src); err != nil {
					t.Fatal(err)
				}
				if err := srv.Exec(ctx, "alter table "+src+" add column b int"); err != nil {
					t.Fatal(err)
				}
				err = c.run(conn, log, proc)
				if !isPlanChanged(err) {
					t.Fatalf("%v, want the 0A000 from RevalidateCachedQuery", err)
				}
				errors.As(err, &errs[i])
				errs[i].Where = strings.ReplaceAll(errs[i].Where, proc, "PROC")
				var n int
				if err := db.QueryRowContext(ctx, "select count(*) from "+log).Scan(&n); err != nil {
					t.Fatal(err)
				}
				if n != 1 {
					t.Fatalf("%d rows inserted, want 1: the text ran again", n)
				}
				if via == "warmpg" {
					if r := replans(t, db); r != 0 {
						t.Fatalf("Replans = %d, want 0", r)
					}
					if got, want := *errs[1], *errs[0]; fmt.Sprintf("%+v", got) != fmt.Sprintf("%+v", want) {
						t.Fatalf("error differs from plain pgx's:\n got %+v\nwant %+v", got, want)
					}
				}
			})
		}
	}
}

// TestReplanOff: pool_replan=false gives the wrapped driver's behaviour
// back: the cached statement fails once with the 0A000, nothing is resent.
func TestReplanOff(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db := openReplan(t, srv, b, "pool_replan=false")
			table := replanTable(t, ctx, srv)
			st, err := db.PrepareContext(ctx, "select * from "+table+" where id = $1")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			if n, err := replanColumns(st.QueryContext(ctx, 1)); err != nil || n != 2 {
				t.Fatalf("before the ALTER: %d columns, %v", n, err)
			}
			if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
				t.Fatal(err)
			}
			if _, err := replanColumns(st.QueryContext(ctx, 1)); !isPlanChanged(err) {
				t.Fatalf("with pool_replan=false: %v, want the 0A000 from RevalidateCachedQuery", err)
			}
			if r := replans(t, db); r != 0 {
				t.Fatalf("Replans = %d, want 0", r)
			}
		})
	}
}

// Issue 23, part 3: no more failures than plain pgx after a migration.
// Four connections have `select * from t where id = $1` prepared — warmed
// ahead by warmpg, or cached by an earlier use — then a migration adds a
// column, then each connection runs a transaction whose first statement is
// that one. Plain pgx fails only where it cached the statement itself;
// warmpg's transaction ran nothing but its BEGIN when the statement failed
// at bind, so warmpg begins it again and resends the statement: no
// transaction fails, with pool_lazy_begin on (the BEGIN went with the
// statement) or off (the statement was the only write since BeginTx's
// BEGIN).
func TestReplanFirstStatementOfTransaction(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	const n = 4
	for _, prep := range []string{"warmed", "used", "stmt"} {
		for _, via := range []string{"pgx", "warmpg", "warmpg eager", "warmpg unwarmed"} {
			t.Run(prep+"/"+via, func(t *testing.T) {
				table := replanTable(t, ctx, srv)
				q := "select * from " + table + " where id = $1"
				var db *sql.DB
				var err error
				switch via {
				case "pgx":
					db, err = sql.Open("pgx", srv.URL("application_name="+appName(t)))
				case "warmpg":
					db, err = warmpg.Open(srv.URL("pool_max_conns=4", "application_name="+appName(t)), warmpg.WithWarmStatements(q))
				case "warmpg eager":
					db, err = warmpg.Open(srv.URL("pool_max_conns=4", "pool_lazy_begin=false", "application_name="+appName(t)), warmpg.WithWarmStatements(q))
				default:
					db, err = warmpg.Open(srv.URL("pool_max_conns=4", "pool_warm_statements=0", "application_name="+appName(t)))
				}
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				db.SetMaxOpenConns(n)
				db.SetMaxIdleConns(n)
				conns := make([]*sql.Conn, n)
				stmts := make([]*sql.Stmt, n)
				for i := range conns {
					if conns[i], err = db.Conn(ctx); err != nil {
						t.Fatal(err)
					}
					defer conns[i].Close()
					switch prep {
					case "used":
						for range 2 {
							if _, err := replanColumns(conns[i].QueryContext(ctx, q, 1)); err != nil {
								t.Fatal(err)
							}
						}
					case "stmt":
						if stmts[i], err = conns[i].PrepareContext(ctx, q); err != nil {
							t.Fatal(err)
						}
						defer stmts[i].Close()
					}
				}
				if err := srv.Exec(ctx, "alter table "+table+" add column email text"); err != nil {
					t.Fatal(err)
				}
				fails := 0
				var first error
				for i, c := range conns {
					tx, err := c.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					var cols int
					if prep == "stmt" {
						cols, err = replanColumns(tx.StmtContext(ctx, stmts[i]).QueryContext(ctx, 1))
					} else {
						cols, err = replanColumns(tx.QueryContext(ctx, q, 1))
					}
					if err == nil && cols != 3 {
						err = fmt.Errorf("%d columns, want 3 (the new one)", cols)
					}
					if err == nil {
						// The transaction goes on as one: a write and a
						// read of it, then the commit.
						if _, err = tx.ExecContext(ctx, "update "+table+" set a = -1 where id = $1", i+1); err == nil {
							var a int
							if err = tx.QueryRowContext(ctx, "select a from "+table+" where id = $1", i+1).Scan(&a); err == nil && a != -1 {
								err = fmt.Errorf("the transaction does not see its own write: a = %d", a)
							}
						}
					}
					if err != nil {
						fails++
						if first == nil {
							first = err
						}
						_ = tx.Rollback()
						continue
					}
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
				}
				want := 0
				if via == "pgx" && prep != "warmed" {
					want = n // the statement was cached by pgx itself
				}
				if fails != want {
					t.Fatalf("%d of %d transactions failed, want %d (first: %v)", fails, n, want, first)
				}
				if via == "pgx" {
					return
				}
				for _, c := range conns {
					c.Close()
				}
				var updated int
				if err := db.QueryRowContext(ctx, "select count(*) from "+table+" where a = -1").Scan(&updated); err != nil || updated != n {
					t.Fatalf("%d rows committed (%v), want %d", updated, err, n)
				}
				// One resend per connection, but where the connection
				// warmed the statement: the first to meet the error
				// tells the others, which drop their copy beforehand.
				want = n
				switch {
				case via == "warmpg unwarmed" && prep == "warmed":
					want = 0
				case via != "warmpg unwarmed" && prep != "stmt":
					want = 1
				}
				if r := replans(t, db); r != int64(want) {
					t.Errorf("Replans = %d, want %d", r, want)
				}
			})
		}
	}
}

// TestReplanNoRestartAfterRaw: a statement run through Raw inside a
// pool_lazy_begin transaction carried the BEGIN and ran; a replan error on
// the next statement must not roll the transaction back and begin it
// again (the Raw write would be lost while the transaction goes on): it is
// returned, as when any statement ran before it.
func TestReplanNoRestartAfterRaw(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, lazy := range []string{"true", "false"} {
		t.Run("pool_lazy_begin="+lazy, func(t *testing.T) {
			db := openReplan(t, srv, warmpg.BackendPgx, "pool_lazy_begin="+lazy)
			table := replanTable(t, ctx, srv)
			log := newTable(t, ctx, srv, "rawlog", "create table %s (v int)")
			q := "select * from " + table + " where id = $1"
			for range 2 {
				if _, err := replanColumns(db.QueryContext(ctx, q, 1)); err != nil {
					t.Fatal(err)
				}
			}
			if err := srv.Exec(ctx, "alter table "+table+" add column b int"); err != nil {
				t.Fatal(err)
			}
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := conn.Raw(func(dc any) error {
				_, err := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().Exec(ctx, "insert into "+log+" values ($1)", 1)
				return err
			}); err != nil {
				t.Fatal(err)
			}
			if _, err := replanColumns(tx.QueryContext(ctx, q, 1)); !isPlanChanged(err) {
				t.Fatalf("after a write through Raw: %v, want the 0A000 from RevalidateCachedQuery", err)
			}
			if err := tx.Commit(); err == nil {
				t.Fatal("the aborted transaction committed")
			}
			if r := replans(t, db); r != 0 {
				t.Fatalf("Replans = %d, want 0", r)
			}
		})
	}
}

// TestReplanStaleWarmedStatement: a warmed statement that a migration made
// stale, run inside a transaction after a statement that ran, cannot be
// resent. The first connection of the pool that meets the error tells the
// others, which drop their warmed copy before using it: plain pgx (which
// never warmed it) fails 0 of 4, warmpg fails only where the first
// connection met it inside such a transaction (the gap docs/replan.md
// names), 1 of 4, and 0 when it met it outside one.
func TestReplanStaleWarmedStatement(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	const n = 4
	for _, firstIn := range []string{"autocommit", "transaction"} {
		for _, via := range []string{"pgx", "warmpg"} {
			t.Run(firstIn+"/"+via, func(t *testing.T) {
				table := replanTable(t, ctx, srv)
				other := newTable(t, ctx, srv, "other", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
				q := "select * from " + table + " where id = $1"
				var db *sql.DB
				var err error
				if via == "pgx" {
					db, err = sql.Open("pgx", srv.URL("application_name="+appName(t)))
				} else {
					db, err = warmpg.Open(srv.URL("pool_max_conns=4", "application_name="+appName(t)), warmpg.WithWarmStatements(q))
				}
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				db.SetMaxOpenConns(n)
				db.SetMaxIdleConns(n)
				conns := make([]*sql.Conn, n)
				for i := range conns {
					if conns[i], err = db.Conn(ctx); err != nil {
						t.Fatal(err)
					}
					defer conns[i].Close()
				}
				if err := srv.Exec(ctx, "alter table "+table+" add column email text"); err != nil {
					t.Fatal(err)
				}
				fails := 0
				for i, c := range conns {
					if i == 0 && firstIn == "autocommit" {
						if _, err := replanColumns(c.QueryContext(ctx, q, 1)); err != nil {
							t.Fatal(err)
						}
						continue
					}
					tx, err := c.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					if _, err := tx.ExecContext(ctx, "update "+other+" set v = v + 1 where id = $1", 1); err != nil {
						t.Fatal(err)
					}
					cols, err := replanColumns(tx.QueryContext(ctx, q, 1))
					if err == nil && cols != 3 {
						t.Fatalf("%d columns, want 3", cols)
					}
					if err != nil {
						if !isPlanChanged(err) {
							t.Fatal(err)
						}
						fails++
						_ = tx.Rollback()
						continue
					}
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
				}
				want := 0
				if via == "warmpg" && firstIn == "transaction" {
					want = 1
				}
				if fails != want {
					t.Fatalf("%d transactions failed, want %d", fails, want)
				}
			})
		}
	}
}
