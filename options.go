package warmpg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"strconv"
	"strings"
	"time"
)

// Limits on the values warmpg accepts. A PostgreSQL server forks a process per
// connection; a pool beyond MaxPoolSize connections is a typo, not a plan.
const (
	MaxPoolSize        = 10000
	MaxWarmParallelism = 1000
	// DefaultWarmTimeout bounds one WarmDB call when pool_warm_timeout is not set.
	DefaultWarmTimeout = 30 * time.Second
	// DefaultWarmParallelism is the most connections WarmDB dials at once when
	// pool_warm_parallelism is not set.
	DefaultWarmParallelism = 64
	// DefaultConnectRetryTimeout bounds how long Connect retries a server
	// that refuses connections or is starting up, when
	// pool_connect_retry_timeout is not set.
	DefaultConnectRetryTimeout = 5 * time.Second
	// DefaultHostRecheck is how long a host of a multi-host DSN found down,
	// or of the wrong role for target_session_attrs, is skipped before it
	// is tried again (pool_host_recheck; pgjdbc's hostRecheckSeconds).
	DefaultHostRecheck = 10 * time.Second
	// DefaultCancelGrace is how long a statement whose context ended may
	// still take to return after its CancelRequest before warmpg breaks the
	// connection, when pool_cancel_grace is not set (see WithCancelGrace).
	DefaultCancelGrace = time.Second
	// DefaultWarmStatements is how many statements each new connection
	// prepares ahead when pool_warm_statements is not set (see
	// WithWarmStatementLimit and docs/statements.md).
	DefaultWarmStatements = 32
	// MaxWarmStatements bounds pool_warm_statements: each warmed statement
	// costs every connection server memory (docs/statements.md).
	MaxWarmStatements = 256
	// defaultMaxIdleConns is database/sql's own default, kept when neither
	// pool_max_idle_conns nor pool_max_conns is set.
	defaultMaxIdleConns = 2
)

// Backend names the driver warmpg wraps when it opens connections from a DSN.
type Backend string

const (
	// BackendPgx wraps github.com/jackc/pgx/v5/stdlib. The default.
	BackendPgx Backend = "pgx"
	// BackendPQ wraps github.com/lib/pq.
	BackendPQ Backend = "pq"
)

// ResetMode says what warmpg does when database/sql hands out a connection that
// was used before (driver.SessionResetter). See the README for each mode's cost.
type ResetMode string

const (
	// ResetNone does nothing (SQLAlchemy reset_on_return=None, no pre-ping).
	ResetNone ResetMode = "none"
	// ResetCheck looks at local state only and sends nothing on the clean path.
	// The default.
	ResetCheck ResetMode = "check"
	// ResetPing pings the server before every reuse (SQLAlchemy pool_pre_ping).
	ResetPing ResetMode = "ping"
	// ResetRollback sends ROLLBACK before every reuse (SQLAlchemy's default).
	ResetRollback ResetMode = "rollback"
	// ResetDiscard sends DISCARD ALL before every reuse (PgBouncer's server_reset_query).
	ResetDiscard ResetMode = "discard"
)

// ParseResetMode returns the ResetMode named s, or an error listing the modes.
func ParseResetMode(s string) (ResetMode, error) {
	switch m := ResetMode(strings.ToLower(strings.TrimSpace(s))); m {
	case ResetNone, ResetCheck, ResetPing, ResetRollback, ResetDiscard:
		return m, nil
	}
	return "", fmt.Errorf("unknown reset mode %q (want none, check, ping, rollback or discard)", s)
}

