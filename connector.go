package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"reflect"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
)

var (
	_ driver.Connector = (*Connector)(nil)
	_ io.Closer        = (*Connector)(nil)
)

// Connector is warmpg's driver.Connector: it opens connections through an
// inner connector and wraps each one (see Unwrap). Use it with sql.OpenDB, or
// let sql.Open("warmpg", dsn), Open or NewConnector build it.
type Connector struct {
	inner driver.Connector
	cfg   config
	drv   *Driver

	stats  stats
	closed atomic.Bool
	ready  *ready // nil unless prewarm or keep-warm is on
	holds  holds  // checked-out connections (leak.go)
	// ownPgx: the inner connector is the pgx one warmpg built, whose
	// ResetSession repeats checks warmpg made and does nothing else.
	ownPgx bool
	// ownInner: warmpg built the inner connector from a DSN (either
	// backend): its server is PostgreSQL's own (keep-warm reads its
	// connection slots), and it changes nothing in a session after connect
	// (see captureSession).
	ownInner bool

	warmState // statement warming (statements.go)

	writer writerWatch // after a writer's demotion (writer.go)
}

// OpenConnector parses dsn (a postgres://, postgresql:// or warmpg:// URL, or
// libpq key=value pairs) and the WARMPG_POOL_* environment, applies opts, and
// returns a Connector for the backend pool_backend names (pgx by default).
// The DSN without its pool_* keys goes to the backend untouched. dsn may
// also be a name pgx's stdlib.RegisterConnConfig returned: the registered
// config is used, with the environment and opts.
func OpenConnector(dsn string, opts ...Option) (*Connector, error) {
	c, err := openConnector(dsn, opts)
	if err != nil {
		return nil, err
	}
	c.startReady(true)
	return c, nil
}

// openConnector is OpenConnector without starting background work.
func openConnector(dsn string, opts []Option) (*Connector, error) {
	if isRegisteredName(dsn) {
		return openRegistered(dsn, opts)
	}
	cfg, d, err := parseDSNConfig(dsn, opts)
	if err != nil {
		return nil, err
	}
	if d.userinfoQF && cfg.backend == BackendPQ {
		// Go's net/url, which lib/pq uses, would end the password there
		// and read its tail as a port, query or fragment.
		return nil, errors.New(`warmpg: malformed DSN: with pool_backend=pq a URL's user:password part cannot hold a raw "?" or "#" (percent-encode them: %3F, %23)`)
	}
	if d.unquotedUnicodeSpace && cfg.backend == BackendPQ {
		// lib/pq would end the password there and read the rest as keys.
		return nil, errors.New(`warmpg: malformed DSN: with pool_backend=pq an unquoted password cannot hold a non-ASCII space (quote it: password='...')`)
	}
	cfg.self = &connectorRef{}
	ic, tsa, err := backendConnector(&cfg, d.inner)
	if err != nil {
		return nil, d.backendError(cfg.backend, err, func(s string) error {
			_, _, err := backendConnector(&cfg, s)
			return err
		})
	}
	if err := cfg.checkTargetSessionAttrs(tsa); err != nil {
		return nil, err
	}
	c := newConnector(ic, cfg)
	if hs := c.cfg.hosts; hs != nil {
		hs.cfg = &c.cfg
		hs.probe = c.probeHost
	}
	c.ownPgx = cfg.backend == BackendPgx
	c.ownInner = true
	cfg.self.Store(c)
	return c, nil
}

// parseConfig builds a config from, in rising precedence: defaults, the
// environment, the DSN's pool_* keys, opts. It returns the DSN for the inner
// driver.
func parseConfig(dsn string, opts []Option) (config, string, error) {
	cfg, d, err := parseDSNConfig(dsn, opts)
	return cfg, d.inner, err
}

// parseDSNConfig is parseConfig returning the parsed DSN.
func parseDSNConfig(dsn string, opts []Option) (config, parsedDSN, error) {
	d, err := splitDSN(dsn)
	if err != nil {
		return config{}, parsedDSN{}, err
	}
	cfg, err := buildConfig(d.pool, opts)
	return cfg, d, err
}

