package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"reflect"
	"slices"
	"strings"
	"syscall"

	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
)

// What ResetSession does, per mode, when database/sql hands out a connection
// that was used before:
//
//	none      nothing (the inner driver's own ResetSession still runs)
//	check     local state only; on the clean path nothing is sent. See check.
//	ping      a ping
//	rollback  ROLLBACK
//	discard   resetSession (DISCARD ALL but for DEALLOCATE ALL, see below)
//
// In none and ping modes a driver that reports no transaction status
// (lib/pq) gets a ROLLBACK instead when a statement it ran may have begun a
// transaction (connState.maybeTx); pgx discards such a connection itself.
// No mode hands the next user a transaction left open.
//
// An error that must discard the connection wraps driver.ErrBadConn: a
// reset never runs a statement of the application's, so the retry
// database/sql then makes cannot apply anything twice.

// discardSQL is what DISCARD ALL does, without DEALLOCATE ALL: prepared
// statements belong to the client (pgx's statement cache, database/sql's
// *sql.Stmt) and must keep working, so they stay. Unlike DISCARD ALL it may
// run inside the implicit transaction of a multi-statement query.
const discardSQL = "SET SESSION AUTHORIZATION DEFAULT; RESET ALL; CLOSE ALL; UNLISTEN *; " +
	"SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES"

// reportedParams are the settings the server reports (ParameterStatus) that
// say who the session is and how it reads and writes data. In check mode a
// change since connect is reset with discardSQL (and settle); if it
// survives that, the connection is discarded. in_hot_standby is apart (see
// checkServerRole). search_path is reported by PostgreSQL 18 and later
// only; a setting the server does not report is not checked.
var reportedParams = []string{
	"session_authorization", "is_superuser", "default_transaction_read_only", "in_hot_standby",
	"TimeZone", "DateStyle", "IntervalStyle", "client_encoding", "application_name", "search_path",
}

// errBadConn wraps driver.ErrBadConn with why warmpg discarded a connection.
func errBadConn(why string, cause error) error {
	return &badConnError{why: why, cause: cause}
}

// badConnError is driver.ErrBadConn with why warmpg discarded a connection
// and, if an operation failed, its error.
type badConnError struct {
	why   string
	cause error
}

func (e *badConnError) Error() string {
	if e.cause != nil {
		return fmt.Sprintf("warmpg: %s: %v (%v)", e.why, driver.ErrBadConn, e.cause)
	}
	return fmt.Sprintf("warmpg: %s: %v", e.why, driver.ErrBadConn)
}

func (e *badConnError) Unwrap() []error {
	if e.cause != nil {
		return []error{driver.ErrBadConn, e.cause}
	}
	return []error{driver.ErrBadConn}
}

// ResetSession runs before database/sql hands out a connection that was used
// before. It does what the pool_reset mode says (see the table above), then
// the inner driver's own ResetSession — except, in check mode, for the pgx
// connector warmpg builds itself, whose ResetSession would only repeat
// warmpg's checks (its ping on first reuse and after a second idle is
// turned off). The clean path of check sends nothing.
func (c *conn) ResetSession(ctx context.Context) error {
	if c.st.lazy != nil {
		// database/sql ends every transaction before the next use; this
		// is only in case a BEGIN is still waiting.
		c.bc.end()
	}
	c.st.endTx()
	out, err := c.reset(ctx)
	c.st.maybeTx, c.st.maybeSession = false, false
	// In check mode warmpg has just made the checks the pgx connector it
	// built would repeat (closed, transaction status); every other mode
	// keeps pgx's own, which discards a connection left in a transaction.
	skipInner := c.pgx != nil && c.c.ownPgx && c.c.cfg.reset == ResetCheck
	if err == nil && !skipInner {
		if r, ok := c.inner.(driver.SessionResetter); ok {
			if err = r.ResetSession(ctx); err != nil && !errors.Is(err, driver.ErrBadConn) {
				// database/sql ignores any other error and reuses the
				// connection; the inner driver meant it as a refusal.
				err = errBadConn("inner driver refused the connection", err)
			}
		}
	}
	if err != nil {
		out = outDiscarded
		c.c.cfg.logDiscard("reuse", err)
	}
	c.c.stats.count(out)
	if err == nil {
		c.checkout()
	}
	return err
}

