package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"go.uber.org/goleak"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main also checks with goleak that no goroutine outlives the tests.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func ctxT(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

func selectOne(ctx context.Context, connString string) error {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return err
	}
	defer conn.Close(context.Background())
	var n int
	if err := conn.QueryRow(ctx, "select 1").Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("select 1 returned %d", n)
	}
	return nil
}

func TestSharedServerAnswers(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatalf("select 1 via URL: %v", err)
	}
	if err := selectOne(ctx, srv.KeyValue()); err != nil {
		t.Fatalf("select 1 via KeyValue: %v", err)
	}
	if srv.Kind == pgtest.KindLocal {
		if !srv.Managed() || srv.PostmasterPID() <= 0 {
			t.Fatalf("local server: Managed=%v PostmasterPID=%d", srv.Managed(), srv.PostmasterPID())
		}
		if srv.Host != "127.0.0.1" || srv.User != "postgres" || srv.Database != "postgres" {
			t.Fatalf("local server: %+v", srv)
		}
		var maxConn string
		conn, err := srv.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer conn.Close(context.Background())
		if err := conn.QueryRow(ctx, "show max_connections").Scan(&maxConn); err != nil {
			t.Fatal(err)
		}
		if maxConn != "500" {
			t.Fatalf("max_connections = %s, want 500", maxConn)
		}
	}
	// Get returns the same server every time.
	if again := pgtest.Get(t); again != srv {
		t.Fatal("Get returned a different server the second time")
	}
	// The shared server's Close is a no-op: it must still answer.
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatalf("shared server stopped by Close: %v", err)
	}
}

func TestExec(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	if err := srv.Exec(ctx, "create table pgtest_exec(x int); insert into pgtest_exec values (41), (1)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = srv.Exec(context.Background(), "drop table if exists pgtest_exec") })
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var sum int
	if err := conn.QueryRow(ctx, "select sum(x) from pgtest_exec").Scan(&sum); err != nil {
		t.Fatal(err)
	}
	if sum != 42 {
		t.Fatalf("sum = %d, want 42", sum)
	}
	if err := srv.Exec(ctx, "select * from no_such_table"); err == nil {
		t.Fatal("Exec of a bad statement returned no error")
	}
}

func TestBackendCount(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	app := fmt.Sprintf("pgtest-count-%d", time.Now().UnixNano())
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 0 {
		t.Fatalf("before connecting: BackendCount = %d, %v; want 0", n, err)
	}
	var conns []*pgx.Conn
	for range 3 {
		conn, err := pgx.Connect(ctx, srv.URL("application_name="+app))
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, conn)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 3 {
		t.Fatalf("with 3 connections: BackendCount = %d, %v; want 3", n, err)
	}
	conns[0].Close(ctx)
	if n, err := srv.WaitBackendCount(ctx, app, 2); err != nil {
		t.Fatalf("after closing one: WaitBackendCount = %d, %v; want 2", n, err)
	}
	if n, err := srv.TerminateBackends(ctx, app); err != nil || n != 2 {
		t.Fatalf("TerminateBackends = %d, %v; want 2", n, err)
	}
	if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
		t.Fatalf("after terminating: WaitBackendCount = %d, %v; want 0", n, err)
	}
	for _, c := range conns[1:] {
		if err := c.Ping(ctx); err == nil {
			t.Fatal("a terminated connection still answers")
		}
		c.Close(ctx)
	}
}

func TestPasswordUser(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	pw := srv.WithPasswordUser(t)
	if pw.User != pgtest.PasswordUser || pw.Password != pgtest.PasswordUserPassword {
		t.Fatalf("WithPasswordUser: user %q password %q", pw.User, pw.Password)
	}
	if err := selectOne(ctx, pw.URL()); err != nil {
		t.Fatalf("login with the right password: %v", err)
	}
	if err := selectOne(ctx, pw.KeyValue()); err != nil {
		t.Fatalf("login with the right password (key=value): %v", err)
	}

	for name, bad := range map[string]*pgtest.Server{
		"wrong password": srv.WithUser(pgtest.PasswordUser, "wrong-password"),
		"no password":    srv.WithUser(pgtest.PasswordUser, ""),
	} {
		err := selectOne(ctx, bad.URL())
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Errorf("%s: got %v, want SQLSTATE 28P01 (invalid_password)", name, err)
		}
	}
	// A copy's Close leaves the server alone.
	if err := pw.Close(); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatalf("server gone after closing a copy: %v", err)
	}
}

