package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/warmpg/warmpg/internal/sqltext"
)

// A prepared statement's text is read once, at Prepare; when it may change
// the session or begin or end a transaction, the statement is wrapped so
// that each execution records that on the connection it runs on, as
// ExecContext and QueryContext do for a statement run directly. On a
// connection with a deadline watchdog (lib/pq, watchdog.go) every statement
// is wrapped, so that each execution arms it as a direct statement does. On
// a pool_autocommit pool every statement is wrapped too, since
// database/sql runs a statement prepared outside a transaction inside one
// (Tx.Stmt): executed inside a pool_autocommit transaction, a statement that
// is not a plain read upgrades it as the same text run directly would
// (autocommit.go). On pgx and lib/pq every statement is wrapped as well:
// any statement whose result columns a schema change altered fails once
// the server revalidates it, and the wrapper prepares it again and resends
// it (replan.go); that runs only on the error. Any other statement is
// returned unwrapped and costs nothing per execution.

// wrapStmt is the one place a statement prepared by the inner driver, with
// text query, is wrapped.
func (c *conn) wrapStmt(st driver.Stmt, query string) driver.Stmt {
	info := scanStatement(query)
	replans := (c.pgx != nil || isPQ(c.inner)) && c.c.cfg.replan
	if !info.Has(notedEffects) && c.nc == nil && !c.c.cfg.autocommit && !replans {
		return st
	}
	s := &stmt{Stmt: st, c: c, info: info, replans: replans, sql: query}
	if c.pgx != nil {
		c.trackPrepared(query, 1)
	}
	if c.c.cfg.autocommit {
		s.query = query
	}
	if _, ok := st.(driver.ColumnConverter); ok { //nolint:staticcheck // kept for drivers that have it
		return stmtCC{s}
	}
	return s
}

// The optional interfaces database/sql treats the same whether they are
// missing or fall back as below are always declared. ColumnConverter is
// not: database/sql skips converting arguments beyond NumInput for a
// statement that has one, so stmtCC declares it only for an inner
// statement that has it.
var (
	_ driver.Stmt              = (*stmt)(nil)
	_ driver.StmtExecContext   = (*stmt)(nil)
	_ driver.StmtQueryContext  = (*stmt)(nil)
	_ driver.NamedValueChecker = (*stmt)(nil)
	_ driver.ColumnConverter   = stmtCC{} //nolint:staticcheck // see above
)

// stmt is a prepared statement whose executions upgrade a pool_autocommit
// transaction when they must, note info on c, and arm c's watchdog, if it
// has one. Exec and Query without a context do the first two.
type stmt struct {
	driver.Stmt
	c    *conn
	info sqltext.Info // what noteStatement reads (notedEffects only)
	// query is the text, on a pool_autocommit pool ("" elsewhere); read
	// says whether it is a plain read, once scanned is set: at its first
	// execution inside a pool_autocommit transaction (executions are
	// serialised by database/sql's lock on the connection).
	query         string
	scanned, read bool
	// replans says whether an execution that fails because a schema change
	// altered the result columns is prepared again and resent (replan.go);
	// sql is the statement's text.
	replans bool
	sql     string
	closed  bool
}

// Close closes the inner statement (and, on pgx, stops counting it as
// prepared on its connection).
func (s *stmt) Close() error {
	if s.c.pgx != nil && !s.closed {
		s.closed = true
		s.c.trackPrepared(s.sql, -1)
	}
	return s.Stmt.Close()
}

// before upgrades a pool_autocommit transaction open on the connection to
// a real one when the statement is not a plain read.
func (s *stmt) before(ctx context.Context) error {
	if err := s.c.beforeLazy(); err != nil {
		return err
	}
	t := s.c.ac
	if t == nil || t.tx != nil || s.query == "" {
		return nil
	}
	if !s.scanned {
		s.read, s.scanned = sqltext.Scan(s.query).PlainRead(), true
	}
	if s.read {
		return nil
	}
	return t.upgrade(ctx)
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if err := s.before(ctx); err != nil {
		return nil, err
	}
	s.c.noteStale(ctx)
	s.c.note(s.info)
	var res driver.Result
	var err error
	disarm := s.c.watch(ctx)
	res, err = s.runExec(ctx, args)
	if err != nil && s.replans && s.c.mayResend(ctx, err, s.sql, true) {
		if rerr := s.replan(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		} else {
			s.c.replanned(true)
			res, err = s.runExec(ctx, args)
		}
	}
	err = s.c.ctxErr(ctx, s.c.afterLazy(err))
	disarm()
	s.c.noteDone(s.info, err)
	return res, err
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.before(ctx); err != nil {
		return nil, err
	}
	s.c.noteStale(ctx)
	s.c.note(s.info)
	var rows driver.Rows
	var err error
	disarm := s.c.watch(ctx)
	rows, err = s.runQuery(ctx, args)
	if err != nil && s.replans && s.c.mayResend(ctx, err, s.sql, true) {
		if rerr := s.replan(ctx); rerr != nil {
			err = errors.Join(err, rerr)
		} else {
			s.c.replanned(true)
			rows, err = s.runQuery(ctx, args)
		}
	}
	err = s.c.afterLazy(err)
	if err != nil || !s.c.watchRows(ctx) {
		disarm()
		return rows, s.c.ctxErr(ctx, err)
	}
	return &watchedRows{Rows: rows, c: s.c, ctx: ctx, disarm: disarm}, nil
}

// runExec runs the inner statement once.
func (s *stmt) runExec(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		return e.ExecContext(ctx, args)
	}
	values, err := namedValuesToValues(args)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Stmt.Exec(values) //nolint:staticcheck // fallback for statements without ExecContext
}

// runQuery runs the inner statement once.
func (s *stmt) runQuery(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if q, ok := s.Stmt.(driver.StmtQueryContext); ok {
		return q.QueryContext(ctx, args)
	}
	values, err := namedValuesToValues(args)
	if err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	return s.Stmt.Query(values) //nolint:staticcheck // fallback for statements without QueryContext
}

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	if err := s.before(context.Background()); err != nil {
		return nil, err
	}
	s.c.note(s.info)
	res, err := s.Stmt.Exec(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
	err = s.c.afterLazy(err)
	s.c.noteDone(s.info, err)
	return res, err
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	if err := s.before(context.Background()); err != nil {
		return nil, err
	}
	s.c.note(s.info)
	rows, err := s.Stmt.Query(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
	return rows, s.c.afterLazy(err)
}

// CheckNamedValue asks the inner statement, else the connection, as
// database/sql would; driver.ErrSkip sends database/sql on to its own
// conversion.
func (s *stmt) CheckNamedValue(nv *driver.NamedValue) error {
	if n, ok := s.Stmt.(driver.NamedValueChecker); ok {
		return n.CheckNamedValue(nv)
	}
	if n, ok := s.c.inner.(driver.NamedValueChecker); ok {
		return n.CheckNamedValue(nv)
	}
	return driver.ErrSkip
}

// Unwrap returns the inner driver's statement.
func (s *stmt) Unwrap() driver.Stmt { return s.Stmt }

// stmtCC is a stmt whose inner statement is a driver.ColumnConverter.
type stmtCC struct{ *stmt }

func (s stmtCC) ColumnConverter(idx int) driver.ValueConverter {
	return s.Stmt.(driver.ColumnConverter).ColumnConverter(idx) //nolint:staticcheck // see wrapStmt
}
