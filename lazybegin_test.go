package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"reflect"
	"strings"
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

// lazyModes are the two ways a transaction begins, for tests whose
// assertions must hold both ways.
var lazyModes = []struct {
	name  string
	param string
}{
	{"eager", "pool_lazy_begin=false"},
	{"lazy", "pool_lazy_begin=true"},
}

// lazyDB opens a one-connection warmpg pool through dsn with params.
func lazyDB(t *testing.T, dsn func(...string) string, params ...string) *sql.DB {
	t.Helper()
	db, err := warmpg.Open(dsn(append([]string{"pool_max_conns=1"}, params...)...))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// holdConn takes one connection of db for the test (closed when it ends).
func holdConn(t *testing.T, ctx context.Context, db *sql.DB) *sql.Conn {
	t.Helper()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

// connTx takes one connection of db and begins a transaction with opts on
// it; when the test ends the transaction is rolled back (if still open)
// and the connection closed.
func connTx(t *testing.T, ctx context.Context, db *sql.DB, opts *sql.TxOptions) (*sql.Conn, *sql.Tx) {
	t.Helper()
	conn := holdConn(t, ctx, db)
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tx.Rollback() })
	return conn, tx
}

// txControl returns the transaction-control statements the proxy saw, in
// order: each BEGIN, COMMIT and ROLLBACK, sent as a simple Query of its own,
// in a Parse (pool_lazy_begin's BEGIN, with the first statement), or at the
// head of a simple Query's text (the same, for a statement without
// arguments).
func txControl(p *pgproxy.Proxy) []string {
	var out []string
	for _, m := range p.Messages() {
		if m.Type != 'Q' && m.Type != 'P' {
			continue
		}
		text := strings.ToLower(strings.TrimSpace(m.Text))
		if first, _, ok := strings.Cut(text, ";"); ok && m.Type == 'Q' {
			text = strings.TrimSpace(first)
		}
		for _, kw := range []string{"begin", "commit", "rollback"} {
			if strings.HasPrefix(text, kw) {
				out = append(out, text)
			}
		}
	}
	return out
}

// lazyTable creates a table for one test and drops it when the test ends.
func lazyTable(t *testing.T, ctx context.Context, srv *pgtest.Server) string {
	t.Helper()
	return newTable(t, ctx, srv, "lazy", "create table %[1]s (id int primary key, v text)")
}

