package pgtest

// PgBouncer in front of a test server. A test that needs a pooler starts
// its own, in front of a server of its own when it restarts that server:
//
//	srv, _ := pgtest.StartLocal(ctx)          // or pgtest.Get(t)
//	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(4))
//	db, _ := sql.Open("warmpg", b.URL("pool_pgbouncer=true"))
//	n, _ := b.ServerConns(ctx)                 // server connections the pooler holds
//
// The bouncer runs from a configuration in a temporary directory, in the
// foreground as a child of the test process (as the OS user "postgres"
// when we are root, as the cluster does), listens on a free port of
// 127.0.0.1 only, pools in transaction mode by default, and is stopped and
// its directory removed by Close — or by Main for one a test forgot.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"maps"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// EnvPgBouncer names the pgbouncer binary to use instead of looking for one.
const EnvPgBouncer = "WARMPG_PGBOUNCER"

// ErrNoPgBouncer is wrapped by StartPgBouncer's error when no pgbouncer
// binary can be found (scripts/setup.sh installs Debian's), or the one
// named by WithBouncerBinary or WARMPG_PGBOUNCER is not executable — as
// for a server, whose binaries named by WARMPG_PG_BIN are missing, a test
// then skips, or fails when CI=true.
var ErrNoPgBouncer = errors.New("no pgbouncer binary")

// bouncerTempPrefix starts the name of every directory StartPgBouncer makes.
const bouncerTempPrefix = "warmpg-pgbouncer-"

// BouncerAdminDB is the database name of PgBouncer's admin console.
const BouncerAdminDB = "pgbouncer"

// Bouncer is a PgBouncer process in front of a Server. The exported fields
// say how to connect through it: the server's user, password and database,
// at the bouncer's address.
type Bouncer struct {
	Host     string
	Port     int
	User     string
	Password string
	Database string

	srv   *Server
	proc  *bouncerProc
	owner bool // Close stops the process and removes its files
}

// bouncerProc is the process and its files, shared by a Bouncer and its
// copies:
//
//	<dir>/owner.pid        the PID of the test process that made it
//	<dir>/pgbouncer.ini    the configuration
//	<dir>/userlist.txt     auth_file
//	<dir>/hba.conf         auth_hba_file
//	<dir>/pgbouncer.log    logfile
//	<dir>/pgbouncer.pid    pidfile
//	<dir>/pgbouncer.out    the process's stdout and stderr
type bouncerProc struct {
	bin, dir, ini, logPath, outPath string
	cred                            *syscall.Credential
	port                            int
	timeout                         time.Duration

	mu      sync.Mutex // serializes start, stop and close
	cmd     *exec.Cmd  // nil when not running
	exited  chan struct{}
	waitErr error // valid once exited is closed
	closed  bool
}

// BouncerOption configures StartPgBouncer.
type BouncerOption func(*bouncerConfig)

type bouncerConfig struct {
	bin          string
	settings     []param
	startTimeout time.Duration
}

// WithBouncerBinary makes StartPgBouncer run the pgbouncer at path instead
// of looking for one.
func WithBouncerBinary(path string) BouncerOption {
	return func(c *bouncerConfig) { c.bin = path }
}

// WithBouncerPoolSize sets default_pool_size, the most server connections
// the bouncer opens per database and user (default 4: few enough that many
// clients share them, which is what breaks server-side prepared statements
// in transaction mode).
func WithBouncerPoolSize(n int) BouncerOption {
	return WithBouncerSetting("default_pool_size", strconv.Itoa(n))
}

// WithBouncerPoolMode sets pool_mode: "session", "transaction" (the
// default) or "statement".
func WithBouncerPoolMode(mode string) BouncerOption {
	return WithBouncerSetting("pool_mode", mode)
}

// WithBouncerSetting sets a line of the [pgbouncer] section, after and
// over the defaults (see bouncerDefaults). A value is written as given.
func WithBouncerSetting(name, value string) BouncerOption {
	return func(c *bouncerConfig) { c.settings = append(c.settings, param{name, value}) }
}