// errEvicted refuses a connection opened before the last Evict (evict.go).
var errEvicted = errBadConn("evicted (warmpg.Evict)", nil)

// errExpired refuses a connection whose own lifetime has passed.
var errExpired = errBadConn("connection lifetime (pool_max_conn_lifetime) passed", nil)

// logDiscard logs that a connection was discarded (where: "reuse",
// "return to pool", "ready store") and why: at Debug when that is routine
// (its lifetime ended, an Evict retired it), else at Info.
func (cfg *config) logDiscard(where string, why error) {
	l := slog.LevelInfo
	if why == errExpired || why == errEvicted {
		l = slog.LevelDebug
	}
	if !cfg.logs(l) {
		return
	}
	attrs := []any{"at", where, "reason", why.Error()}
	var bc *badConnError
	if errors.As(why, &bc) {
		attrs[3] = bc.why
		if bc.cause != nil {
			attrs = append(attrs, "error", bc.cause.Error())
		}
	}
	cfg.log().Log(context.Background(), l, "warmpg: discarded connection", attrs...)
}

// logEscalation logs, at Debug, a check-mode reuse that had to send
// something, and why.
func (cfg *config) logEscalation(out outcome, why string) {
	cfg.logEvent(slog.LevelDebug, "warmpg: reuse escalated", "outcome", out.String(), "reason", why)
}

// outcome is what one reuse cost, the most expensive step counting.
type outcome int

const (
	outClean outcome = iota
	outPinged
	outRolledBack
	outReset
	outDiscarded
)

func (o outcome) String() string {
	switch o {
	case outClean:
		return "clean"
	case outPinged:
		return "pinged"
	case outRolledBack:
		return "rolled_back"
	case outReset:
		return "reset"
	}
	return "discarded"
}

func (c *conn) reset(ctx context.Context) (outcome, error) {
	c.disarm()
	if err := c.unusable(); err != nil {
		return outDiscarded, err
	}
	// A writer pool's connection whose server became read-only (writer.go).
	if err := c.checkDemoted(); err != nil {
		return outDiscarded, err
	}
	if err := c.recheckRole(ctx); err != nil {
		return outDiscarded, err
	}
	switch c.c.cfg.reset {
	case ResetNone, ResetPing:
		// pgx's own ResetSession discards a connection left in a
		// transaction; for a driver that reports no transaction status
		// (lib/pq), a statement that may have begun one gets a ROLLBACK,
		// so that in no mode does the next user run inside it.
		if c.pgx == nil && c.st.maybeTx {
			if err := c.exec(ctx, "ROLLBACK"); err != nil {
				return outDiscarded, errBadConn("ROLLBACK of a transaction left open failed", err)
			}
			return outRolledBack, nil
		}
		if c.c.cfg.reset == ResetNone {
			return outClean, nil
		}
		if err := c.innerPing(ctx); err != nil {
			return outDiscarded, errBadConn("ping before reuse failed", err)
		}
		if err := c.checkServerRole(); err != nil {
			return outDiscarded, err
		}
		return outPinged, nil
	case ResetRollback:
		if err := c.exec(ctx, "ROLLBACK"); err != nil {
			return outDiscarded, errBadConn("ROLLBACK before reuse failed", err)
		}
		if err := c.checkServerRole(); err != nil {
			return outDiscarded, err
		}
		return outRolledBack, nil
	case ResetDiscard:
		if c.maybeInTx() {
			if err := c.exec(ctx, "ROLLBACK"); err != nil {
				return outDiscarded, errBadConn("ROLLBACK before reuse failed", err)
			}
		}
		if err := c.resetSession(ctx); err != nil {
			return outDiscarded, err
		}
		return outReset, nil
	}
	return c.check(ctx)
}

