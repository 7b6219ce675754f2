package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// tempPrefix starts the name of every temporary directory StartLocal makes.
const tempPrefix = "warmpg-pgtest-"

// logTailLines is how many lines of server.log an error carries.
const logTailLines = 30

// cluster is a throwaway PostgreSQL cluster in a temporary directory:
//
//	<baseDir>/owner.pid    the PID of the process that made it
//	<baseDir>/data         the data directory
//	<baseDir>/server.log   the server's log (pg_ctl -l)
//	<baseDir>/.s.PGSQL.N   the Unix socket
type cluster struct {
	initdb, pgctl string
	baseDir       string
	dataDir       string
	logPath       string
	cred          *syscall.Credential // nil: run as ourselves
	timeout       time.Duration
	mu            sync.Mutex // serializes pg_ctl calls
	tls           *tlsFiles  // WithTLS: the CA files tests verify with; nil without TLS
}

// StartLocal starts a new, separate throwaway cluster from the local server
// binaries, for tests that must stop, restart or freeze a server without
// disturbing others. The caller must Close it (Main closes forgotten ones).
//
// The cluster listens on a free port of 127.0.0.1 (and a Unix socket in its
// temporary directory), trusts every user there except PasswordUser, which
// must give PasswordUserPassword, and is tuned for tests: fsync off,
// max_connections=500, shared_buffers=64MB. The superuser is "postgres",
// the database "postgres". When we run as root, initdb, pg_ctl and the
// server run as the OS user "postgres".
func StartLocal(ctx context.Context, opts ...Option) (srv *Server, err error) {
	cfg := newConfig(opts)
	initdb, pgctl, err := findBinaries(cfg.binDir)
	if err != nil {
		return nil, err
	}
	cred, err := serverCredential()
	if err != nil {
		return nil, err
	}
	sweepOnce.Do(sweepStale)

	base, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &cluster{
		initdb:  initdb,
		pgctl:   pgctl,
		baseDir: base,
		dataDir: filepath.Join(base, "data"),
		logPath: filepath.Join(base, "server.log"),
		cred:    cred,
		timeout: cfg.startTimeout,
	}
	defer func() {
		if err != nil {
			if derr := c.destroy(context.Background()); derr != nil {
				err = fmt.Errorf("%w; cleaning up: %v", err, derr)
			}
		}
	}()
	if err := os.WriteFile(filepath.Join(base, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.chown(base); err != nil {
		return nil, err
	}

	out, err := c.run(ctx, c.initdb, "-D", c.dataDir, "-A", "trust", "-U", "postgres",
		"--no-sync", "-E", "UTF8", "--locale=C", "--no-instructions")
	if err != nil {
		return nil, fmt.Errorf("pgtest: initdb (%s): %w\n%s", c.initdb, err, lastLines(out, logTailLines))
	}
	confPath := filepath.Join(c.dataDir, "postgresql.conf")
	origConf, err := os.ReadFile(confPath)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.writeFile(filepath.Join(c.dataDir, "pg_hba.conf"), hbaConf); err != nil {
		return nil, err
	}
	if cfg.tls {
		if err := c.setupTLS(cfg); err != nil {
			return nil, err
		}
	}

	port, err := c.startOnFreePort(ctx, confPath, origConf, func(port int) string { return c.settings(port, cfg.settings) })
	if err != nil {
		return nil, err
	}

	srv = &Server{
		Kind:     KindLocal,
		Host:     "127.0.0.1",
		Port:     port,
		User:     "postgres",
		Database: "postgres",
		local:    c,
		owner:    true,
	}
	err = srv.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", PasswordUser, PasswordUserPassword))
	if err != nil {
		return nil, fmt.Errorf("%w\nserver.log:\n%s", err, tailFile(c.logPath, logTailLines))
	}
	srv.hasPW = true
	register(srv)
	return srv, nil
}

// hbaConf: PasswordUser needs its password; everyone else is trusted.
const hbaConf = `# Written by internal/pgtest.
# TYPE  DATABASE     USER       ADDRESS        METHOD
local   all          ` + PasswordUser + `                 scram-sha-256
host    all          ` + PasswordUser + `  127.0.0.1/32   scram-sha-256
host    all          ` + PasswordUser + `  ::1/128        scram-sha-256
local   all          all                       trust
host    all          all        127.0.0.1/32   trust
host    all          all        ::1/128        trust
local   replication  all                       trust
host    replication  all        127.0.0.1/32   trust
host    replication  all        ::1/128        trust
`

// startOnFreePort writes base with settings(port) appended as the
// cluster's postgresql.conf (confPath) and starts the server. The free port
// may be taken by someone else before the server binds it; then it tries
// another, three times in all. It returns the port the server listens on.
func (c *cluster) startOnFreePort(ctx context.Context, confPath string, base []byte, settings func(port int) string) (int, error) {
	for attempt := 1; ; attempt++ {
		port, err := freePort()
		if err != nil {
			return 0, err
		}
		if err := c.writeFile(confPath, string(base)+settings(port)); err != nil {
			return 0, err
		}
		err = c.start(ctx)
		if err == nil {
			return port, nil
		}
		if attempt == 3 || !strings.Contains(tailFile(c.logPath, logTailLines), "could not bind") {
			return 0, err
		}
	}
}

// settings returns the postgresql.conf lines appended after initdb's.
func (c *cluster) settings(port int, extra []param) string {
	var b strings.Builder
	b.WriteString("\n# Added by internal/pgtest.\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	set("listen_addresses", "'127.0.0.1'")
	set("port", strconv.Itoa(port))
	set("unix_socket_directories", quoteConf(c.baseDir))
	set("max_connections", "500")
	set("shared_buffers", "64MB")
	set("fsync", "off")
	set("synchronous_commit", "off")
	set("full_page_writes", "off")
	set("logging_collector", "off")
	set("password_encryption", "'scram-sha-256'")
	for _, p := range extra {
		set(p.key, p.value)
	}
	return b.String()
}

// quoteConf quotes a postgresql.conf string value.
func quoteConf(v string) string {
	return "'" + strings.ReplaceAll(v, "'", "''") + "'"
}

// pgctlTimeout is pg_ctl's -t argument.
func (c *cluster) pgctlTimeout() string {
	secs := int(c.timeout.Round(time.Second) / time.Second)
	if secs < 1 {
		secs = 1
	}
	return strconv.Itoa(secs)
}

func (c *cluster) start(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	out, err := c.run(ctx, c.pgctl, "start", "-D", c.dataDir, "-l", c.logPath, "-w", "-t", c.pgctlTimeout())
	if err != nil {
		return c.failure("pg_ctl start", out, err)
	}
	return nil
}

func (c *cluster) stop(ctx context.Context, mode string) error {
	return c.pgctlMode(ctx, "stop", mode)
}

func (c *cluster) restart(ctx context.Context, mode string) error {
	return c.pgctlMode(ctx, "restart", mode, "-l", c.logPath)
}

// pgctlMode runs pg_ctl stop or restart with a shutdown mode, resuming a
// SIGSTOPped server first so that it can shut down.
func (c *cluster) pgctlMode(ctx context.Context, action, mode string, extra ...string) error {
	mode, err := checkMode(mode)
	if err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.resume()
	args := append([]string{action, "-D", c.dataDir}, extra...)
	args = append(args, "-m", mode, "-w", "-t", c.pgctlTimeout())
	out, err := c.run(ctx, c.pgctl, args...)
	if err != nil {
		return c.failure("pg_ctl "+action+" -m "+mode, out, err)
	}
	return nil
}

func checkMode(mode string) (string, error) {
	switch mode {
	case "":
		return "fast", nil
	case "smart", "fast", "immediate":
		return mode, nil
	}
	return "", fmt.Errorf("pgtest: shutdown mode %q: want smart, fast or immediate", mode)
}

// resume sends SIGCONT to the postmaster, in case a test froze it.
func (c *cluster) resume() {
	if pid := c.postmasterPID(); pid > 0 {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// failure builds an error from a failed pg_ctl call, with the ends of its
// output and of server.log.
func (c *cluster) failure(what, out string, err error) error {
	return fmt.Errorf("pgtest: %s: %w\n%s\nlast lines of %s:\n%s",
		what, err, strings.TrimSpace(lastLines(out, logTailLines)), c.logPath, tailFile(c.logPath, logTailLines))
}

// postmasterPID reads the first line of postmaster.pid; 0 if there is none.
func (c *cluster) postmasterPID() int {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	pid, err := strconv.Atoi(strings.TrimSpace(line))
	if err != nil || pid <= 0 {
		return 0
	}
	return pid
}

// destroy stops the server (immediate mode; SIGKILL if pg_ctl fails) and
// removes the temporary directory.
func (c *cluster) destroy(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	var errs []error
	if pid := c.postmasterPID(); pid > 0 && processAlive(pid) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
		if out, err := c.run(ctx, c.pgctl, "stop", "-D", c.dataDir, "-m", "immediate", "-w", "-t", "30"); err != nil {
			if kerr := killAndWait(pid, 10*time.Second); kerr != nil {
				errs = append(errs, c.failure("pg_ctl stop -m immediate", out, err), kerr)
			}
		}
	}
	if err := os.RemoveAll(c.baseDir); err != nil {
		errs = append(errs, fmt.Errorf("pgtest: %w", err))
	}
	return errors.Join(errs...)
}

// run runs a PostgreSQL program as the server's OS user in the cluster's
// directory and returns its combined output.
func (c *cluster) run(ctx context.Context, prog string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, prog, args...)
	cmd.Dir = c.baseDir
	cmd.Env = serverEnv()
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	// The server pg_ctl starts gets its output redirected to the log, but
	// never wait long for a descendant still holding our pipe.
	cmd.WaitDelay = 5 * time.Second
	if c.cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: c.cred}
	}
	err := cmd.Run()
	return out.String(), err
}

// serverEnv is our environment without the libpq and server variables that
// could point the programs elsewhere, in the C locale.
func serverEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "PG") || strings.HasPrefix(kv, "LC_") || strings.HasPrefix(kv, "LANG=") {
			continue
		}
		env = append(env, kv)
	}
	return append(env, "LANG=C", "LC_ALL=C")
}

