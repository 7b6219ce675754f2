package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"io"
	"sync"
	"sync/atomic"
	"time"
)

// fakeConnector is a counting driver.Connector for unit tests: it records how
// many connects run at once, can delay and fail them, and hands out conns
// with a chosen set of optional interfaces.
type fakeConnector struct {
	delay   time.Duration
	fail    func(n int64) error // n: 1-based connect number; nil error succeeds
	newConn func() driver.Conn  // default: a full-featured fakeConn

	connects atomic.Int64
	inFlight atomic.Int64
	maxSeen  atomic.Int64
	open     atomic.Int64 // connections returned and not yet closed
	closed   atomic.Bool
}

func (f *fakeConnector) Connect(ctx context.Context) (driver.Conn, error) {
	n := f.connects.Add(1)
	cur := f.inFlight.Add(1)
	defer f.inFlight.Add(-1)
	for {
		m := f.maxSeen.Load()
		if cur <= m || f.maxSeen.CompareAndSwap(m, cur) {
			break
		}
	}
	if f.delay > 0 {
		t := time.NewTimer(f.delay)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	if f.fail != nil {
		if err := f.fail(n); err != nil {
			return nil, err
		}
	}
	f.open.Add(1)
	if f.newConn != nil {
		return f.newConn(), nil
	}
	return &fakeConn{f: f}, nil
}

func (f *fakeConnector) Driver() driver.Driver { return fakeDriver{} }

func (f *fakeConnector) Close() error { f.closed.Store(true); return nil }

var _ io.Closer = (*fakeConnector)(nil)

type fakeDriver struct{}

func (fakeDriver) Open(string) (driver.Conn, error) {
	return nil, errors.New("fakeDriver: use the connector")
}

// fakeConn has every optional interface.
type fakeConn struct {
	f      *fakeConnector
	mu     sync.Mutex
	closed bool
	resets int
	pings  atomic.Int64
}

func (c *fakeConn) Prepare(string) (driver.Stmt, error) {
	return nil, errors.New("fakeConn: no prepare")
}
func (c *fakeConn) Close() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if !c.closed && c.f != nil {
		c.f.open.Add(-1)
	}
	c.closed = true
	return nil
}
func (c *fakeConn) Begin() (driver.Tx, error) { return fakeTx{}, nil }
func (c *fakeConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return fakeTx{}, nil
}
func (c *fakeConn) ExecContext(context.Context, string, []driver.NamedValue) (driver.Result, error) {
	return driver.RowsAffected(1), nil
}
func (c *fakeConn) QueryContext(context.Context, string, []driver.NamedValue) (driver.Rows, error) {
	return &fakeRows{n: 1}, nil
}
func (c *fakeConn) Ping(context.Context) error { c.pings.Add(1); return nil }
func (c *fakeConn) ResetSession(context.Context) error {
	c.mu.Lock()
	c.resets++
	c.mu.Unlock()
	return nil
}
func (c *fakeConn) IsValid() bool                               { return true }
func (c *fakeConn) CheckNamedValue(nv *driver.NamedValue) error { return nil }

type fakeTx struct{}

func (fakeTx) Commit() error   { return nil }
func (fakeTx) Rollback() error { return nil }

// fakeRows yields n rows of one int64 column "n".
type fakeRows struct{ n, i int }

func (r *fakeRows) Columns() []string { return []string{"n"} }
func (r *fakeRows) Close() error      { return nil }
func (r *fakeRows) Next(dest []driver.Value) error {
	if r.i >= r.n {
		return io.EOF
	}
	r.i++
	dest[0] = int64(r.i)
	return nil
}

// bareConn has only driver.Conn's three methods.
type bareConn struct{}

func (bareConn) Prepare(string) (driver.Stmt, error) { return fakeStmt{}, nil }
func (bareConn) Close() error                        { return nil }
func (bareConn) Begin() (driver.Tx, error)           { return fakeTx{}, nil }

// fakeStmt answers every query with one row.
type fakeStmt struct{}

func (fakeStmt) Close() error                               { return nil }
func (fakeStmt) NumInput() int                              { return -1 }
func (fakeStmt) Exec([]driver.Value) (driver.Result, error) { return driver.RowsAffected(1), nil }
func (fakeStmt) Query([]driver.Value) (driver.Rows, error)  { return &fakeRows{n: 1}, nil }