// buildConfig applies, over the defaults, the environment, then the DSN's
// pool_* keys, then opts, and validates the result; the error names every
// bad setting.
func buildConfig(pool []dsnParam, opts []Option) (config, error) {
	cfg := newConfig()
	errs := []error{cfg.applyEnv(environ())}
	seen := make(map[string]string, len(pool))
	for _, p := range pool {
		if first, ok := seen[p.key]; ok {
			errs = append(errs, fmt.Errorf("warmpg: DSN key %s given twice (%q, then %q): give it once", p.key, first, p.value))
			continue
		}
		seen[p.key] = p.value
		errs = append(errs, cfg.setParam("DSN", p.key, p.value))
	}
	for _, o := range opts {
		o(&cfg)
	}
	errs = append(errs, cfg.validate())
	cfg.creds = newPasswordSource(&cfg)
	return cfg, errors.Join(errs...)
}

// backendConnector builds the inner connector for a DSN already stripped of
// pool_* keys. Settings warmpg adds go in the startup packet, as the DSN's
// own runtime settings (statement_timeout, application_name, ...) do: no SET
// after connect, no extra round trip.
func backendConnector(cfg *config, dsn string) (ic driver.Connector, tsa string, err error) {
	switch cfg.backend {
	case BackendPQ:
		pcfg, err := pq.NewConfig(dsn)
		if err != nil {
			return nil, "", rewritePQLBError(err)
		}
		tsa = string(pcfg.TargetSessionAttrs)
		if tsa == "" {
			tsa = "any"
		}
		// Several hosts: warmpg walks them itself, one per connect
		// attempt (hosts.go); lib/pq's own load_balance_hosts is off.
		lb := string(pcfg.LoadBalanceHosts)
		if lb == "" {
			lb = lbDisable
		}
		cfg.hosts = newHostSet(cfg, lb, tsa, pqHosts(&pcfg))
		if cfg.hosts != nil {
			pcfg.LoadBalanceHosts = pq.LoadBalanceHostsDisable
			cfg.hosts.pq = true
		}
		tcp, err := takeTCPKeys(pcfg.Runtime) // libpq's TCP keys (tcpkeys.go)
		if err != nil {
			return nil, "", err
		}
		if cfg.readOnly {
			if pcfg.Runtime == nil {
				pcfg.Runtime = map[string]string{}
			}
			pcfg.Runtime["default_transaction_read_only"] = "on"
		}
		if cfg.pgbouncer {
			// Parse, bind and execute on the unnamed statement in one
			// round trip, which a transaction-mode pooler keeps on one
			// server connection; without it lib/pq syncs between parse
			// and bind, and the pooler may switch servers in between.
			pcfg.BinaryParameters = true
		}
		pc, err := pq.NewConnectorConfig(pcfg)
		if err != nil {
			return nil, "", err
		}
		// lib/pq does not expose its socket; this dialer hands it to
		// Connect for check mode's peek and the watchdog, and bounds
		// lib/pq's CancelRequest connections.
		dialer := socketDialer{cancelBound: max(cfg.cancelGrace, minCancelBound), tcp: tcp}
		pc.Dialer(dialer)
		// With pool_password_file or WithPasswordFunc, a lib/pq connector
		// per connect, with its password (credentials.go).
		return cfg.creds.pqConnector(pc, pcfg, dialer, cfg.hosts != nil), tsa, nil
	default:
		pc, err := pgx.ParseConfig(dsn)
		if err != nil {
			return nil, "", err
		}
		lb, lbErr := takeLoadBalance(pc.RuntimeParams)
		if err := errors.Join(lbErr, applyPgxTCPKeys(pc)); err != nil {
			return nil, "", err
		}
		cfg.hosts = newHostSet(cfg, lb, pgxTargetSessionAttrs(pc.ValidateConnect), pgxHosts(pc))
		ic, tsa := pgxConnector(cfg, pc)
		return ic, tsa, nil
	}
}