// check is the default mode. It looks, without I/O, at:
//
//  1. the socket (a non-blocking MSG_PEEK recv): closed or reset by the
//     server → discard; bytes the server sent unasked (a FATAL before it
//     closed, or a harmless notice) → ping, which reads them and fails on a
//     FATAL;
//  2. the transaction status: in or after a failed transaction → ROLLBACK
//     and keep the connection (pgx would discard it and dial anew);
//  3. the session: a reported setting of reportedParams changed, or a
//     statement run since the last reset may have changed the session
//     (connState, state.go) → resetSession; in_hot_standby changed → see
//     checkServerRole.
//
// pgx reports transaction status and settings. lib/pq and other drivers
// report neither: for them the transaction status is what the statements'
// text says (a BEGIN or START not followed by a COMMIT or ROLLBACK that
// succeeded → ROLLBACK). A change made inside a function, a procedure or a
// DO block is not in the text and is not seen.
func (c *conn) check(ctx context.Context) (outcome, error) {
	out := outClean
	switch c.peek() {
	case peekClosed:
		return outDiscarded, errBadConn("server closed the connection", nil)
	case peekPending:
		if c.pgx == nil {
			// Only pgx says what it read. What a server sends an idle
			// session is a FATAL before it closes it (a ping would only
			// fail), a notification for a LISTEN, or a notice: for any
			// other driver the session may no longer be what it was, and
			// a new one costs no more than the ping that might not tell.
			return outDiscarded, errBadConn("server sent data unasked, which this driver does not report", nil)
		}
		fallthrough
	case peekUnknown:
		if err := c.innerPing(ctx); err != nil {
			return outDiscarded, errBadConn("server sent data unasked and the ping that read it failed", err)
		}
		if c.innerClosed() {
			return outDiscarded, errBadConn("connection closed", nil)
		}
		out = outPinged
		c.c.cfg.logEscalation(out, "server sent data unasked")
	}
	if c.maybeInTx() {
		if err := c.exec(ctx, "ROLLBACK"); err != nil {
			return outDiscarded, errBadConn("ROLLBACK of a transaction left open failed", err)
		}
		c.st.maybeTx = false
		out = outRolledBack
		c.c.cfg.logEscalation(out, "transaction left open")
	}
	if !c.st.dirty() && !c.paramsChanged() {
		return out, nil
	}
	why := "a statement may have changed the session"
	if !c.st.dirty() {
		// in_hot_standby is one of reportedParams: checkServerRole, which
		// may take it out of the comparison, need only run when
		// something changed.
		if err := c.checkServerRole(); err != nil {
			return outDiscarded, err
		}
		if !c.paramsChanged() {
			return out, nil
		}
		why = "session settings changed"
	}
	if err := c.resetSession(ctx); err != nil {
		return outDiscarded, err
	}
	out = outReset
	c.c.cfg.logEscalation(out, why)
	return out, nil
}

// deallocSQL deallocates the statements prepared with SQL PREPARE, and
// only those: pg_prepared_statements.from_sql is false for those a client
// prepared through the protocol (pgx's statement cache, a *sql.Stmt),
// which keep working. A DO block may run in the implicit transaction of a
// multi-statement query, and on a hot standby.
const deallocSQL = "DO $warmpg$DECLARE s text; BEGIN " +
	"FOR s IN SELECT name FROM pg_prepared_statements WHERE from_sql LOOP " +
	"EXECUTE 'DEALLOCATE ' || quote_ident(s); END LOOP; END$warmpg$"

// resetSession returns the session to what it was when the connection was
// handed out first, in one round trip: discardSQL; deallocSQL after a
// statement that may have run SQL PREPARE (a DO block costs the server
// about as much again as discardSQL, so not at every reset); and
// restoreSQL, what the inner connector's own setup had changed. Then
// settle.
func (c *conn) resetSession(ctx context.Context) error {
	q := discardSQL
	if c.st.maybePrepared {
		q += "; " + deallocSQL
	}
	q += c.restoreSQL
	if err := c.exec(ctx, q); err != nil {
		return errBadConn("session reset failed", err)
	}
	c.st.maybeSession, c.st.maybePrepared = false, false
	if err := c.checkServerRole(); err != nil {
		return err
	}
	return c.settle(ctx)
}