// WithBouncerStartTimeout bounds how long StartPgBouncer, Start and Restart
// wait for the bouncer to accept connections (default 30s).
func WithBouncerStartTimeout(d time.Duration) BouncerOption {
	return func(c *bouncerConfig) { c.startTimeout = d }
}

// bouncerDefaults are the [pgbouncer] settings besides the files and the
// address. Those that differ from PgBouncer's own defaults keep tests
// short: a server login that failed is retried after 1 s, not 15 s; a
// client waits at most 30 s for a server connection, not 120 s.
var bouncerDefaults = []param{
	{"pool_mode", "transaction"},
	{"default_pool_size", "4"},
	{"min_pool_size", "0"},
	{"reserve_pool_size", "0"},
	{"max_client_conn", "500"},
	{"server_login_retry", "1"},
	{"query_wait_timeout", "30"},
	// lib/pq sends extra_float_digits, which PgBouncer 1.18 refuses
	// otherwise ("unsupported startup parameter").
	{"ignore_startup_parameters", "extra_float_digits"},
	{"log_connections", "1"},
	{"log_disconnections", "1"},
}

// PgBouncer starts a bouncer in front of srv for a test and closes it when
// the test ends. When no pgbouncer binary can be found it skips the test —
// or fails it when CI=true; any other failure to start fails the test.
func PgBouncer(t testing.TB, srv *Server, opts ...BouncerOption) *Bouncer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	b, err := StartPgBouncer(ctx, srv, opts...)
	if errors.Is(err, ErrNoPgBouncer) {
		bouncerUnavailable(t, err)
	}
	if err != nil {
		t.Fatalf("pgtest: starting pgbouncer: %v", err)
	}
	t.Cleanup(func() {
		if err := b.Close(); err != nil {
			t.Errorf("pgtest: closing pgbouncer: %v", err)
		}
	})
	return b
}

// bouncerUnavailable skips the test, or fails it when CI=true, as
// unavailable does for a missing server.
func bouncerUnavailable(t testing.TB, err error) {
	t.Helper()
	if os.Getenv(EnvCI) == "true" {
		t.Fatalf("pgtest: no pgbouncer (CI=true makes this fatal): %v", err)
	}
	t.Skipf("pgtest: no pgbouncer (skipping; CI=true would fail): %v", err)
}

