package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
)

// Every wrapped connection has these. The optional interfaces database/sql
// treats the same whether they are missing or answer "not supported"
// (Pinger: nil; ExecerContext, QueryerContext: driver.ErrSkip;
// ConnPrepareContext, ConnBeginTx: the fallbacks database/sql itself would
// use) are always declared and fall back exactly as database/sql would.
//
// SessionResetter and Validator are warmpg's own: ResetSession is where the
// reset mode runs, IsValid where a closed connection is dropped before it goes
// back to the pool. Declaring both makes database/sql keep a connection after
// rolling back a transaction whose context was cancelled; that is safe because
// IsValid reports a connection the inner driver closed (pgx closes it when a
// rollback fails) and ResetSession refuses one that is still in a transaction.
var (
	_ driver.Conn               = (*conn)(nil)
	_ driver.ConnBeginTx        = (*conn)(nil)
	_ driver.ConnPrepareContext = (*conn)(nil)
	_ driver.ExecerContext      = (*conn)(nil)
	_ driver.QueryerContext     = (*conn)(nil)
	_ driver.Pinger             = (*conn)(nil)
	_ driver.SessionResetter    = (*conn)(nil)
	_ driver.Validator          = (*conn)(nil)

	// NamedValueChecker changes how database/sql converts arguments, so it is
	// declared only when the inner connection has it (pgx, lib/pq and
	// go-sqlmock do).
	_ driver.NamedValueChecker = connNVC{}
)

// conn wraps an inner driver.Conn. database/sql uses a connection from one
// goroutine at a time, so its fields need no lock — but for the watchdog's:
// database/sql may close rows from a goroutine of its own, and the watchdog
// fires on another.
type conn struct {
	inner driver.Conn
	c     *Connector
	pgx   *stdlib.Conn    // inner, when it is pgx's
	raw   syscall.RawConn // the socket, for check mode's peek; nil if unknown
	// params holds reportedParams' values at connect (pgx only).
	params []string
	// For drivers that report no transaction status: may a statement since
	// the last reset have opened a transaction or changed the session?
	maybeTx, maybeSession bool
	// expiresAt is when this connection's own lifetime ends (zero: never).
	expiresAt time.Time

	// The deadline watchdog (watchdog.go), for a non-pgx connection whose
	// socket warmpg dialled: nc is that socket.
	nc        net.Conn
	watchMu   sync.Mutex
	stopWatch func() bool
	timedOut  atomic.Bool // a watchdog fired: the protocol state is unknown

	hold hold // checkout bookkeeping (leak.go)
}

// connNVC is a conn whose inner connection is a driver.NamedValueChecker.
type connNVC struct{ *conn }

func (c connNVC) CheckNamedValue(nv *driver.NamedValue) error {
	return c.inner.(driver.NamedValueChecker).CheckNamedValue(nv)
}

// wrapConn wraps inner; nc is the socket the connector saw dialled for it,
// if any (lib/pq through OpenConnector).
func wrapConn(inner driver.Conn, c *Connector, nc net.Conn) driver.Conn {
	w := &conn{inner: inner, c: c, pgx: pgxConn(inner)}
	if w.pgx != nil {
		// pgx ends a statement on its context itself, and says where its
		// socket is.
		w.raw = rawConnOf(w.pgx.Conn().PgConn().Conn())
		w.snapshotParams()
	} else if nc != nil {
		w.nc = nc
		w.raw = rawConnOf(nc)
	}
	w.setLifetime(time.Now())
	c.holds.add(w)
	if _, ok := inner.(driver.NamedValueChecker); ok {
		return connNVC{w}
	}
	return w
}

// baseConn returns the *conn inside a connection wrapConn returned.
func baseConn(w driver.Conn) *conn {
	if n, ok := w.(connNVC); ok {
		return n.conn
	}
	return w.(*conn)
}

