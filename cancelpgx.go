package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgconn/ctxwatch"
)

// Cancellation on pgx (issue 26). pgx's default context handler sets a
// past deadline on the socket when a statement's context ends: the read
// fails, pgx closes the connection, and every timeout costs a reconnect
// (and the connection's warmed statements). pgx's own
// CancelRequestContextWatcherHandler keeps the connection but may let the
// cancel of one statement hit the next (it sleeps 100 ms and hopes).
//
// pgxCancel is warmpg's handler instead, for the pgx connectors warmpg
// builds, when pool_cancel_grace is above zero. When a statement's context
// ends it sends a CancelRequest at once (pgconn's CancelRequest, on a
// connection of its own that is no pool connection: see cancelDial), and
// arms the grace. The server fails the statement (57014, its work undone)
// and pgx reads the connection back to idle, as after any error. Before the
// pgx call returns (HandleUnwatchAfterCancel, in the goroutine that owns
// the connection) the handler waits for the cancel connection to end: the
// server sends its SIGINT to the backend before it closes that connection,
// and a backend handles a pending SIGINT before it reads the next command,
// ignoring it when idle. So once the server has closed the cancel
// connection, and the cancelled statement has returned, the cancel can no
// longer land, and the connection is handed back to database/sql. Nothing
// else can run on the connection before: the pgx call has not returned.
//
// The connection is never used again (unsafe: IsValid and ResetSession
// discard it) when
//   - the grace passed before the statement returned: the socket gets a
//     past deadline, as pgx's default does at once, the read fails and pgx
//     closes the connection (a frozen server, a black hole);
//   - the cancel was written but the server did not close its connection
//     within the grace (so it may still land).
//
// Through PgBouncer (1.18 or later) the same holds: PgBouncer forwards the
// cancel to the server connection running the client's statement, closes
// the client's cancel connection only once the server has closed the one it
// opened (pgbouncer #717), and lends that server connection to no one
// until its cancels are done. Older PgBouncers can let any client's cancel
// reach another's statement, warmpg or not.
//
// A statement that returns before the cancel goroutine starts sends no
// cancel. pool_cancel_grace=0 keeps pgx's default handler.
type pgxCancel struct {
	pgc   *pgconn.PgConn
	grace time.Duration

	mu       sync.Mutex
	seq      uint64        // the current HandleCancel's
	returned bool          // the watched operation is over (Unwatch)
	cut      bool          // the grace passed first: the socket got a past deadline
	timer    *time.Timer   // the grace
	done     chan struct{} // closed when the cancel goroutine ends
	ret      chan struct{} // closed when the statement returned (Unwatch)

	// unsafe: a cancel may still reach this connection's backend, or the
	// socket was cut; never use the connection again.
	unsafe atomic.Bool
}

// cancelDataKey is where a PgConn's CustomData keeps its pgxCancel.
const cancelDataKey = "warmpg.cancel"

// installPgxCancel makes pc's connections end a statement whose context
// ended with a CancelRequest (see pgxCancel), and recognise the
// CancelRequest connections among pc's dials.
func installPgxCancel(pc *pgx.ConnConfig, grace time.Duration) {
	if grace <= 0 {
		return
	}
	pc.DialFunc = cancelDial(pc.DialFunc)
	pc.BuildContextWatcherHandler = func(pgc *pgconn.PgConn) ctxwatch.Handler {
		h := &pgxCancel{pgc: pgc, grace: grace}
		pgc.CustomData()[cancelDataKey] = h
		return h
	}
}

// pgxCancelOf returns the handler of a pgx connection, or nil.
func pgxCancelOf(pgc *pgconn.PgConn) *pgxCancel {
	h, _ := pgc.CustomData()[cancelDataKey].(*pgxCancel)
	return h
}

// HandleCancel runs, in a goroutine of its own, when the context of the
// operation running on the connection ends.
func (h *pgxCancel) HandleCancel(context.Context) {
	h.mu.Lock()
	h.seq++
	seq := h.seq
	h.returned, h.cut = false, false
	done, ret := make(chan struct{}), make(chan struct{})
	h.done, h.ret = done, ret
	deadline := time.Now().Add(h.grace)
	h.timer = time.AfterFunc(h.grace, func() { h.graceOver(seq) })
	h.mu.Unlock()
	go h.send(seq, done, ret, deadline)
}

// graceOver cuts the socket when the statement of arming seq has not
// returned within the grace.
func (h *pgxCancel) graceOver(seq uint64) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.seq != seq || h.returned {
		return
	}
	h.cut = true
	h.unsafe.Store(true)
	h.pgc.Conn().SetDeadline(pastDeadline)
}

// send sends the CancelRequest of arming seq, unless the statement has
// returned already, and waits, until deadline, for the server to close the
// cancel connection. A backend ignores a cancel that reaches it before it
// has started the statement (still reading it): when the statement has not
// returned a while after the server closed the cancel connection, send
// sends another, until the statement returns or the deadline.
func (h *pgxCancel) send(seq uint64, done, ret chan struct{}, deadline time.Time) {
	defer close(done)
	for wait := cancelResend; ; wait *= 2 {
		h.mu.Lock()
		skip := h.seq != seq || h.returned
		h.mu.Unlock()
		if skip {
			return // nothing (more) sent: nothing (more) can land
		}
		p := &cancelProbe{deadline: deadline}
		ctx, cancel := context.WithDeadline(context.WithValue(context.Background(), cancelProbeKey{}, p), deadline)
		_ = h.pgc.CancelRequest(ctx)
		cancel()
		if p.wrote.Load() && !p.eof.Load() {
			// Written, and the server did not say it was done with it:
			// it may still signal the backend.
			h.unsafe.Store(true)
			return
		}
		t := time.NewTimer(min(wait, time.Until(deadline)))
		select {
		case <-ret:
			t.Stop()
			return
		case <-t.C:
		}
		if !time.Now().Before(deadline) {
			return
		}
	}
}

