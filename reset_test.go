package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"reflect"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
)

func execOK(t *testing.T, db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, q string) {
	t.Helper()
	if _, err := db.ExecContext(context.Background(), q); err != nil {
		t.Fatalf("%s: %v", q, err)
	}
}

// Which statements each mode sends when a used connection is handed out
// again. go-sqlmock fails any statement it was not told to expect, and
// ExpectationsWereMet fails any it expected and did not get.
func TestResetModesSQL(t *testing.T) {
	const work = "UPDATE t SET x = 1"
	result := sqlmock.NewResult(0, 1)
	cases := []struct {
		mode   ResetMode
		expect func(m sqlmock.Sqlmock) // what one reuse sends
		want   Counters                // after 2 reuses
	}{
		{ResetCheck, func(m sqlmock.Sqlmock) {}, Counters{Clean: 2}},
		{ResetNone, func(m sqlmock.Sqlmock) {}, Counters{Clean: 2}},
		{ResetPing, func(m sqlmock.Sqlmock) { m.ExpectPing() }, Counters{Pinged: 2}},
		{ResetRollback, func(m sqlmock.Sqlmock) { m.ExpectExec("ROLLBACK").WillReturnResult(sqlmock.NewResult(0, 0)) }, Counters{RolledBack: 2}},
		{ResetDiscard, func(m sqlmock.Sqlmock) { m.ExpectExec(discardSQL).WillReturnResult(sqlmock.NewResult(0, 0)) }, Counters{Reset: 2}},
	}
	for _, tc := range cases {
		t.Run(string(tc.mode), func(t *testing.T) {
			db, mock, c := newMockDB(t, WithReset(tc.mode))
			mock.ExpectExec(work).WillReturnResult(result)
			for range 2 {
				tc.expect(mock)
				mock.ExpectExec(work).WillReturnResult(result)
			}
			for range 3 {
				execOK(t, db, work)
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Fatal(err)
			}
			got := c.Stats()
			got.Connects = 0
			if !reflect.DeepEqual(got, tc.want) {
				t.Errorf("counters %v, want %v", got, tc.want)
			}
		})
	}
}

// check mode on a driver that reports no transaction status (lib/pq,
// go-sqlmock): a BEGIN left open by Exec is rolled back on reuse, a SET is
// reset, and ordinary statements (UPDATE ... SET included) cost nothing.
func TestCheckReadsStatementsWhereDriverIsSilent(t *testing.T) {
	db, mock, c := newMockDB(t)
	ok := sqlmock.NewResult(0, 0)
	ctx := context.Background()

	mock.ExpectExec("UPDATE t SET x = 1").WillReturnResult(ok)
	mock.ExpectExec("/* leaky */ begin").WillReturnResult(ok)
	mock.ExpectExec("ROLLBACK").WillReturnResult(ok) // the reuse
	mock.ExpectExec("select 1").WillReturnResult(ok)
	mock.ExpectExec("SET SESSION AUTHORIZATION app_ro").WillReturnResult(ok)
	mock.ExpectExec(discardSQL).WillReturnResult(ok) // the reuse
	mock.ExpectExec("select set_config('search_path', 'x', false)").WillReturnResult(ok)
	mock.ExpectExec(discardSQL).WillReturnResult(ok) // the reuse
	mock.ExpectExec("select 2").WillReturnResult(ok)

	execOK(t, db, "UPDATE t SET x = 1")
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	execOK(t, conn, "/* leaky */ begin")
	conn.Close()
	execOK(t, db, "select 1")
	execOK(t, db, "SET SESSION AUTHORIZATION app_ro")
	execOK(t, db, "select set_config('search_path', 'x', false)")
	execOK(t, db, "select 2")
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	got := c.Stats()
	if got.RolledBack != 1 || got.Reset != 2 || got.Clean != 2 {
		t.Errorf("counters %v, want rolled_back=1 reset=2 clean=2", got)
	}
}

