package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"io"
	"reflect"
	"strings"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/pgconn"
)

func TestWrapDeclaresNamedValueCheckerOnlyWhenInnerHasIt(t *testing.T) {
	c := &Connector{}
	if _, ok := wrapConn(&fakeConn{}, c, nil).(driver.NamedValueChecker); !ok {
		t.Error("inner has CheckNamedValue: wrapper must have it")
	}
	if _, ok := wrapConn(bareConn{}, c, nil).(driver.NamedValueChecker); ok {
		t.Error("inner lacks CheckNamedValue: wrapper must not declare it")
	}
}

func TestWrapFallsBackLikeDatabaseSQL(t *testing.T) {
	ctx := context.Background()
	w := wrapConn(bareConn{}, &Connector{}, nil).(*conn)
	if _, err := w.ExecContext(ctx, "x", nil); err != driver.ErrSkip { //nolint:errorlint // database/sql compares with ==
		t.Errorf("ExecContext without Execer: %v, want driver.ErrSkip itself", err)
	}
	if _, err := w.QueryContext(ctx, "x", nil); err != driver.ErrSkip { //nolint:errorlint
		t.Errorf("QueryContext without Queryer: %v, want driver.ErrSkip itself", err)
	}
	if err := w.Ping(ctx); err != nil {
		t.Errorf("Ping without Pinger: %v, want nil", err)
	}
	if _, err := w.BeginTx(ctx, driver.TxOptions{ReadOnly: true}); err == nil {
		t.Error("read-only BeginTx without ConnBeginTx must fail as database/sql's does")
	}
	if _, err := w.BeginTx(ctx, driver.TxOptions{Isolation: driver.IsolationLevel(sql.LevelSerializable)}); err == nil {
		t.Error("isolation BeginTx without ConnBeginTx must fail as database/sql's does")
	}
	if tx, err := w.BeginTx(ctx, driver.TxOptions{}); err != nil || tx == nil {
		t.Errorf("default BeginTx falls back to Begin: %v", err)
	}
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	if _, err := w.BeginTx(cctx, driver.TxOptions{}); !errors.Is(err, context.Canceled) {
		t.Errorf("BeginTx on a cancelled context: %v", err)
	}
	if _, err := w.PrepareContext(cctx, "x"); !errors.Is(err, context.Canceled) {
		t.Errorf("PrepareContext on a cancelled context: %v", err)
	}
	if st, err := w.PrepareContext(ctx, "x"); err != nil || st == nil {
		t.Errorf("PrepareContext falls back to Prepare: %v", err)
	}
}

// A driver with only the three driver.Conn methods still works end to end
// through warmpg, via the fallbacks database/sql uses.
func TestBareDriverThroughSQL(t *testing.T) {
	withEnv(t)
	fc := &fakeConnector{newConn: func() driver.Conn { return bareConn{} }}
	c, err := NewConnector(fc)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	var n int
	if err := db.QueryRow("select 1").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query through bare driver: %v %d", err, n)
	}
	if _, err := db.Exec("update t set x = 1 where id = $1", 1); err != nil {
		t.Fatal(err)
	}
}

