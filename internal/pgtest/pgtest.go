// Package pgtest gives tests a real PostgreSQL server.
//
// A test package uses it through TestMain:
//
//	func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }
//
//	func TestSomething(t *testing.T) {
//		srv := pgtest.Get(t) // skips (fatal when CI=true) if no server can be had
//		db, err := sql.Open("warmpg", srv.URL())
//		...
//	}
//
// Get finds a server, in this order (WARMPG_TEST_BACKEND=env|local forces
// one of them):
//
//  1. WARMPG_TEST_DATABASE_URL: an existing server, in URL form (Kind "env").
//  2. Local server binaries (WARMPG_PG_BIN, else initdb and pg_ctl on PATH,
//     else the highest /usr/lib/postgresql/*/bin): a throwaway cluster in a
//     temporary directory, on a free port of 127.0.0.1 (Kind "local").
//
// On a laptop with Docker and no PostgreSQL installed, the command in the
// module tools/pgcontainer starts a container and runs the tests with
// WARMPG_TEST_DATABASE_URL pointing at it. It is a module of its own so
// that testcontainers-go and the Docker client stay out of warmpg's go.mod,
// and so out of every module that imports warmpg.
//
// The shared server is started lazily on the first Get, so test runs that
// never call Get start nothing; Main stops it and deletes its files when
// the tests are done. Tests that need to stop, restart or freeze a server
// without disturbing other tests start their own with StartLocal and Close
// it.
//
// Every local cluster also has a role PasswordUser, which must log in with
// PasswordUserPassword over TCP (scram-sha-256), for tests that check that
// passwords are sent correctly and never leak; see Server.WithPasswordUser.
package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"go.uber.org/goleak"
)

// Environment variables read by this package.
const (
	// EnvDatabaseURL names an existing server to use, in URL form.
	EnvDatabaseURL = "WARMPG_TEST_DATABASE_URL"
	// EnvBackend forces the kind of server: "env" or "local".
	EnvBackend = "WARMPG_TEST_BACKEND"
	// EnvPGBin is a directory holding initdb and pg_ctl.
	EnvPGBin = "WARMPG_PG_BIN"
	// EnvCI makes a missing server fatal instead of a skip when it is "true".
	EnvCI = "CI"
)

// Kinds of Server.
const (
	KindLocal = "local" // a cluster this package started from local binaries
	KindEnv   = "env"   // an existing server named by WARMPG_TEST_DATABASE_URL
)

// The password-authenticated role every local server has (and a container
// from tools/pgcontainer).
const (
	// PasswordUser is a login role that must authenticate with a password
	// (scram-sha-256) over TCP.
	PasswordUser = "warmpg_pw"
	// PasswordUserPassword is PasswordUser's password.
	PasswordUserPassword = "s3cr3t-warmpg-pw"
)

// ErrNotManaged is returned by Start, Stop and Restart on a server this
// package did not start.
var ErrNotManaged = errors.New("pgtest: server is not managed by this harness")

// Server is a PostgreSQL server tests can use. The exported fields describe
// how to connect as a superuser (for Kind "env": as the user the URL names).
type Server struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string
	// Kind is KindLocal or KindEnv.
	Kind string

	params  []param  // base connection parameters; nil means sslmode=disable
	local   *cluster // set for Kind "local"
	owner   bool     // Close stops and removes the server
	hasPW   bool     // the PasswordUser role exists
	closeMu sync.Mutex
	closed  bool
}

// Managed reports whether this harness started the server (Kind "local"),
// so that it may stop, start and restart it.
func (s *Server) Managed() bool { return s.local != nil }

// DataDir returns the data directory of a managed server, "" otherwise.
func (s *Server) DataDir() string {
	if s.local == nil {
		return ""
	}
	return s.local.dataDir
}

// LogPath returns the path of a managed server's log file, "" otherwise.
func (s *Server) LogPath() string {
	if s.local == nil {
		return ""
	}
	return s.local.logPath
}

// LogTail returns the last n lines of a managed server's log, "" otherwise.
func (s *Server) LogTail(n int) string {
	if s.local == nil {
		return ""
	}
	return tailFile(s.local.logPath, n)
}

