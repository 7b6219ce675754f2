package warmpg

// Cases from pgx's own database/sql test suite (stdlib/sql_test.go, pgx
// v5.12.0) and what lib/pq's callers rely on, run through the driver warmpg
// wraps and through warmpg, asserting the same outcome. Where warmpg
// differs on purpose, the case asserts the difference the README's "What
// changes when you switch" lists.

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgtype"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// dropinCase is one behaviour: run returns an outcome that must be the same
// through the plain driver and through warmpg.
type dropinCase struct {
	name    string
	pgxOnly bool // uses pgx types or pgx-only SQL behaviour
	pqOnly  bool // uses lib/pq's API (COPY through Prepare)
	// pqLikePgx: lib/pq itself behaves worse here, and warmpg with
	// pool_backend=pq behaves as pgx does (the README lists it): the
	// outcome through warmpg must be the outcome through pgx.
	pqLikePgx bool
	run       func(t *testing.T, db *sql.DB, tag string) string
}

func must(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// dropinOutcome formats values and an error for comparison.
func dropinOutcome(vals ...any) string {
	var b strings.Builder
	for _, v := range vals {
		if err, ok := v.(error); ok || v == nil {
			if err == nil {
				b.WriteString("err=<nil> ")
				continue
			}
			var pe *pgconn.PgError
			var qe *pq.Error
			switch {
			case errors.As(err, &pe):
				fmt.Fprintf(&b, "pgerr=%s ", pe.Code)
			case errors.As(err, &qe):
				fmt.Fprintf(&b, "pgerr=%s ", qe.Code)
			default:
				fmt.Fprintf(&b, "err=%v ", err)
			}
			continue
		}
		fmt.Fprintf(&b, "%#v ", v)
	}
	return b.String()
}

var dropinCases = []dropinCase{
	{name: "NormalLifeCycle", run: func(t *testing.T, db *sql.DB, _ string) string {
		stmt, err := db.Prepare("select 'foo', n from generate_series($1::int, $2::int) n")
		must(t, err)
		defer stmt.Close()
		rows, err := stmt.Query(int32(1), int32(10))
		must(t, err)
		var sum, count int64
		for rows.Next() {
			var s string
			var n int64
			must(t, rows.Scan(&s, &n))
			sum += n
			count++
		}
		return dropinOutcome(sum, count, rows.Err(), rows.Close())
	}},
	{name: "StmtExec", run: func(t *testing.T, db *sql.DB, tag string) string {
		conn, err := db.Conn(context.Background())
		must(t, err)
		defer conn.Close()
		_, err = conn.ExecContext(context.Background(), "create temporary table t_"+tag+"(a varchar not null)")
		must(t, err)
		stmt, err := conn.PrepareContext(context.Background(), "insert into t_"+tag+" values($1::text)")
		must(t, err)
		res, err := stmt.Exec("foo")
		must(t, err)
		n, err := res.RowsAffected()
		stmt.Close()
		return dropinOutcome(n, err)
	}},
	{name: "QueryCloseRowsEarly", run: func(t *testing.T, db *sql.DB, _ string) string {
		rows, err := db.Query("select 'foo', n from generate_series(1, 10) n")
		must(t, err)
		rows.Next()
		var s string
		var n int64
		must(t, rows.Scan(&s, &n))
		closeErr := rows.Close()
		var again int64
		err = db.QueryRow("select 42").Scan(&again)
		return dropinOutcome(s, n, closeErr, again, err)
	}},
	{name: "ConnQueryNull", run: func(t *testing.T, db *sql.DB, _ string) string {
		var ns sql.NullString
		var ni sql.NullInt64
		err := db.QueryRow("select $1::text, $2::int8", nil, nil).Scan(&ns, &ni)
		return dropinOutcome(ns, ni, err)
	}},
	{name: "ConnQueryRowByteSlice", run: func(t *testing.T, db *sql.DB, _ string) string {
		var b []byte
		err := db.QueryRow("select $1::bytea", []byte{0, 15, 255, 17}).Scan(&b)
		return dropinOutcome(b, err)
	}},
	{name: "ConnQueryFailure", run: func(t *testing.T, db *sql.DB, _ string) string {
		_, err := db.Query("select 'foo")
		var n int
		err2 := db.QueryRow("select 1").Scan(&n)
		return dropinOutcome(err, n, err2)
	}},
	{name: "ConnSimpleSlicePassThrough", pgxOnly: true, run: func(t *testing.T, db *sql.DB, _ string) string {
		var n int64
		err := db.QueryRow("select cardinality($1::text[])", []string{"a", "b", "c"}).Scan(&n)
		return dropinOutcome(n, err)
	}},
	{name: "ConnQueryScanGoArray", pgxOnly: true, run: func(t *testing.T, db *sql.DB, _ string) string {
		m := pgtype.NewMap()
		var a []int64
		err := db.QueryRow("select '{1,2,3}'::bigint[]").Scan(m.SQLScanner(&a))
		return dropinOutcome(a, err)
	}},
	{name: "ConnQueryScanRange", pgxOnly: true, run: func(t *testing.T, db *sql.DB, _ string) string {
		m := pgtype.NewMap()
		var r pgtype.Range[pgtype.Int4]
		err := db.QueryRow("select int4range(1, 5)").Scan(m.SQLScanner(&r))
		return dropinOutcome(r, err)
	}},
	{name: "ConnQueryRowPgxBinary", run: func(t *testing.T, db *sql.DB, _ string) string {
		var s string
		err := db.QueryRow("select $1::int4[]", "{1,2,3}").Scan(&s)
		return dropinOutcome(s, err)
	}},
	{name: "JSON", run: func(t *testing.T, db *sql.DB, tag string) string {
		var got []byte
		err := db.QueryRow(`select '{"a": 1}'::json`).Scan(&got)
		var back string
		err2 := db.QueryRow(`select $1::json::text`, []byte(`{"b": 2}`)).Scan(&back)
		return dropinOutcome(string(got), err, back, err2)
	}},
	{name: "TransactionLifeCycle", run: func(t *testing.T, db *sql.DB, tag string) string {
		conn, err := db.Conn(context.Background())
		must(t, err)
		defer conn.Close()
		ctx := context.Background()
		_, err = conn.ExecContext(ctx, "create temporary table tx_"+tag+"(a varchar not null)")
		must(t, err)
		tx, err := conn.BeginTx(ctx, nil)
		must(t, err)
		_, err = tx.Exec("insert into tx_" + tag + " values('foo')")
		must(t, err)
		rb := tx.Rollback()
		var n1 int
		must(t, conn.QueryRowContext(ctx, "select count(*) from tx_"+tag).Scan(&n1))
		tx, err = conn.BeginTx(ctx, nil)
		must(t, err)
		_, err = tx.Exec("insert into tx_" + tag + " values('foo')")
		must(t, err)
		cm := tx.Commit()
		var n2 int
		must(t, conn.QueryRowContext(ctx, "select count(*) from tx_"+tag).Scan(&n2))
		return dropinOutcome(rb, n1, cm, n2)
	}},
	{name: "ConnBeginTxIsolation", run: func(t *testing.T, db *sql.DB, _ string) string {
		var out []string
		for _, iso := range []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadUncommitted, sql.LevelReadCommitted,
			sql.LevelRepeatableRead, sql.LevelSnapshot, sql.LevelSerializable, sql.LevelWriteCommitted, sql.LevelLinearizable} {
			tx, err := db.BeginTx(context.Background(), &sql.TxOptions{Isolation: iso})
			if err != nil {
				out = append(out, iso.String()+":refused")
				continue
			}
			var level string
			err = tx.QueryRow("show transaction_isolation").Scan(&level)
			tx.Rollback()
			out = append(out, iso.String()+":"+level+dropinOutcome(err))
		}
		return strings.Join(out, ", ")
	}},
	{name: "ConnBeginTxReadOnly", run: func(t *testing.T, db *sql.DB, _ string) string {
		tx, err := db.BeginTx(context.Background(), &sql.TxOptions{ReadOnly: true})
		must(t, err)
		defer tx.Rollback()
		var ro string
		err = tx.QueryRow("show transaction_read_only").Scan(&ro)
		return dropinOutcome(ro, err)
	}},
	{name: "BeginTxContextCancel", run: func(t *testing.T, db *sql.DB, tag string) string {
		_, err := db.Exec("drop table if exists cancel_" + tag)
		must(t, err)
		ctx, cancel := context.WithCancel(context.Background())
		tx, err := db.BeginTx(ctx, nil)
		must(t, err)
		_, err = tx.Exec("create table cancel_" + tag + "(id serial)")
		must(t, err)
		cancel()
		err = tx.Commit()
		committed := !(err == context.Canceled || err == sql.ErrTxDone)
		var n int
		err2 := db.QueryRow("select count(*) from cancel_" + tag).Scan(&n)
		return dropinOutcome(committed, err2)
	}},
	{name: "PrepareAndDeallocate", run: func(t *testing.T, db *sql.DB, _ string) string {
		var out []any
		for i := range 3 {
			stmt, err := db.PrepareContext(context.Background(), "select $1::int4 + 1")
			must(t, err)
			var n int
			out = append(out, stmt.QueryRow(i).Scan(&n), n, stmt.Close())
		}
		return dropinOutcome(out...)
	}},
	{name: "RowsColumnTypes", run: func(t *testing.T, db *sql.DB, _ string) string {
		rows, err := db.Query("select 42::bigint as a, 'bar'::text as b, 1.28::numeric(9, 2) as c, 'x'::varchar(20) as d, now() as e")
		must(t, err)
		defer rows.Close()
		cts, err := rows.ColumnTypes()
		must(t, err)
		var out []string
		for _, ct := range cts {
			l, lok := ct.Length()
			p, s, dok := ct.DecimalSize()
			n, nok := ct.Nullable()
			out = append(out, fmt.Sprint(ct.Name(), ct.DatabaseTypeName(), l, lok, p, s, dok, n, nok, ct.ScanType()))
		}
		return strings.Join(out, "; ")
	}},
	{name: "StmtExecContextCancel", run: func(t *testing.T, db *sql.DB, _ string) string {
		stmt, err := db.Prepare("select pg_sleep(2)")
		must(t, err)
		defer stmt.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
		defer cancel()
		_, err = stmt.ExecContext(ctx)
		timedOut := errors.Is(err, context.DeadlineExceeded) || strings.Contains(fmt.Sprint(err), "canceling statement")
		var n int
		err2 := db.QueryRow("select 1").Scan(&n)
		return dropinOutcome(timedOut, n, err2)
	}},
	{name: "ConnQueryRowConstraintErrors", run: func(t *testing.T, db *sql.DB, tag string) string {
		conn, err := db.Conn(context.Background())
		must(t, err)
		defer conn.Close()
		ctx := context.Background()
		for _, q := range []string{
			`create temporary table defer_` + tag + ` (id text primary key, n int not null, unique (n), unique (n) deferrable initially deferred)`,
			`create function pg_temp.trig_` + tag + `() returns trigger language plpgsql as $$ begin if new.n = 4 then raise exception 'n can''t be 4!'; end if; return new; end$$`,
			`create constraint trigger trig_` + tag + ` after insert or update on defer_` + tag + ` deferrable initially deferred for each row execute function pg_temp.trig_` + tag + `()`,
			`insert into defer_` + tag + ` (id, n) values ('a', 1), ('b', 2), ('c', 3)`,
		} {
			_, err := conn.ExecContext(ctx, q)
			must(t, err)
		}
		var id string
		err = conn.QueryRowContext(ctx, `insert into defer_`+tag+` (id, n) values ('e', 4) returning id`).Scan(&id)
		return dropinOutcome(err)
	}},
	{name: "PqArray", run: func(t *testing.T, db *sql.DB, _ string) string {
		var got []int64
		err := db.QueryRow("select $1::int8[]", pq.Array([]int64{1, 2, 3})).Scan(pq.Array(&got))
		return dropinOutcome(got, err)
	}},
	{name: "PqCopyIn", pqOnly: true, run: func(t *testing.T, db *sql.DB, tag string) string {
		// lib/pq's COPY FROM STDIN: a statement prepared with pq.CopyIn in a
		// transaction, one Exec per row, an empty Exec to finish.
		tx, err := db.Begin()
		must(t, err)
		defer tx.Rollback()
		_, err = tx.Exec("create temporary table copy_" + tag + "(a int, b text)")
		must(t, err)
		stmt, err := tx.Prepare(pq.CopyIn("copy_"+tag, "a", "b"))
		must(t, err)
		var errs []any
		for i := range 5 {
			_, err := stmt.Exec(i, fmt.Sprint("row ", i))
			errs = append(errs, err)
		}
		_, err = stmt.Exec()
		errs = append(errs, err, stmt.Close())
		var n, sum int
		errs = append(errs, tx.QueryRow("select count(*), sum(a) from copy_"+tag).Scan(&n, &sum), n, sum)
		return dropinOutcome(errs...)
	}},
	{name: "OpenTransactionsDiscarded", pqLikePgx: true, run: func(t *testing.T, db *sql.DB, tag string) string {
		db.SetMaxOpenConns(1)
		defer db.SetMaxOpenConns(0)
		ctx := context.Background()
		var out []any
		for range 3 {
			conn, err := db.Conn(ctx)
			must(t, err)
			_, err = conn.ExecContext(ctx, "begin;")
			out = append(out, err)
			_, err = conn.ExecContext(ctx, "create temporary table in_tx_"+tag+"(id int);")
			out = append(out, err)
			conn.Close()
		}
		var n int
		out = append(out, db.QueryRow("select 1").Scan(&n))
		return dropinOutcome(out...)
	}},
	{name: "CheckIdleConn", pqLikePgx: true, run: func(t *testing.T, db *sql.DB, tag string) string {
		// Connections killed while idle: the next use gets a fresh one.
		ctx := context.Background()
		db.SetMaxIdleConns(3)
		defer db.SetMaxIdleConns(2)
		var conns []*sql.Conn
		var pids []int32
		for range 3 {
			c, err := db.Conn(ctx)
			must(t, err)
			var pid int32
			must(t, c.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid))
			conns = append(conns, c)
			pids = append(pids, pid)
		}
		for _, c := range conns {
			c.Close()
		}
		ctl, err := sql.Open("pgx", dropinURL)
		must(t, err)
		defer ctl.Close()
		_, err = ctl.Exec(`select pg_terminate_backend(n) from unnest($1::int[]) n`, pids)
		must(t, err)
		waitGone(t, ctl, pids)
		time.Sleep(1100 * time.Millisecond) // pgx pings a connection idle for more than a second
		err = db.PingContext(ctx)
		var n int
		err2 := db.QueryRow("select 1").Scan(&n)
		return dropinOutcome(err, n, err2)
	}},
}