// paramsChanged reports whether a setting pgx reports differs from its
// value at connect; false for drivers that report none.
func (c *conn) paramsChanged() bool {
	if c.pgx == nil {
		return false
	}
	pg := c.pgx.Conn().PgConn()
	for i, k := range reportedParams {
		if pg.ParameterStatus(k) != c.params[i] {
			return true
		}
	}
	return false
}

// hotStandbyParam is in_hot_standby's index in reportedParams.
var hotStandbyParam = slices.Index(reportedParams, "in_hot_standby")

// checkServerRole handles in_hot_standby having changed since connect: the
// standby this connection was made to has been promoted. No reset can undo
// that, and nothing in the session is wrong for it — unless the DSN's
// target_session_attrs asked for a standby, which the server no longer is:
// then the connection is refused, and database/sql dials one that matches
// (or fails the way a new connection does). Otherwise the new value is
// recorded and the connection kept, with no round trip.
//
// PostgreSQL tells a session in_hot_standby's new value with the reply to
// its next statement, not at the promotion: the first reuse of each
// connection after a promotion cannot know, in check mode; ping, rollback
// and discard modes learn it from their own round trip.
func (c *conn) checkServerRole() error {
	if c.pgx == nil {
		return nil
	}
	now := c.pgx.Conn().PgConn().ParameterStatus("in_hot_standby")
	was := c.params[hotStandbyParam]
	if now == was {
		return nil
	}
	if c.c.cfg.standbyOnly {
		return errBadConn("the server left hot standby (promoted), and target_session_attrs asks for a standby", nil)
	}
	c.params[hotStandbyParam] = now
	c.c.cfg.logEvent(slog.LevelDebug, "warmpg: server's in_hot_standby changed; connection kept", "was", was, "now", now)
	return nil
}

// settle runs after discardSQL. RESET ALL returns each setting to the
// session's default, which is what the connection started with — except
// through a transaction-mode pooler, where the session is the pooler's
// server connection: its defaults are not this client's (and the pooler
// then records them as the client's own). So reported settings that still
// differ from their values at connect are set back with set_config, one
// round trip that only that case pays; if some still differ (the server
// itself changed: a promoted standby's in_hot_standby, or a different
// role), the connection is refused.
func (c *conn) settle(ctx context.Context) error {
	if !c.paramsChanged() {
		return nil
	}
	if c.pgx != nil {
		var q strings.Builder
		var args [][]byte
		pg := c.pgx.Conn().PgConn()
		for i, k := range reportedParams {
			if !restorable[k] || c.params[i] == "" || pg.ParameterStatus(k) == c.params[i] {
				continue
			}
			if len(args) == 0 {
				q.WriteString("select ")
			} else {
				q.WriteString(", ")
			}
			fmt.Fprintf(&q, "set_config($%d, $%d, false)", len(args)+1, len(args)+2)
			args = append(args, []byte(k), []byte(c.params[i]))
		}
		if len(args) > 0 {
			if _, err := pg.ExecParams(ctx, q.String(), args, nil, nil, nil).Close(); err != nil {
				return errBadConn("restoring the connection's settings after a session reset failed", err)
			}
		}
	}
	if c.paramsChanged() {
		return errBadConn("session settings changed and could not be reset", nil)
	}
	return nil
}

// restorable are the reportedParams settle may set back: plain settings.
// Who the session is (session_authorization, is_superuser) and what the
// server is (in_hot_standby) are not restored.
var restorable = map[string]bool{
	"default_transaction_read_only": true, "TimeZone": true, "DateStyle": true, "IntervalStyle": true,
	"client_encoding": true, "application_name": true, "search_path": true,
}

// snapshotParams records the reported settings at connect.
func (c *conn) snapshotParams() {
	if c.pgx == nil {
		return
	}
	pg := c.pgx.Conn().PgConn()
	c.params = make([]string, len(reportedParams))
	for i, k := range reportedParams {
		c.params[i] = pg.ParameterStatus(k)
	}
}

