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
// context ends. lib/pq only sends a CancelRequest, which a hung server never
// reads, so a query with a 2 s deadline on a frozen server blocked until the
// server woke (RELIABILITY.md). For connections whose socket warmpg dialled
// (lib/pq through OpenConnector), a statement's context now arms a
// watchdog: when the context ends before the statement does, it sets a past
// deadline on the socket, the driver's read fails at once, and the
// connection — its protocol state unknown — is never handed out again
// (IsValid, ResetSession). pgx sets such a deadline itself and is left alone.
//
// The watchdog is disarmed when the statement is done: after Exec, Ping and
// BeginTx return, and for a query when its rows are closed (the rows are
// wrapped for that alone, declaring the optional column interfaces with the
// same fallbacks database/sql uses when they are missing).

// watch arms the watchdog for ctx, disarming any earlier one. It returns the
// disarm function, or a no-op when there is nothing to watch.
func (c *conn) watch(ctx context.Context) func() {
	c.disarm()
	if c.nc == nil || ctx.Done() == nil {
		return noop
	}
	stop := context.AfterFunc(ctx, func() {
		c.timedOut.Store(true)
		c.nc.SetDeadline(time.Unix(1, 0)) // in the past: every read and write fails now
	})
	c.watchMu.Lock()
	c.stopWatch = stop
	c.watchMu.Unlock()
	return c.disarm
}

// disarm stops the armed watchdog, if any. database/sql may close rows from
// its own goroutine, hence the lock.
func (c *conn) disarm() {
	c.watchMu.Lock()
	stop := c.stopWatch
	c.stopWatch = nil
	c.watchMu.Unlock()
	if stop != nil {
		stop()
	}
}

// armed reports whether a watchdog is armed.
func (c *conn) armed() bool {
	c.watchMu.Lock()
	defer c.watchMu.Unlock()
	return c.stopWatch != nil
}

func noop() {}

// ctxErr makes an error the watchdog caused (an i/o timeout on the socket)
// say why: the context's error, wrapping the driver's.
func (c *conn) ctxErr(ctx context.Context, err error) error {
	if err == nil || err == io.EOF || !c.timedOut.Load() || ctx.Err() == nil {
		return err //nolint:errorlint // io.EOF is compared with == by database/sql
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

func (r *watchedRows) Close() error {
	err := r.Rows.Close()
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