// dropinURL is the shared server's URL, set by TestDropIn.
var dropinURL string

// waitGone waits until no backend has one of pids.
func waitGone(t *testing.T, ctl *sql.DB, pids []int32) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		var n int
		must(t, ctl.QueryRow(`select count(*) from pg_stat_activity where pid = any($1::int[])`, pids).Scan(&n))
		if n == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("backends %v still there", pids)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestDropIn runs each case through the plain driver and through warmpg
// wrapping it, on fresh pools, and compares the outcomes.
func TestDropIn(t *testing.T) {
	srv := pgtest.Get(t)
	withEnv(t)
	dropinURL = srv.URL()
	pairs := []struct {
		name         string
		plain, warm  string // driver names
		plainDSN     string
		warmDSN      string
		skipsPgxOnly bool
	}{
		{"pgx", "pgx", "warmpg", srv.URL(), srv.URL(), false},
		{"pgx-simple-protocol", "pgx", "warmpg", srv.URL("default_query_exec_mode=simple_protocol"), srv.URL("default_query_exec_mode=simple_protocol"), false},
		{"pq", "postgres", "warmpg", srv.URL(), srv.URL("pool_backend=pq"), true},
	}
	for _, p := range pairs {
		t.Run(p.name, func(t *testing.T) {
			for i, c := range dropinCases {
				if (c.pgxOnly && p.skipsPgxOnly) || (c.pqOnly && !p.skipsPgxOnly) {
					continue
				}
				t.Run(c.name, func(t *testing.T) {
					run := func(driverName, dsn, tag string) string {
						db, err := sql.Open(driverName, dsn)
						must(t, err)
						defer db.Close()
						return c.run(t, db, tag)
					}
					plainDriver := p.plain
					if c.pqLikePgx && p.skipsPgxOnly {
						plainDriver = "pgx"
					}
					plain := run(plainDriver, p.plainDSN, fmt.Sprintf("p%d", i))
					warm := run(p.warm, p.warmDSN, fmt.Sprintf("w%d", i))
					if plain != warm {
						t.Errorf("outcomes differ:\n  %s: %s\n  warmpg: %s", plainDriver, plain, warm)
					}
				})
			}
		})
	}
}

