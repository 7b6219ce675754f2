package warmpg

import (
	"context"
	"database/sql/driver"

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
// (autocommit.go). Any other statement is returned unwrapped and costs
// nothing per execution.

// wrapStmt is the one place a statement prepared by the inner driver, with
// text query, is wrapped.
func (c *conn) wrapStmt(st driver.Stmt, query string) driver.Stmt {
	info := scanStatement(query)
	if !info.Has(notedEffects) && c.nc == nil && !c.c.cfg.autocommit {
		return st
	}
	s := &stmt{Stmt: st, c: c, info: info}
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
}

// before upgrades a pool_autocommit transaction open on the connection to
// a real one when the statement is not a plain read.
func (s *stmt) before(ctx context.Context) error {
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
	s.c.note(s.info)
	var res driver.Result
	var err error
	disarm := s.c.watch(ctx)
	if e, ok := s.Stmt.(driver.StmtExecContext); ok {
		res, err = e.ExecContext(ctx, args)
	} else {
		var values []driver.Value
		if values, err = namedValuesToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				res, err = s.Stmt.Exec(values) //nolint:staticcheck // fallback for statements without ExecContext
			}
		}
	}
	err = s.c.ctxErr(ctx, err)
	disarm()
	s.c.noteDone(s.info, err)
	return res, err
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	if err := s.before(ctx); err != nil {
		return nil, err
	}
	s.c.note(s.info)
	var rows driver.Rows
	var err error
	disarm := s.c.watch(ctx)
	if q, ok := s.Stmt.(driver.StmtQueryContext); ok {
		rows, err = q.QueryContext(ctx, args)
	} else {
		var values []driver.Value
		if values, err = namedValuesToValues(args); err == nil {
			if err = ctx.Err(); err == nil {
				rows, err = s.Stmt.Query(values) //nolint:staticcheck // fallback for statements without QueryContext
			}
		}
	}
	if err != nil || !s.c.armed() {
		disarm()
		return rows, s.c.ctxErr(ctx, err)
	}
	return &watchedRows{Rows: rows, c: s.c, ctx: ctx, disarm: disarm}, nil
}

func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	if err := s.before(context.Background()); err != nil {
		return nil, err
	}
	s.c.note(s.info)
	res, err := s.Stmt.Exec(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
	s.c.noteDone(s.info, err)
	return res, err
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	if err := s.before(context.Background()); err != nil {
		return nil, err
	}
	s.c.note(s.info)
	return s.Stmt.Query(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
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