// countRows counts table's rows on a connection of its own: what is
// committed, whatever the pool under test holds.
func countRows(t *testing.T, ctx context.Context, srv *pgtest.Server, table string) int {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var n int
	if err := c.QueryRow(ctx, "select count(*) from "+table).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

// The round trips of a one-statement read-write transaction, counted by the
// proxy: BEGIN, the statement and COMMIT are three; with pool_lazy_begin the
// BEGIN goes in the statement's write: two. Every way a statement reaches
// the connection carries it. A transaction that runs nothing sends nothing.
func TestLazyBeginRoundTrips(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	ins := "insert into " + table + " values ($1, 'x')"
	cases := []struct {
		name string
		run  func(tx *sql.Tx, id int) error
	}{
		{"exec-args", func(tx *sql.Tx, id int) error { _, err := tx.ExecContext(ctx, ins, id); return err }},
		{"exec-simple", func(tx *sql.Tx, id int) error {
			_, err := tx.ExecContext(ctx, fmt.Sprintf("insert into %s values (%d, 'x')", table, id))
			return err
		}},
		{"query-args", func(tx *sql.Tx, id int) error {
			var got int
			return tx.QueryRowContext(ctx, "insert into "+table+" values ($1, 'x') returning id", id).Scan(&got)
		}},
		{"prepared-in-tx", func(tx *sql.Tx, id int) error {
			st, err := tx.PrepareContext(ctx, ins)
			if err != nil {
				return err
			}
			defer st.Close()
			_, err = st.ExecContext(ctx, id)
			return err
		}},
	}
	for _, m := range lazyModes {
		for _, c := range cases {
			t.Run(m.name+"/"+c.name, func(t *testing.T) {
				db := lazyDB(t, via, m.param)
				id := int(appSeq.Add(1)) * 10
				// The first run prepares what pgx caches; count the second.
				for i := range 2 {
					proxy.Reset()
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					if err := c.run(tx, id+i); err != nil {
						t.Fatal(err)
					}
					if err := tx.Commit(); err != nil {
						t.Fatal(err)
					}
				}
				got := roundTrips(proxy)
				if c.name == "prepared-in-tx" {
					got -= 2 // its Prepare and its Close are two more, both ways
				}
				want := 3
				if m.name == "lazy" {
					want = 2
				}
				if got != want {
					t.Errorf("%s, %s: %d round trips for a one-statement transaction, want %d; sent %v", m.name, c.name, got, want, proxy.Messages())
				}
			})
		}
		t.Run(m.name+"/empty", func(t *testing.T) {
			db := lazyDB(t, via, m.param)
			useOnce(t, ctx, db)
			for _, commit := range []bool{true, false} {
				proxy.Reset()
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				end := tx.Rollback
				if commit {
					end = tx.Commit
				}
				if err := end(); err != nil {
					t.Fatal(err)
				}
				want := 2 // BEGIN and COMMIT or ROLLBACK
				if m.name == "lazy" {
					want = 0
				}
				if got := roundTrips(proxy); got != want {
					t.Errorf("%s: an empty transaction (commit %v) took %d round trips, want %d", m.name, commit, got, want)
				}
			}
		})
	}
	if got := countRows(t, ctx, srv, table); got != 2*2*len(cases) {
		t.Errorf("%d rows committed, want %d", got, 2*2*len(cases))
	}
}

// What a transaction observes and returns is the same whichever way it
// began: the same assertions run both ways.
func TestLazyBeginSameAsEager(t *testing.T) {
	srv := pgtest.Get(t)
	_, via := proxied(t, srv)
	ctx := ctxT(t, 60*time.Second)
	type outcome struct {
		Values  []any
		Types   []string
		Errs    []string
		Rows    int
		Commit  string
		Isolate string
	}
	// Every field of a server error: its position in the statement's own
	// text above all, which tools underline.
	errCode := func(err error) string {
		var pe *pgconn.PgError
		if errors.As(err, &pe) {
			return fmt.Sprintf("%+v", *pe)
		}
		if err == nil {
			return ""
		}
		return err.Error()
	}
	scenarios := map[string]func(t *testing.T, db *sql.DB, table string) outcome{
		"first-statement-errors": func(t *testing.T, db *sql.DB, table string) outcome {
			var o outcome
			for _, q := range []string{
				"select nosuchcol from " + table,    // 42703
				"select 1 frm " + table,             // 42601
				"select 'x'::int from " + table,     // 22P02
				"  select nosuchcol from " + table,  // a position past white space
				"select 1; select nosuchcol from t", // the second of two statements
			} {
				for _, args := range [][]any{nil, {1}} {
					tx, err := db.BeginTx(ctx, nil)
					if err != nil {
						t.Fatal(err)
					}
					qq := q
					if args != nil {
						qq = strings.Replace(q, " from ", ", $1::int from ", 1)
					}
					_, err = tx.ExecContext(ctx, qq, args...)
					o.Errs = append(o.Errs, errCode(err))
					o.Errs = append(o.Errs, errCode(tx.Rollback()))
				}
			}
			return o
		},
		"types": func(t *testing.T, db *sql.DB, table string) outcome {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			rows, err := tx.QueryContext(ctx, `select 1::int2, 2::int4, 3::int8, 1.5::float8, 2.5::numeric, 'x'::text,
				true, '\x01'::bytea, '2024-01-02'::date, '2024-01-02 03:04:05+00'::timestamptz, '{1,2}'::int[],
				'{"a":1}'::json, null::int, $1::uuid`, "6ba7b810-9dad-11d1-80b4-00c04fd430c8")
			if err != nil {
				t.Fatal(err)
			}
			defer rows.Close()
			cts, _ := rows.ColumnTypes()
			var o outcome
			for _, ct := range cts {
				o.Types = append(o.Types, ct.DatabaseTypeName()+"/"+fmt.Sprint(ct.ScanType()))
			}
			vals := make([]any, len(cts))
			ptrs := make([]any, len(cts))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			for rows.Next() {
				if err := rows.Scan(ptrs...); err != nil {
					t.Fatal(err)
				}
				o.Values = append(o.Values, vals...)
			}
			if err := rows.Err(); err != nil {
				t.Fatal(err)
			}
			return o
		},
		"isolation-readonly": func(t *testing.T, db *sql.DB, table string) outcome {
			var o outcome
			for _, opts := range []*sql.TxOptions{
				{Isolation: sql.LevelSerializable, ReadOnly: true},
				{Isolation: sql.LevelRepeatableRead},
				{Isolation: sql.LevelReadCommitted, ReadOnly: true},
			} {
				tx, err := db.BeginTx(ctx, opts)
				if err != nil {
					t.Fatal(err)
				}
				var iso, ro string
				if err := tx.QueryRowContext(ctx, "select current_setting('transaction_isolation'), current_setting('transaction_read_only')").Scan(&iso, &ro); err != nil {
					t.Fatal(err)
				}
				o.Isolate += iso + "/" + ro + ";"
				_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1, 'ro')", 1)
				o.Errs = append(o.Errs, errCode(err))
				o.Commit += errCode(tx.Commit()) + ";"
			}
			if _, err := db.BeginTx(ctx, &sql.TxOptions{Isolation: sql.LevelLinearizable}); err != nil {
				o.Errs = append(o.Errs, err.Error())
			}
			return o
		},
		"aborted-by-syntax-simple": func(t *testing.T, db *sql.DB, table string) outcome {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			_, err = tx.ExecContext(ctx, "selec 1")
			o.Errs = append(o.Errs, errCode(err))
			_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1, 'a')", 2)
			o.Errs = append(o.Errs, errCode(err))
			o.Commit = errCode(tx.Commit())
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
		"aborted-by-syntax-args": func(t *testing.T, db *sql.DB, table string) outcome {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			_, err = tx.ExecContext(ctx, "selec $1", 1)
			o.Errs = append(o.Errs, errCode(err))
			_, err = tx.ExecContext(ctx, "insert into "+table+" values (3, 'a')")
			o.Errs = append(o.Errs, errCode(err))
			o.Commit = errCode(tx.Commit())
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
		"unique-violation-first": func(t *testing.T, db *sql.DB, table string) outcome {
			if _, err := db.ExecContext(ctx, "insert into "+table+" values (4, 'a')"); err != nil {
				t.Fatal(err)
			}
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1, 'b')", 4)
			o.Errs = append(o.Errs, errCode(err))
			_, err = tx.ExecContext(ctx, "insert into "+table+" values (5, 'b')")
			o.Errs = append(o.Errs, errCode(err))
			o.Errs = append(o.Errs, errCode(tx.Rollback()))
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
		"savepoints": func(t *testing.T, db *sql.DB, table string) outcome {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			for _, q := range []string{
				"savepoint a",
				"insert into " + table + " values (6, 'a')",
				"savepoint b",
				"insert into " + table + " values (7, 'b')",
				"rollback to savepoint b",
				"release savepoint a",
			} {
				_, err := tx.ExecContext(ctx, q)
				o.Errs = append(o.Errs, errCode(err))
			}
			o.Commit = errCode(tx.Commit())
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
		"tx-stmt": func(t *testing.T, db *sql.DB, table string) outcome {
			st, err := db.PrepareContext(ctx, "insert into "+table+" values ($1, 'st')")
			if err != nil {
				t.Fatal(err)
			}
			defer st.Close()
			var o outcome
			for _, commit := range []bool{false, true} {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				_, err = tx.StmtContext(ctx, st).ExecContext(ctx, 8)
				o.Errs = append(o.Errs, errCode(err))
				if commit {
					o.Commit = errCode(tx.Commit())
				} else {
					o.Errs = append(o.Errs, errCode(tx.Rollback()))
				}
			}
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
		"raw-in-tx": func(t *testing.T, db *sql.DB, table string) outcome {
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			tx, err := conn.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var o outcome
			err = conn.Raw(func(dc any) error {
				_, err := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().Exec(ctx, "insert into "+table+" values ($1, 'raw')", 9)
				return err
			})
			o.Errs = append(o.Errs, errCode(err))
			o.Errs = append(o.Errs, errCode(tx.Rollback()))
			o.Rows = countRows(t, ctx, srv, table) // the rollback took the row away
			return o
		},
		"conn-runs-begin": func(t *testing.T, db *sql.DB, table string) outcome {
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			var o outcome
			for _, q := range []string{"begin", "insert into " + table + " values (10, 'c')", "rollback"} {
				_, err := conn.ExecContext(ctx, q)
				o.Errs = append(o.Errs, errCode(err))
			}
			o.Rows = countRows(t, ctx, srv, table)
			return o
		},
	}
	for name, run := range scenarios {
		t.Run(name, func(t *testing.T) {
			var got [2]outcome
			for i, m := range lazyModes {
				table := lazyTable(t, ctx, srv)
				db := lazyDB(t, via, m.param)
				got[i] = run(t, db, table)
				for j, e := range got[i].Errs {
					got[i].Errs[j] = strings.ReplaceAll(e, table, "T")
				}
				if s, _ := warmpg.Stats(db); m.name == "eager" && s.LazyTxs > 0 {
					t.Errorf("%s: LazyTxs = %d", m.name, s.LazyTxs)
				}
			}
			if !reflect.DeepEqual(got[0], got[1]) {
				t.Errorf("eager and lazy differ:\neager: %+v\nlazy:  %+v", got[0], got[1])
			}
			t.Logf("both: %+v", got[1])
		})
	}
}

// A backend terminated between BeginTx and the first statement: with
// pool_lazy_begin the first statement finds it, its error says the
// transaction did not begin and carries the server's; Commit fails; the
// pool goes on with a new connection.
func TestLazyBeginDeadConnection(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	app := appName(t)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true", "application_name="+app)
	useOnce(t, ctx, db)
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	killBackends(t, ctx, srv, app, 1)
	_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1, 'x')", 1)
	var pe *pgconn.PgError
	if !errors.Is(err, warmpg.ErrLazyBeginFailed) || !errors.As(err, &pe) || pe.Code != "57P01" {
		t.Fatalf("first statement on a terminated backend: %v; want ErrLazyBeginFailed wrapping SQLSTATE 57P01", err)
	}
	if err := tx.Commit(); err == nil {
		t.Error("Commit of a transaction that did not begin succeeded")
	}
	useOnce(t, ctx, db)
	if got := countRows(t, ctx, srv, table); got != 0 {
		t.Errorf("%d rows, want 0", got)
	}
}

// A context cancelled between BeginTx and the first statement: database/sql
// rolls the transaction back, nothing reaches the server, and the
// connection goes back clean.
func TestLazyBeginCancelledBeforeFirstStatement(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	ctx := ctxT(t, 60*time.Second)
	db := lazyDB(t, via, "pool_lazy_begin=true")
	useOnce(t, ctx, db)
	proxy.Reset()
	tctx, cancel := context.WithCancel(ctx)
	tx, err := db.BeginTx(tctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	cancel()
	if _, err := tx.ExecContext(tctx, "select 1"); !errors.Is(err, sql.ErrTxDone) && !errors.Is(err, context.Canceled) {
		t.Errorf("statement after the cancel: %v, want ErrTxDone or context.Canceled", err)
	}
	// database/sql rolls back in its own goroutine, then puts the
	// connection back.
	for i := 0; i < 200 && db.Stats().InUse != 0; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if err := tx.Rollback(); !errors.Is(err, sql.ErrTxDone) {
		t.Errorf("Rollback after database/sql's: %v, want ErrTxDone", err)
	}
	if n := len(proxy.Messages()); n != 0 {
		t.Errorf("a transaction cancelled before its first statement sent %d messages: %v", n, proxy.Messages())
	}
	useOnce(t, ctx, db)
	s, _ := warmpg.Stats(db)
	if s.Discarded != 0 || s.RolledBack != 0 {
		t.Errorf("the connection was not handed back clean: %s", s)
	}
}

// The first statement cancelled while it runs, BEGIN with it: the
// transaction began and the statement was cancelled (or the connection
// dropped); either way the statement is not committed and the pool goes on.
func TestLazyBeginCancelDuringFirstStatement(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true")
	for _, d := range []time.Duration{0, time.Millisecond, 20 * time.Millisecond} {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		sctx, cancel := context.WithTimeout(ctx, d)
		_, err = tx.ExecContext(sctx, "insert into "+table+" select $1, pg_sleep(1)::text", int(d))
		cancel()
		if err == nil {
			t.Errorf("timeout %s: the statement finished", d)
		}
		tx.Rollback()
		useOnce(t, ctx, db)
	}
	if got := countRows(t, ctx, srv, table); got != 0 {
		t.Errorf("%d rows, want 0", got)
	}
}

// pool_autocommit's read-only path is untouched: with both on, a read-only
// transaction's plain reads send no BEGIN at all, a read-write one sends
// its BEGIN with its first statement.
func TestLazyBeginWithAutocommit(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, via := proxied(t, srv)
	ctx := ctxT(t, 60*time.Second)
	db := lazyDB(t, via, "pool_lazy_begin=true", "pool_autocommit=true")
	useOnce(t, ctx, db)
	for _, ro := range []bool{true, false} {
		proxy.Reset()
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: ro})
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
		want := 2
		if ro {
			want = 1
		}
		if got := roundTrips(proxy); got != want {
			t.Errorf("read-only %v: %d round trips, want %d", ro, got, want)
		}
	}
	s, _ := warmpg.Stats(db)
	if s.AutocommitTxs != 1 || s.LazyTxs != 1 {
		t.Errorf("counters: %s; want one of each", s)
	}
}

// Through a transaction-mode PgBouncer: the BEGIN that travels with the
// first statement pins the server connection as a BEGIN sent alone does.
// A read-write transaction of two statements keeps one server connection,
// is one transaction at the bouncer, rolls back entirely, and costs its
// statements' round trips and the ROLLBACK's: one less than with BEGIN sent
// alone, both ways counted by a proxy in front of the bouncer.
func TestLazyBeginPgBouncer(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	proxy, via := proxiedAt(t, b.Addr(), b.URL)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	trips := map[string]int{}
	for _, m := range lazyModes {
		t.Run(m.name, func(t *testing.T) {
			db := lazyDB(t, via, m.param, "pool_pgbouncer=true")
			useOnce(t, ctx, db)
			// Other clients keep the bouncer's server connections busy,
			// so that one not pinned would likely change.
			stop := make(chan struct{})
			done := make(chan struct{})
			go func() {
				defer close(done)
				other, err := sql.Open("pgx", b.URL("default_query_exec_mode=exec"))
				if err != nil {
					return
				}
				defer other.Close()
				for i := 0; i < 2000; i++ {
					select {
					case <-stop:
						return
					default:
					}
					other.ExecContext(ctx, "select pg_sleep(0.001)")
				}
			}()
			defer func() { close(stop); <-done }()
			x0, _ := bouncerXacts(t, ctx, b)
			proxy.Reset()
			for i := range 5 {
				tx, err := db.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				var pid1, pid2 int
				if err := tx.QueryRowContext(ctx, "insert into "+table+" values ($1, 'b') returning pg_backend_pid()", i).Scan(&pid1); err != nil {
					t.Fatal(err)
				}
				time.Sleep(2 * time.Millisecond)
				if err := tx.QueryRowContext(ctx, "select pg_backend_pid() + $1::int", 0).Scan(&pid2); err != nil {
					t.Fatal(err)
				}
				if pid1 != pid2 {
					t.Errorf("one transaction ran on two server connections (%d, %d)", pid1, pid2)
				}
				if err := tx.Rollback(); err != nil {
					t.Fatal(err)
				}
			}
			trips[m.name] = roundTrips(proxy)
			if x1, _ := bouncerXacts(t, ctx, b); x1-x0 < 5 {
				t.Errorf("the bouncer counted %d transactions for 5, want at least 5", x1-x0)
			}
			if got := countRows(t, ctx, srv, table); got != 0 {
				t.Errorf("%d rows after rolling back every transaction", got)
			}
		})
	}
	if trips["eager"]-trips["lazy"] != 5 {
		t.Errorf("round trips for 5 transactions of two statements: eager %d, lazy %d; want lazy 5 fewer", trips["eager"], trips["lazy"])
	}
}

// pgx's CopyFrom through (*sql.Conn).Raw inside a transaction: its simple
// Query carries the BEGIN, and the rows go with the transaction.
func TestLazyBeginCopyFromRaw(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true")
	for _, commit := range []bool{false, true} {
		conn, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		tx, err := conn.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		err = conn.Raw(func(dc any) error {
			n, err := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().CopyFrom(ctx, pgx.Identifier{table}, []string{"id", "v"},
				pgx.CopyFromRows([][]any{{1, "a"}, {2, "b"}}))
			if err == nil && n != 2 {
				err = fmt.Errorf("copied %d rows, want 2", n)
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		end := tx.Rollback
		if commit {
			end = tx.Commit
		}
		if err := end(); err != nil {
			t.Fatal(err)
		}
		conn.Close()
		want := 0
		if commit {
			want = 2
		}
		if got := countRows(t, ctx, srv, table); got != want {
			t.Errorf("commit %v: %d rows, want %d", commit, got, want)
		}
	}
}

// After a fast restart of the server, every pooled connection is dead.
// With BEGIN sent at BeginTx, database/sql retries BeginTx on a connection
// the driver refuses as bad; with pool_lazy_begin nothing is sent until the
// first statement, which database/sql cannot retry inside a transaction. In
// check mode (the default) no transaction fails either way: ResetSession
// refuses every dead connection before BeginTx. With pool_reset=none the
// dead connections are handed out, and transactions fail both ways — the
// control that shows the restart left dead connections. The counts are
// logged (docs/lazy-begin.md).
func TestLazyBeginAfterRestart(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	srv := ownCluster(t, ctx)
	const size, rounds = 8, 3
	type pool struct {
		reset, mode string
		db          *sql.DB
		failed      int
	}
	var pools []*pool
	for _, reset := range []string{"check", "none"} {
		for _, m := range lazyModes {
			db, err := warmpg.Open(srv.URL("pool_reset="+reset, m.param, fmt.Sprintf("pool_max_conns=%d", size)), warmpg.WithLogger(faultQuietLog))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := warmpg.WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			pools = append(pools, &pool{reset: reset, mode: m.name, db: db})
		}
	}
	if err := srv.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	for _, p := range pools {
		for range rounds {
			errs := make(chan error, size)
			for range size {
				go func() {
					tx, err := p.db.BeginTx(ctx, nil)
					if err != nil {
						errs <- err
						return
					}
					var one int
					if err = tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&one); err != nil {
						tx.Rollback()
						errs <- err
						return
					}
					errs <- tx.Commit()
				}()
			}
			for range size {
				if err := <-errs; err != nil {
					p.failed++
				}
			}
		}
		t.Logf("pool_reset=%s, %s BEGIN: %d of %d transactions failed after the restart", p.reset, p.mode, p.failed, size*rounds)
	}
	for _, p := range pools {
		if p.reset == "check" && p.failed != 0 {
			t.Errorf("pool_reset=check, %s BEGIN: %d transactions failed after a restart, want 0", p.mode, p.failed)
		}
	}
	if pools[2].failed+pools[3].failed == 0 {
		t.Error("pool_reset=none failed no transaction: the restart left no dead connection to find")
	}
}

// A BEGIN that failed under a statement pgx ran through Raw (whose error
// warmpg never sees): the next statement through database/sql is refused as
// in an aborted transaction, not run outside one.
func TestLazyBeginFailedUnderRaw(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	table := lazyTable(t, ctx, srv)
	app := appName(t)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true", "application_name="+app)
	useOnce(t, ctx, db)
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	tx, err := conn.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	killBackends(t, ctx, srv, app, 1)
	rawErr := conn.Raw(func(dc any) error {
		_, err := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().Exec(ctx, "select $1::int", 1)
		return err
	})
	if rawErr == nil {
		t.Fatal("a statement on a terminated backend succeeded")
	}
	_, err = tx.ExecContext(ctx, "insert into "+table+" values ($1, 'x')", 1)
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Code != "25P02" {
		t.Errorf("statement after a failed BEGIN under Raw: %v; want SQLSTATE 25P02", err)
	}
	if err := tx.Commit(); !errors.Is(err, pgx.ErrTxCommitRollback) {
		t.Errorf("Commit: %v, want pgx.ErrTxCommitRollback", err)
	}
}

// Code that reaches the socket through pgx, as it would without
// pool_lazy_begin: PgConn().Conn() is warmpg's layer, whose SyscallConn is
// the socket's and whose NetConn is what it wraps.
func TestLazyBeginSocketReachable(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true", "sslmode=disable")
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		nc := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().PgConn().Conn()
		sc, ok := nc.(syscall.Conn)
		if !ok {
			return fmt.Errorf("%T is no syscall.Conn", nc)
		}
		rc, err := sc.SyscallConn()
		if err != nil {
			return err
		}
		var fd uintptr
		if err := rc.Control(func(f uintptr) { fd = f }); err != nil || fd == 0 {
			return fmt.Errorf("no file descriptor: %v", err)
		}
		if _, ok := nc.(interface{ NetConn() net.Conn }).NetConn().(*net.TCPConn); !ok && !strings.HasPrefix(srv.Addr(), "/") {
			return fmt.Errorf("NetConn of %T is no *net.TCPConn", nc)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestLazyBeginTransactionTime pins what lazy BEGIN changes, and
// docs/lazy-begin.md lists: the transaction's start time — now(),
// transaction_timestamp(), pg_stat_activity.xact_start — is when its first
// statement reaches the server, not when BeginTx returned (pgjdbc's lazy
// BEGIN does the same). With 300 ms of application work between BeginTx and
// the first statement, now() trails statement_timestamp() by those 300 ms
// with eager BEGIN, and by nothing with lazy BEGIN.
func TestLazyBeginTransactionTime(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	const work = 300 * time.Millisecond
	for _, m := range lazyModes {
		t.Run(m.name, func(t *testing.T) {
			db := lazyDB(t, srv.URL, m.param)
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			defer tx.Rollback()
			time.Sleep(work)
			var lag time.Duration
			var us int64
			if err := tx.QueryRowContext(ctx, "select (extract(epoch from statement_timestamp() - now()) * 1e6)::int8").Scan(&us); err != nil {
				t.Fatal(err)
			}
			lag = time.Duration(us) * time.Microsecond
			switch {
			case m.name == "eager" && lag < work*8/10:
				t.Errorf("eager: now() trails the first statement by %v, want about %v (BeginTx's BEGIN)", lag, work)
			case m.name == "lazy" && lag > work/3:
				t.Errorf("lazy: now() trails the first statement by %v, want about 0 (the BEGIN went with it)", lag)
			}
			t.Logf("%s: statement_timestamp() - now() = %v", m.name, lag)
		})
	}
}

// TestLazyBeginRawAfterFailedBegin: a BEGIN can fail on a live connection
// (a hot standby refuses SERIALIZABLE). With BeginTx's own BEGIN, BeginTx
// fails and nothing runs. With pool_lazy_begin the first statement's error
// says so and warmpg sends nothing more under that transaction — and a
// statement pgx itself sends through Raw, which warmpg's statement path
// does not see, is refused at the wire: it would run outside the
// transaction it was meant for.
func TestLazyBeginRawAfterFailedBegin(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	_, standby := replicaPair(t, ctx)
	db := lazyDB(t, standby.URL, "pool_lazy_begin=true")
	conn, tx := connTx(t, ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable})
	var one int
	if err := tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&one); !errors.Is(err, warmpg.ErrLazyBeginFailed) {
		t.Fatalf("first statement on a standby, SERIALIZABLE: %v, want ErrLazyBeginFailed", err)
	}
	for _, args := range [][]any{nil, {2}} {
		rawErr := conn.Raw(func(dc any) error {
			q := "select 2"
			if args != nil {
				q = "select $1::int"
			}
			var n int
			return warmpg.Unwrap(dc).(*stdlib.Conn).Conn().QueryRow(ctx, q, args...).Scan(&n)
		})
		if rawErr == nil {
			t.Fatalf("a statement through Raw (args %v) after the failed BEGIN ran, outside any transaction", args)
		}
		if args == nil && !strings.Contains(rawErr.Error(), "BEGIN failed") {
			// (The second finds the connection closed: pgx closes it on
			// the refused write.)
			t.Errorf("through Raw after the failed BEGIN: %v, want warmpg's refusal", rawErr)
		}
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	conn.Close()
	// The pool goes on: the refused connection is replaced.
	if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}
