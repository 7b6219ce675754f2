package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"log/slog"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"

	"github.com/warmpg/warmpg/internal/sqltext"
)

// Transparent replan after a schema change (docs/replan.md).
//
// A statement the server keeps prepared (pgx's statement cache, a
// *sql.Stmt) whose result columns a migration changed — ALTER TABLE …
// ADD/DROP COLUMN, a column's type — fails its next execution with
// SQLSTATE 0A000 "cached plan must not change result type", raised by the
// server's RevalidateCachedQuery while it binds the statement, before it
// executes anything. Outside a transaction nothing ran, so warmpg prepares
// the statement again where the inner driver would not do it by itself and
// sends it once more, on the same connection; the caller sees the new
// result. Inside a transaction the error aborted the transaction: it is
// returned.
//
// The retry runs only on that error: the happy path costs one comparison.

// Server error fields that name the error (never its message, which the
// server localizes).
const (
	replanCode    = "0A000"
	replanRoutine = "RevalidateCachedQuery"
)

// isReplanErr reports whether err is the server's "cached plan must not
// change result type", as pgx or lib/pq reports it.
func isReplanErr(err error) bool {
	if err == nil {
		return false
	}
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == replanCode && pgErr.Routine == replanRoutine
	}
	var pqErr *pq.Error
	if errors.As(err, &pqErr) {
		return string(pqErr.Code) == replanCode && pqErr.Routine == replanRoutine
	}
	return false
}

// canResend reports whether a statement that failed with err on c, with
// ctx, may be sent again: err is the replan error, ctx has not ended, the
// statement cannot have run anything (resendable) and the connection is in
// no transaction: its phase (state.go) is idle, or pool_autocommit's
// reads in autocommit — pgx's status after the error ('I'), for any other
// driver no BEGIN seen that has not ended (connState.maybeTx,
// conservative).
func (c *conn) canResend(ctx context.Context, err error, t *stmtText, extended bool) bool {
	if !c.replannable(ctx, err, t, extended) {
		return false
	}
	switch c.phase() {
	case phaseIdle, phaseAutocommit:
		return true
	}
	return false
}

// replannable reports what canResend and restartTx both need: err is the
// replan error, pool_replan is on, ctx has not ended, no watchdog fired,
// and the statement, sent with the extended protocol, cannot have run
// anything (resendable).
func (c *conn) replannable(ctx context.Context, err error, t *stmtText, extended bool) bool {
	return isReplanErr(err) && c.c.cfg.replan && ctx.Err() == nil && !c.timedOut.Load() &&
		extended && resendable(t)
}

// mayResend reports whether a statement that failed with err may be sent
// again: outside a transaction (canResend), or as the first statement of
// one, which is then begun again (restartTx).
func (c *conn) mayResend(ctx context.Context, err error, t *stmtText, extended bool) bool {
	if c.pgx != nil && isReplanErr(err) {
		c.c.markStale(t.sql)
	}
	return c.canResend(ctx, err, t, extended) || c.restartTx(ctx, err, t, extended)
}

// restartTx takes a statement that failed with the replan error as the
// first statement of its transaction on a pgx connection: the transaction
// ran nothing but its BEGIN — with pool_lazy_begin the BEGIN went in the
// same write as the statement, and nothing was written since; with
// BeginTx's own BEGIN, the statement was the only write since (warmpg's
// wire layer counts them, Raw's included). It rolls the
// aborted transaction back and begins it again (with pool_lazy_begin, the
// BEGIN goes with the resend), and reports whether the statement may be
// resent. Had the connection warmed the statement ahead (or cached it by an
// earlier use) before a migration changed its result columns, plain pgx,
// which would prepare it now, would not fail here (issue 23).
//
// A BEGIN that fails after the rollback leaves the transaction the
// application holds gone: the connection is closed, so that nothing it
// runs next runs outside a transaction.
func (c *conn) restartTx(ctx context.Context, err error, st *stmtText, extended bool) bool {
	if c.pgx == nil || c.bc == nil || !c.replannable(ctx, err, st, extended) {
		return false
	}
	pc := c.pgx.Conn()
	if pc.PgConn().TxStatus() != 'E' {
		return false
	}
	writes := c.bc.writes.Load()
	var begin string
	switch t := c.st.lazy; {
	case t != nil:
		out, at := c.bc.begun()
		if t.aborted || out != beginDone || writes != at {
			return false
		}
		begin = t.begin
	case c.st.freshBegin != "" && writes == c.st.freshWrites+1:
		begin = c.st.freshBegin
	default:
		return false
	}
	if _, err := pc.Exec(ctx, "rollback"); err != nil {
		return false
	}
	if c.st.lazy != nil {
		c.bc.arm(begin)
		return true
	}
	if _, err := pc.Exec(ctx, begin); err != nil {
		_ = pc.Close(ctx)
		return false
	}
	c.st.freshWrites = c.bc.writes.Load()
	return true
}