func TestStartLocalRestart(t *testing.T) {
	pgtest.Get(t) // skip (or fail under CI) the same way when no server can be had
	ctx := ctxT(t, 2*time.Minute)
	start := time.Now()
	srv, err := pgtest.StartLocal(ctx)
	if err != nil {
		if os.Getenv("CI") != "true" && strings.Contains(err.Error(), "no PostgreSQL server binaries") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Logf("StartLocal took %v", time.Since(start))
	closed := false
	t.Cleanup(func() {
		if !closed {
			srv.Close()
		}
	})
	if !srv.Managed() || srv.Kind != pgtest.KindLocal {
		t.Fatalf("StartLocal: Managed=%v Kind=%q", srv.Managed(), srv.Kind)
	}
	if shared := pgtest.Get(t); shared.Kind == pgtest.KindLocal && shared.Port == srv.Port {
		t.Fatal("StartLocal returned the shared server's port")
	}
	dir := filepath.Dir(srv.DataDir())
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatal(err)
	}
	pid := srv.PostmasterPID()
	if pid <= 0 {
		t.Fatalf("PostmasterPID = %d", pid)
	}

	start = time.Now()
	if err := srv.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	t.Logf("Restart(fast) took %v", time.Since(start))
	newPID := srv.PostmasterPID()
	if newPID <= 0 || newPID == pid {
		t.Fatalf("PostmasterPID after restart = %d, before = %d", newPID, pid)
	}
	if err := syscall.Kill(pid, 0); err == nil {
		// The old postmaster may linger as a zombie; it must not be running.
		if b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); !strings.Contains(string(b), ") Z") {
			t.Errorf("old postmaster %d still alive", pid)
		}
	}
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatalf("after restart: %v", err)
	}

	// Stop and Start; a connection attempt in between fails.
	if err := srv.Stop(ctx, "immediate"); err != nil {
		t.Fatal(err)
	}
	if srv.PostmasterPID() != 0 {
		t.Fatalf("PostmasterPID after Stop = %d, want 0", srv.PostmasterPID())
	}
	if err := selectOne(ctx, srv.URL("connect_timeout=2")); err == nil {
		t.Fatal("a stopped server answered")
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(ctx, srv.URL()); err != nil {
		t.Fatalf("after Start: %v", err)
	}
	if err := srv.Restart(ctx, "bogus"); err == nil {
		t.Fatal("Restart with a bogus mode returned no error")
	}

	// A frozen postmaster does not keep Close from stopping it.
	if err := syscall.Kill(srv.PostmasterPID(), syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	last := srv.PostmasterPID()
	closed = true
	if err := srv.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("Close left %s: %v", dir, err)
	}
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", last)); err == nil && !strings.Contains(string(b), ") Z") {
		t.Fatalf("postmaster %d still running after Close: %s", last, b)
	}
	if err := srv.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func TestNotManaged(t *testing.T) {
	ctx := ctxT(t, 10*time.Second)
	s := &pgtest.Server{Host: "127.0.0.1", Port: 1, User: "u", Database: "d", Kind: pgtest.KindEnv}
	if s.Managed() || s.PostmasterPID() != 0 {
		t.Fatal("a plain Server claims to be managed")
	}
	for name, err := range map[string]error{
		"Restart": s.Restart(ctx, "fast"),
		"Stop":    s.Stop(ctx, "fast"),
		"Start":   s.Start(ctx),
	} {
		if !errors.Is(err, pgtest.ErrNotManaged) {
			t.Errorf("%s: %v, want ErrNotManaged", name, err)
		}
	}
	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestConnStrings(t *testing.T) {
	s := &pgtest.Server{Host: "127.0.0.1", Port: 5433, User: "bob", Password: "p@ss w'rd", Database: "db", Kind: pgtest.KindLocal}
	if got := s.Addr(); got != "127.0.0.1:5433" {
		t.Errorf("Addr = %q", got)
	}
	u, err := url.Parse(s.URL("application_name=my app", "sslmode=require"))
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	q := u.Query()
	if u.Scheme != "postgres" || u.Host != "127.0.0.1:5433" || u.User.Username() != "bob" || pw != "p@ss w'rd" ||
		u.Path != "/db" || q.Get("application_name") != "my app" || len(q["sslmode"]) != 1 || q.Get("sslmode") != "require" {
		t.Errorf("URL = %s", s.URL("application_name=my app", "sslmode=require"))
	}
	if got, want := (&pgtest.Server{Host: "127.0.0.1", Port: 1, User: "u", Database: "d"}).URL(),
		"postgres://u@127.0.0.1:1/d?sslmode=disable"; got != want {
		t.Errorf("URL = %q, want %q", got, want)
	}
	if got, want := s.KeyValue("connect_timeout=5"),
		`host=127.0.0.1 port=5433 user=bob password='p@ss w\'rd' dbname=db sslmode=disable connect_timeout=5`; got != want {
		t.Errorf("KeyValue = %q, want %q", got, want)
	}
	// Both forms parse to the same settings.
	for _, cs := range []string{s.URL("application_name=a b"), s.KeyValue("application_name=a b")} {
		cfg, err := pgconn.ParseConfig(cs)
		if err != nil {
			t.Fatalf("%s: %v", cs, err)
		}
		if cfg.Host != "127.0.0.1" || cfg.Port != 5433 || cfg.User != "bob" || cfg.Password != "p@ss w'rd" ||
			cfg.Database != "db" || cfg.RuntimeParams["application_name"] != "a b" || cfg.TLSConfig != nil {
			t.Errorf("%s parsed to %+v", cs, cfg)
		}
	}
}

func TestOpenBadBackend(t *testing.T) {
	_, err := pgtest.Open(context.Background(), "nonsense")
	if err == nil || !strings.Contains(err.Error(), "want env or local") {
		t.Fatalf("Open(nonsense) = %v", err)
	}
}

// TestEnvBackend points WARMPG_TEST_DATABASE_URL at the shared server and
// opens it as an "env" server; and checks that a dead URL fails clearly
// without showing the password.
func TestEnvBackend(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	t.Setenv(pgtest.EnvDatabaseURL, srv.URL("application_name=pgtest-env"))
	env, err := pgtest.Open(ctx, pgtest.KindEnv)
	if err != nil {
		t.Fatal(err)
	}
	defer env.Close()
	if env.Kind != pgtest.KindEnv || env.Managed() || env.Addr() != srv.Addr() || env.User != srv.User {
		t.Fatalf("env server: %+v", env)
	}
	if env.HasPasswordUser() != srv.HasPasswordUser() {
		t.Errorf("env server: HasPasswordUser = %v, the server's = %v", env.HasPasswordUser(), srv.HasPasswordUser())
	}
	if err := env.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(env.URL(), "application_name=pgtest-env") {
		t.Errorf("env URL lost the URL's parameters: %s", env.URL())
	}

	t.Setenv(pgtest.EnvDatabaseURL, "postgres://someone:hunter2-secret@127.0.0.1:1/db")
	_, err = pgtest.Open(ctx, "")
	if err == nil {
		t.Fatal("Open with a dead URL succeeded")
	}
	if strings.Contains(err.Error(), "hunter2-secret") {
		t.Fatalf("the error shows the password: %v", err)
	}
	if !strings.Contains(err.Error(), pgtest.EnvDatabaseURL) {
		t.Errorf("the error does not name %s: %v", pgtest.EnvDatabaseURL, err)
	}
	t.Logf("dead URL: %v", err)
}

// TestContainerBackend: the container path is no longer in this package
// (testcontainers-go would enter warmpg's go.mod); asking for it says where
// it went and which variable it sets.
func TestContainerBackend(t *testing.T) {
	t.Setenv(pgtest.EnvBackend, "container")
	_, err := pgtest.Open(context.Background(), "")
	if err == nil {
		t.Fatal("WARMPG_TEST_BACKEND=container opened a server")
	}
	for _, want := range []string{"tools/pgcontainer", pgtest.EnvDatabaseURL} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error does not name %s: %v", want, err)
		}
	}
}