// txStatus is the server's last reported transaction status: 'I' idle, 'T'
// in a transaction, 'E' in a failed one; 0 when the driver does not say.
func (c *conn) txStatus() byte {
	if c.pgx != nil {
		return c.pgx.Conn().PgConn().TxStatus()
	}
	return 0
}

// maybeInTx reports whether the connection is, or for a driver that does
// not say, may be, inside a transaction.
func (c *conn) maybeInTx() bool {
	switch c.txStatus() {
	case 'T', 'E':
		return true
	case 0:
		return c.st.maybeTx
	}
	return false
}

// innerPing pings through the inner driver; pgx's PgConn.Ping directly, so
// that pgx's stdlib does not count it as a use.
func (c *conn) innerPing(ctx context.Context) error {
	if c.pgx != nil {
		return c.pgx.Conn().PgConn().Ping(ctx)
	}
	if p, ok := c.inner.(driver.Pinger); ok {
		defer c.watch(ctx)() // lib/pq: bounded by ctx as the application's statements are
		return p.Ping(ctx)
	}
	// No Pinger: a statement is the only way to ask.
	return c.exec(ctx, "SELECT 1")
}

// exec runs one reset statement (never an application's) in the simple
// protocol: one round trip.
func (c *conn) exec(ctx context.Context, sql string) error {
	if c.pgx != nil {
		_, err := c.pgx.Conn().PgConn().Exec(ctx, sql).ReadAll()
		return err
	}
	if e, ok := c.inner.(driver.ExecerContext); ok {
		defer c.watch(ctx)() // lib/pq: bounded by ctx as the application's statements are
		_, err := e.ExecContext(ctx, sql, nil)
		return err
	}
	st, err := c.PrepareContext(ctx, sql)
	if err != nil {
		return err
	}
	defer st.Close()
	_, err = st.Exec(nil) //nolint:staticcheck // the only call a bare driver.Stmt has
	return err
}

// IsValid runs when a connection goes back to the pool; it does no I/O.
func (c *conn) IsValid() bool {
	c.disarm()
	c.checkin()
	if why := c.unusable(); why != nil {
		c.c.cfg.logDiscard("return to pool", why)
		return false
	}
	if v, ok := c.inner.(driver.Validator); ok {
		return v.IsValid()
	}
	return true
}

// unusable says, without I/O, why the connection must not be used again:
// the inner driver closed it, a statement's context ended while it ran
// (the protocol state is unknown), or its lifetime passed. nil: none of
// these.
func (c *conn) unusable() error {
	switch {
	case c.innerClosed():
		return errBadConn("connection closed", nil)
	case c.timedOut.Load():
		return errBadConn("a statement's context ended while it ran", nil)
	case c.cancelUnusable() != nil:
		return c.cancelUnusable()
	case c.evicted():
		return errEvicted
	case c.expiredNow():
		return errExpired
	case c.roleLost.Load():
		return errBadConn("the server became read-only (writer demoted)", nil)
	}
	return nil
}

// innerClosed reports, without I/O, whether the inner driver knows its
// connection is closed.
func (c *conn) innerClosed() bool {
	return c.pgx != nil && c.pgx.Conn().IsClosed()
}

// peekState is what a non-blocking look at the socket found.
type peekState int

const (
	peekEmpty   peekState = iota // nothing pending: healthy
	peekPending                  // bytes the server sent unasked
	peekClosed                   // EOF or an error: the server is gone
	peekUnknown                  // no socket to look at, or no way to look
)

func (c *conn) peek() peekState {
	if c.raw == nil {
		if c.pgx != nil {
			// pgx over something that is not a socket (a net.Pipe in
			// tests): ask the server.
			return peekUnknown
		}
		// A driver warmpg cannot see into (a fake, go-sqlmock): nothing
		// to look at, and nothing to ask it on the clean path.
		return peekEmpty
	}
	return c.peekr.peek()
}

