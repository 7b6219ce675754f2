package warmpg

import (
	"context"
	"database/sql/driver"
	"fmt"
	"io"
	"reflect"
	"sync/atomic"
	"time"
)

// The deadline watchdog, for drivers that do not end a statement when its
// context ends by themselves. lib/pq sends a CancelRequest on a second
// connection when the context ends; the server then fails the statement
// (57014) with its work undone. A hung server (frozen, behind a black hole)
// never reads that request, and lib/pq alone blocked until the server woke
// (RELIABILITY.md). For connections whose socket warmpg dialled (lib/pq
// through OpenConnector), each statement's context arms a watchdog: when the
// context ends it waits pool_cancel_grace for the statement to return —
// cancelled by lib/pq's CancelRequest, which goes out at once — and only if
// it has not, sets a past deadline on the socket. The driver's read then
// fails at once, and the connection — its protocol state unknown — is never
// handed out again (IsValid, ResetSession). So a deadline bounds every
// statement by deadline + grace, and a statement the server can still
// cancel is cancelled, not cut off while the server goes on to commit it.
// pgx ends a statement on its context itself; on the pgx connectors warmpg
// builds, cancelpgx.go's handler does the same for pgx (a CancelRequest,
// the same grace), and keeps the connection.
//
// The watchdog is disarmed when the statement is done: after Exec, Ping,
// Prepare, BeginTx, Commit and Rollback return, and for a query when its
// rows are closed (the rows are wrapped for that alone, declaring the
// optional column interfaces with the same fallbacks database/sql uses when
// they are missing). Each arming has its own token: context.AfterFunc runs
// its function in a goroutine of its own, which may start after the
// statement was done and the connection handed to someone else. The
// callback and the grace timer act, under watchMu, only while their token
// is the current one, and disarm clears it under watchMu: once disarm has
// returned, nothing of that arming touches the connection.

// pastDeadline is in the past: every read and write fails at once.
var pastDeadline = time.Unix(1, 0)

// watch arms the watchdog for ctx, disarming any earlier one. It returns the
// function that disarms this arming (and no later one), or a no-op when
// there is nothing to watch.
func (c *conn) watch(ctx context.Context) func() {
	c.disarm()
	if c.nc == nil || ctx.Done() == nil {
		return noop
	}
	c.watchMu.Lock()
	c.watchSeq++
	tok := c.watchSeq
	c.watchTok = tok
	c.watchMu.Unlock()
	stop := context.AfterFunc(ctx, func() { c.ctxEnded(tok) })
	c.watchMu.Lock()
	if c.watchTok == tok {
		c.stopWatch = stop
		stop = nil
	}
	c.watchMu.Unlock()
	if stop != nil {
		stop()
	}
	return func() { c.disarmToken(tok) }
}

// ctxEnded runs when the context of arming tok ends: unless that arming was
// disarmed meanwhile, it starts the grace, after which the socket gets a
// past deadline.
func (c *conn) ctxEnded(tok uint64) {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	if c.watchTok != tok {
		return // the statement was done before this ran
	}
	grace := c.c.cfg.cancelGrace
	if grace <= 0 {
		c.cutLocked()
		return
	}
	c.graceTimer = time.AfterFunc(grace, func() {
		c.watchMu.Lock()
		defer c.watchMu.Unlock()
		if c.watchTok == tok {
			c.cutLocked()
		}
	})
}

// cutLocked sets the past deadline and marks the connection unusable
// (watchMu held).
func (c *conn) cutLocked() {
	c.timedOut.Store(true)
	c.nc.SetDeadline(pastDeadline)
}

// disarm stops the armed watchdog, whichever arming it is. database/sql may
// close rows from its own goroutine, hence the lock.
func (c *conn) disarm() { c.disarmToken(0) }

// disarmToken stops arming tok if it is still the current one; tok 0
// stops any.
func (c *conn) disarmToken(tok uint64) {
	c.watchMu.Lock()
	if tok != 0 && c.watchTok != tok {
		c.watchMu.Unlock()
		return
	}
	stop, timer := c.stopWatch, c.graceTimer
	c.stopWatch, c.graceTimer, c.watchTok = nil, nil, 0
	c.watchMu.Unlock()
	if stop != nil {
		stop()
	}
	if timer != nil {
		timer.Stop()
	}
}

// armed reports whether a watchdog is armed.
func (c *conn) armed() bool {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	return c.watchTok != 0
}

// watchRows reports whether a query's rows need wrapping: a watchdog is
// armed, or pgx cancels the query when ctx ends (cancelpgx.go), so that its
// rows report the 57014 as the context's error.
func (c *conn) watchRows(ctx context.Context) bool {
	return c.armed() || (ctx.Done() != nil && c.cancelOf() != nil)
}

func noop() {}