// StartPgBouncer starts PgBouncer in front of srv, listening on a free port
// of 127.0.0.1, and waits until its admin console answers. Its [databases]
// section sends every database name to srv; srv.User is an admin_users
// member; clients authenticate as srv's own pg_hba.conf asks (PasswordUser
// with its password, everyone else trusted), and the bouncer logs in to
// srv with the passwords it knows (PasswordUser's, srv.Password for
// srv.User). The binary is WithBouncerBinary's, else WARMPG_PGBOUNCER's,
// else pgbouncer on PATH, else /usr/sbin/pgbouncer (Debian's); when there
// is none the error wraps ErrNoPgBouncer. The caller must Close it.
func StartPgBouncer(ctx context.Context, srv *Server, opts ...BouncerOption) (b *Bouncer, err error) {
	cfg := &bouncerConfig{startTimeout: 30 * time.Second}
	for _, o := range opts {
		o(cfg)
	}
	bin, err := findPgBouncer(cfg.bin)
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	bouncerSweepOnce.Do(sweepStaleBouncers)

	dir, err := os.MkdirTemp("", bouncerTempPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	p := &bouncerProc{
		bin:     bin,
		dir:     dir,
		ini:     filepath.Join(dir, "pgbouncer.ini"),
		logPath: filepath.Join(dir, "pgbouncer.log"),
		outPath: filepath.Join(dir, "pgbouncer.out"),
		cred:    cred,
		timeout: cfg.startTimeout,
	}
	defer func() {
		if err != nil {
			if derr := p.destroy(); derr != nil {
				err = fmt.Errorf("%w; cleaning up: %v", err, derr)
			}
		}
	}()
	if err := os.WriteFile(filepath.Join(dir, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := p.chown(dir); err != nil {
		return nil, err
	}
	if err := p.writeFile(filepath.Join(dir, "userlist.txt"), bouncerUserlist(srv)); err != nil {
		return nil, err
	}
	if err := p.writeFile(filepath.Join(dir, "hba.conf"), bouncerHBA); err != nil {
		return nil, err
	}

	b = &Bouncer{
		Host:     "127.0.0.1",
		User:     srv.User,
		Password: srv.Password,
		Database: srv.Database,
		srv:      srv,
		proc:     p,
		owner:    true,
	}
	// The free port may be taken by someone else before the bouncer binds
	// it; then try another.
	for attempt := 1; ; attempt++ {
		if p.port, err = freePort(); err != nil {
			return nil, err
		}
		b.Port = p.port
		if err := p.writeFile(p.ini, bouncerINI(p, srv, cfg.settings)); err != nil {
			return nil, err
		}
		err = b.start(ctx)
		if err == nil {
			break
		}
		if attempt == 3 || !strings.Contains(tailFile(p.logPath, logTailLines), "Address already in use") {
			return nil, err
		}
	}
	registerBouncer(p)
	return b, nil
}

// findPgBouncer returns the pgbouncer binary to run.
func findPgBouncer(bin string) (string, error) {
	if bin == "" {
		bin = os.Getenv(EnvPgBouncer)
	}
	if bin != "" {
		if !isExecutable(bin) {
			return "", fmt.Errorf("pgtest: %w: %s is not executable (%s=%q)", ErrNoPgBouncer, bin, EnvPgBouncer, os.Getenv(EnvPgBouncer))
		}
		return bin, nil
	}
	if p, err := exec.LookPath("pgbouncer"); err == nil {
		return p, nil
	}
	if isExecutable("/usr/sbin/pgbouncer") {
		return "/usr/sbin/pgbouncer", nil
	}
	return "", fmt.Errorf("pgtest: %w on PATH or at /usr/sbin/pgbouncer: set %s, or run scripts/setup.sh (apt-get install pgbouncer)", ErrNoPgBouncer, EnvPgBouncer)
}

// bouncerHBA mirrors the pg_hba.conf of a local cluster (hbaConf).
const bouncerHBA = `# Written by internal/pgtest.
host    all          ` + PasswordUser + `  127.0.0.1/32   scram-sha-256
host    all          all        127.0.0.1/32   trust
`

// bouncerUserlist is the auth_file: the users the bouncer knows, with the
// plain-text passwords it checks clients against (PasswordUser) and logs
// in to the server with.
func bouncerUserlist(srv *Server) string {
	quote := func(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }
	var b strings.Builder
	users := map[string]string{srv.User: srv.Password}
	if srv.hasPW {
		users[PasswordUser] = PasswordUserPassword
	}
	for _, u := range slices.Sorted(maps.Keys(users)) {
		fmt.Fprintf(&b, "%s %s\n", quote(u), quote(users[u]))
	}
	return b.String()
}

// bouncerINI writes the configuration: every database name goes to srv.
func bouncerINI(p *bouncerProc, srv *Server, extra []param) string {
	var b strings.Builder
	b.WriteString("; Written by internal/pgtest.\n[databases]\n")
	target := fmt.Sprintf("host=%s port=%d", srv.Host, srv.Port)
	b.WriteString("* = " + target + "\n")
	b.WriteString("\n[pgbouncer]\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	set("listen_addr", "127.0.0.1")
	set("listen_port", strconv.Itoa(p.port))
	set("unix_socket_dir", "") // no socket in /tmp
	set("logfile", p.logPath)
	set("pidfile", filepath.Join(p.dir, "pgbouncer.pid"))
	set("auth_type", "hba")
	set("auth_hba_file", filepath.Join(p.dir, "hba.conf"))
	set("auth_file", filepath.Join(p.dir, "userlist.txt"))
	set("admin_users", srv.User)
	// A server that wants TLS gets it the way srv's URL asks.
	for _, sp := range srv.baseParams() {
		switch sp.key {
		case "sslmode":
			set("server_tls_sslmode", sp.value)
		case "sslrootcert":
			set("server_tls_ca_file", sp.value)
		}
	}
	// Later lines win in PgBouncer's ini: defaults first, then the caller's.
	for _, s := range append(slices.Clone(bouncerDefaults), extra...) {
		set(s.key, s.value)
	}
	return b.String()
}

// URL returns the bouncer's address in URL form for srv's user and
// database, with params, as Server.URL does. The bouncer speaks no TLS to
// clients: sslmode is disable.
func (b *Bouncer) URL(params ...string) string { return b.front().URL(params...) }

// KeyValue returns the bouncer's address in libpq key=value form, as
// Server.KeyValue does.
func (b *Bouncer) KeyValue(params ...string) string { return b.front().KeyValue(params...) }

// Addr returns the bouncer's "host:port".
func (b *Bouncer) Addr() string { return net.JoinHostPort(b.Host, strconv.Itoa(b.Port)) }

// front describes the bouncer as a server to connect to.
func (b *Bouncer) front() *Server {
	return &Server{Host: b.Host, Port: b.Port, User: b.User, Password: b.Password, Database: b.Database, Kind: "pgbouncer"}
}

// Backend returns the server behind the bouncer (to restart it, or to
// count its backends).
func (b *Bouncer) Backend() *Server { return b.srv }

// WithUser returns a copy of b whose URL and KeyValue connect as user with
// password. The copy shares the process: it can Stop, Start or Restart it,
// but its Close does nothing.
func (b *Bouncer) WithUser(user, password string) *Bouncer {
	c := *b
	c.User, c.Password, c.owner = user, password, false
	return &c
}

// LogPath returns the path of the bouncer's log file.
func (b *Bouncer) LogPath() string { return b.proc.logPath }

// LogTail returns the last n lines of the bouncer's log.
func (b *Bouncer) LogTail(n int) string { return tailFile(b.proc.logPath, n) }

// PID returns the bouncer's process id, 0 when it is not running.
func (b *Bouncer) PID() int {
	p := b.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	if !p.runningLocked() {
		return 0
	}
	return p.cmd.Process.Pid
}

// runningLocked reports whether the process runs, forgetting one that
// exited on its own; p.mu is held.
func (p *bouncerProc) runningLocked() bool {
	if p.cmd == nil {
		return false
	}
	select {
	case <-p.exited:
		p.cmd = nil
		return false
	default:
		return true
	}
}

// Start starts a bouncer that was stopped or killed, on the same port, and
// waits until it accepts connections.
func (b *Bouncer) Start(ctx context.Context) error { return b.start(ctx) }

// Stop shuts the bouncer down with SIGTERM (PgBouncer's immediate
// shutdown: every client and server connection is closed at once) and
// waits until the process is gone; SIGKILL if it lingers. Stopping a
// stopped bouncer does nothing.
func (b *Bouncer) Stop() error { return b.proc.stop(syscall.SIGTERM) }

// Kill kills the bouncer with SIGKILL, as a crash would, and waits until
// the process is gone. The kernel closes its sockets: clients see their
// connections closed (no ErrorResponse first), the server sees its
// backends' clients go away.
func (b *Bouncer) Kill() error { return b.proc.stop(syscall.SIGKILL) }

// Restart stops the bouncer (as Stop) and starts it again on the same port.
func (b *Bouncer) Restart(ctx context.Context) error {
	if err := b.Stop(); err != nil {
		return err
	}
	return b.start(ctx)
}

// Close stops the bouncer and removes its files, if b is the Bouncer
// StartPgBouncer returned; it is a no-op for copies made by WithUser. Close
// may be called more than once.
func (b *Bouncer) Close() error {
	if !b.owner {
		return nil
	}
	return b.proc.destroy()
}

// start runs the process and waits until the admin console answers, the
// process exits, or the start timeout passes.
func (b *Bouncer) start(ctx context.Context) error {
	p := b.proc
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return errors.New("pgtest: pgbouncer is closed")
	}
	if p.runningLocked() {
		return errors.New("pgtest: pgbouncer is already running")
	}
	out, err := os.OpenFile(p.outPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	defer out.Close() // the child has its own copy
	cmd := exec.Command(p.bin, p.ini)
	cmd.Dir = p.dir
	cmd.Env = serverEnv()
	cmd.Stdout = out
	cmd.Stderr = out
	if p.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: p.cred}
	}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("pgtest: starting %s: %w", p.bin, err)
	}
	exited := make(chan struct{})
	p.cmd, p.exited = cmd, exited
	go func() {
		p.waitErr = cmd.Wait()
		close(exited)
	}()

	wctx, cancel := context.WithTimeout(ctx, p.timeout)
	defer cancel()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	var last error
	for {
		cctx, ccancel := context.WithTimeout(wctx, 2*time.Second)
		_, last = b.admin(cctx, "SHOW VERSION")
		ccancel()
		if last == nil {
			return nil
		}
		select {
		case <-exited:
			p.cmd = nil
			return p.failure(fmt.Sprintf("exited during start (%v)", p.waitErr))
		case <-wctx.Done():
			p.kill()
			return p.failure(fmt.Sprintf("not answering after %v (last: %v)", p.timeout, last))
		case <-tick.C:
		}
	}
}

// failure builds an error with the ends of the bouncer's output and log.
func (p *bouncerProc) failure(what string) error {
	return fmt.Errorf("pgtest: pgbouncer %s\n%s:\n%s\nlast lines of %s:\n%s", what,
		p.outPath, tailFile(p.outPath, logTailLines), p.logPath, tailFile(p.logPath, logTailLines))
}

// stop sends sig and waits for the process to exit; SIGKILL after 10 s.
func (p *bouncerProc) stop(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cmd == nil {
		return nil
	}
	_ = p.cmd.Process.Signal(sig)
	select {
	case <-p.exited:
		p.cmd = nil
		return nil
	case <-time.After(10 * time.Second):
	}
	p.kill()
	if p.cmd != nil {
		return fmt.Errorf("pgtest: pgbouncer %d still alive after SIGKILL", p.cmd.Process.Pid)
	}
	return nil
}

// kill sends SIGKILL and waits up to 10 s for the exit; p.mu is held.
func (p *bouncerProc) kill() {
	if p.cmd == nil {
		return
	}
	_ = p.cmd.Process.Kill()
	select {
	case <-p.exited:
		p.cmd = nil
	case <-time.After(10 * time.Second):
	}
}

// destroy stops the process and removes the directory, once.
func (p *bouncerProc) destroy() error {
	unregisterBouncer(p)
	serr := p.stop(syscall.SIGTERM)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return serr
	}
	p.closed = true
	if err := os.RemoveAll(p.dir); err != nil {
		return errors.Join(serr, fmt.Errorf("pgtest: %w", err))
	}
	return serr
}