// pgxConnector returns the pgx connector for pc with warmpg's settings
// applied, and the target_session_attrs pc asks for.
func pgxConnector(cfg *config, pc *pgx.ConnConfig) (driver.Connector, string) {
	tsa := pgxTargetSessionAttrs(pc.ValidateConnect)
	if cfg.hosts != nil {
		// warmpg walks the hosts and learns their roles (hosts.go).
		pc.ValidateConnect = pgxValidator(pc.ValidateConnect)
	}
	if cfg.self != nil {
		// After a writer's demotion, a reader is refused and pgx goes on
		// to the next host (writer.go).
		pc.ValidateConnect = validateWriter(cfg.self.Load, pc.ValidateConnect)
	}
	if cfg.readOnly {
		pc.RuntimeParams["default_transaction_read_only"] = "on"
	}
	if cfg.pgbouncer && pc.DefaultQueryExecMode == pgx.QueryExecModeCacheStatement {
		// cache_statement prepares named statements on whichever server
		// connection the pooler lends; exec uses the unnamed one and
		// still takes one round trip.
		pc.DefaultQueryExecMode = pgx.QueryExecModeExec
	}
	if cfg.lazyBegin || (cfg.warmStmts > 0 && !cfg.pgbouncer) {
		// The BEGIN of pool_lazy_begin, and statement warming's timeouts,
		// travel in the write of what follows them (lazywire.go).
		pc.AfterNetConnect = beginNetConn(pc.AfterNetConnect)
	}
	// A statement whose context ends is cancelled, and its connection
	// kept (cancelpgx.go).
	installPgxCancel(pc, cfg.cancelGrace)
	// pgx's stdlib pings on the first reuse of every connection and after
	// each second of idleness. warmpg's ResetSession decides instead.
	// With pool_password_file or WithPasswordFunc, BeforeConnect sets each
	// connect's password (credentials.go).
	return cfg.creds.pgxConnector(*pc, stdlib.OptionShouldPing(neverPing)), tsa
}

// pgxTargetSessionAttrs names the target_session_attrs a pgx config's
// ValidateConnect implements: pgx keeps the function, not the name.
func pgxTargetSessionAttrs(validate pgconn.ValidateConnectFunc) string {
	if validate == nil {
		return "any"
	}
	p := reflect.ValueOf(validate).Pointer()
	for name, f := range map[string]pgconn.ValidateConnectFunc{
		"read-write":     pgconn.ValidateConnectTargetSessionAttrsReadWrite,
		"read-only":      pgconn.ValidateConnectTargetSessionAttrsReadOnly,
		"primary":        pgconn.ValidateConnectTargetSessionAttrsPrimary,
		"standby":        pgconn.ValidateConnectTargetSessionAttrsStandby,
		"prefer-standby": pgconn.ValidateConnectTargetSessionAttrsPreferStandby,
	} {
		if reflect.ValueOf(f).Pointer() == p {
			return name
		}
	}
	return "custom"
}

// checkTargetSessionAttrs refuses target_session_attrs values that cannot
// work with the other settings, and records whether connections must be
// to a standby (see conn.checkServerRole).
func (cfg *config) checkTargetSessionAttrs(tsa string) error {
	if cfg.readOnly && tsa == "read-write" {
		return errors.New("warmpg: pool_read_only=true with target_session_attrs=read-write can match no server: every session pool_read_only opens is read-only (want target_session_attrs=primary, or no pool_read_only)")
	}
	if cfg.backend == BackendPQ && tsa == "prefer-standby" {
		return errors.New("warmpg: target_session_attrs=prefer-standby with pool_backend=pq: lib/pq v1.12 retries forever, ignoring the context, when no host answers (a restart is enough); want pool_backend=pgx, or target_session_attrs=standby")
	}
	cfg.standbyOnly = tsa == "standby" || tsa == "prefer-standby" || (tsa == "read-only" && !cfg.readOnly)
	return nil
}

func neverPing(context.Context, stdlib.ShouldPingParams) bool { return false }

// NewConnector wraps any driver.Connector: a preconfigured pgx connector
// (stdlib.GetConnector), a lib/pq one, or a fake in tests (see
// ConnectorFromDriver for drivers such as go-sqlmock that have no connector).
// The WARMPG_POOL_* environment applies, then opts. pool_backend has no effect
// here: inner is the backend.
func NewConnector(inner driver.Connector, opts ...Option) (*Connector, error) {
	if inner == nil {
		return nil, errors.New("warmpg: NewConnector: inner connector is nil")
	}
	cfg, err := buildConfig(nil, opts)
	if err != nil {
		return nil, err
	}
	if cfg.lazyBegin && cfg.set&bitLazyBegin != 0 {
		return nil, errors.New("warmpg: NewConnector: pool_lazy_begin=true needs a connector warmpg builds (sql.Open(\"warmpg\", dsn), warmpg.Open, or a registered pgx config name): it sends the BEGIN under pgx, on a socket a connector given to NewConnector does not let it reach (want pool_lazy_begin=false here)")
	}
	if cfg.creds != nil {
		return nil, errors.New("warmpg: NewConnector: pool_password_file and WithPasswordFunc need a connector warmpg builds (sql.Open(\"warmpg\", dsn), warmpg.Open, OpenConnector): the inner connector given here has its own password (want neither here)")
	}
	c := newConnector(inner, cfg)
	c.startReady(true)
	return c, nil
}