// rawConnOf returns the socket under a driver's net.Conn (under TLS too: the
// peek looks at TCP, not at TLS records), or nil.
func rawConnOf(nc net.Conn) syscall.RawConn {
	// Under TLS (tls.Conn) and pool_lazy_begin's beginConn.
	for range 4 {
		u, ok := nc.(interface{ NetConn() net.Conn })
		if !ok {
			break
		}
		nc = u.NetConn()
	}
	sc, ok := nc.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return rc
}

// pgxConn returns inner as a *stdlib.Conn, or nil.
func pgxConn(inner driver.Conn) *stdlib.Conn {
	sc, _ := inner.(*stdlib.Conn)
	return sc
}

// setupSQL reads what a connector's own setup after connect (pgx's
// OptionAfterConnect, a wrapper's SET) changed in the session that a
// reset would lose: the settings set for the session (RESET ALL returns
// each to its value at session start, which the startup packet's, the
// role's and the database's settings make) and the role (SET SESSION
// AUTHORIZATION DEFAULT undoes SET ROLE; role is not in pg_settings).
// session_authorization is not restored: check mode compares it (pgx),
// and a connection whose session user a reset changed is discarded.
const setupSQL = "SELECT name, current_setting(name) FROM pg_settings WHERE source = 'session' " +
	"AND name <> 'session_authorization' " +
	"UNION ALL SELECT 'role', current_setting('role') WHERE current_setting('role') <> 'none'"

// captureSession records, once at connect, what a reset must set back
// (restoreSQL). It runs only for a connector warmpg did not build itself —
// the ones it builds do no setup after connect: what the DSN sets travels
// in the startup packet and survives RESET ALL — and only on pgx and
// lib/pq connections. One round trip.
func (c *conn) captureSession(ctx context.Context) error {
	if c.c.ownInner {
		return nil
	}
	var pairs [][2]string
	switch {
	case c.pgx != nil:
		rs, err := c.pgx.Conn().PgConn().Exec(ctx, setupSQL).ReadAll()
		if err != nil {
			return err
		}
		for _, r := range rs {
			for _, row := range r.Rows {
				pairs = append(pairs, [2]string{string(row[0]), string(row[1])})
			}
		}
	case isPQ(c.inner):
		q, ok := c.inner.(driver.QueryerContext)
		if !ok {
			return nil
		}
		defer c.watch(ctx)() // bounded by ctx as the application's statements are
		rows, err := q.QueryContext(ctx, setupSQL, nil)
		if err != nil {
			return err
		}
		defer rows.Close()
		dest := make([]driver.Value, 2)
		for {
			if err := rows.Next(dest); err == io.EOF {
				break
			} else if err != nil {
				return err
			}
			pairs = append(pairs, [2]string{textOf(dest[0]), textOf(dest[1])})
		}
	default:
		return nil
	}
	c.restoreSQL = restoreStatement(pairs)
	return nil
}

// restoreStatement sets each name back to its value, the role last; ""
// for none.
func restoreStatement(pairs [][2]string) string {
	if len(pairs) == 0 {
		return ""
	}
	slices.SortStableFunc(pairs, func(a, b [2]string) int {
		if (a[0] == "role") == (b[0] == "role") {
			return 0
		}
		if a[0] == "role" {
			return 1
		}
		return -1
	})
	var q strings.Builder
	q.WriteString("; SELECT ")
	for i, p := range pairs {
		if i > 0 {
			q.WriteString(", ")
		}
		fmt.Fprintf(&q, "set_config(%s, %s, false)", pq.QuoteLiteral(p[0]), pq.QuoteLiteral(p[1]))
	}
	return q.String()
}

// isPQ reports whether inner is a lib/pq connection.
func isPQ(inner driver.Conn) bool {
	t := reflect.TypeOf(inner)
	if t == nil {
		return false
	}
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	return t.PkgPath() == "github.com/lib/pq"
}

// textOf returns a text column's value as lib/pq gives it.
func textOf(v driver.Value) string {
	switch v := v.(type) {
	case string:
		return v
	case []byte:
		return string(v)
	}
	return fmt.Sprint(v)
}