// PostmasterPID returns the process id of a managed server's postmaster,
// as its postmaster.pid file says, or 0 if the server is not managed or not
// running.
func (s *Server) PostmasterPID() int {
	if s.local == nil {
		return 0
	}
	return s.local.postmasterPID()
}

// Start starts a managed server that was stopped and waits until it accepts
// connections.
func (s *Server) Start(ctx context.Context) error {
	if s.local == nil {
		return ErrNotManaged
	}
	return s.local.start(ctx)
}

// Stop stops a managed server with pg_ctl stop -m mode, where mode is
// "smart", "fast" or "immediate" ("" means "fast"), and waits until it is
// down. A postmaster frozen with SIGSTOP is sent SIGCONT first.
func (s *Server) Stop(ctx context.Context, mode string) error {
	if s.local == nil {
		return ErrNotManaged
	}
	return s.local.stop(ctx, mode)
}

// Restart restarts a managed server with pg_ctl restart -m mode, where mode
// is "smart", "fast" or "immediate" ("" means "fast"), and waits until it
// accepts connections again. The new postmaster has a new PID. A postmaster
// frozen with SIGSTOP is sent SIGCONT first.
func (s *Server) Restart(ctx context.Context, mode string) error {
	if s.local == nil {
		return ErrNotManaged
	}
	return s.local.restart(ctx, mode)
}

// Close stops the server (immediate mode) and removes its files if this
// Server started it: one from StartLocal or Open. It is a
// no-op for the shared server of Get (Main closes that), for Kind "env" and
// for copies made by WithUser. Close may be called more than once.
func (s *Server) Close() error {
	if !s.owner {
		return nil
	}
	return s.shutdown()
}

// shutdown stops and removes a server this process started, once.
func (s *Server) shutdown() error {
	s.closeMu.Lock()
	defer s.closeMu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	unregister(s)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if s.local != nil {
		return s.local.destroy(ctx)
	}
	return nil
}

// WithUser returns a copy of s that connects as user with password. The
// copy shares the server: it can Stop or Restart a managed server, but its
// Close does nothing.
func (s *Server) WithUser(user, password string) *Server {
	return &Server{
		Host:     s.Host,
		Port:     s.Port,
		User:     user,
		Password: password,
		Database: s.Database,
		Kind:     s.Kind,
		params:   s.params,
		local:    s.local,
		hasPW:    s.hasPW,
	}
}

// HasPasswordUser reports whether the server has the role PasswordUser with
// the password PasswordUserPassword: always for Kind "local"; for Kind
// "env" only if someone created the role (tools/pgcontainer does).
func (s *Server) HasPasswordUser() bool { return s.hasPW }

// WithPasswordUser returns a copy of s that connects as PasswordUser with
// PasswordUserPassword (see WithUser). If the server has no such role it
// skips the test (fails it when CI=true).
func (s *Server) WithPasswordUser(t testing.TB) *Server {
	t.Helper()
	if !s.hasPW {
		unavailable(t, fmt.Errorf("server at %s (kind %s) has no role %s; create it with password %q", s.Addr(), s.Kind, PasswordUser, PasswordUserPassword))
	}
	return s.WithUser(PasswordUser, PasswordUserPassword)
}

// Connect opens a pgx connection to the server as s.User, with params
// (unescaped "key=value" strings, as for URL) added. The caller closes it.
func (s *Server) Connect(ctx context.Context, params ...string) (*pgx.Conn, error) {
	p := append([]string{"application_name=pgtest", "connect_timeout=10"}, params...)
	cfg, err := pgx.ParseConfig(s.URL(p...))
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	conn, err := pgx.ConnectConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("pgtest: connect to %s: %w", s.Addr(), err)
	}
	return conn, nil
}

// Exec runs sql (one or more statements, simple protocol) as s.User — the
// superuser, except for Kind "env" — on a short-lived connection.
func (s *Server) Exec(ctx context.Context, sql string) error {
	conn, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	if _, err := conn.Exec(ctx, sql); err != nil {
		return fmt.Errorf("pgtest: exec: %w", err)
	}
	return nil
}

// queryInt runs a query returning one integer on a short-lived connection.
func (s *Server) queryInt(ctx context.Context, sql string, args ...any) (int, error) {
	conn, err := s.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer closeConn(conn)
	var n int
	if err := conn.QueryRow(ctx, sql, args...).Scan(&n); err != nil {
		return 0, fmt.Errorf("pgtest: query: %w", err)
	}
	return n, nil
}

