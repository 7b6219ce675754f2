package warmpg

import (
	"context"
	"database/sql/driver"

	"github.com/jackc/pgx/v5/stdlib"
)

// ResetSession runs before database/sql hands out a connection that was used
// before. It refuses (driver.ErrBadConn) a connection the inner driver
// reports closed or still in a transaction, then runs the inner driver's own
// reset. For the pgx backend warmpg turns off pgx's ping on first reuse and
// after a second of idleness, so a clean reuse sends nothing.
func (c *conn) ResetSession(ctx context.Context) error {
	if c.innerClosed() {
		return driver.ErrBadConn
	}
	if r, ok := c.inner.(driver.SessionResetter); ok {
		return r.ResetSession(ctx)
	}
	return nil
}

// IsValid runs when a connection goes back to the pool; it does no I/O.
func (c *conn) IsValid() bool {
	if c.innerClosed() {
		return false
	}
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// innerClosed reports, without I/O, whether the inner driver knows its
// connection is closed.
func (c *conn) innerClosed() bool {
	if sc, ok := c.inner.(*stdlib.Conn); ok {
		return sc.Conn().IsClosed()
	}
	return false
}