func TestUnwrapThroughRaw(t *testing.T) {
	withEnv(t)
	fc := &fakeConnector{}
	c, err := NewConnector(fc)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	sc, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer sc.Close()
	err = sc.Raw(func(dc any) error {
		if _, ok := Unwrap(dc).(*fakeConn); !ok {
			return errors.New("Unwrap did not reach the inner *fakeConn")
		}
		if _, ok := dc.(*fakeConn); ok {
			return errors.New("Raw must see the wrapper, not the inner conn")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if got := Unwrap("not a conn"); got != "not a conn" {
		t.Errorf("Unwrap of a non-warmpg value must return it: %v", got)
	}
	// Through wrappers around warmpg's connection that say what they wrap
	// (otelsql's Raw() driver.Conn), down to the inner one.
	inner := &fakeConn{f: fc}
	w := wrapConn(inner, c, nil)
	if got := Unwrap(rawWrapper{rawWrapper{w}}); got != inner {
		t.Errorf("Unwrap through two Raw() wrappers = %T, want the *fakeConn", got)
	}
	// A cycle of wrappers ends.
	cyc := &cycleConn{}
	cyc.next = cyc
	if got := Unwrap(cyc); got != cyc {
		t.Errorf("Unwrap of a cycle = %v", got)
	}
}

// rawWrapper is a driver.Conn wrapper with otelsql's Raw method.
type rawWrapper struct{ driver.Conn }

func (r rawWrapper) Raw() driver.Conn { return r.Conn }

type cycleConn struct {
	driver.Conn
	next *cycleConn
}

func (c *cycleConn) Unwrap() driver.Conn { return c.next }

func TestConnectorCloseClosesInnerAndStopsConnect(t *testing.T) {
	withEnv(t)
	fc := &fakeConnector{}
	c, _ := NewConnector(fc)
	db := sql.OpenDB(c)
	if err := db.Ping(); err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if !fc.closed.Load() {
		t.Error("db.Close must close the inner connector")
	}
	if _, err := c.Connect(context.Background()); err == nil {
		t.Error("Connect after Close must fail")
	}
	if fc.open.Load() != 0 {
		t.Errorf("%d connections left open after db.Close", fc.open.Load())
	}
	if c2, ok := connectorOf(db); !ok || c2 != c {
		t.Error("db.Driver() must lead back to the connector")
	}
}

// pool_lazy_begin needs the socket under pgx, which a connector given to
// NewConnector does not let warmpg reach: refused, saying why.
func TestNewConnectorRefusesLazyBegin(t *testing.T) {
	withEnv(t)
	_, err := NewConnector(&fakeConnector{}, WithLazyBegin(true))
	if err == nil || !strings.Contains(err.Error(), "pool_lazy_begin") || !strings.Contains(err.Error(), "NewConnector") {
		t.Fatalf("NewConnector with WithLazyBegin(true): %v; want a refusal naming pool_lazy_begin", err)
	}
	if _, err := NewConnector(&fakeConnector{}, WithLazyBegin(false)); err != nil {
		t.Fatal(err)
	}
}

func TestNewConnectorNil(t *testing.T) {
	if _, err := NewConnector(nil); err == nil {
		t.Error("NewConnector(nil): no error")
	}
}

// newMockDB returns a *sql.DB on go-sqlmock wrapped by warmpg, the mock and
// the connector. The mock matches SQL exactly and sees pings, and since it
// hands out the same connection for every Open, the pool holds just one: so
// every statement a reuse sends is visible, in order.
func newMockDB(t *testing.T, opts ...Option) (*sql.DB, sqlmock.Sqlmock, *Connector) {
	t.Helper()
	withEnv(t)
	mdb, mock, err := sqlmock.NewWithDSN(t.Name(), sqlmock.MonitorPingsOption(true),
		sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mdb.Close() })
	inner, err := ConnectorFromDriver(mdb.Driver(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConnector(inner, opts...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return db, mock, c
}

// Reusing a pooled connection pings nobody: database/sql calls ResetSession,
// which passes to the inner driver's and sends nothing itself.
func TestReuseDoesNotPing(t *testing.T) {
	withEnv(t)
	fcn := &fakeConn{}
	fc := &fakeConnector{newConn: func() driver.Conn { return fcn }}
	c, _ := NewConnector(fc)
	db := sql.OpenDB(c)
	defer db.Close()
	db.SetMaxOpenConns(1)
	for i := 0; i < 5; i++ {
		var n int
		if err := db.QueryRow("select 1").Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	fcn.mu.Lock()
	resets := fcn.resets
	fcn.mu.Unlock()
	if resets != 4 {
		t.Errorf("inner ResetSession ran %d times over 4 reuses, want 4", resets)
	}
	if p := fcn.pings.Load(); p != 0 {
		t.Errorf("%d pings on reuse, want 0", p)
	}
	if fc.connects.Load() != 1 {
		t.Errorf("%d connects, want 1", fc.connects.Load())
	}
}

// Through go-sqlmock: statements reach the inner driver exactly as written.
func TestSQLMockPassThrough(t *testing.T) {
	db, mock, _ := newMockDB(t)
	mock.ExpectQuery("select 1").WillReturnRows(sqlmock.NewRows([]string{"n"}).AddRow(1))
	mock.ExpectExec("update t set x = $1").WithArgs(5).WillReturnResult(sqlmock.NewResult(0, 1))
	mock.ExpectBegin()
	mock.ExpectExec("insert into t values (1)").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectCommit()

	var n int
	if err := db.QueryRow("select 1").Scan(&n); err != nil || n != 1 {
		t.Fatalf("query: %v", err)
	}
	if _, err := db.Exec("update t set x = $1", 5); err != nil {
		t.Fatal(err)
	}
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("insert into t values (1)"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
}

// WarmDB on a go-sqlmock DB that warmpg did not open: the count comes from
// an option, and warming sends no SQL at all.
func TestWarmDBForeignSQLMock(t *testing.T) {
	mdb, mock, err := sqlmock.New(sqlmock.MonitorPingsOption(true))
	if err != nil {
		t.Fatal(err)
	}
	defer mdb.Close()
	if _, err := WarmDB(context.Background(), mdb); err == nil {
		t.Fatal("WarmDB on a foreign DB without a count must fail")
	}
	// go-sqlmock hands out one connection object for every Open, so a count
	// of 1 is what it can model.
	rep, err := WarmDB(context.Background(), mdb, WithMaxIdleConns(1))
	if err != nil || rep.Warmed != 1 {
		t.Fatalf("WarmDB: %v %+v", err, rep)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
}

// Wrapped rows (the lib/pq watchdog's) answer the optional column
// interfaces as the inner rows do, and as database/sql does for rows that
// lack them.
func TestWatchedRowsFallbacks(t *testing.T) {
	disarmed := 0
	r := &watchedRows{Rows: &fakeRows{n: 1}, c: &conn{}, ctx: context.Background(), disarm: func() { disarmed++ }}
	if got := r.ColumnTypeScanType(0); got != reflect.TypeFor[any]() {
		t.Errorf("scan type %v", got)
	}
	if r.ColumnTypeDatabaseTypeName(0) != "" || r.HasNextResultSet() || r.NextResultSet() != io.EOF {
		t.Error("fallbacks differ from database/sql's")
	}
	if _, ok := r.ColumnTypeLength(0); ok {
		t.Error("length")
	}
	if _, ok := r.ColumnTypeNullable(0); ok {
		t.Error("nullable")
	}
	if _, _, ok := r.ColumnTypePrecisionScale(0); ok {
		t.Error("precision")
	}
	r.Close()
	r.Close()
	if disarmed != 1 {
		t.Errorf("disarmed %d times, want once", disarmed)
	}
}

// closeErrRows fails its Close with err, as pgx's rows do when the server's
// error comes after the last row.
type closeErrRows struct {
	fakeRows
	err error
}

func (r *closeErrRows) Close() error { return r.err }

// A cancel that reaches the statement after its last row was read fails it
// at Close (TestCancelPgxSweep/pgbouncer saw it once in CI: the row
// scanned, then 57014 from Row.Scan's Close). The error is the context's,
// as at Next, so that errors.Is(err, context.DeadlineExceeded) holds as it
// does with plain pgx; with a live context it is left as it is.
func TestWatchedRowsCloseReportsContext(t *testing.T) {
	cancelled := &pgconn.PgError{Severity: "ERROR", Code: "57014", Message: "canceling statement due to user request"}
	ended, cancel := context.WithTimeout(context.Background(), 0)
	defer cancel()
	<-ended.Done()
	r := &watchedRows{Rows: &closeErrRows{err: cancelled}, c: &conn{}, ctx: ended, disarm: func() {}}
	err := r.Close()
	var pe *pgconn.PgError
	if !errors.Is(err, context.DeadlineExceeded) || !errors.As(err, &pe) || pe.Code != "57014" {
		t.Errorf("Close after the context ended: %v, want context.DeadlineExceeded wrapping the 57014", err)
	}
	r = &watchedRows{Rows: &closeErrRows{err: cancelled}, c: &conn{}, ctx: context.Background(), disarm: func() {}}
	if err := r.Close(); err != cancelled { //nolint:errorlint // the very error, unwrapped
		t.Errorf("Close with a live context: %v, want the server's error as it is", err)
	}
}