func (p *bouncerProc) chown(path string) error {
	if p.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(p.cred.Uid), int(p.cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// writeFile writes a file the bouncer reads, owned by its OS user.
func (p *bouncerProc) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return p.chown(path)
}

// Admin runs command on the bouncer's admin console (database "pgbouncer",
// as srv.User, simple protocol) on a short-lived connection and returns the
// rows of its last result, each column by name, as text.
func (b *Bouncer) Admin(ctx context.Context, command string) ([]map[string]string, error) {
	return b.admin(ctx, command)
}

func (b *Bouncer) admin(ctx context.Context, command string) ([]map[string]string, error) {
	s := b.front()
	s.Database = BouncerAdminDB
	s.User, s.Password = b.srv.User, b.srv.Password
	conn, err := pgconn.Connect(ctx, s.URL("connect_timeout=5"))
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer admin console at %s: %w", b.Addr(), err)
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = conn.Close(cctx)
	}()
	results, err := conn.Exec(ctx, command).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("pgtest: pgbouncer admin %q: %w", command, err)
	}
	var rows []map[string]string
	if len(results) > 0 {
		r := results[len(results)-1]
		for _, values := range r.Rows {
			row := make(map[string]string, len(values))
			for i, fd := range r.FieldDescriptions {
				row[fd.Name] = string(values[i])
			}
			rows = append(rows, row)
		}
	}
	return rows, nil
}