// config is everything warmpg's options set. newConfig holds the defaults.
type config struct {
	backend         Backend
	maxConns        int // 0: no limit (database/sql's default)
	maxIdleConns    int // valid when set&bitMaxIdle; otherwise derived, see idleConns
	prewarm         bool
	reset           ResetMode
	autocommit      bool
	lazyBegin       bool
	replan          bool
	readOnly        bool
	maxConnLifetime time.Duration
	lifetimeJitter  time.Duration // valid when set&bitLifetimeJitter; see jitter
	maxConnIdleTime time.Duration
	minIdleConns    int
	connectRetry    time.Duration
	hostRecheck     time.Duration // pool_host_recheck (hosts.go)
	warmParallelism int           // 0: DefaultWarmParallelism
	warmTimeout     time.Duration
	cancelGrace     time.Duration
	pgbouncer       bool
	// standbyOnly: the DSN's target_session_attrs asks for a standby
	// (standby, prefer-standby; read-only without pool_read_only), so a
	// connection whose server was promoted no longer matches it.
	standbyOnly bool
	// self is the Connector this config is built for, for hooks the inner
	// connector calls (writer.go); nil for a foreign inner connector.
	self     *connectorRef
	logger   *slog.Logger
	logLevel slog.Level // events below it are not logged; LogOff: none
	// leakThreshold: pool_leak_threshold (0: off); exhaustedInterval:
	// pool_exhausted_log_interval (0: off). See leak.go.
	leakThreshold     time.Duration
	exhaustedInterval time.Duration
	set               uint32 // which params were set explicitly (DSN, env or option)
	errs              []error

	// warmRamp is the first window of WarmDB's dials (0: warmFirstWindow);
	// warmIgnoreFull keeps dialling after SQLSTATE 53300. Both are set only
	// by tests and the fleet measurement, to compare with the old behaviour.
	warmRamp       int
	warmIgnoreFull bool

	// warmStmts: pool_warm_statements, the most statements a new
	// connection prepares ahead (0: off); warmDeclared: those
	// WithWarmStatements declared, warmed first (statements.go).
	warmStmts    int
	warmDeclared []string

	// passwordFunc (WithPasswordFunc), passwordFile (pool_password_file):
	// where new connects take their password; creds serves it
	// (credentials.go). nil, "", nil: the backend's own.
	passwordFunc func(context.Context) (string, error)
	passwordFile string
	creds        *passwordSource

	// hosts: a DSN with several hosts, which warmpg walks itself (hosts.go);
	// nil for one host or a foreign inner connector.
	hosts *hostSet
}

func newConfig() config {
	return config{
		backend:      BackendPgx,
		reset:        ResetCheck,
		lazyBegin:    true,
		replan:       true,
		warmTimeout:  DefaultWarmTimeout,
		connectRetry: DefaultConnectRetryTimeout,
		hostRecheck:  DefaultHostRecheck,
		cancelGrace:  DefaultCancelGrace,
		warmStmts:    DefaultWarmStatements,

		exhaustedInterval: DefaultExhaustedLogInterval,
	}
}

// idleConns is the MaxIdleConns warmpg applies and the number WarmDB warms:
// pool_max_idle_conns if set, else pool_max_conns if set, else database/sql's 2.
func (c *config) idleConns() int {
	switch {
	case c.set&bitMaxIdleConns != 0:
		return c.maxIdleConns
	case c.maxConns > 0:
		return c.maxConns
	}
	return defaultMaxIdleConns
}

// jitter is the lifetime jitter: pool_max_conn_lifetime_jitter if set, else
// a tenth of the lifetime.
func (c *config) jitter() time.Duration {
	if c.set&bitLifetimeJitter != 0 {
		return c.lifetimeJitter
	}
	return c.maxConnLifetime / 10
}

// keepWarm reports whether the connector runs a background filler.
func (c *config) keepWarm() bool { return c.minIdleConns > 0 }

// parallelism is how many connections WarmDB dials at once to warm n.
func (c *config) parallelism(n int) int {
	p := c.warmParallelism
	if p == 0 {
		p = DefaultWarmParallelism
	}
	return max(1, min(p, n))
}

func (c *config) log() *slog.Logger {
	if c.logger != nil {
		return c.logger
	}
	return slog.Default()
}

// logs reports whether an event at level l is logged: at or above
// pool_log_level and enabled by the logger's handler. Callers check it
// before building an event's attributes.
func (c *config) logs(l slog.Level) bool {
	return l >= c.logLevel && c.log().Enabled(context.Background(), l)
}

