package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// A writer that became a reader (issue 27). After a failover the old
// primary often comes back as a standby, and DNS may point at it for a
// while; an ALTER SYSTEM SET default_transaction_read_only = on does the
// same to a running server. A pool that writes then holds connections whose
// every write fails with 25006, and opens new ones to the same server.
//
// On a writer pool — not pool_read_only, and no target_session_attrs that
// asks for a standby or a read-only server — warmpg:
//
//   - discards a connection that was made to a writer once its server is
//     read-only: pgx reports in_hot_standby and default_transaction_read_only
//     with every reply, so check mode sees it at reuse with no round trip,
//     and a statement that failed with 25006 sees it at once; on lib/pq,
//     which reports neither, a 25006 makes the next reuse ask the server
//     (one round trip, only then). The statement that failed is not resent:
//     it may have been a write. It fails with the server's error, as it
//     would have without warmpg.
//   - for pool_connect_retry_timeout after that, opens connections only to a
//     writer: pgx's own host fallback goes on to the next host of a
//     multi-host DSN (as target_session_attrs=read-write does), and a
//     connect that finds only readers is retried (every 50–200 ms, jittered)
//     until a writer answers, within its context. When the window ends with
//     no writer found, connects take a reader again, as the wrapped driver
//     would at once: reads work, writes fail with 25006.
//
// A session that sets default_transaction_read_only itself is no demotion:
// check mode resets it.

// errServerReadOnly is what a connect gets, in the window after a demotion,
// from a server that is read-only.
var errServerReadOnly = errors.New("warmpg: the server is read-only and this pool's writer was demoted: looking for a writer (pool_connect_retry_timeout)")

// writerWatch is a Connector's demotion state, shared by its connects.
type writerWatch struct {
	// until is when the window after the last demotion ends (UnixNano);
	// 0: no window.
	until atomic.Int64
}

// connectorRef is where the inner connector's hooks find their Connector,
// which is built after them.
type connectorRef struct{ atomic.Pointer[Connector] }

// acceptReaderKey marks a connect's context: a reader will do (the last
// try of a window that found no writer).
type acceptReaderKey struct{}

// wantWriter reports whether a connect with ctx must reach a writer.
func (c *Connector) wantWriter(ctx context.Context) bool {
	u := c.writer.until.Load()
	if u == 0 || ctx.Value(acceptReaderKey{}) != nil {
		return false
	}
	if time.Now().UnixNano() >= u {
		c.writer.until.CompareAndSwap(u, 0)
		return false
	}
	return true
}

// writerPool reports whether the pool's connections are meant to write.
func (cfg *config) writerPool() bool { return !cfg.readOnly && !cfg.standbyOnly }

// demoted records that a connection made to a writer found its server
// read-only: the connection is not used again, and connects look for a
// writer for pool_connect_retry_timeout.
func (c *conn) demoted(why string) error {
	c.roleLost.Store(true)
	now := time.Now()
	until := now.Add(c.c.cfg.connectRetry).UnixNano()
	if prev := c.c.writer.until.Swap(until); prev == 0 || prev < now.UnixNano() {
		c.c.cfg.logEvent(slog.LevelWarn, "warmpg: the server became read-only (writer demoted); its connections are discarded and connects look for a writer",
			"why", why, "window", c.c.cfg.connectRetry)
	}
	return errBadConn("the server became read-only (writer demoted): "+why, nil)
}

// readOnlyParams says, from what pgx reports, whether pg's server is
// read-only, and why.
func readOnlyParams(pg *pgconn.PgConn) (bool, string) {
	if pg.ParameterStatus("in_hot_standby") == "on" {
		return true, "in_hot_standby=on"
	}
	if pg.ParameterStatus("default_transaction_read_only") == "on" {
		return true, "default_transaction_read_only=on"
	}
	return false, ""
}

var dtroParam = slices.Index(reportedParams, "default_transaction_read_only")

// wasWriter reports whether c (pgx) was made to a writer: neither
// in_hot_standby nor default_transaction_read_only was on at connect.
func (c *conn) wasWriter() bool {
	return c.params != nil && c.params[hotStandbyParam] != "on" && c.params[dtroParam] != "on"
}