// TestDropInRaw: (*sql.Conn).Raw yields warmpg's connection, not pgx's —
// a documented difference; warmpg.Unwrap reaches pgx's.
func TestDropInRaw(t *testing.T) {
	srv := pgtest.Get(t)
	withEnv(t)
	for _, tc := range []struct {
		driver     string
		wantStdlib bool
	}{{"pgx", true}, {"warmpg", false}} {
		db, err := sql.Open(tc.driver, srv.URL())
		must(t, err)
		conn, err := db.Conn(context.Background())
		must(t, err)
		var n int
		err = conn.Raw(func(dc any) error {
			if _, ok := dc.(*stdlib.Conn); ok != tc.wantStdlib {
				return fmt.Errorf("%s: Raw gives a %T", tc.driver, dc)
			}
			return Unwrap(dc).(*stdlib.Conn).Conn().QueryRow(context.Background(), "select 42").Scan(&n)
		})
		if err != nil || n != 42 {
			t.Errorf("%s: %v, %d", tc.driver, err, n)
		}
		conn.Close()
		db.Close()
	}
}

// countingTracer counts the connects and queries of the pgx config it is
// set on.
type countingTracer struct{ connects, queries atomic.Int64 }

func (c *countingTracer) TraceConnectStart(ctx context.Context, _ pgx.TraceConnectStartData) context.Context {
	return ctx
}
func (c *countingTracer) TraceConnectEnd(_ context.Context, d pgx.TraceConnectEndData) {
	if d.Err == nil {
		c.connects.Add(1)
	}
}
func (c *countingTracer) TraceQueryStart(ctx context.Context, _ *pgx.Conn, _ pgx.TraceQueryStartData) context.Context {
	c.queries.Add(1)
	return ctx
}
func (c *countingTracer) TraceQueryEnd(context.Context, *pgx.Conn, pgx.TraceQueryEndData) {}