// What connState notes for a statement's text: a transaction that
// may be open, a session that may have changed.
func TestNoteStatement(t *testing.T) {
	for _, tc := range []struct {
		sql                string
		tx, session, prep  bool
		txAfterSuccessfulQ bool
	}{
		{sql: "select 1"},
		{sql: "UPDATE t SET x = 1"},
		{sql: "select 'begin; set role x'"},
		{sql: "/* req=1; user=2 */ BEGIN", tx: true, txAfterSuccessfulQ: true},
		{sql: "/* x /* y */ z */ BEGIN", tx: true, txAfterSuccessfulQ: true},
		{sql: "-- c\n start transaction", tx: true, txAfterSuccessfulQ: true},
		{sql: "begin; insert into t values (1); commit", tx: true},
		{sql: "SET ROLE tenant_a", session: true},
		{sql: "SELECT set_config('role', $1, false)", session: true},
		{sql: "select set_config('app.tenant_id', '7', false)", session: true},
		{sql: "select set_config('app.tenant_id', '7', true)"},
		{sql: "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", session: true},
		{sql: "create temp table t (id int)", session: true},
		{sql: "select 1 into temp t", session: true},
		{sql: "select pg_advisory_lock(1)", session: true},
		{sql: "LISTEN chan", session: true},
		{sql: "declare c cursor with hold for select 1", session: true},
		{sql: "PREPARE p AS SELECT 1", session: true, prep: true},
		{sql: "select 1; set search_path = s1", session: true},
	} {
		var c connState
		text := readText(tc.sql)
		c.note(text.info)
		if c.maybeTx != tc.tx || c.maybeSession != tc.session || c.maybePrepared != tc.prep {
			t.Errorf("%q: maybeTx %v maybeSession %v maybePrepared %v, want %v %v %v",
				tc.sql, c.maybeTx, c.maybeSession, c.maybePrepared, tc.tx, tc.session, tc.prep)
		}
		c.done(text.info, nil)
		if c.maybeTx != tc.txAfterSuccessfulQ {
			t.Errorf("%q: maybeTx %v after it succeeded, want %v", tc.sql, c.maybeTx, tc.txAfterSuccessfulQ)
		}
	}
	// COMMIT ends a transaction only when it succeeds.
	var c connState
	c.note(readText("begin").info)
	commit := readText("commit")
	c.note(commit.info)
	c.done(commit.info, errors.New("failed"))
	if !c.maybeTx {
		t.Error("a COMMIT that failed ended the transaction")
	}
	c.note(commit.info)
	c.done(commit.info, nil)
	if c.maybeTx {
		t.Error("a COMMIT that succeeded left maybeTx")
	}
}

// A prepared statement's text is read at Prepare and counts at each
// execution: a *sql.Stmt of BEGIN on a driver that reports no transaction
// status gets a ROLLBACK on reuse, as an Exec of it does.
func TestPreparedStatementCountsAtExecution(t *testing.T) {
	db, mock, c := newMockDB(t)
	ok := sqlmock.NewResult(0, 0)
	mock.ExpectPrepare("BEGIN")
	mock.ExpectPrepare("SELECT set_config('role',$1,false)")
	mock.ExpectExec("select 1").WillReturnResult(ok) // nothing yet: a Prepare runs nothing
	mock.ExpectExec("BEGIN").WillReturnResult(ok)
	mock.ExpectExec("ROLLBACK").WillReturnResult(ok) // the reuse
	mock.ExpectExec("SELECT set_config('role',$1,false)").WithArgs("tenant_a").WillReturnResult(ok)
	mock.ExpectExec(discardSQL).WillReturnResult(ok) // the reuse
	mock.ExpectExec("select 2").WillReturnResult(ok)
	mock.ExpectExec("PREPARE p AS SELECT 1").WillReturnResult(ok)
	mock.ExpectExec(discardSQL + "; " + deallocSQL).WillReturnResult(ok) // the reuse
	mock.ExpectExec("select 3").WillReturnResult(ok)

	begin, err := db.Prepare("BEGIN")
	if err != nil {
		t.Fatal(err)
	}
	defer begin.Close()
	role, err := db.Prepare("SELECT set_config('role',$1,false)")
	if err != nil {
		t.Fatal(err)
	}
	defer role.Close()
	execOK(t, db, "select 1")
	if _, err := begin.Exec(); err != nil {
		t.Fatal(err)
	}
	if _, err := role.Exec("tenant_a"); err != nil {
		t.Fatal(err)
	}
	execOK(t, db, "select 2")
	// An SQL PREPARE is deallocated, with the rest of the session.
	execOK(t, db, "PREPARE p AS SELECT 1")
	execOK(t, db, "select 3")
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats(); got.RolledBack != 1 || got.Reset != 2 || got.Connects != 1 {
		t.Errorf("counters %v, want rolled_back=1 reset=2 on one connection", got)
	}
}

