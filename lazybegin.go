package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// pool_lazy_begin: BeginTx sends nothing; the transaction's BEGIN goes out
// in the same network write as its first statement (lazywire.go), so a
// transaction costs one round trip less, and Commit or Rollback of one that
// ran no statement sends nothing. The server takes a transaction's snapshot
// at its first statement, not at BEGIN, so what a transaction reads does not
// change; its start time (now()) is its first statement's. It works at the
// wire, under pgx: every way a statement reaches the connection — Exec,
// Query, a prepared statement, Tx.Stmt, pgx itself through (*sql.Conn).Raw —
// carries the BEGIN.
//
// What differs from BeginTx sending BEGIN:
//   - the transaction's start time, now(), is its first statement's;
//   - a connection that died while idle is found by the first statement,
//     not by BeginTx, and database/sql cannot retry a statement inside a
//     transaction (check mode finds most dead connections before; see
//     docs/lazy-begin.md for the count);
//   - if the transaction did not begin (an error came back in place of the
//     BEGIN's replies), the first statement's error says so
//     (ErrLazyBeginFailed wraps it), later statements fail as they would in
//     an aborted transaction, and Commit returns pgx.ErrTxCommitRollback;
//   - pgx's TxStatus reads 'I' until the first statement.

// ErrLazyBeginFailed is wrapped into the error of a transaction's first
// statement when, with pool_lazy_begin, the BEGIN sent with it failed: the
// statement did not run, and the transaction did not begin.
var ErrLazyBeginFailed = errors.New("warmpg: pool_lazy_begin: the transaction did not begin (its BEGIN went with this statement)")

// lazyTx is a pool_lazy_begin transaction. It is its connection's (connState.lazy)
// until Commit or Rollback, which database/sql calls with the connection
// locked, as it does every statement.
type lazyTx struct {
	c *conn
	// ctx is BeginTx's: Commit and Rollback run on it, as stdlib's do.
	ctx context.Context
	// aborted is set once the transaction did not begin: the statements
	// after the first fail without being sent.
	aborted bool
	// begin is the BEGIN's text.
	begin string
}

// canLazyBegin reports whether c begins its transactions lazily: a pgx
// connection that warmpg opened with pool_lazy_begin on.
func (c *conn) canLazyBegin() bool {
	return c.bc != nil && c.c.cfg.lazyBegin
}