// chown gives path to the server's OS user.
func (c *cluster) chown(path string) error {
	if c.cred == nil {
		return nil
	}
	if err := os.Chown(path, int(c.cred.Uid), int(c.cred.Gid)); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return nil
}

// writeFile writes a file the server reads, owned by its OS user.
func (c *cluster) writeFile(path, content string) error {
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		return fmt.Errorf("pgtest: %w", err)
	}
	return c.chown(path)
}

// serverCredential returns nil when we are not root; as root (which initdb
// and postgres refuse to be), the uid and gid of the OS user "postgres".
func serverCredential() (*syscall.Credential, error) {
	if os.Geteuid() != 0 {
		return nil, nil
	}
	u, err := user.Lookup("postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: running as root, and PostgreSQL refuses to run as root, but there is no OS user \"postgres\" to run it as: %w", err)
	}
	uid, err := strconv.ParseUint(u.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: uid of postgres: %w", err)
	}
	gid, err := strconv.ParseUint(u.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("pgtest: gid of postgres: %w", err)
	}
	return &syscall.Credential{Uid: uint32(uid), Gid: uint32(gid), NoSetGroups: true}, nil
}

// findBinaries finds initdb and pg_ctl: in dir (or WARMPG_PG_BIN) if set,
// else on PATH, else in the highest /usr/lib/postgresql/*/bin.
func findBinaries(dir string) (initdb, pgctl string, err error) {
	if dir == "" {
		dir = os.Getenv(EnvPGBin)
	}
	if dir != "" {
		initdb, pgctl = filepath.Join(dir, "initdb"), filepath.Join(dir, "pg_ctl")
		if !isExecutable(initdb) || !isExecutable(pgctl) {
			return "", "", fmt.Errorf("pgtest: %s has no initdb and pg_ctl (%s=%q)", dir, EnvPGBin, os.Getenv(EnvPGBin))
		}
		return initdb, pgctl, nil
	}
	if i, err1 := exec.LookPath("initdb"); err1 == nil {
		if p, err2 := exec.LookPath("pg_ctl"); err2 == nil {
			return i, p, nil
		}
	}
	if dirs := debianBinDirs(); len(dirs) > 0 {
		return filepath.Join(dirs[0], "initdb"), filepath.Join(dirs[0], "pg_ctl"), nil
	}
	return "", "", errors.New("pgtest: no PostgreSQL server binaries: set " + EnvPGBin +
		", put initdb and pg_ctl on PATH, or run scripts/setup.sh")
}