// Show runs "SHOW what" (POOLS, SERVERS, CLIENTS, STATS, ...) on the admin
// console; see Admin.
func (b *Bouncer) Show(ctx context.Context, what string) ([]map[string]string, error) {
	return b.admin(ctx, "SHOW "+what)
}

// ServerConns returns how many server connections the bouncer holds for
// b's database, in any state (SHOW SERVERS: active, idle, used, being
// tested or logging in).
func (b *Bouncer) ServerConns(ctx context.Context) (int, error) {
	return b.count(ctx, "SERVERS", "")
}

// ClientConns returns how many client connections the bouncer has for b's
// database (SHOW CLIENTS, which does not count the admin console's own);
// with applicationName != "", only those that sent that application_name.
func (b *Bouncer) ClientConns(ctx context.Context, applicationName string) (int, error) {
	return b.count(ctx, "CLIENTS", applicationName)
}

func (b *Bouncer) count(ctx context.Context, what, app string) (int, error) {
	rows, err := b.Show(ctx, what)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, r := range rows {
		if r["database"] == b.Database && (app == "" || r["application_name"] == app) {
			n++
		}
	}
	return n, nil
}

// Pool returns b's database's line of SHOW POOLS for b's user, nil if the
// bouncer has no such pool yet.
func (b *Bouncer) Pool(ctx context.Context) (map[string]string, error) {
	rows, err := b.Show(ctx, "POOLS")
	if err != nil {
		return nil, err
	}
	for _, r := range rows {
		if r["database"] == b.Database && r["user"] == b.User {
			return r, nil
		}
	}
	return nil, nil
}