// TestRegisteredConnConfig: the names stdlib.RegisterConnConfig returns
// work with "warmpg" as with "pgx": the registered config (here its tracer)
// is used, and warmpg's environment and options apply.
func TestRegisteredConnConfig(t *testing.T) {
	srv := pgtest.Get(t)
	withEnv(t, "WARMPG_POOL_READ_ONLY=true")
	cfg, err := pgx.ParseConfig(srv.URL())
	must(t, err)
	tracer := &countingTracer{}
	cfg.Tracer = tracer
	name := stdlib.RegisterConnConfig(cfg)
	defer stdlib.UnregisterConnConfig(name)

	for _, driverName := range []string{"pgx", "warmpg"} {
		db, err := sql.Open(driverName, name)
		if err != nil {
			t.Fatalf("sql.Open(%q, %q): %v", driverName, name, err)
		}
		before := tracer.queries.Load()
		var n int
		if err := db.QueryRow("select 1").Scan(&n); err != nil || n != 1 {
			t.Errorf("%s: select 1: %v", driverName, err)
		}
		if tracer.queries.Load() == before {
			t.Errorf("%s: the registered config's tracer saw no query", driverName)
		}
		db.Close()
	}

	// warmpg.Open with options: the environment (read-only) and an option
	// (pool_max_conns) apply on top of the registered config.
	db, err := Open(name, WithMaxConns(3))
	must(t, err)
	defer db.Close()
	if got := db.Stats().MaxOpenConnections; got != 3 {
		t.Errorf("MaxOpenConnections %d, want 3", got)
	}
	connects := tracer.connects.Load()
	if _, err := WarmDB(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	if got := tracer.connects.Load() - connects; got < 3 {
		t.Errorf("WarmDB: the tracer saw %d connects, want at least 3", got)
	}
	var ro string
	must(t, db.QueryRow("show default_transaction_read_only").Scan(&ro))
	if ro != "on" {
		t.Errorf("default_transaction_read_only %q, want on (WARMPG_POOL_READ_ONLY)", ro)
	}
	// The connector pgx's ResetSession would ping from is not in use: reuse
	// in check mode sends nothing.
	c, _ := connectorOf(db)
	if _, ok := c.inner.(*registeredConnector); !ok {
		t.Errorf("inner connector %T", c.inner)
	}

	// A name no config is registered under fails as it does with pgx, at
	// first use.
	stdlib.UnregisterConnConfig(name)
	db2, err := sql.Open("warmpg", name)
	must(t, err)
	defer db2.Close()
	if err := db2.Ping(); err == nil || !strings.Contains(err.Error(), "no pgx config is registered as "+name) {
		t.Errorf("unregistered name: %v", err)
	}
	if reflect.TypeOf(stdlib.GetDefaultDriver()) == nil {
		t.Fatal("no pgx driver")
	}
}
