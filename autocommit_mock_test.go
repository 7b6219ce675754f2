package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"testing"

	"github.com/DATA-DOG/go-sqlmock"
)

// Which SQL a pool_autocommit transaction sends: nothing for plain reads;
// BEGIN before the first statement that is not one — run directly, or
// prepared (the BEGIN comes at its execution, not at Prepare) — and then a
// real COMMIT or ROLLBACK.
func TestAutocommitUpgradeSQL(t *testing.T) {
	db, mock, c := newMockDB(t, WithAutocommit(true), WithReset(ResetNone))
	ctx := context.Background()
	rows := func() *sqlmock.Rows { return sqlmock.NewRows([]string{"n"}).AddRow(1) }

	// A read, SET LOCAL, a read, Commit.
	mock.ExpectQuery("select 1").WillReturnRows(rows())
	mock.ExpectBegin()
	mock.ExpectExec("set local statement_timeout = 100").WillReturnResult(sqlmock.NewResult(0, 0))
	mock.ExpectQuery("select 2").WillReturnRows(rows())
	mock.ExpectCommit()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var n int
	if err := tx.QueryRowContext(ctx, "select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	execOK(t, tx, "set local statement_timeout = 100")
	if err := tx.QueryRowContext(ctx, "select 2").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	// A prepared write: BEGIN at its execution; Rollback is real.
	mock.ExpectPrepare("insert into t values (1)")
	mock.ExpectBegin()
	mock.ExpectExec("insert into t values (1)").WillReturnResult(sqlmock.NewResult(1, 1))
	mock.ExpectRollback()
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	st, err := tx.PrepareContext(ctx, "insert into t values (1)")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.ExecContext(ctx); err != nil {
		t.Fatal(err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}

	// Plain reads only: nothing but the reads, and the next transaction
	// starts over in autocommit.
	mock.ExpectQuery("select 3").WillReturnRows(rows())
	tx, err = db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, "select 3").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if err := mock.ExpectationsWereMet(); err != nil {
		t.Fatal(err)
	}
	if s := c.Stats(); s.AutocommitTxs != 3 || s.AutocommitUpgrades != 2 {
		t.Errorf("counters %v: want autocommit_txs=3 autocommit_upgrades=2", s)
	}
}

// The upgrade begins the inner transaction read-only at the requested
// isolation, and Commit and Rollback reach it.
func TestAutocommitUpgradeOptions(t *testing.T) {
	withEnv(t)
	rec := &upgradeConn{}
	c, _ := NewConnector(&fakeConnector{newConn: func() driver.Conn { return rec }}, WithAutocommit(true), WithReset(ResetNone))
	db := sql.OpenDB(c)
	defer db.Close()
	ctx := context.Background()
	for _, iso := range []sql.IsolationLevel{sql.LevelDefault, sql.LevelReadCommitted} {
		for _, commit := range []bool{true, false} {
			*rec = upgradeConn{}
			tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true, Isolation: iso})
			if err != nil {
				t.Fatal(err)
			}
			execOK(t, tx, "select 1")
			if rec.begun != 0 {
				t.Fatalf("a plain read began a transaction")
			}
			execOK(t, tx, "lock table t")
			execOK(t, tx, "lock table t")
			if commit {
				err = tx.Commit()
			} else {
				err = tx.Rollback()
			}
			if err != nil {
				t.Fatal(err)
			}
			want := driver.TxOptions{Isolation: driver.IsolationLevel(iso), ReadOnly: true}
			if rec.begun != 1 || rec.opts != want || rec.commits != map[bool]int{true: 1}[commit] || rec.rollbacks != map[bool]int{false: 1}[commit] {
				t.Errorf("%v, commit %v: %d BEGIN with %+v, %d commits, %d rollbacks; want 1 with %+v and the end asked for",
					iso, commit, rec.begun, rec.opts, rec.commits, rec.rollbacks, want)
			}
		}
	}
}

// upgradeConn records the transactions begun on it.
type upgradeConn struct {
	bareConn
	opts                      driver.TxOptions
	begun, commits, rollbacks int
}

func (c *upgradeConn) BeginTx(_ context.Context, o driver.TxOptions) (driver.Tx, error) {
	c.opts = o
	c.begun++
	return upgradeTx{c}, nil
}

type upgradeTx struct{ c *upgradeConn }

func (t upgradeTx) Commit() error   { t.c.commits++; return nil }
func (t upgradeTx) Rollback() error { t.c.rollbacks++; return nil }
