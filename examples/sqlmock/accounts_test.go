package sqlmockexample_test

import (
	"database/sql"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	sqlmockexample "github.com/warmpg/warmpg/examples/sqlmock"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main checks with goleak that no goroutine outlives the tests (and
// stops the harness's server, if one test used it).
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// newStore returns the application's Store on go-sqlmock through warmpg,
// with the production PoolOptions and then extra, and the mock. The mock
// matches SQL exactly and sees pings, so a ping on reuse would be an
// unexpected call.
func newStore(t *testing.T, extra ...warmpg.Option) (*sqlmockexample.Store, sqlmock.Sqlmock) {
	t.Helper()
	mockDB, mock, err := sqlmock.NewWithDSN(t.Name(),
		sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual), sqlmock.MonitorPingsOption(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { mockDB.Close() })
	inner, err := warmpg.ConnectorFromDriver(mockDB.Driver(), t.Name())
	if err != nil {
		t.Fatal(err)
	}
	// go-sqlmock hands the same connection to every Open: model a pool of
	// one, whatever production uses.
	opts := append(sqlmockexample.PoolOptions(), warmpg.WithMaxConns(1), warmpg.WithMaxIdleConns(1))
	c, err := warmpg.NewConnector(inner, append(opts, extra...)...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	db.SetMaxOpenConns(1)
	t.Cleanup(func() { db.Close() })
	return &sqlmockexample.Store{DB: db}, mock
}

const (
	balanceSQL = "select balance from accounts where id = $1"
	pendingSQL = "select count(*) from transfers where account_id = $1 and state = 'pending'"
	debitSQL   = "update accounts set balance = balance - $1 where id = $2 and balance >= $1"
	creditSQL  = "update accounts set balance = balance + $1 where id = $2"
)

func expectSummary(mock sqlmock.Sqlmock, account, balance int64, pending int) {
	mock.ExpectQuery(balanceSQL).WithArgs(account).WillReturnRows(sqlmock.NewRows([]string{"balance"}).AddRow(balance))
	mock.ExpectQuery(pendingSQL).WithArgs(account).WillReturnRows(sqlmock.NewRows([]string{"count"}).AddRow(pending))
}

// With the production options (pool_autocommit), Summary's read-only
// transaction reaches the database as its two queries and nothing else: no
// BEGIN, no COMMIT. go-sqlmock fails any call it was not told to expect.
func TestSummarySendsNoBeginOrCommit(t *testing.T) {
	store, mock := newStore(t)
	ctx := extest.Ctx(t, 10*time.Second)
	expectSummary(mock, 7, 120, 2)
	got, err := store.Summary(ctx, 7)
	if err != nil {
		t.Fatal(err)
	}
	if got != (sqlmockexample.Summary{Balance: 120, Pending: 2}) {
		t.Errorf("Summary = %+v", got)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
	if c, _ := warmpg.Stats(store.DB); c.AutocommitTxs != 1 {
		t.Errorf("counters %v: want one autocommit transaction", c)
	}
}

// Without pool_autocommit the same code sends BEGIN and COMMIT around the
// queries: the test states the difference.
func TestSummaryWithoutAutocommit(t *testing.T) {
	store, mock := newStore(t, warmpg.WithAutocommit(false))
	ctx := extest.Ctx(t, 10*time.Second)
	mock.ExpectBegin()
	expectSummary(mock, 7, 120, 2)
	mock.ExpectCommit()
	if _, err := store.Summary(ctx, 7); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// A read-only transaction whose query fails: with pool_autocommit there is
// no ROLLBACK to send either.
func TestSummaryErrorSendsNoRollback(t *testing.T) {
	store, mock := newStore(t)
	ctx := extest.Ctx(t, 10*time.Second)
	mock.ExpectQuery(balanceSQL).WithArgs(int64(9)).WillReturnError(sql.ErrNoRows)
	if _, err := store.Summary(ctx, 9); !errors.Is(err, sql.ErrNoRows) {
		t.Fatalf("Summary of a missing account: %v, want sql.ErrNoRows", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// A transfer is a real transaction: BEGIN, debit, credit, COMMIT.
func TestTransferCommits(t *testing.T) {
	store, mock := newStore(t)
	ctx := extest.Ctx(t, 10*time.Second)
	mock.ExpectBegin()
	mock.ExpectExec(debitSQL).WithArgs(int64(30), int64(1)).WillReturnResult(sqlmock.NewResult(0, 1))
	mock.ExpectExec(creditSQL).WithArgs(int64(30), int64(2)).WillReturnResult(sqlmock.NewResult(0, 1))
	mock.ExpectCommit()
	if err := store.Transfer(ctx, 1, 2, 30); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// Too little money: the debit touches no row, the transfer rolls back and
// the credit is never sent.
func TestTransferRollsBack(t *testing.T) {
	store, mock := newStore(t)
	ctx := extest.Ctx(t, 10*time.Second)
	mock.ExpectBegin()
	mock.ExpectExec(debitSQL).WithArgs(int64(500), int64(1)).WillReturnResult(sqlmock.NewResult(0, 0))
	mock.ExpectRollback()
	if err := store.Transfer(ctx, 1, 2, 500); !errors.Is(err, sqlmockexample.ErrInsufficientFunds) {
		t.Fatalf("Transfer = %v, want ErrInsufficientFunds", err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
}

// Reusing the pooled connection sends nothing with warmpg's default reset
// mode (check): three Summaries are six queries, no ping, no ROLLBACK. In
// ping mode each reuse sends a ping first; the test says so exactly.
func TestReuseSendsNothingByDefault(t *testing.T) {
	for _, mode := range []warmpg.ResetMode{warmpg.ResetCheck, warmpg.ResetPing} {
		t.Run(string(mode), func(t *testing.T) {
			store, mock := newStore(t, warmpg.WithReset(mode))
			ctx := extest.Ctx(t, 10*time.Second)
			for i := range 3 {
				if i > 0 && mode == warmpg.ResetPing {
					mock.ExpectPing()
				}
				expectSummary(mock, 7, 120, 2)
			}
			for range 3 {
				if _, err := store.Summary(ctx, 7); err != nil {
					t.Fatal(err)
				}
			}
			if err := mock.ExpectationsWereMet(); err != nil {
				t.Error(err)
			}
		})
	}
}

// Start warms the pool and sends no SQL doing it. go-sqlmock cannot model
// more than one connection, so the test warms one: how many connections a
// pool warms, and how fast, is for a real server (see the databasesql
// example).
func TestStartWarmsWithoutSQL(t *testing.T) {
	store, mock := newStore(t)
	ctx := extest.Ctx(t, 10*time.Second)
	if err := sqlmockexample.Start(ctx, store.DB); err != nil {
		t.Fatal(err)
	}
	if st := store.DB.Stats(); st.Idle != 1 {
		t.Errorf("idle connections after Start: %d, want 1", st.Idle)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Error(err)
	}
	if c, _ := warmpg.Stats(store.DB); c.Connects != 1 {
		t.Errorf("counters %v: want one connect", c)
	}
}

// The production path against a real server, so the SQL the mocks expect
// is known to run: Open warms, Transfer and Summary work.
func TestAgainstServer(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	dsn := srv.URL(extest.Schema(t, srv))
	db, err := sqlmockexample.Open(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, `create table accounts (id bigint primary key, balance bigint not null);
		create table transfers (account_id bigint not null, state text not null);
		insert into accounts values (1, 100), (2, 0);
		insert into transfers values (1, 'pending'), (1, 'done')`); err != nil {
		t.Fatal(err)
	}
	store := &sqlmockexample.Store{DB: db}
	if err := store.Transfer(ctx, 1, 2, 30); err != nil {
		t.Fatal(err)
	}
	if err := store.Transfer(ctx, 2, 1, 31); !errors.Is(err, sqlmockexample.ErrInsufficientFunds) {
		t.Fatalf("Transfer beyond the balance: %v", err)
	}
	got, err := store.Summary(ctx, 1)
	if err != nil || got != (sqlmockexample.Summary{Balance: 70, Pending: 1}) {
		t.Errorf("Summary(1) = %+v, %v; want 70 and 1 pending", got, err)
	}
	if st := db.Stats(); st.MaxOpenConnections != 20 {
		t.Errorf("max open %d, want PoolOptions' 20", st.MaxOpenConnections)
	}
	if c, _ := warmpg.Stats(db); c.Connects != 10 {
		t.Errorf("counters %v: want the 10 warmed connections", c)
	}
}