// The bouncers this process started and has not closed, for Main.
var bouncers struct {
	mu  sync.Mutex
	all map[*bouncerProc]struct{}
}

func registerBouncer(p *bouncerProc) {
	bouncers.mu.Lock()
	defer bouncers.mu.Unlock()
	if bouncers.all == nil {
		bouncers.all = make(map[*bouncerProc]struct{})
	}
	bouncers.all[p] = struct{}{}
}

func unregisterBouncer(p *bouncerProc) {
	bouncers.mu.Lock()
	defer bouncers.mu.Unlock()
	delete(bouncers.all, p)
}

// closeBouncers stops every bouncer a test forgot to Close, and reports it.
func closeBouncers() error {
	bouncers.mu.Lock()
	var all []*bouncerProc
	for p := range bouncers.all {
		all = append(all, p)
	}
	bouncers.mu.Unlock()
	var errs []error
	for _, p := range all {
		fmt.Fprintf(os.Stderr, "pgtest: a pgbouncer on 127.0.0.1:%d was not closed by its test; closing it\n", p.port)
		if err := p.destroy(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

var bouncerSweepOnce sync.Once

// sweepStaleBouncers stops and removes the bouncers of earlier test
// processes that died without cleaning up: directories named
// bouncerTempPrefix* whose owner.pid names a process that no longer exists.
func sweepStaleBouncers() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), bouncerTempPrefix+"*"))
	for _, dir := range dirs {
		owner, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			if fi, serr := os.Stat(dir); serr != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if pid, err := strconv.Atoi(strings.TrimSpace(string(owner))); err != nil || pid <= 0 || processAlive(pid) {
			continue
		}
		if pf, err := os.ReadFile(filepath.Join(dir, "pgbouncer.pid")); err == nil {
			if pid, err := strconv.Atoi(strings.TrimSpace(string(pf))); err == nil && pid > 0 && processAlive(pid) {
				// Make sure the PID is still that directory's bouncer.
				cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
				if !bytes.Contains(cmdline, []byte(dir)) {
					continue
				}
				_ = killAndWait(pid, 5*time.Second)
			}
		}
		_ = os.RemoveAll(dir)
	}
}