// Unwrap returns the driver connection warmpg wraps: for the pgx backend a
// *stdlib.Conn, for lib/pq its connection, else whatever the inner connector
// returned.
func (c *conn) Unwrap() driver.Conn { return c.inner }

// Unwrap returns the driver connection under a warmpg connection, as handed
// to the function given to (*sql.Conn).Raw, and under any wrappers around it
// that say what they wrap with an Unwrap() driver.Conn or a Raw()
// driver.Conn method (otelsql's); anything else comes back unchanged:
//
//	err := sqlConn.Raw(func(dc any) error {
//		pgxConn := warmpg.Unwrap(dc).(*stdlib.Conn).Conn()
//		...
//	})
func Unwrap(driverConn any) any {
	for range 16 { // wrappers of wrappers; no loop forever on a cycle
		switch u := driverConn.(type) {
		case interface{ Unwrap() driver.Conn }:
			driverConn = u.Unwrap()
		case interface{ Raw() driver.Conn }:
			driverConn = u.Raw()
		default:
			return driverConn
		}
	}
	return driverConn
}

func (c *conn) Prepare(query string) (driver.Stmt, error) {
	c.noteStatement(query)
	if st := c.clientStmt(query); st != nil {
		return st, nil
	}
	return c.inner.Prepare(query)
}

func (c *conn) Close() error {
	c.disarm()
	c.c.holds.remove(c)
	if c.c.ready != nil && c.c.cfg.keepWarm() {
		c.c.ready.untrack(c)
	}
	return c.inner.Close()
}

func (c *conn) Begin() (driver.Tx, error) {
	return c.inner.Begin() //nolint:staticcheck // the legacy method is part of driver.Conn
}

// BeginTx passes to the inner connection, or does what database/sql does for
// a connection without ConnBeginTx. With pool_autocommit, a transaction that
// cannot write (ReadOnly, or any on a pool_read_only pool) at default or
// read-committed isolation sends nothing: its statements run in autocommit.
// On a pool_read_only pool every transaction is begun read-only.
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	cfg := &c.c.cfg
	cannotWrite := opts.ReadOnly || cfg.readOnly
	if cfg.autocommit && cannotWrite &&
		(opts.Isolation == driver.IsolationLevel(sql.LevelDefault) || opts.Isolation == driver.IsolationLevel(sql.LevelReadCommitted)) {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		c.c.stats.acTx.Add(1)
		return autocommitTx{}, nil
	}
	if bt, ok := c.inner.(driver.ConnBeginTx); ok {
		opts.ReadOnly = cannotWrite
		defer c.watch(ctx)()
		return bt.BeginTx(ctx, opts)
	}
	// A driver without BeginTx cannot begin read-only; on a pool_read_only
	// pool the server refuses writes all the same.
	if opts.Isolation != driver.IsolationLevel(0) {
		return nil, errors.New("sql: driver does not support non-default isolation level")
	}
	if opts.ReadOnly {
		return nil, errors.New("sql: driver does not support read-only transactions")
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	tx, err := c.inner.Begin() //nolint:staticcheck // fallback for drivers without BeginTx
	if err == nil && ctx.Err() != nil {
		tx.Rollback()
		return nil, ctx.Err()
	}
	return tx, err
}

// PrepareContext passes to the inner connection, or does what database/sql
// does for a connection without ConnPrepareContext.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	c.noteStatement(query)
	if st := c.clientStmt(query); st != nil {
		return st, nil
	}
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		defer c.watch(ctx)()
		return p.PrepareContext(ctx, query)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	st, err := c.inner.Prepare(query)
	if err == nil && ctx.Err() != nil {
		st.Close()
		return nil, ctx.Err()
	}
	return st, err
}

// ExecContext passes to the inner connection's ExecerContext or legacy
// Execer, else returns driver.ErrSkip so database/sql prepares the statement.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	c.noteStatement(query)
	switch e := c.inner.(type) {
	case driver.ExecerContext:
		defer c.watch(ctx)()
		res, err := e.ExecContext(ctx, query, args)
		return res, c.ctxErr(ctx, err)
	case driver.Execer: //nolint:staticcheck // legacy drivers
		values, err := namedValuesToValues(args)
		if err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return e.Exec(query, values)
	}
	return nil, driver.ErrSkip
}