// discard mode on a driver that reports no settings keeps the connection
// after a SET: the reset clears what the statement reading recorded, and
// settle has nothing reported to compare.
func TestDiscardAfterSetKeepsTheConnection(t *testing.T) {
	db, mock, c := newMockDB(t, WithReset(ResetDiscard))
	ok := sqlmock.NewResult(0, 0)
	mock.ExpectExec("SET statement_timeout = '1s'").WillReturnResult(ok)
	for range 5 {
		mock.ExpectExec(discardSQL).WillReturnResult(ok)
		mock.ExpectExec("select 1").WillReturnResult(ok)
	}
	execOK(t, db, "SET statement_timeout = '1s'")
	for range 5 {
		execOK(t, db, "select 1")
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats(); got.Connects != 1 || got.Discarded != 0 || got.Reset != 5 {
		t.Errorf("counters %v, want 5 resets on one connection", got)
	}
}

// A failed reset statement discards the connection with driver.ErrBadConn:
// database/sql then dials a new one, and the application's query succeeds.
func TestFailedResetDiscards(t *testing.T) {
	db, mock, c := newMockDB(t, WithReset(ResetRollback))
	ok := sqlmock.NewResult(0, 0)
	mock.ExpectExec("select 1").WillReturnResult(ok)
	mock.ExpectExec("ROLLBACK").WillReturnError(errors.New("server gone"))
	// database/sql retries on a new connection (the same mock, reopened);
	// a new connection is not reset.
	mock.ExpectExec("select 2").WillReturnResult(ok)
	execOK(t, db, "select 1")
	execOK(t, db, "select 2")
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats(); got.Discarded != 1 || got.Connects != 2 {
		t.Errorf("counters %v, want discarded=1 connects=2", got)
	}
}

// An inner ResetSession error that is not driver.ErrBadConn would be ignored
// by database/sql; warmpg makes it one.
func TestInnerResetErrorBecomesBadConn(t *testing.T) {
	withEnv(t)
	c, _ := NewConnector(&fakeConnector{})
	w := wrapConn(&refusingConn{}, c, nil).(*conn)
	err := w.ResetSession(context.Background())
	if !errors.Is(err, driver.ErrBadConn) {
		t.Fatalf("got %v, want driver.ErrBadConn", err)
	}
}

type refusingConn struct{ bareConn }

func (refusingConn) ResetSession(context.Context) error { return errors.New("no") }

// Autocommit: a transaction that cannot write sends no BEGIN or COMMIT; a
// read-write, a serializable or a repeatable-read one stays a transaction.
func TestAutocommitSQL(t *testing.T) {
	db, mock, c := newMockDB(t, WithAutocommit(true), WithReset(ResetNone))
	ctx := context.Background()
	rows := func() *sqlmock.Rows { return sqlmock.NewRows([]string{"n"}).AddRow(1) }

	// Read-only at default and read-committed isolation: no BEGIN/COMMIT.
	for _, iso := range []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadCommitted} {
		mock.ExpectQuery("select 1").WillReturnRows(rows())
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: iso})
		if err != nil {
			t.Fatal(err)
		}
		var n int
		if err := tx.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
	}
	// Rollback of an autocommit transaction sends nothing either.
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	// Read-write: a real transaction.
	mock.ExpectBegin()
	mock.ExpectExec("insert into t values (1)").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit()
	tx, err = db.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	execOK(t, tx, "insert into t values (1)")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// Read-only but repeatable read: a real transaction (it needs one snapshot).
	mock.ExpectBegin()
	mock.ExpectRollback()
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead})
	if err != nil {
		t.Fatal(err)
	}
	tx.Rollback()
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if got := c.Stats().AutocommitTxs; got != 3 {
		t.Errorf("AutocommitTxs %d, want 3", got)
	}
}

// On a pool_read_only pool every transaction cannot write: with autocommit
// none sends BEGIN.
func TestAutocommitReadOnlyPool(t *testing.T) {
	db, mock, _ := newMockDB(t, WithAutocommit(true), WithReadOnly(true), WithReset(ResetNone))
	mock.ExpectExec("select 1").WillReturnResult(sqlmock.NewResult(0, 0))
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	execOK(t, tx, "select 1")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
}

// A read-only pool begins every transaction read-only in the inner driver.
func TestReadOnlyPoolBeginsReadOnly(t *testing.T) {
	withEnv(t)
	rec := &txOptsConn{}
	c, _ := NewConnector(&fakeConnector{newConn: func() driver.Conn { return rec }}, WithReadOnly(true))
	db := sql.OpenDB(c)
	defer db.Close()
	tx, err := db.BeginTx(context.Background(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tx.Rollback()
	if !rec.last.ReadOnly {
		t.Error("inner BeginTx got ReadOnly=false on a pool_read_only pool")
	}
}

type txOptsConn struct {
	bareConn
	last driver.TxOptions
}

func (c *txOptsConn) BeginTx(_ context.Context, o driver.TxOptions) (driver.Tx, error) {
	c.last = o
	return fakeTx{}, nil
}