// BackendCount returns the number of client backends in pg_stat_activity
// whose application_name is applicationName, not counting the connection
// that asks.
func (s *Server) BackendCount(ctx context.Context, applicationName string) (int, error) {
	return s.queryInt(ctx, `select count(*) from pg_stat_activity
		where backend_type = 'client backend' and application_name = $1 and pid <> pg_backend_pid()`,
		applicationName)
}

// WaitBackendCount polls BackendCount until it equals want or ctx is done
// (a closed connection's backend goes away shortly after the close). It
// returns the last count seen, and ctx's error if it gave up.
func (s *Server) WaitBackendCount(ctx context.Context, applicationName string, want int) (int, error) {
	conn, err := s.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer closeConn(conn)
	const q = `select count(*) from pg_stat_activity
		where backend_type = 'client backend' and application_name = $1 and pid <> pg_backend_pid()`
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		var n int
		if err := conn.QueryRow(ctx, q, applicationName).Scan(&n); err != nil {
			if ctx.Err() != nil {
				return n, ctx.Err()
			}
			return n, fmt.Errorf("pgtest: query: %w", err)
		}
		if n == want {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-tick.C:
		}
	}
}

// TerminateBackends ends (pg_terminate_backend) every client backend whose
// application_name is applicationName, other than the asking connection,
// and returns how many it signalled.
func (s *Server) TerminateBackends(ctx context.Context, applicationName string) (int, error) {
	return s.queryInt(ctx, `select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
		where backend_type = 'client backend' and application_name = $1 and pid <> pg_backend_pid()) t`,
		applicationName)
}

func closeConn(conn *pgx.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_ = conn.Close(ctx)
}

// ping checks that the server answers select 1.
func (s *Server) ping(ctx context.Context) error {
	n, err := s.queryInt(ctx, "select 1")
	if err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("pgtest: select 1 returned %d", n)
	}
	return nil
}

// Option configures StartLocal and Open.
type Option func(*config)

type config struct {
	binDir       string
	settings     []param
	startTimeout time.Duration
	tls          bool // WithTLS (StartLocal only; see tls.go)
}

func newConfig(opts []Option) *config {
	c := &config{startTimeout: 60 * time.Second}
	for _, o := range opts {
		o(c)
	}
	return c
}

// WithBinDir makes StartLocal use the initdb and pg_ctl in dir instead of
// looking for them.
func WithBinDir(dir string) Option { return func(c *config) { c.binDir = dir } }

// WithSetting sets a server setting: a postgresql.conf line for
// StartLocal. Later settings override earlier ones and the defaults.
func WithSetting(name, value string) Option {
	return func(c *config) { c.settings = append(c.settings, param{name, value}) }
}

// WithStartTimeout bounds how long pg_ctl waits for the server to start,
// stop or restart (default 60s).
func WithStartTimeout(d time.Duration) Option {
	return func(c *config) { c.startTimeout = d }
}

// Open gets a new server of the given backend — "env", "local", or "" for
// the choice Get makes (WARMPG_TEST_BACKEND if set, else
// WARMPG_TEST_DATABASE_URL, else local binaries) — and checks that it
// answers. The caller must Close it. Unlike Get, Open never skips: it
// returns the reason no server could be had.
func Open(ctx context.Context, backend string, opts ...Option) (*Server, error) {
	if backend == "" {
		backend = os.Getenv(EnvBackend)
	}
	switch backend {
	case KindEnv:
		return openEnv(ctx)
	case KindLocal:
		return StartLocal(ctx, opts...)
	case "container":
		return nil, fmt.Errorf("pgtest: %s=container: the container path is the module tools/pgcontainer; "+
			"run the tests through it (make bin/pgcontainer && ./bin/pgcontainer -- go test ./...), "+
			"which sets %s", EnvBackend, EnvDatabaseURL)
	case "", "auto":
	default:
		return nil, fmt.Errorf("pgtest: %s=%q: want env or local", EnvBackend, backend)
	}
	if os.Getenv(EnvDatabaseURL) != "" {
		return openEnv(ctx)
	}
	srv, err := StartLocal(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("%w; and %s is not set (with Docker: ./bin/pgcontainer -- go test ./... sets it)", err, EnvDatabaseURL)
	}
	return srv, nil
}