// beginLazy begins a pool_lazy_begin transaction: it checks what BeginTx
// would (a closed connection, the isolation level) and arms the BEGIN.
func (c *conn) beginLazy(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	if c.pgx.Conn().IsClosed() {
		return nil, driver.ErrBadConn
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	begin, err := beginSQL(opts, c.c.cfg.readOnly)
	if err != nil {
		return nil, err
	}
	c.c.stats.lazyTx.Add(1)
	t := &lazyTx{c: c, ctx: ctx, begin: begin}
	c.st.lazy = t
	c.bc.arm(begin)
	return t, nil
}

// beginSQL is the BEGIN stdlib's BeginTx would send for opts (pgx's text for
// the same pgx.TxOptions), read-only on a pool_read_only pool.
func beginSQL(opts driver.TxOptions, readOnly bool) (string, error) {
	s := "begin"
	switch sql.IsolationLevel(opts.Isolation) {
	case sql.LevelDefault:
	case sql.LevelReadUncommitted:
		s += " isolation level read uncommitted"
	case sql.LevelReadCommitted:
		s += " isolation level read committed"
	case sql.LevelRepeatableRead, sql.LevelSnapshot:
		s += " isolation level repeatable read"
	case sql.LevelSerializable:
		s += " isolation level serializable"
	default:
		return "", fmt.Errorf("unsupported isolation: %v", opts.Isolation)
	}
	if opts.ReadOnly || readOnly {
		s += " read only"
	}
	return s, nil
}

// abortedErr is what a statement after a failed lazy BEGIN returns: what
// the server says for a statement in a transaction an error aborted.
func abortedErr() error {
	return &pgconn.PgError{Severity: "ERROR", Code: "25P02",
		Message: "current transaction is aborted, commands ignored until end of transaction block"}
}

// afterLazy takes a statement's error in a lazy transaction: when the BEGIN
// that went with it failed, the transaction is aborted and err says why.
// When the BEGIN went in the text of this statement's simple Query, the
// server counted the error's position from the start of "begin …;\n":
// it is set back to the statement's own text.
func (c *conn) afterLazy(err error) error {
	t := c.st.lazy
	if t == nil || t.aborted || err == nil {
		return err
	}
	out, simple := c.bc.state()
	if simple {
		c.lazyPosition(t, err)
	}
	if out != beginFailed {
		return err
	}
	t.aborted = true
	c.bc.disarm()
	var pe *pgconn.PgError
	if simple && errors.As(err, &pe) && strings.HasPrefix(pe.Code, "42") {
		// The server rejected the whole query string, BEGIN with it,
		// because the statement does not parse: the statement's own
		// error, as BeginTx's BEGIN followed by it would have given.
		return err
	}
	return fmt.Errorf("%w: %w", ErrLazyBeginFailed, err)
}

// lazyPosition sets back the position of a server error in a statement
// whose simple Query text carried t's BEGIN (the last write): by the
// length of the "begin …;\n" in front of it.
func (c *conn) lazyPosition(t *lazyTx, err error) {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || pe.Position == 0 {
		return
	}
	if _, at := c.bc.begun(); at != c.bc.writes.Load() {
		return
	}
	if n := int32(len(t.begin) + len(";\n")); pe.Position > n {
		pe.Position -= n
	}
}

// lazySyntax runs again, the way BeginTx's BEGIN followed by it would, a
// simple-protocol statement that carried t's BEGIN in its text and that
// the server rejected whole because it does not parse: nothing ran, not
// even the BEGIN. It sends the BEGIN alone, then the statement alone, and
// returns the statement's own error — every field as eager BEGIN gives it —
// with the transaction begun and aborted on the server, as eager BEGIN
// leaves it: later statements get the server's own 25P02, and Commit its
// ROLLBACK. Syntax is checked before anything runs, so the statement fails
// again the same way. It returns err unchanged when it cannot do that.
func (c *conn) lazySyntax(ctx context.Context, query string, err error) error {
	t := c.st.lazy
	var pe *pgconn.PgError
	if t == nil || !t.aborted || !errors.As(err, &pe) || !strings.HasPrefix(pe.Code, "42") || ctx.Err() != nil {
		return err
	}
	if out, simple := c.bc.state(); out != beginFailed || !simple {
		return err
	}
	if _, at := c.bc.begun(); at != c.bc.writes.Load() {
		return err
	}
	pc := c.pgx.Conn()
	c.bc.allow()
	if _, berr := pc.Exec(ctx, t.begin); berr != nil {
		_ = pc.Close(ctx)
		return err
	}
	_, again := pc.Exec(ctx, query)
	if again == nil || pc.PgConn().TxStatus() != 'E' {
		// Not what a statement that does not parse does: close the
		// connection rather than guess what ran.
		_ = pc.Close(ctx)
		return err
	}
	t.aborted = false
	c.bc.begunNow()
	return again
}

func (t *lazyTx) Commit() error   { return t.end(true) }
func (t *lazyTx) Rollback() error { return t.end(false) }

// end commits or rolls back what the server began, as pgx's transaction
// does; a transaction whose BEGIN was never sent sends nothing.
func (t *lazyTx) end(commit bool) error {
	c := t.c
	if c.st.lazy == t {
		c.st.endTx()
	}
	out := c.bc.end()
	pc := c.pgx.Conn()
	switch {
	case out == beginPending:
		return nil // nothing was sent
	case out == beginFailed || t.aborted:
		if commit {
			return pgx.ErrTxCommitRollback
		}
		return nil
	case commit:
		tag, err := pc.Exec(t.ctx, "commit")
		if err != nil {
			if pc.PgConn().TxStatus() != 'I' {
				_ = pc.Close(t.ctx)
			}
			return err
		}
		if tag.String() == "ROLLBACK" {
			return pgx.ErrTxCommitRollback
		}
		return nil
	default:
		rctx, done := c.rollbackCtx(t.ctx) // cancelpgx.go
		_, err := pc.Exec(rctx, "rollback")
		done()
		if err != nil {
			// As pgx: a failed rollback leaves the connection in an
			// unknown state; close it at once.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = pc.PgConn().Close(ctx)
			return err
		}
		return nil
	}
}