// logEvent logs msg at level l with attrs if logs(l).
func (c *config) logEvent(l slog.Level, msg string, attrs ...any) {
	if c.logs(l) {
		c.log().Log(context.Background(), l, msg, attrs...)
	}
}

// validate checks the relations between settings; single values were checked
// when they were parsed.
func (c *config) validate() error {
	if err := errors.Join(c.errs...); err != nil {
		return err
	}
	if c.set&bitMaxIdleConns != 0 && c.maxConns > 0 && c.maxIdleConns > c.maxConns {
		return fmt.Errorf("warmpg: pool_max_idle_conns=%d exceeds pool_max_conns=%d (want pool_max_idle_conns <= pool_max_conns)",
			c.maxIdleConns, c.maxConns)
	}
	if c.maxConns > 0 && c.minIdleConns > c.maxConns {
		return fmt.Errorf("warmpg: pool_min_idle_conns=%d exceeds pool_max_conns=%d (want pool_min_idle_conns <= pool_max_conns)",
			c.minIdleConns, c.maxConns)
	}
	if c.lazyBegin && c.set&bitLazyBegin != 0 && c.backend == BackendPQ {
		return errors.New("warmpg: pool_lazy_begin=true with pool_backend=pq: the BEGIN travels with the first statement under pgx only (want pool_backend=pgx, or pool_lazy_begin=false)")
	}
	if err := c.validateWarmStatements(); err != nil {
		return err
	}
	if err := c.validatePassword(); err != nil {
		return err
	}
	if c.set&bitLifetimeJitter != 0 && c.lifetimeJitter > c.maxConnLifetime {
		return fmt.Errorf("warmpg: pool_max_conn_lifetime_jitter=%s exceeds pool_max_conn_lifetime=%s (want jitter <= lifetime; jitter needs a lifetime)",
			c.lifetimeJitter, c.maxConnLifetime)
	}
	return nil
}

// Bits of config.set.
const (
	bitBackend uint32 = 1 << iota
	bitMaxConns
	bitMaxIdleConns
	bitPrewarm
	bitReset
	bitAutocommit
	bitMaxConnLifetime
	bitMaxConnIdleTime
	bitWarmParallelism
	bitWarmTimeout
	bitReadOnly
	bitMinIdleConns
	bitLifetimeJitter
	bitConnectRetry
	bitPgBouncer
	bitLogLevel
	bitCancelGrace
	bitLeakThreshold
	bitExhaustedInterval
	bitLazyBegin
	bitWarmStatements
	bitReplan
	bitPasswordFile
	bitHostRecheck
)

// param is one pool_* key: its name, the bit it sets, and how to parse it.
type param struct {
	key   string
	bit   uint32
	parse func(c *config, v string) error
}

