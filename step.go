package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"

	"github.com/warmpg/warmpg/internal/sqltext"
)

// The statement step: the one path every statement takes through a warmpg
// connection. A feature that acts on statements plugs in here, and only
// here.
//
// Ways in, each a thin caller of the step:
//
//	conn.ExecContext, conn.QueryContext        conn.go    (a clientStmt, pool_pgbouncer, calls these)
//	stmt.ExecContext, stmt.QueryContext        stmt.go    (Prepare's statements; Tx.Stmt runs them too)
//	conn.PrepareContext, conn.Ping             conn.go    (enter's phase check and leave only)
//	(*sql.Conn).Raw                            lazywire.go (pgx used directly: warmpg sees only the
//	                                                       wire, where the BEGIN goes and a statement
//	                                                       after a failed BEGIN is refused)
//
// The step, in order (run[T]):
//
//  1. text: the statement's text is read once (stmtText): sqltext.MayHave's
//     pre-filter for the effects warmpg notes, a full sqltext.Scan only when
//     that or a feature needs it, kept for the rest of the step (and, for a
//     prepared statement, for every execution);
//  2. enter: the connection's state (state.go) decides: a statement in a
//     lazy transaction whose BEGIN failed is refused; in a pool_autocommit
//     transaction, one that is not a plain read first begins the real
//     transaction (autocommit.go); what the text may do to the transaction
//     and the session is noted; a statement run directly feeds statement
//     warming (statements.go), and statements the pool found stale are
//     dropped from this connection's cache;
//  3. send: the inner driver runs it, under the deadline watchdog (lib/pq,
//     watchdog.go) or pgx's cancel handler (cancelpgx.go); with
//     pool_lazy_begin its BEGIN goes in the same write (lazywire.go);
//  4. resend: the replan error (0A000, a schema change altered the result
//     columns of a cached statement) is resent once when nothing can have
//     run (replan.go, which holds the whole policy);
//  5. leave: the lazy BEGIN's outcome is read back into the error and the
//     state (lazybegin.go), the state notes a transaction the statement
//     ended, and an error the context's end caused is reported as the
//     context's.
//
// Commit, Rollback and BeginTx move the state between transactions;
// ResetSession (reset.go) reads it when the connection is handed out again.

// stmtText is a statement's text as the step reads it, once.
type stmtText struct {
	sql string
	// info is what the statement may do, as far as noted effects go
	// (sqltext.MayHave first: the single SELECT, INSERT, UPDATE or DELETE
	// most statements are costs no Scan).
	info sqltext.Info
	// full: info is a full Scan's (every effect, and the statement count).
	full bool
}

// readText reads query for the step.
func readText(query string) stmtText {
	if !sqltext.MayHave(query, noted) {
		return stmtText{sql: query}
	}
	return stmtText{sql: query, info: sqltext.Scan(query), full: true}
}

// scan returns the full Scan of the text, reading it at most once.
func (t *stmtText) scan() sqltext.Info {
	if !t.full {
		t.info, t.full = sqltext.Scan(t.sql), true
	}
	return t.info
}

// way is how a statement reached the connection.
type way uint8

const (
	wayDirect  way = iota // ExecContext, QueryContext: the text with its arguments
	wayStmt               // an execution of a prepared statement
	wayPrepare            // Prepare: nothing runs yet
	wayPing               // Ping: nothing of the application's runs
)

// enter is the step's half before the statement is sent (see above). args
// is the number of arguments of a statement run directly.
func (c *conn) enter(ctx context.Context, t *stmtText, w way, args int) error {
	if c.st.lazy != nil || c.st.ac != nil {
		switch c.phase() {
		case phaseFailed:
			c.st.lazy.aborted = true
			return abortedErr()
		case phaseAutocommit:
			if (w == wayDirect || w == wayStmt) && !t.scan().PlainRead() {
				if err := c.st.ac.upgrade(ctx); err != nil {
					return err
				}
			}
		}
	}
	if w == wayDirect || w == wayStmt {
		c.st.note(t.info)
	}
	if w == wayDirect {
		c.learn(t.sql, args)
	}
	c.noteStale(ctx)
	return nil
}

// leave is the step's half after the inner driver returned err (see
// above); simple says the statement was run directly, without arguments,
// by the simple protocol: its text is what went on the wire.
func (c *conn) leave(ctx context.Context, t *stmtText, err error, simple bool) error {
	if c.st.lazy != nil && err != nil {
		err = c.afterLazy(err)
		if simple {
			err = c.lazySyntax(ctx, t.sql, err)
		}
	}
	c.st.done(t.info, err)
	if err != nil && isReadOnlyErr(err) {
		c.noteWriteRefused() // a writer demoted? (writer.go)
	}
	return c.ctxErr(ctx, err)
}

// run is the statement step (see above) for a statement that returns T
// (driver.Result, driver.Rows): send runs it once in the inner driver;
// replan, called before the step resends a prepared statement the replan
// error failed, makes the resend run the new plan (nil: never resent). A
// statement run directly on pgx is prepared again under its name when
// pgx holds one (repreparePgx; pgx drops the stale entry of its statement
// cache itself); lib/pq runs one on the unnamed statement, prepared anew
// each time, and it is never resent. Rows keep the watchdog or cancel
// handler armed until they are closed.
func run[T any](c *conn, ctx context.Context, t *stmtText, w way, args int, extended bool,
	send func(context.Context) (T, error), replan func(context.Context) error) (T, error) {
	if err := c.enter(ctx, t, w, args); err != nil {
		var zero T
		return zero, err
	}
	disarm := c.watch(ctx)
	res, err := send(ctx)
	if err != nil && isReplanErr(err) {
		if replan == nil && w == wayDirect && c.pgx != nil {
			replan = func(ctx context.Context) error { return c.repreparePgx(ctx, t.sql) }
		}
		if replan != nil && c.mayResend(ctx, err, t, extended) {
			if rerr := replan(ctx); rerr != nil {
				err = errors.Join(err, rerr)
			} else {
				c.replanned(w == wayStmt)
				res, err = send(ctx)
			}
		}
	}
	err = c.leave(ctx, t, err, w == wayDirect && !extended && args == 0)
	if rows, ok := any(res).(driver.Rows); ok && err == nil && c.watchRows(ctx) {
		return any(&watchedRows{Rows: rows, c: c, ctx: ctx, disarm: disarm}).(T), nil
	}
	disarm()
	return res, err
}
