package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"

	"github.com/jackc/pgx/v5"
)

// pool_autocommit: a transaction that cannot write, at default or
// read-committed isolation, begins without a BEGIN and its plain reads run
// in autocommit, one round trip each. The first statement that is not a
// plain read (sqltext: SET LOCAL, set_config(…, true), row or table locks,
// writes, DDL, nextval, CALL, DO, DECLARE, anything unknown) would mean
// something else in autocommit — a SET LOCAL lost at once, a lock released
// at once, a write that survives Rollback — so before it warmpg begins a
// real read-only transaction (BEGIN READ ONLY, at the requested isolation):
// from there the server enforces ReadOnly and Commit and Rollback are real.
//
// Still in autocommit: the plain reads before the upgrade, each committed
// on its own, and what the text does not show — a SELECT of a function that
// writes commits at once on a pool that is not pool_read_only (on one that
// is, the server refuses it).

// autocommitTx is the transaction of pool_autocommit. It is its
// connection's until Commit or Rollback (connState.ac), which database/sql calls
// with the connection locked, as it does every statement.
type autocommitTx struct {
	c *conn
	// ctx is BeginTx's: the upgraded transaction's Commit and Rollback run
	// on it, as they would had the transaction begun at BeginTx.
	ctx  context.Context
	opts driver.TxOptions
	// tx is the real transaction once a statement upgraded this one; nil
	// while everything ran in autocommit.
	tx driver.Tx
}

// beginAutocommit begins a pool_autocommit transaction: nothing is sent.
func (c *conn) beginAutocommit(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	c.c.stats.acTx.Add(1)
	t := &autocommitTx{c: c, ctx: ctx, opts: opts}
	c.st.ac = t
	return t, nil
}

func (t *autocommitTx) Commit() error   { return t.end(true) }
func (t *autocommitTx) Rollback() error { return t.end(false) }

func (t *autocommitTx) end(commit bool) error {
	if t.c.st.ac == t {
		t.c.st.endTx()
	}
	tx := t.tx
	t.tx = nil
	switch {
	case tx == nil:
		return nil // every statement committed on its own
	case commit:
		return tx.Commit()
	default:
		return tx.Rollback()
	}
}

// upgrade begins the real read-only transaction, before a statement run
// with ctx that is not a plain read (the statement step's enter).
func (t *autocommitTx) upgrade(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	c := t.c
	var tx driver.Tx
	var err error
	if c.pgx != nil {
		tx, err = t.beginPgx(ctx)
	} else {
		opts := driver.TxOptions{Isolation: t.opts.Isolation, ReadOnly: true}
		if _, ok := c.inner.(driver.ConnBeginTx); !ok {
			// The legacy Begin can neither begin read-only nor choose the
			// isolation: a plain BEGIN (read committed, PostgreSQL's
			// default, unless the server says otherwise).
			opts = driver.TxOptions{}
		}
		// The transaction's context, as BeginTx would have used: lib/pq
		// watches it until Commit or Rollback.
		tx, err = c.beginTx(t.ctx, opts)
	}
	if err != nil {
		return fmt.Errorf("warmpg: pool_autocommit: begin the read-only transaction this statement needs: %w", err)
	}
	c.c.stats.acUp.Add(1)
	t.tx = tx
	return nil
}

// beginPgx begins the read-only transaction on pgx: the BEGIN is bounded by
// the statement's context; Commit and Rollback run on the transaction's, as
// pgx's stdlib does for a transaction begun at BeginTx.
func (t *autocommitTx) beginPgx(ctx context.Context) (driver.Tx, error) {
	if t.c.pgx.Conn().IsClosed() {
		return nil, driver.ErrBadConn
	}
	o := pgx.TxOptions{AccessMode: pgx.ReadOnly}
	if sql.IsolationLevel(t.opts.Isolation) == sql.LevelReadCommitted {
		o.IsoLevel = pgx.ReadCommitted
	}
	tx, err := t.c.pgx.Conn().BeginTx(ctx, o)
	if err != nil {
		return nil, err
	}
	return pgxTx{ctx: t.ctx, tx: tx, c: t.c}, nil
}

// pgxTx is a pgx transaction as database/sql sees one.
type pgxTx struct {
	ctx context.Context
	tx  pgx.Tx
	c   *conn
}

func (p pgxTx) Commit() error { return p.tx.Commit(p.ctx) }

// Rollback rolls back on a fresh context when the transaction's ended and
// the connection may be kept (cancelpgx.go).
func (p pgxTx) Rollback() error {
	ctx, done := p.c.rollbackCtx(p.ctx)
	defer done()
	return p.tx.Rollback(ctx)
}