// debianBinGlob is where Debian's packages put the server binaries; tests
// point it elsewhere to play a machine without them.
var debianBinGlob = "/usr/lib/postgresql/*/bin"

// debianBinDirs returns the /usr/lib/postgresql/<version>/bin directories
// that hold initdb and pg_ctl, highest version first.
func debianBinDirs() []string {
	matches, _ := filepath.Glob(debianBinGlob)
	type vdir struct {
		v   []int
		dir string
	}
	var ds []vdir
	for _, m := range matches {
		if !isExecutable(filepath.Join(m, "initdb")) || !isExecutable(filepath.Join(m, "pg_ctl")) {
			continue
		}
		var v []int
		for _, part := range strings.Split(filepath.Base(filepath.Dir(m)), ".") {
			n, _ := strconv.Atoi(part)
			v = append(v, n)
		}
		ds = append(ds, vdir{v, m})
	}
	sort.Slice(ds, func(i, j int) bool {
		a, b := ds[i].v, ds[j].v
		for k := 0; k < len(a) && k < len(b); k++ {
			if a[k] != b[k] {
				return a[k] > b[k]
			}
		}
		return len(a) > len(b)
	})
	out := make([]string, len(ds))
	for i, d := range ds {
		out[i] = d.dir
	}
	return out
}