// params lists every key warmpg accepts, in the order the README documents them.
var params = []param{
	{"pool_backend", bitBackend, func(c *config, v string) error {
		switch b := Backend(strings.ToLower(v)); b {
		case BackendPgx, BackendPQ:
			c.backend = b
			return nil
		}
		return errors.New("want pgx or pq")
	}},
	{"pool_max_conns", bitMaxConns, intParser(func(c *config) *int { return &c.maxConns }, 0, MaxPoolSize)},
	{"pool_max_idle_conns", bitMaxIdleConns, intParser(func(c *config) *int { return &c.maxIdleConns }, 0, MaxPoolSize)},
	{"pool_prewarm", bitPrewarm, boolParser(func(c *config) *bool { return &c.prewarm })},
	{"pool_reset", bitReset, func(c *config, v string) error {
		m, err := ParseResetMode(v)
		if err != nil {
			return errors.New("want none, check, ping, rollback or discard")
		}
		c.reset = m
		return nil
	}},
	{"pool_autocommit", bitAutocommit, boolParser(func(c *config) *bool { return &c.autocommit })},
	{"pool_lazy_begin", bitLazyBegin, boolParser(func(c *config) *bool { return &c.lazyBegin })},
	{"pool_read_only", bitReadOnly, boolParser(func(c *config) *bool { return &c.readOnly })},
	{"pool_max_conn_lifetime", bitMaxConnLifetime, durationParser(func(c *config) *time.Duration { return &c.maxConnLifetime }, false)},
	{"pool_max_conn_lifetime_jitter", bitLifetimeJitter, durationParser(func(c *config) *time.Duration { return &c.lifetimeJitter }, false)},
	{"pool_max_conn_idle_time", bitMaxConnIdleTime, durationParser(func(c *config) *time.Duration { return &c.maxConnIdleTime }, false)},
	{"pool_min_idle_conns", bitMinIdleConns, intParser(func(c *config) *int { return &c.minIdleConns }, 0, MaxPoolSize)},
	{"pool_connect_retry_timeout", bitConnectRetry, durationParser(func(c *config) *time.Duration { return &c.connectRetry }, false)},
	{"pool_warm_parallelism", bitWarmParallelism, intParser(func(c *config) *int { return &c.warmParallelism }, 1, MaxWarmParallelism)},
	{"pool_warm_timeout", bitWarmTimeout, durationParser(func(c *config) *time.Duration { return &c.warmTimeout }, true)},
	{"pool_cancel_grace", bitCancelGrace, durationParser(func(c *config) *time.Duration { return &c.cancelGrace }, false)},
	{"pool_pgbouncer", bitPgBouncer, boolParser(func(c *config) *bool { return &c.pgbouncer })},
	{"pool_log_level", bitLogLevel, func(c *config, v string) error {
		l, err := ParseLogLevel(v)
		if err != nil {
			return errors.New(logLevelWant)
		}
		c.logLevel = l
		return nil
	}},
	{"pool_leak_threshold", bitLeakThreshold, durationParser(func(c *config) *time.Duration { return &c.leakThreshold }, false)},
	{"pool_exhausted_log_interval", bitExhaustedInterval, durationParser(func(c *config) *time.Duration { return &c.exhaustedInterval }, false)},
	{"pool_warm_statements", bitWarmStatements, intParser(func(c *config) *int { return &c.warmStmts }, 0, MaxWarmStatements)},
	{"pool_replan", bitReplan, boolParser(func(c *config) *bool { return &c.replan })},
	{"pool_password_file", bitPasswordFile, parsePasswordFile},
	{"pool_host_recheck", bitHostRecheck, durationParser(func(c *config) *time.Duration { return &c.hostRecheck }, true)},
}

// LogOff is the pool_log_level that logs nothing (WithLogLevel(LogOff)).
const LogOff slog.Level = math.MaxInt32

const logLevelWant = "want debug, info, warn, error or off"

// ParseLogLevel returns the level pool_log_level=s names: debug, info,
// warn, error or off (LogOff).
func ParseLogLevel(s string) (slog.Level, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "debug":
		return slog.LevelDebug, nil
	case "info":
		return slog.LevelInfo, nil
	case "warn", "warning":
		return slog.LevelWarn, nil
	case "error":
		return slog.LevelError, nil
	case "off", "none":
		return LogOff, nil
	}
	return 0, fmt.Errorf("unknown log level %q (%s)", s, logLevelWant)
}

// maxDuration bounds every duration setting: ten years is already "forever".
const maxDuration = 10 * 365 * 24 * time.Hour

func intParser(field func(*config) *int, lo, hi int) func(*config, string) error {
	return func(c *config, v string) error {
		n, err := strconv.Atoi(strings.TrimSpace(v))
		if err != nil || n < lo || n > hi {
			return fmt.Errorf("want an integer from %d to %d", lo, hi)
		}
		*field(c) = n
		return nil
	}
}

func boolParser(field func(*config) *bool) func(*config, string) error {
	return func(c *config, v string) error {
		switch strings.ToLower(strings.TrimSpace(v)) {
		case "1", "t", "true", "on", "yes", "y":
			*field(c) = true
		case "0", "f", "false", "off", "no", "n":
			*field(c) = false
		default:
			return errors.New("want true or false")
		}
		return nil
	}
}