func newConnector(inner driver.Connector, cfg config) *Connector {
	c := &Connector{inner: inner, cfg: cfg}
	c.drv = &Driver{connector: c}
	c.holds.init(c)
	c.initWarm()
	return c
}

// Connect hands out a ready connection (pool_prewarm, pool_min_idle_conns)
// that passes the zero-round-trip liveness check, else opens one through
// the inner connector and wraps it, retrying a server that refuses
// connections or is starting up within ctx and pool_connect_retry_timeout.
// Errors are the inner driver's, unchanged (so the server's message and
// SQLSTATE stay visible).
func (c *Connector) Connect(ctx context.Context) (driver.Conn, error) {
	w, err := c.connect(ctx)
	if err == nil {
		baseConn(w).checkout()
	}
	return w, err
}

// connect is Connect before the checkout is recorded.
func (c *Connector) connect(ctx context.Context) (driver.Conn, error) {
	if c.closed.Load() {
		return nil, errors.New("warmpg: connector is closed")
	}
	if c.ready == nil {
		w, err := c.dial(ctx)
		return w, c.dialErr(ctx, err)
	}
	if w := c.ready.take(); w != nil {
		return w, nil
	}
	if w := c.ready.await(ctx); w != nil {
		return w, nil
	}
	w, err := c.dial(ctx)
	if err == nil && c.cfg.keepWarm() {
		c.ready.track(baseConn(w))
	}
	return w, c.dialErr(ctx, err)
}

// dialErr is the error of a dial for a request whose context has ended, so
// that errors.Is(err, ctx.Err()) holds. An error the context caused (the
// TCP dial cancelled, or past its deadline: a *net.OpError that says
// "operation was canceled" or "i/o timeout") is, on lib/pq, the context's
// error itself: lib/pq's sql.Open driver dials without the request's
// context, and that same request then fails with ctx.Err() from its
// statement. pgx's own error already wraps the context's and is kept. An
// error the context did not cause — a refused connect that was being
// retried when the context ended — is kept, wrapped in the context's error.
func (c *Connector) dialErr(ctx context.Context, err error) error {
	if err == nil {
		return nil
	}
	cerr := ctx.Err()
	if dl, ok := ctx.Deadline(); ok && cerr == nil && !time.Now().Before(dl) {
		// The socket's deadline, the context's, passed before the
		// context's own timer said so.
		cerr = context.DeadlineExceeded
	}
	if cerr == nil {
		return err
	}
	if errors.Is(err, cerr) && transientConnectError(err) {
		// dial's own: the context ended while it retried a refusal;
		// both are said.
		return err
	}
	// A deadline can also reach the dial as the socket's own: poll's "i/o
	// timeout", which is not context.DeadlineExceeded.
	var ne net.Error
	caused := errors.Is(err, cerr) || cerr == context.DeadlineExceeded && errors.As(err, &ne) && ne.Timeout() //nolint:errorlint // ctx.Err() returns it unwrapped
	if !caused {
		return fmt.Errorf("%w (%w)", cerr, err)
	}
	if pqInner(c.inner) && !keepWholeError(err) {
		return cerr
	}
	return err
}

// Driver returns a *Driver whose Connector method leads back to c.
func (c *Connector) Driver() driver.Driver { return c.drv }

// Close is called by sql.DB.Close. It stops every background goroutine,
// closes every ready connection, and closes the inner connector if that is
// an io.Closer. Connect fails after Close.
func (c *Connector) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	if c.ready != nil {
		c.ready.close()
	}
	c.holds.close()
	c.cfg.hosts.close()
	c.cfg.creds.close()
	if cl, ok := c.inner.(io.Closer); ok {
		return cl.Close()
	}
	return nil
}

// Inner returns the connector c wraps.
func (c *Connector) Inner() driver.Connector { return c.inner }