// cancelResend is how long after a cancel was acknowledged send waits for
// the statement to return before it sends another (doubling each time).
const cancelResend = 25 * time.Millisecond

// HandleUnwatchAfterCancel runs when the operation whose context ended is
// over, in the goroutine that ran it, before pgx returns: it waits until
// the cancel can no longer land (bounded by the grace).
func (h *pgxCancel) HandleUnwatchAfterCancel() {
	h.mu.Lock()
	h.returned = true
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	done := h.done
	if h.ret != nil {
		close(h.ret)
		h.ret = nil
	}
	h.mu.Unlock()
	if done != nil {
		<-done
	}
	h.mu.Lock()
	if h.cut {
		h.unsafe.Store(true)
	}
	h.mu.Unlock()
}

// reusable reports whether no cancel can reach the connection any more.
func (h *pgxCancel) reusable() bool {
	return h == nil || !h.unsafe.Load()
}

// cancelProbe watches one CancelRequest connection: whether the request
// was written, and whether the server closed the connection after it.
type cancelProbe struct {
	deadline time.Time
	wrote    atomic.Bool
	eof      atomic.Bool
}

type cancelProbeKey struct{}

// cancelDial wraps pgx's DialFunc (pgconn's CancelRequest dials through it
// too): a dial whose context carries a cancelProbe is a CancelRequest
// connection of pgxCancel's, wrapped to tell the probe what happened on
// it. It is no pool connection: warmpg counts connects at Connect, which
// these never pass, and pool_lazy_begin's layer (AfterNetConnect) never
// sees them.
func cancelDial(next pgconn.DialFunc) pgconn.DialFunc {
	if next == nil {
		next = (&net.Dialer{KeepAlive: 5 * time.Minute}).DialContext
	}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		nc, err := next(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if p, ok := ctx.Value(cancelProbeKey{}).(*cancelProbe); ok {
			return &cancelConn{Conn: nc, p: p}, nil
		}
		return nc, nil
	}
}

// cancelConn is a CancelRequest connection (see cancelDial).
type cancelConn struct {
	net.Conn
	p    *cancelProbe
	once sync.Once
}

func (c *cancelConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.p.wrote.Store(true)
	}
	return n, err
}

func (c *cancelConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
		// The server closed the connection: it is done with the request.
		// A reset: under TLS, pgx's close_notify went to a server that had
		// closed already.
		c.p.eof.Store(true)
	}
	return n, err
}

// Close first reads what is left until the server's close (bounded by the
// probe's deadline): under TLS, pgx's read ends at the server's
// close_notify, before the socket's end.
func (c *cancelConn) Close() error {
	c.once.Do(func() {
		if c.p.wrote.Load() && !c.p.eof.Load() {
			c.Conn.SetReadDeadline(c.p.deadline)
			var buf [256]byte
			for range 64 {
				if _, err := c.Read(buf[:]); err != nil {
					break
				}
			}
		}
	})
	return c.Conn.Close()
}

// cancelOf returns the pgxCancel of c's pgx connection, or nil.
func (c *conn) cancelOf() *pgxCancel {
	if c.pgx == nil {
		return nil
	}
	return pgxCancelOf(c.pgx.Conn().PgConn())
}

// cancelUnusable says why a pgx connection whose statement was cancelled
// must not be used again, or nil.
func (c *conn) cancelUnusable() error {
	if h := c.cancelOf(); !h.reusable() {
		return errBadConn("a cancel request may still reach its backend, or its socket was cut", nil)
	}
	return nil
}

// rollbackCtx is the context to roll back, with ctx, a pgx transaction
// whose context may have ended: when it has (database/sql rolls back when
// a transaction's context ends, with that context), a fresh one bounded by
// pool_cancel_grace, so that the rollback is sent and the connection can be
// kept; else ctx. On a connection a cancel may still reach, ctx: the
// rollback fails at once and the connection is closed, which rolls back
// on the server.
func (c *conn) rollbackCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	h := c.cancelOf()
	if h == nil || ctx.Err() == nil || !h.reusable() {
		return ctx, noop
	}
	return context.WithTimeout(context.WithoutCancel(ctx), h.grace)
}

// cancelTx is a pgx stdlib transaction on a connection with a pgxCancel:
// Rollback after the transaction's context ended still rolls back (pgx's
// would fail at once on the ended context and close the connection).
type cancelTx struct {
	driver.Tx
	c   *conn
	ctx context.Context
}

func (t *cancelTx) Rollback() error {
	if t.ctx.Err() == nil {
		return t.Tx.Rollback()
	}
	pc := t.c.pgx.Conn()
	rctx, done := t.c.rollbackCtx(t.ctx)
	defer done()
	_, err := pc.Exec(rctx, "rollback")
	if err == nil && pc.PgConn().TxStatus() != 'I' {
		err = fmt.Errorf("transaction status %q after rollback", pc.PgConn().TxStatus())
	}
	if err != nil {
		// As pgx: a failed rollback leaves the connection in an unknown
		// state; close it. (Not on an ended context: this handler would
		// send a pointless CancelRequest.)
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		_ = pc.PgConn().Close(ctx)
		cancel()
		return fmt.Errorf("rollback failed: %w", err)
	}
	return nil
}

// wrapPgxTx wraps a pgx transaction begun with ctx when c has a pgxCancel.
func (c *conn) wrapPgxTx(ctx context.Context, tx driver.Tx) driver.Tx {
	if c.cancelOf() == nil {
		return tx
	}
	return &cancelTx{Tx: tx, c: c, ctx: ctx}
}