func durationParser(field func(*config) *time.Duration, positive bool) func(*config, string) error {
	return func(c *config, v string) error {
		d, err := time.ParseDuration(strings.TrimSpace(v))
		want := "want a duration such as 30s, 5m or 1h (0 for none), at most 10 years"
		if positive {
			want = "want a positive duration such as 500ms, 30s or 2m, at most 10 years"
		}
		if err != nil || d < 0 || (positive && d == 0) || d > maxDuration {
			return errors.New(want)
		}
		*field(c) = d
		return nil
	}
}

func lookupParam(key string) *param {
	for i := range params {
		if params[i].key == key {
			return &params[i]
		}
	}
	return nil
}

// knownKeys lists the keys for error messages.
func knownKeys() string {
	keys := make([]string, len(params))
	for i, p := range params {
		keys[i] = p.key
	}
	return strings.Join(keys, ", ")
}

// setParam parses one pool_* key from source ("DSN" or an environment
// variable's name) into c. The error names the key, the value and what is
// allowed; pool_* values are never secrets, so showing them is safe.
func (c *config) setParam(source, key, value string) error {
	p := lookupParam(key)
	if p == nil {
		if q := lookupParam(strings.ToLower(key)); q != nil {
			return fmt.Errorf("warmpg: unknown %s key %q: did you mean %s? (warmpg's keys are lower case)", source, key, q.key)
		}
		return fmt.Errorf("warmpg: unknown %s key %q (known: %s)", source, key, knownKeys())
	}
	if err := p.parse(c, value); err != nil {
		return fmt.Errorf("warmpg: invalid %s %s=%q: %v", source, key, value, err)
	}
	c.set |= p.bit
	return nil
}

// EnvName returns the environment variable that sets a pool_* key:
// WARMPG_ and the key in upper case (pool_max_conns: WARMPG_POOL_MAX_CONNS).
func EnvName(key string) string { return "WARMPG_" + strings.ToUpper(key) }

// applyEnv reads WARMPG_POOL_* variables. An empty variable counts as unset.
// A WARMPG_POOL_* variable that names no key is an error, like an unknown DSN key.
func (c *config) applyEnv(environ []string) error {
	var errs []error
	for _, kv := range environ {
		name, value, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(name, "WARMPG_POOL_") || value == "" {
			continue
		}
		key := strings.ToLower(strings.TrimPrefix(name, "WARMPG_"))
		p := lookupParam(key)
		if p == nil {
			errs = append(errs, fmt.Errorf("warmpg: unknown environment variable %s (known: %s)", name, knownEnvNames()))
			continue
		}
		if err := p.parse(c, value); err != nil {
			errs = append(errs, fmt.Errorf("warmpg: invalid environment variable %s=%q: %v", name, value, err))
			continue
		}
		c.set |= p.bit
	}
	return errors.Join(errs...)
}

func knownEnvNames() string {
	names := make([]string, len(params))
	for i, p := range params {
		names[i] = EnvName(p.key)
	}
	return strings.Join(names, ", ")
}

// environ is os.Environ, replaceable in tests.
var environ = os.Environ

// An Option changes a warmpg setting from code. Options override the DSN and
// the environment. An invalid value is reported by the function that takes the
// options (Open, NewConnector, OpenConnector, WarmDB).
type Option func(*config)

func optionErr(c *config, key string, v any, want string) {
	c.errs = append(c.errs, fmt.Errorf("warmpg: invalid option %s=%v: %s", key, v, want))
}

func intOption(key string, bit uint32, n, lo, hi int, field func(*config) *int) Option {
	return func(c *config) {
		if n < lo || n > hi {
			optionErr(c, key, n, fmt.Sprintf("want an integer from %d to %d", lo, hi))
			return
		}
		*field(c) = n
		c.set |= bit
	}
}