// QueryContext passes to the inner connection's QueryerContext or legacy
// Queryer, else returns driver.ErrSkip so database/sql prepares the statement.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	c.noteStatement(query)
	switch q := c.inner.(type) {
	case driver.QueryerContext:
		disarm := c.watch(ctx)
		rows, err := q.QueryContext(ctx, query, args)
		if err != nil || !c.armed() {
			disarm()
			return rows, c.ctxErr(ctx, err)
		}
		return &watchedRows{Rows: rows, c: c, ctx: ctx, disarm: disarm}, nil
	case driver.Queryer: //nolint:staticcheck // legacy drivers
		values, err := namedValuesToValues(args)
		if err != nil {
			return nil, err
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		return q.Query(query, values)
	}
	return nil, driver.ErrSkip
}

func namedValuesToValues(named []driver.NamedValue) ([]driver.Value, error) {
	values := make([]driver.Value, len(named))
	for i, nv := range named {
		if nv.Name != "" {
			return nil, errors.New("sql: driver does not support the use of Named Parameters")
		}
		values[i] = nv.Value
	}
	return values, nil
}

// Ping passes to the inner connection; without a Pinger it returns nil, as
// database/sql does.
func (c *conn) Ping(ctx context.Context) error {
	if p, ok := c.inner.(driver.Pinger); ok {
		defer c.watch(ctx)()
		return p.Ping(ctx)
	}
	return nil
}

// autocommitTx is the transaction of pool_autocommit: nothing to commit or
// roll back, each statement committed on its own.
type autocommitTx struct{}

func (autocommitTx) Commit() error   { return nil }
func (autocommitTx) Rollback() error { return nil }

// clientStmt returns, on a pool_pgbouncer pool, a statement that is not
// prepared on the server: each execution sends the query with its
// arguments (pgx's exec mode, lib/pq's binary_parameters: one round trip on
// the unnamed statement), since a transaction-mode pooler may run the next
// execution on a server connection that never saw a named PREPARE. It
// returns nil — prepare on the server — otherwise, or when the inner
// connection cannot run a query with arguments directly.
func (c *conn) clientStmt(query string) driver.Stmt {
	if !c.c.cfg.pgbouncer {
		return nil
	}
	_, canExec := c.inner.(driver.ExecerContext)
	_, canQuery := c.inner.(driver.QueryerContext)
	if !canExec || !canQuery {
		return nil
	}
	return &clientStmt{c: c, query: query}
}

var (
	_ driver.Stmt             = (*clientStmt)(nil)
	_ driver.StmtExecContext  = (*clientStmt)(nil)
	_ driver.StmtQueryContext = (*clientStmt)(nil)
)

// clientStmt is a prepared statement kept in the client (see clientStmt).
// Arguments are converted by the connection's NamedValueChecker, as for
// queries that are not prepared; the server checks their number.
type clientStmt struct {
	c     *conn
	query string
}

func (s *clientStmt) Close() error { return nil }

// NumInput returns -1: the server, not database/sql, counts the arguments.
func (s *clientStmt) NumInput() int { return -1 }

func (s *clientStmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return s.c.ExecContext(ctx, s.query, args)
}

func (s *clientStmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return s.c.QueryContext(ctx, s.query, args)
}

func (s *clientStmt) Exec(args []driver.Value) (driver.Result, error) {
	return s.ExecContext(context.Background(), valuesToNamed(args))
}

func (s *clientStmt) Query(args []driver.Value) (driver.Rows, error) {
	return s.QueryContext(context.Background(), valuesToNamed(args))
}

func valuesToNamed(args []driver.Value) []driver.NamedValue {
	named := make([]driver.NamedValue, len(args))
	for i, v := range args {
		named[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	return named
}
