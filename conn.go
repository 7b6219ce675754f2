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

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/warmpg/warmpg/internal/sqltext"
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
// pgx reports its transaction status; for every other inner driver (lib/pq,
// a foreign connector given to NewConnector) BeginTx marks the connection as
// maybe in a transaction until Commit or Rollback succeeds (wrapTx), so in
// every reset mode ResetSession rolls back a transaction a failed rollback
// left open before the next user gets the connection.
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
	pgx   *stdlib.Conn // inner, when it is pgx's
	// execMode is pgx's default_query_exec_mode for the connection, read
	// at connect (pgx's Config() copies the whole configuration).
	execMode pgx.QueryExecMode
	raw      syscall.RawConn // the socket, for check mode's peek; nil if unknown
	peekr    *peeker         // peeks at raw (liveness_peek_*.go)
	// params holds reportedParams' values at connect (pgx only).
	params []string
	// roleLost: the server this connection was made to, a writer, became
	// read-only (writer.go); roleCheck: a write was refused (25006) on a
	// driver that reports no settings, and the next reuse asks the server.
	roleLost  atomic.Bool
	roleCheck bool
	// st is the connection's transaction and session state (state.go),
	// which the statement step (step.go) reads and updates.
	st connState
	// restoreSQL sets back, after a reset, what the inner connector's own
	// setup changed in the session (see captureSession); "" for none.
	restoreSQL string
	// expiresAt is when this connection's own lifetime ends (zero: never).
	expiresAt time.Time
	// bc is the socket warmpg's wire layer sits on (lazywire.go: the
	// pool_lazy_begin BEGIN, statement warming's guard), nil when the
	// connection has none.
	bc *beginConn

	// The deadline watchdog (watchdog.go), for a non-pgx connection whose
	// socket warmpg dialled: nc is that socket.
	nc         net.Conn
	watchMu    sync.Mutex
	watchSeq   uint64      // tokens handed out
	watchTok   uint64      // the armed one's; 0: disarmed
	stopWatch  func() bool // stops the armed one's context.AfterFunc
	graceTimer *time.Timer // the armed one's grace, once its context ended
	timedOut   atomic.Bool // a watchdog fired: the protocol state is unknown

	hold hold // checkout bookkeeping (leak.go)

	// host is the host of a multi-host DSN the connection is on, until it
	// closes (hosts.go); nil for one host.
	host atomic.Pointer[hostEntry]

	// prepared counts, by text, the statements prepared through
	// PrepareContext on a pgx connection and not yet closed (replan.go).
	prepared map[string]int

	// learns: statements run on c feed the connector's hot statements
	// (statements.go).
	learns bool
	// warmed: the statements warming prepared on c, until one goes stale;
	// staleSeen: the connector's staleGen c has taken in (statements.go).
	warmed    []string
	staleSeen uint64
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
		nc := w.pgx.Conn().PgConn().Conn()
		w.bc, _ = nc.(*beginConn)
		w.raw = rawConnOf(nc)
		w.snapshotParams()
		w.execMode = w.pgx.Conn().Config().DefaultQueryExecMode
		w.learns = c.hot != nil && w.warmCap() > 0
		w.staleSeen = c.staleGen.Load()
	} else if nc != nil {
		w.nc = nc
		w.raw = rawConnOf(nc)
	}
	if w.raw != nil {
		w.peekr = newPeeker(w.raw)
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
	if st := c.clientStmt(query); st != nil {
		return st, nil
	}
	st, err := c.inner.Prepare(query)
	if err != nil {
		return nil, err
	}
	return c.wrapStmt(st, query), nil
}

func (c *conn) Close() error {
	if h := c.host.Swap(nil); h != nil {
		c.c.cfg.hosts.release(h)
	}
	c.disarm()
	c.c.holds.remove(c)
	if c.c.ready != nil && c.c.cfg.keepWarm() {
		c.c.ready.untrack(c)
	}
	return c.inner.Close()
}

func (c *conn) Begin() (driver.Tx, error) {
	tx, err := c.inner.Begin() //nolint:staticcheck // the legacy method is part of driver.Conn
	return c.wrapTx(context.Background(), tx, err)
}

// BeginTx passes to the inner connection, or does what database/sql does for
// a connection without ConnBeginTx. With pool_autocommit, a transaction that
// cannot write (ReadOnly, or any on a pool_read_only pool) at default or
// read-committed isolation sends nothing: its plain reads run in autocommit
// until a statement needs a real transaction (autocommit.go).
// On a pool_read_only pool every transaction is begun read-only. With
// pool_lazy_begin, any other transaction sends its BEGIN with its first
// statement (lazybegin.go).
func (c *conn) BeginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	cfg := &c.c.cfg
	cannotWrite := opts.ReadOnly || cfg.readOnly
	if cfg.autocommit && cannotWrite &&
		(opts.Isolation == driver.IsolationLevel(sql.LevelDefault) || opts.Isolation == driver.IsolationLevel(sql.LevelReadCommitted)) {
		return c.beginAutocommit(ctx, opts)
	}
	if c.canLazyBegin() {
		return c.beginLazy(ctx, opts)
	}
	return c.beginTx(ctx, opts)
}