func durationOption(key string, bit uint32, d time.Duration, positive bool, field func(*config) *time.Duration) Option {
	return func(c *config) {
		if d < 0 || (positive && d == 0) || d > maxDuration {
			want := "want a duration from 0 to 10 years"
			if positive {
				want = "want a positive duration, at most 10 years"
			}
			optionErr(c, key, d, want)
			return
		}
		*field(c) = d
		c.set |= bit
	}
}

// WithBackend selects the driver warmpg wraps when it opens a DSN
// (pool_backend; default BackendPgx). It has no effect on NewConnector, which
// is given its inner connector.
func WithBackend(b Backend) Option {
	return func(c *config) {
		if b != BackendPgx && b != BackendPQ {
			optionErr(c, "pool_backend", b, "want pgx or pq")
			return
		}
		c.backend = b
		c.set |= bitBackend
	}
}

// WithMaxConns sets the most open connections (pool_max_conns, applied with
// sql.DB.SetMaxOpenConns). Default 0: no limit, database/sql's default.
func WithMaxConns(n int) Option {
	return intOption("pool_max_conns", bitMaxConns, n, 0, MaxPoolSize, func(c *config) *int { return &c.maxConns })
}

// WithMaxIdleConns sets the most idle connections kept (pool_max_idle_conns,
// applied with sql.DB.SetMaxIdleConns), which is also how many WarmDB warms.
// Default: pool_max_conns when that is set, else database/sql's 2.
func WithMaxIdleConns(n int) Option {
	return intOption("pool_max_idle_conns", bitMaxIdleConns, n, 0, MaxPoolSize, func(c *config) *int { return &c.maxIdleConns })
}

// WithPrewarm makes Open warm the pool before it returns (pool_prewarm;
// default false).
func WithPrewarm(on bool) Option {
	return func(c *config) { c.prewarm = on; c.set |= bitPrewarm }
}

// WithReset sets what happens when a used connection is handed out again
// (pool_reset; default ResetCheck).
func WithReset(m ResetMode) Option {
	return func(c *config) {
		if _, err := ParseResetMode(string(m)); err != nil || m == "" {
			optionErr(c, "pool_reset", string(m), "want none, check, ping, rollback or discard")
			return
		}
		c.reset = m
		c.set |= bitReset
	}
}

// WithAutocommit runs transactions that cannot write — sql.TxOptions{ReadOnly:
// true}, or any transaction on a WithReadOnly pool — at default or
// read-committed isolation without BEGIN, COMMIT or ROLLBACK while they only
// read: each plain read commits on its own (pool_autocommit; default false).
// The first statement that is not a plain read (SET LOCAL, a lock, a write,
// nextval, CALL, …) is preceded by BEGIN READ ONLY, and the rest is a real
// read-only transaction. The trade-off: the plain reads share no snapshot,
// and on a pool that is not read-only a SELECT of a function that writes
// commits on its own. Repeatable-read, serializable and read-write
// transactions stay real transactions.
func WithAutocommit(on bool) Option {
	return func(c *config) { c.autocommit = on; c.set |= bitAutocommit }
}

// WithLazyBegin sends a transaction's BEGIN in the same network write as its
// first statement instead of on its own at BeginTx (pool_lazy_begin; default
// true; pgx backend only): a transaction costs one round trip less, and one
// that runs no statement sends nothing at all. The server takes a
// transaction's snapshot at its first statement, not at BEGIN, so what a
// transaction reads does not change; its start time (now()) is its first
// statement's. See docs/lazy-begin.md for what differs.
func WithLazyBegin(on bool) Option {
	return func(c *config) { c.lazyBegin = on; c.set |= bitLazyBegin }
}

// WithReplan sets whether a statement that fails because a schema change
// altered its result columns (SQLSTATE 0A000, "cached plan must not change
// result type") is prepared again and sent once more, where it cannot have
// run anything (pool_replan; default true; docs/replan.md). Off, such a
// statement fails as it does through the wrapped driver.
func WithReplan(on bool) Option {
	return func(c *config) { c.replan = on; c.set |= bitReplan }
}