func isExecutable(path string) bool {
	fi, err := os.Stat(path)
	return err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0
}

// freePort returns a TCP port of 127.0.0.1 that was free a moment ago.
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// processAlive reports whether a process with that PID exists and is not
// a zombie (where nobody reaps orphans, a killed server lingers as one).
func processAlive(pid int) bool {
	if err := syscall.Kill(pid, 0); err != nil && !errors.Is(err, syscall.EPERM) {
		return false
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return !errors.Is(err, os.ErrNotExist)
	}
	// The state follows the command name, which is in parentheses.
	if i := bytes.LastIndexByte(stat, ')'); i >= 0 && i+2 < len(stat) {
		return stat[i+2] != 'Z' && stat[i+2] != 'X'
	}
	return true
}

// killAndWait sends SIGKILL to pid and waits until it is gone.
func killAndWait(pid int, timeout time.Duration) error {
	_ = syscall.Kill(pid, syscall.SIGKILL)
	deadline := time.Now().Add(timeout)
	for processAlive(pid) {
		if time.Now().After(deadline) {
			return fmt.Errorf("pgtest: process %d still alive after SIGKILL", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
	return nil
}

var sweepOnce sync.Once

// sweepStale stops and removes the clusters of earlier test processes that
// died without cleaning up (killed, or timed out): directories named
// tempPrefix* whose owner.pid names a process that no longer exists.
func sweepStale() {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), tempPrefix+"*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			// Just being made by another process, or not ours: only remove
			// it when old.
			if fi, serr := os.Stat(dir); serr != nil || time.Since(fi.ModTime()) < time.Hour {
				continue
			}
		} else if owner, err := strconv.Atoi(strings.TrimSpace(string(b))); err != nil || owner <= 0 || processAlive(owner) {
			continue
		}
		c := &cluster{baseDir: dir, dataDir: filepath.Join(dir, "data")}
		if pid := c.postmasterPID(); pid > 0 && processAlive(pid) {
			// Make sure the PID is still that cluster's postmaster.
			cmdline, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if !bytes.Contains(cmdline, []byte(c.dataDir)) {
				continue
			}
			_ = syscall.Kill(pid, syscall.SIGCONT)
			_ = syscall.Kill(pid, syscall.SIGQUIT) // immediate shutdown
			deadline := time.Now().Add(5 * time.Second)
			for processAlive(pid) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if processAlive(pid) {
				_ = killAndWait(pid, 5*time.Second)
			}
		}
		_ = os.RemoveAll(dir)
	}
}

// tailFile returns the last n lines of a file, or a note why it cannot.
func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("(cannot read %s: %v)", path, err)
	}
	return lastLines(string(b), n)
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	s = strings.TrimRight(s, "\n")
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