// ctxErr makes an error the context's end caused — the server cancelled
// the statement (57014, after lib/pq's CancelRequest), or the watchdog cut
// the socket (an i/o timeout) — say why: the context's error, wrapping the
// driver's.
func (c *conn) ctxErr(ctx context.Context, err error) error {
	if err == nil || err == io.EOF || ctx.Err() == nil { //nolint:errorlint // io.EOF is compared with == by database/sql
		return err
	}
	if !c.timedOut.Load() && sqlState(err) != "57014" {
		return err
	}
	return fmt.Errorf("%w (%w)", ctx.Err(), err)
}

// watchedRows disarms its connection's watchdog when closed.
type watchedRows struct {
	driver.Rows
	c      *conn
	ctx    context.Context
	disarm func()
	closed atomic.Bool
}

func (r *watchedRows) Next(dest []driver.Value) error {
	return r.c.ctxErr(r.ctx, r.Rows.Next(dest))
}

// Close reports, like Next, an error the context's end caused as the
// context's: a cancel that reaches the statement after its last row was
// read fails it at Close (pgx reads the rest of the reply there).
func (r *watchedRows) Close() error {
	err := r.c.ctxErr(r.ctx, r.Rows.Close())
	if !r.closed.Swap(true) {
		r.disarm()
	}
	return err
}

func (r *watchedRows) ColumnTypeScanType(i int) reflect.Type {
	if t, ok := r.Rows.(driver.RowsColumnTypeScanType); ok {
		return t.ColumnTypeScanType(i)
	}
	return reflect.TypeFor[any]()
}

func (r *watchedRows) ColumnTypeDatabaseTypeName(i int) string {
	if t, ok := r.Rows.(driver.RowsColumnTypeDatabaseTypeName); ok {
		return t.ColumnTypeDatabaseTypeName(i)
	}
	return ""
}

func (r *watchedRows) ColumnTypeLength(i int) (int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeLength); ok {
		return t.ColumnTypeLength(i)
	}
	return 0, false
}

func (r *watchedRows) ColumnTypeNullable(i int) (bool, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypeNullable); ok {
		return t.ColumnTypeNullable(i)
	}
	return false, false
}

func (r *watchedRows) ColumnTypePrecisionScale(i int) (int64, int64, bool) {
	if t, ok := r.Rows.(driver.RowsColumnTypePrecisionScale); ok {
		return t.ColumnTypePrecisionScale(i)
	}
	return 0, 0, false
}

func (r *watchedRows) HasNextResultSet() bool {
	if t, ok := r.Rows.(driver.RowsNextResultSet); ok {
		return t.HasNextResultSet()
	}
	return false
}

func (r *watchedRows) NextResultSet() error {
	if t, ok := r.Rows.(driver.RowsNextResultSet); ok {
		return t.NextResultSet()
	}
	return io.EOF
}

var (
	_ driver.RowsColumnTypeScanType         = (*watchedRows)(nil)
	_ driver.RowsColumnTypeDatabaseTypeName = (*watchedRows)(nil)
	_ driver.RowsColumnTypeLength           = (*watchedRows)(nil)
	_ driver.RowsColumnTypeNullable         = (*watchedRows)(nil)
	_ driver.RowsColumnTypePrecisionScale   = (*watchedRows)(nil)
	_ driver.RowsNextResultSet              = (*watchedRows)(nil)
)

// wrapTx wraps a transaction the inner driver began, for what a driver
// that reports no transaction status needs (every one but pgx): the
// connection is marked as maybe in a transaction until Commit or Rollback
// succeeds, so that a transaction a failed rollback left open is rolled
// back before the next user gets the connection (ResetSession), whatever
// the inner driver; and on a connection with a watchdog, Commit and
// Rollback are bounded by the transaction's context as statements are.
// pgx reports the status and ends its statements on the context itself:
// its transactions are returned as they are, but for a Rollback after the
// context ended on a connection warmpg cancels on (wrapPgxTx,
// cancelpgx.go).
func (c *conn) wrapTx(ctx context.Context, tx driver.Tx, err error) (driver.Tx, error) {
	if err != nil {
		return tx, err
	}
	if c.pgx != nil {
		return c.wrapPgxTx(ctx, tx), nil
	}
	c.st.maybeTx = true
	return &watchedTx{Tx: tx, c: c, ctx: ctx}, nil
}

// watchedTx is a transaction of a driver that reports no transaction
// status (see wrapTx).
type watchedTx struct {
	driver.Tx
	c   *conn
	ctx context.Context
}

func (t *watchedTx) Commit() error {
	disarm := t.c.watch(t.ctx)
	err := t.Tx.Commit()
	err = t.c.ctxErr(t.ctx, err)
	disarm()
	if err == nil {
		t.c.st.maybeTx = false
	}
	return err
}

func (t *watchedTx) Rollback() error {
	disarm := t.c.watch(t.ctx)
	err := t.Tx.Rollback()
	err = t.c.ctxErr(t.ctx, err)
	disarm()
	if err == nil {
		t.c.st.maybeTx = false
	}
	return err
}