// WithReadOnly makes every connection read-only from its first message
// (pool_read_only; default false): default_transaction_read_only=on goes in
// the startup packet, costing no round trip, and every transaction is begun
// read-only (lib/pq would otherwise send BEGIN READ WRITE, which a hot standby
// rejects). With WithAutocommit, no transaction on such a pool sends BEGIN
// while it only reads.
func WithReadOnly(on bool) Option {
	return func(c *config) { c.readOnly = on; c.set |= bitReadOnly }
}

// WithMaxConnLifetime sets the most time a connection is used
// (pool_max_conn_lifetime). Each connection enforces its own lifetime, less a
// random jitter (WithMaxConnLifetimeJitter): IsValid and ResetSession refuse
// it once that has passed, with no I/O; with keep-warm on, a replacement is
// dialled before it expires. sql.DB.SetConnMaxLifetime gets the full
// lifetime as a backstop for idle connections. Default 0: forever.
func WithMaxConnLifetime(d time.Duration) Option {
	return durationOption("pool_max_conn_lifetime", bitMaxConnLifetime, d, false, func(c *config) *time.Duration { return &c.maxConnLifetime })
}

// WithMaxConnLifetimeJitter sets how much earlier than pool_max_conn_lifetime
// each connection may expire, drawn at random per connection, so connections
// opened together do not all expire together (pool_max_conn_lifetime_jitter;
// default: a tenth of the lifetime). At most the lifetime.
func WithMaxConnLifetimeJitter(d time.Duration) Option {
	return durationOption("pool_max_conn_lifetime_jitter", bitLifetimeJitter, d, false, func(c *config) *time.Duration { return &c.lifetimeJitter })
}

// WithMinIdleConns keeps n ready connections in the connector beyond those
// database/sql holds, replacing them as they are taken, die or expire, so a
// burst that needs new connections does not pay connect latency
// (pool_min_idle_conns; default 0: off). Within pool_max_conns, except that
// replacements for connections near their lifetime's end (up to n) are
// dialled before those retire.
func WithMinIdleConns(n int) Option {
	return intOption("pool_min_idle_conns", bitMinIdleConns, n, 0, MaxPoolSize, func(c *config) *int { return &c.minIdleConns })
}

// WithConnectRetryTimeout bounds how long Connect retries, with backoff, a
// server that refuses connections or is starting up (SQLSTATE 57P03), on top
// of the caller's context (pool_connect_retry_timeout; default
// DefaultConnectRetryTimeout; 0: no retries).
func WithConnectRetryTimeout(d time.Duration) Option {
	return durationOption("pool_connect_retry_timeout", bitConnectRetry, d, false, func(c *config) *time.Duration { return &c.connectRetry })
}

// WithHostRecheck sets how long a host of a multi-host DSN that was found
// down (its connect refused or timed out) or of the wrong role for
// target_session_attrs is skipped before a connect tries it again
// (pool_host_recheck; default DefaultHostRecheck, 10 s). Positive.
func WithHostRecheck(d time.Duration) Option {
	return durationOption("pool_host_recheck", bitHostRecheck, d, true, func(c *config) *time.Duration { return &c.hostRecheck })
}

// WithMaxConnIdleTime sets the most time a connection stays idle
// (pool_max_conn_idle_time, applied with sql.DB.SetConnMaxIdleTime, and to
// the connector's ready connections beyond pool_min_idle_conns). Default 0:
// forever.
func WithMaxConnIdleTime(d time.Duration) Option {
	return durationOption("pool_max_conn_idle_time", bitMaxConnIdleTime, d, false, func(c *config) *time.Duration { return &c.maxConnIdleTime })
}

// WithWarmParallelism bounds how many connections WarmDB dials at once
// (pool_warm_parallelism; default DefaultWarmParallelism, 1 to MaxWarmParallelism).
func WithWarmParallelism(n int) Option {
	return intOption("pool_warm_parallelism", bitWarmParallelism, n, 1, MaxWarmParallelism, func(c *config) *int { return &c.warmParallelism })
}

