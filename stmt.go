package warmpg

import (
	"context"
	"database/sql/driver"
)

// A statement the inner driver prepared is wrapped, so that each execution
// takes the statement step (step.go) as a statement run directly does:
// the phase check, the pool_autocommit upgrade (database/sql runs a
// statement prepared outside a transaction inside one: Tx.Stmt), the
// effects its text notes on the connection it runs on, the deadline
// watchdog (lib/pq), the replan resend (on pgx and lib/pq, any statement
// whose result columns a schema change altered fails once the server
// revalidates it: the wrapper prepares it again and resends it), and the
// lazy BEGIN's outcome. Its text is read once, at Prepare.

// wrapStmt is the one place a statement prepared by the inner driver, with
// text query, is wrapped.
func (c *conn) wrapStmt(st driver.Stmt, query string) driver.Stmt {
	s := &stmt{Stmt: st, c: c, text: readText(query), replans: (c.pgx != nil || isPQ(c.inner)) && c.c.cfg.replan}
	if c.pgx != nil {
		c.trackPrepared(query, 1)
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

// stmt is a prepared statement whose executions take the statement step.
// Executions are serialised by database/sql's lock on the connection, so
// text (whose full Scan is made at most once, when a feature needs it) is
// read and written without a lock.
type stmt struct {
	driver.Stmt
	c    *conn
	text stmtText
	// replans says whether an execution that fails because a schema change
	// altered the result columns is prepared again and resent (replan.go).
	replans bool
	closed  bool
}

// Close closes the inner statement (and, on pgx, stops counting it as
// prepared on its connection).
func (s *stmt) Close() error {
	if s.c.pgx != nil && !s.closed {
		s.closed = true
		s.c.trackPrepared(s.text.sql, -1)
	}
	return s.Stmt.Close()
}

// replanFunc is what makes the step's resend run a new plan, or nil.
func (s *stmt) replanFunc() func(context.Context) error {
	if !s.replans {
		return nil
	}
	return s.replan
}

func (s *stmt) ExecContext(ctx context.Context, args []driver.NamedValue) (driver.Result, error) {
	return run(s.c, ctx, &s.text, wayStmt, len(args), true, func(ctx context.Context) (driver.Result, error) {
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
	}, s.replanFunc())
}

func (s *stmt) QueryContext(ctx context.Context, args []driver.NamedValue) (driver.Rows, error) {
	return run(s.c, ctx, &s.text, wayStmt, len(args), true, func(ctx context.Context) (driver.Rows, error) {
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
	}, s.replanFunc())
}

// Exec and Query, without a context, take the same step on
// context.Background (database/sql never calls them on a statement with
// ExecContext and QueryContext).
func (s *stmt) Exec(args []driver.Value) (driver.Result, error) {
	return run(s.c, context.Background(), &s.text, wayStmt, len(args), true, func(context.Context) (driver.Result, error) {
		return s.Stmt.Exec(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
	}, nil)
}

func (s *stmt) Query(args []driver.Value) (driver.Rows, error) {
	return run(s.c, context.Background(), &s.text, wayStmt, len(args), true, func(context.Context) (driver.Rows, error) {
		return s.Stmt.Query(args) //nolint:staticcheck // the legacy method is part of driver.Stmt
	}, nil)
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