// openEnv checks the server named by WARMPG_TEST_DATABASE_URL.
func openEnv(ctx context.Context) (*Server, error) {
	raw := os.Getenv(EnvDatabaseURL)
	if raw == "" {
		return nil, fmt.Errorf("pgtest: %s=env but %s is not set", EnvBackend, EnvDatabaseURL)
	}
	srv, err := parseURL(raw, KindEnv)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", EnvDatabaseURL, err)
	}
	pctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	if err := srv.ping(pctx); err != nil {
		return nil, fmt.Errorf("pgtest: the server of %s (%s, user %s, database %s) does not answer: %w",
			EnvDatabaseURL, srv.Addr(), srv.User, srv.Database, err)
	}
	n, err := srv.queryInt(pctx, "select count(*) from pg_roles where rolname = $1 and rolcanlogin", PasswordUser)
	srv.hasPW = err == nil && n == 1
	return srv, nil
}

var (
	mainActive atomic.Bool
	shared     struct {
		once sync.Once
		srv  *Server
		err  error
	}
)

// Get returns the package's shared server, getting it on first use (see
// the package comment for where it comes from). When no server can be had
// it skips the test with the reason — or fails it when CI=true. The test
// binary's TestMain must call Main, which stops the server at the end.
//
// Tests share the server: they must not stop or restart it (use StartLocal
// for that) and should name what they create uniquely.
func Get(t testing.TB) *Server {
	t.Helper()
	if !mainActive.Load() {
		t.Fatal(errNoMain)
	}
	srv, err := Shared()
	if err != nil {
		unavailable(t, err)
	}
	return srv
}

var errNoMain = errors.New("pgtest: the test binary's TestMain must call pgtest.Main: func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }")

// Shared is Get for code that has no testing.TB, such as an Example
// function: it returns the shared server, or why there is none (then the
// caller decides; an example cannot skip).
func Shared() (*Server, error) {
	if !mainActive.Load() {
		return nil, errNoMain
	}
	shared.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		srv, err := Open(ctx, "")
		if err != nil {
			shared.err = err
			return
		}
		srv.owner = false // Main closes it; a test's Close must not
		shared.srv = srv
	})
	return shared.srv, shared.err
}

// unavailable skips the test, or fails it when CI=true.
func unavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvCI) == "true" {
		t.Fatalf("pgtest: no PostgreSQL server (CI=true makes this fatal): %v", err)
	}
	t.Skipf("pgtest: no PostgreSQL server (skipping; CI=true would fail): %v", err)
}

// Main runs the tests for TestMain, then stops and deletes every server
// this package started and that is still running (the shared server, and
// any StartLocal server a test forgot to Close, which it reports; likewise
// any pgbouncer from StartPgBouncer, first), then,
// when the tests passed, checks with goleak that no goroutine outlives them
// (every DB, connection and proxy the tests opened is closed by then). It
// returns the exit code for os.Exit: m.Run's, or 1 if cleaning up failed or
// a goroutine leaked.
func Main(m *testing.M) int {
	mainActive.Store(true)
	code := m.Run()
	if err := errors.Join(closeBouncers(), closeAll()); err != nil {
		fmt.Fprintf(os.Stderr, "pgtest: cleaning up: %v\n", err)
		if code == 0 {
			code = 1
		}
	}
	if code == 0 {
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	return code
}

// registry holds the servers this process started and has not closed.
var registry struct {
	mu  sync.Mutex
	all map[*Server]struct{}
}

func register(s *Server) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	if registry.all == nil {
		registry.all = make(map[*Server]struct{})
	}
	registry.all[s] = struct{}{}
}

func unregister(s *Server) {
	registry.mu.Lock()
	defer registry.mu.Unlock()
	delete(registry.all, s)
}

func closeAll() error {
	registry.mu.Lock()
	var all []*Server
	for s := range registry.all {
		all = append(all, s)
	}
	registry.mu.Unlock()
	var errs []error
	for _, s := range all {
		if s != shared.srv {
			fmt.Fprintf(os.Stderr, "pgtest: a %s server at %s was not closed by its test; closing it\n", s.Kind, s.Addr())
		}
		if err := s.shutdown(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