// applyPool applies to db the pool settings whose bits are in which: those
// the DSN, the environment or an option set (an unset one would only repeat
// database/sql's default, or undo what the application set by hand).
func (cfg *config) applyPool(db *sql.DB, which uint32) {
	if which&bitMaxConns != 0 {
		db.SetMaxOpenConns(cfg.maxConns)
	}
	if which&(bitMaxIdleConns|bitMaxConns) != 0 {
		db.SetMaxIdleConns(cfg.idleConns())
	}
	if which&bitMaxConnLifetime != 0 {
		db.SetConnMaxLifetime(cfg.maxConnLifetime)
	}
	if which&bitMaxConnIdleTime != 0 {
		db.SetConnMaxIdleTime(cfg.maxConnIdleTime)
	}
}

// Open returns a *sql.DB for dsn with the pool settings from the DSN, the
// environment and opts already applied (unlike sql.Open, which cannot reach
// the pool). With pool_prewarm it also warms the pool before it returns —
// waiting out a server that is starting up — and fails with the server's
// error, closing the DB, if warming fails within pool_warm_timeout.
func Open(dsn string, opts ...Option) (*sql.DB, error) {
	c, err := openConnector(dsn, opts)
	if err != nil {
		return nil, err
	}
	c.startReady(false) // Open warms below, blocking; keep-warm may still run
	db := sql.OpenDB(c)
	c.cfg.applyPool(db, c.cfg.set)
	c.holds.setDB(db)
	if c.cfg.prewarm {
		if _, err := WarmDB(context.Background(), db); err != nil {
			db.Close()
			return nil, err
		}
	}
	return db, nil
}

// connectorOf returns the warmpg Connector behind db, if any.
func connectorOf(db *sql.DB) (*Connector, bool) {
	d, ok := db.Driver().(*Driver)
	if !ok || d.connector == nil {
		return nil, false
	}
	return d.connector, true
}

// ConnectorFromDriver returns a driver.Connector for a driver and a DSN, as
// database/sql does for sql.Open: through the driver's OpenConnector when it
// has one, else by calling Open for each connection. It lets NewConnector wrap
// drivers that offer no connector, such as go-sqlmock's.
func ConnectorFromDriver(d driver.Driver, dsn string) (driver.Connector, error) {
	if dc, ok := d.(driver.DriverContext); ok {
		return dc.OpenConnector(dsn)
	}
	return dsnConnector{d, dsn}, nil
}

type dsnConnector struct {
	d   driver.Driver
	dsn string
}

func (t dsnConnector) Connect(context.Context) (driver.Conn, error) { return t.d.Open(t.dsn) }
func (t dsnConnector) Driver() driver.Driver                        { return t.d }

// socketSlot receives the socket a socketDialer dials for one Connect.
type socketSlot struct{ nc net.Conn }

type socketSlotKey struct{}

// socketDialer is lib/pq's Dialer and DialerContext: a net.Dialer that also
// puts the socket it dials into the Connect's socketSlot. With
// sslmode=prefer lib/pq may dial twice; the last socket is the one kept.
//
// A dial with no slot is lib/pq's CancelRequest connection (every Connect
// goes through dialOnce, which adds one). lib/pq waits on it, with no
// deadline, until the server closes it — forever on a hung server, and a
// prepared statement's execution waits for that before it returns. Such a
// socket gets a deadline cancelBound after the dial: pool_cancel_grace, or
// minCancelBound when that is shorter. A server that answers closes it
// within a round trip.
type socketDialer struct {
	cancelBound time.Duration
	tcp         *tcpKeys // libpq's TCP keys; nil: none
}

// minCancelBound is the least time a CancelRequest connection is given.
const minCancelBound = time.Second

func (d socketDialer) Dial(network, address string) (net.Conn, error) {
	return d.DialContext(context.Background(), network, address)
}

func (d socketDialer) DialTimeout(network, address string, timeout time.Duration) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	return d.DialContext(ctx, network, address)
}

func (d socketDialer) DialContext(ctx context.Context, network, address string) (net.Conn, error) {
	nd := d.tcp.netDialer(0)
	slot, ok := ctx.Value(socketSlotKey{}).(*socketSlot)
	if !ok && d.cancelBound > 0 {
		ctx2, cancel := context.WithTimeout(ctx, d.cancelBound)
		defer cancel()
		ctx = ctx2
	}
	nc, err := nd.DialContext(ctx, network, address)
	if err != nil {
		return nil, err
	}
	if ok {
		slot.nc = nc
	} else if d.cancelBound > 0 {
		nc.SetDeadline(time.Now().Add(d.cancelBound))
	}
	return nc, nil
}