// TestNoGoroutineLeak: using the harness leaves no goroutines behind.
func TestNoGoroutineLeak(t *testing.T) {
	srv := pgtest.Get(t)
	before := goleak.IgnoreCurrent()
	ctx := ctxT(t, 30*time.Second)
	if _, err := srv.BackendCount(ctx, "x"); err != nil {
		t.Fatal(err)
	}
	if err := srv.Exec(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	goleak.VerifyNone(t, before)
}

// TestStartLocalFailure: a server that cannot start gives an error with the
// end of its log, and leaves nothing behind.
func TestStartLocalFailure(t *testing.T) {
	pgtest.NeedLocal(t)
	ctx := ctxT(t, time.Minute)
	srv, err := pgtest.StartLocal(ctx, pgtest.WithSetting("shared_buffers", "'not-a-size'"))
	if err == nil {
		srv.Close()
		t.Fatal("StartLocal with a bad setting succeeded")
	}
	if !strings.Contains(err.Error(), "shared_buffers") || !strings.Contains(err.Error(), "server.log") {
		t.Errorf("the error does not show the log: %v", err)
	}
	// The error names the log file, in the cluster's directory, which
	// must be gone.
	m := regexp.MustCompile(`(\S*warmpg-pgtest-[0-9]+)/server\.log`).FindStringSubmatch(err.Error())
	if m == nil {
		t.Fatalf("the error names no server.log: %v", err)
	}
	if _, serr := os.Stat(m[1]); !errors.Is(serr, os.ErrNotExist) {
		t.Errorf("StartLocal left %s behind: %v", m[1], serr)
	}
	t.Logf("error: %v", err)
}