// WithWarmTimeout bounds one WarmDB call, on top of its context
// (pool_warm_timeout; default DefaultWarmTimeout).
func WithWarmTimeout(d time.Duration) Option {
	return durationOption("pool_warm_timeout", bitWarmTimeout, d, true, func(c *config) *time.Duration { return &c.warmTimeout })
}

// WithCancelGrace sets how long a statement whose context ended may take to
// return before warmpg breaks its connection (pool_cancel_grace; default
// DefaultCancelGrace, 1 s). When the context ends, the server gets a
// CancelRequest at once (lib/pq sends it; on pgx, the connectors warmpg
// builds send it instead of pgx's cutting the socket), and fails the
// statement (57014) with its work undone. On pgx warmpg then waits for the
// server to close the cancel connection, so that the cancel cannot reach a
// later statement, and keeps the connection: a timeout costs no reconnect.
// A hung server (frozen, behind a black hole) never answers, so after the
// grace warmpg sets a past deadline on the socket and the connection is
// discarded: every statement returns within its deadline plus the grace. 0
// sets the deadline when the context ends, before the CancelRequest can
// reach the server (pgx's own behaviour): the statement returns at once,
// the connection is closed, and on lib/pq the server may still finish and
// commit its work. A pgx connector given to NewConnector keeps its own
// context handling.
func WithCancelGrace(d time.Duration) Option {
	return durationOption("pool_cancel_grace", bitCancelGrace, d, false, func(c *config) *time.Duration { return &c.cancelGrace })
}

// WithPgBouncer makes connections work through a pooler in transaction
// mode, such as PgBouncer before 1.21, that cannot keep prepared statements
// (pool_pgbouncer; default false): pgx runs queries with
// default_query_exec_mode=exec (unless the DSN chose a mode other than
// pgx's default cache_statement), lib/pq with binary_parameters=yes, both
// one round trip on the unnamed statement; and Prepare (*sql.Stmt) keeps the
// statement in the client, sending it with each execution, instead of
// preparing it on a server connection the pooler may not give back.
func WithPgBouncer(on bool) Option {
	return func(c *config) { c.pgbouncer = on; c.set |= bitPgBouncer }
}

// WithLogger sets where warmpg logs (default slog.Default()). Every event's
// message starts with "warmpg: "; see the README for the events and their
// levels.
func WithLogger(l *slog.Logger) Option {
	return func(c *config) { c.logger = l }
}

// WithLogLevel sets the least level warmpg logs at (pool_log_level; default
// slog.LevelInfo): slog.LevelDebug adds warm progress and every reuse that
// sent something; LogOff logs nothing. The logger's own handler filters
// too.
func WithLogLevel(l slog.Level) Option {
	return func(c *config) { c.logLevel = l; c.set |= bitLogLevel }
}

// WithLeakThreshold turns on leak detection (pool_leak_threshold; default
// 0: off): each checkout records when and from where (the caller's stack,
// without warmpg's and database/sql's frames, and no arguments), and a
// connection out longer than d is logged once at Warn, "warmpg: connection
// held past pool_leak_threshold", with that stack; its return, at Info. See
// docs/exhaustion.md for what it costs.
func WithLeakThreshold(d time.Duration) Option {
	return durationOption("pool_leak_threshold", bitLeakThreshold, d, false, func(c *config) *time.Duration { return &c.leakThreshold })
}

// WithExhaustedLogInterval sets how often, at most, warmpg logs "warmpg:
// pool exhausted" while every connection the pool may open is checked out
// and requests wait for one, on a *sql.DB warmpg opened or WarmDB saw
// (pool_exhausted_log_interval; default DefaultExhaustedLogInterval; 0:
// off, and with pool_leak_threshold off and pool_log_level above debug
// checkouts are not tracked at all). See docs/exhaustion.md.
func WithExhaustedLogInterval(d time.Duration) Option {
	return durationOption("pool_exhausted_log_interval", bitExhaustedInterval, d, false, func(c *config) *time.Duration { return &c.exhaustedInterval })
}