// checkDemoted runs at reuse and after a statement's error: on a writer
// pool, a pgx connection made to a writer whose server now reports it is
// read-only is refused (demoted). A session that set
// default_transaction_read_only itself (maybeSession) is left to the reset.
func (c *conn) checkDemoted() error {
	if c.pgx == nil || !c.c.cfg.writerPool() || !c.wasWriter() {
		return nil
	}
	ro, why := readOnlyParams(c.pgx.Conn().PgConn())
	if !ro || (why != "in_hot_standby=on" && c.st.maybeSession) {
		return nil
	}
	return c.demoted(why)
}

// isReadOnlyErr reports whether err is the server's 25006 (read-only SQL
// transaction: a write refused).
func isReadOnlyErr(err error) bool {
	return sqlState(err) == "25006"
}

// noteWriteRefused takes a statement's 25006 on a writer pool: on pgx the
// reported settings say at once whether the server is now read-only; on
// any other driver the next reuse asks (roleCheck).
func (c *conn) noteWriteRefused() {
	if !c.c.cfg.writerPool() {
		return
	}
	if c.pgx != nil {
		_ = c.checkDemoted()
		return
	}
	c.roleCheck = true
}

// roleSQL says whether the server is read-only by its own settings: in
// recovery, or default_transaction_read_only on at the server, database or
// role level (reset_val: what RESET gives, not what this session set).
const roleSQL = "select pg_is_in_recovery() or (select reset_val from pg_settings where name = 'default_transaction_read_only') = 'on'"

// serverReadOnly asks the server whether it is read-only (drivers that
// report no settings; one round trip, bounded by ctx through the watchdog
// as the application's statements are: a hung server does not hold the
// reuse or the connect that asks).
func (c *conn) serverReadOnly(ctx context.Context) (bool, error) {
	q, ok := c.inner.(driver.QueryerContext)
	if !ok {
		return false, nil
	}
	defer c.watch(ctx)()
	rows, err := q.QueryContext(ctx, roleSQL, nil)
	if err != nil {
		return false, err
	}
	defer rows.Close()
	v := make([]driver.Value, 1)
	if err := rows.Next(v); err != nil {
		return false, err
	}
	ro, _ := v[0].(bool)
	return ro, nil
}

// recheckRole runs at reuse after a 25006 on a driver that reports no
// settings: a server found read-only discards the connection (demoted).
func (c *conn) recheckRole(ctx context.Context) error {
	if !c.roleCheck {
		return nil
	}
	c.roleCheck = false
	ro, err := c.serverReadOnly(ctx)
	if err != nil {
		return errBadConn("checking the server's role after a refused write failed", err)
	}
	if ro {
		return c.demoted("a write was refused (25006) and the server says it is read-only")
	}
	return nil
}

// validateWriter is pgx's ValidateConnect in the window after a demotion:
// a read-only server is refused, and pgx tries the DSN's next host.
func validateWriter(c func() *Connector, next pgconn.ValidateConnectFunc) pgconn.ValidateConnectFunc {
	return func(ctx context.Context, pg *pgconn.PgConn) error {
		if next != nil {
			if err := next(ctx, pg); err != nil {
				return err
			}
		}
		if cn := c(); cn != nil && cn.wantWriter(ctx) {
			if ro, why := readOnlyParams(pg); ro {
				return fmt.Errorf("%w (%s)", errServerReadOnly, why)
			}
		}
		return nil
	}
}

// checkNewWriter runs on a new connection in the window after a demotion,
// for a driver whose connects warmpg's ValidateConnect does not see: a
// read-only server is refused.
func (c *Connector) checkNewWriter(ctx context.Context, b *conn) error {
	if c.writer.until.Load() == 0 || !c.cfg.writerPool() {
		return nil
	}
	want := c.wantWriter(ctx)
	var ro bool
	var why string
	if b.pgx != nil {
		ro, why = readOnlyParams(b.pgx.Conn().PgConn())
	} else if want {
		var err error
		if ro, err = b.serverReadOnly(ctx); err != nil {
			return err
		}
		why = "the server says it is read-only"
	}
	// A writer found does not end the window: a server made read-only
	// a moment ago can still fork a session under its old settings.
	if ro && want {
		return fmt.Errorf("%w (%s)", errServerReadOnly, why)
	}
	return nil
}