// beginTx begins a transaction in the inner connection, read-only on a
// pool_read_only pool.
func (c *conn) beginTx(ctx context.Context, opts driver.TxOptions) (driver.Tx, error) {
	cannotWrite := opts.ReadOnly || c.c.cfg.readOnly
	if bt, ok := c.inner.(driver.ConnBeginTx); ok {
		opts.ReadOnly = cannotWrite
		disarm := c.watch(ctx)
		tx, err := bt.BeginTx(ctx, opts)
		disarm()
		if err == nil && c.bc != nil {
			c.st.freshBegin, _ = beginSQL(opts, false)
			c.st.freshWrites = c.bc.writes.Load()
		}
		return c.wrapTx(ctx, tx, err)
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
	return c.wrapTx(ctx, tx, err)
}

// PrepareContext passes to the inner connection, or does what database/sql
// does for a connection without ConnPrepareContext.
//
// A statement whose text may change the session is wrapped (see
// wrapStmt); a clientStmt notes its text at each execution itself.
func (c *conn) PrepareContext(ctx context.Context, query string) (driver.Stmt, error) {
	if st := c.clientStmt(query); st != nil {
		return st, nil
	}
	var st driver.Stmt
	var err error
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		t := stmtText{sql: query}
		st, err = run(c, ctx, &t, wayPrepare, 0, true, func(ctx context.Context) (driver.Stmt, error) {
			return p.PrepareContext(ctx, query)
		}, nil)
	} else {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		st, err = c.inner.Prepare(query)
		if err == nil && ctx.Err() != nil {
			st.Close()
			return nil, ctx.Err()
		}
	}
	if err != nil {
		return nil, err
	}
	return c.wrapStmt(st, query), nil
}

// ExecContext runs a statement through the step (step.go) in the inner
// connection's ExecerContext, or its legacy Execer; without either it
// returns driver.ErrSkip so database/sql prepares the statement.
func (c *conn) ExecContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Result, error) {
	switch e := c.inner.(type) {
	case driver.ExecerContext:
		t := readText(query)
		extended := c.directExtended(args, true)
		return run(c, ctx, &t, wayDirect, len(args), extended, func(ctx context.Context) (driver.Result, error) {
			return e.ExecContext(ctx, query, args)
		}, nil)
	case driver.Execer: //nolint:staticcheck // legacy drivers
		values, err := namedValuesToValues(args)
		if err != nil {
			return nil, err
		}
		t := readText(query)
		return run(c, ctx, &t, wayDirect, len(args), true, func(ctx context.Context) (driver.Result, error) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return e.Exec(query, values)
		}, nil)
	}
	return nil, driver.ErrSkip
}

// QueryContext is ExecContext for a query: the inner connection's
// QueryerContext or legacy Queryer, else driver.ErrSkip.
func (c *conn) QueryContext(ctx context.Context, query string, args []driver.NamedValue) (driver.Rows, error) {
	switch q := c.inner.(type) {
	case driver.QueryerContext:
		t := readText(query)
		extended := c.directExtended(args, false)
		return run(c, ctx, &t, wayDirect, len(args), extended, func(ctx context.Context) (driver.Rows, error) {
			return q.QueryContext(ctx, query, args)
		}, nil)
	case driver.Queryer: //nolint:staticcheck // legacy drivers
		values, err := namedValuesToValues(args)
		if err != nil {
			return nil, err
		}
		t := readText(query)
		return run(c, ctx, &t, wayDirect, len(args), true, func(ctx context.Context) (driver.Rows, error) {
			if err := ctx.Err(); err != nil {
				return nil, err
			}
			return q.Query(query, values)
		}, nil)
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

// Ping passes to the inner connection, through the step's phase check
// (a ping in a lazy transaction whose BEGIN failed would run outside it);
// without a Pinger it returns nil, as database/sql does.
func (c *conn) Ping(ctx context.Context) error {
	p, ok := c.inner.(driver.Pinger)
	if !ok {
		return nil
	}
	t := stmtText{}
	_, err := run(c, ctx, &t, wayPing, 0, false, func(ctx context.Context) (struct{}, error) {
		return struct{}{}, p.Ping(ctx)
	}, nil)
	return err
}

// clientStmt returns, on a pool_pgbouncer pool, a statement that is not
// prepared on the server: each execution sends the query with its
// arguments (pgx's exec mode, lib/pq's binary_parameters: one round trip on
// the unnamed statement), since a transaction-mode pooler may run the next
// execution on a server connection that never saw a named PREPARE. It
// returns nil — prepare on the server — otherwise, or when the inner
// connection cannot run a query with arguments directly.
func (c *conn) clientStmt(query string) driver.Stmt {
	if !c.c.cfg.pgbouncer || (c.pgx == nil && sqltext.Keyword(query) == "copy") {
		// COPY is no query with arguments: lib/pq's Prepare starts
		// COPY FROM STDIN, and each Exec sends a row. It needs no named
		// statement, and works through a transaction-mode pooler inside
		// a transaction.
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