// resendable reports whether query, sent with the extended protocol, ran
// nothing when it failed with the replan error: the server raises it while
// it binds a statement it keeps prepared, before executing it — but only
// that statement's own error says so. A text with several statements is
// sent with the simple protocol (the extended one refuses it), where the
// statements before the failing one ran, and may have committed. CALL and
// DO may commit inside before the statement that failed (a procedure's or
// DO block's COMMIT), and EXECUTE runs a statement prepared with SQL
// PREPARE, which warmpg cannot prepare again: none of them is resent.
func resendable(t *stmtText) bool {
	if t.scan().Statements != 1 {
		return false
	}
	switch sqltext.Keyword(t.sql) {
	case "call", "do", "execute":
		return false
	}
	return true
}

// pgxExtended reports whether pgx sends a statement run directly with args
// with the extended protocol (exec: by ExecContext, else QueryContext), as
// pgx v5's Conn.Exec and Conn.Query decide: the connection's
// default_query_exec_mode, or a pgx.QueryExecMode given as an argument,
// and, for Exec, the simple protocol whenever no argument is left. A
// QueryRewriter other than pgx's named arguments may rewrite anything: no.
func (c *conn) pgxExtended(args []driver.NamedValue, exec bool) bool {
	mode := c.execMode
	n := len(args)
options:
	for _, a := range args {
		switch v := a.Value.(type) {
		case pgx.QueryExecMode:
			mode = v
		case pgx.QueryResultFormats, pgx.QueryResultFormatsByOID:
		case pgx.NamedArgs:
			n += len(v)
		case pgx.StrictNamedArgs:
			n += len(v)
		case pgx.QueryRewriter:
			return false
		default:
			break options
		}
		n--
	}
	if mode == pgx.QueryExecModeSimpleProtocol {
		return false
	}
	return !exec || n > 0
}

// directExtended reports whether a statement run directly with args goes
// by the extended protocol: on pgx as pgxExtended decides, on any other
// driver (lib/pq) whenever it has arguments.
func (c *conn) directExtended(args []driver.NamedValue, exec bool) bool {
	if c.pgx == nil {
		return len(args) > 0
	}
	return c.pgxExtended(args, exec)
}

// replanned counts and logs one statement sent again.
func (c *conn) replanned(prepared bool) {
	c.c.stats.replans.Add(1)
	c.c.cfg.logEvent(slog.LevelDebug, "warmpg: result type of a cached statement changed; prepared again and resent", "prepared_stmt", prepared)
}

// repreparePgx replaces, on a pgx connection, the statement prepared under
// the name query (what stdlib's PrepareContext does: name == SQL) with a
// new one, when warmpg saw one prepared and not yet closed on c. pgx runs
// such a statement, by *sql.Stmt or by the same text run directly, instead
// of its statement cache, and would run the stale one again; the cache's
// own entry pgx dropped itself on the error. stdlib's Stmt executes by its
// text, so it runs the new statement and decodes the new columns.
func (c *conn) repreparePgx(ctx context.Context, query string) error {
	if c.prepared[query] == 0 {
		return nil
	}
	pc := c.pgx.Conn()
	if err := pc.Deallocate(ctx, query); err != nil {
		return err
	}
	_, err := pc.Prepare(ctx, query, query)
	return err
}

// trackPrepared records that a pgx statement with text query was prepared
// (n = 1) or closed (n = -1) on c.
func (c *conn) trackPrepared(query string, n int) {
	if c.prepared == nil {
		c.prepared = make(map[string]int)
	}
	if c.prepared[query] += n; c.prepared[query] <= 0 {
		delete(c.prepared, query)
	}
}

// replan makes the statement s runnable again after the replan error: on
// pgx, the named statement is prepared again (repreparePgx); on any other
// driver (lib/pq) a new inner statement is prepared and replaces the old
// one, which is closed: the old one's result columns are fixed.
func (s *stmt) replan(ctx context.Context) error {
	c := s.c
	if c.pgx != nil {
		return c.repreparePgx(ctx, s.text.sql)
	}
	var st driver.Stmt
	var err error
	if p, ok := c.inner.(driver.ConnPrepareContext); ok {
		st, err = p.PrepareContext(ctx, s.text.sql)
	} else {
		st, err = c.inner.Prepare(s.text.sql)
	}
	if err != nil {
		return err
	}
	old := s.Stmt
	s.Stmt = st
	_ = old.Close()
	return nil
}
