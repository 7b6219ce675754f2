package pgtest_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// procUID returns the real uid of a running process, from /proc.
func procUID(pid int) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "Uid:" {
			return strconv.Atoi(f[1])
		}
	}
	return 0, errors.New("no Uid line")
}

// gone reports whether pid no longer runs (or is a zombie).
func gone(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	return err != nil || strings.Contains(string(b), ") Z ") || strings.Contains(string(b), ") X ")
}

// TestPgBouncerLifecycle: queries pass through the bouncer in both DSN
// forms and for the password role; the admin console counts client and
// server connections exactly; Restart, Kill and Start work on the same
// port; Close ends the process and removes its files.
func TestPgBouncerLifecycle(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	start := time.Now()
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(3))
	t.Logf("PgBouncer started in %v on %s", time.Since(start), b.Addr())
	if b.Host != "127.0.0.1" || b.Port == srv.Port || b.User != srv.User || b.Database != srv.Database {
		t.Fatalf("bouncer %+v", b)
	}
	if b.Backend() != srv {
		t.Fatal("Backend is not the server behind")
	}
	// pgx's default mode prepares named statements, which two client
	// connections served by one server connection in turn collide on
	// (42P05): the exec mode prepares only the unnamed statement.
	const exec = "default_query_exec_mode=exec"
	for _, dsn := range []string{b.URL(exec), b.KeyValue(exec)} {
		if err := selectOne(ctx, dsn); err != nil {
			t.Fatalf("select 1 through the bouncer (%s): %v", dsn, err)
		}
	}
	if srv.HasPasswordUser() {
		pw := b.WithUser(pgtest.PasswordUser, pgtest.PasswordUserPassword)
		if err := selectOne(ctx, pw.URL(exec)); err != nil {
			t.Errorf("password role through the bouncer: %v", err)
		}
		wrong := b.WithUser(pgtest.PasswordUser, "wrong-password")
		if err := selectOne(ctx, wrong.URL(exec)); err == nil {
			t.Error("the bouncer let the password role in with a wrong password")
		}
		if err := pw.Close(); err != nil || b.PID() == 0 {
			t.Fatalf("a copy's Close stopped the bouncer (%v)", err)
		}
	}
	if os.Geteuid() == 0 {
		if uid, err := procUID(b.PID()); err != nil || uid == 0 {
			t.Errorf("running as root, the bouncer runs as uid %d (%v), want the postgres user's", uid, err)
		}
	}
	pool, err := b.Pool(ctx)
	if err != nil || pool == nil {
		t.Fatalf("SHOW POOLS: %v %v", pool, err)
	}
	if pool["pool_mode"] != "transaction" {
		t.Errorf("pool_mode %q, want transaction", pool["pool_mode"])
	}

	// 6 clients, 2 of them inside a transaction: 6 client connections, 2
	// server connections linked to them (pool_size 3 allows 3).
	app := fmt.Sprintf("pgtest_bouncer_%d", time.Now().UnixNano())
	conns := make([]*pgx.Conn, 6)
	for i := range conns {
		c, err := pgx.Connect(ctx, b.URL("application_name="+app, exec))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close(context.Background())
		conns[i] = c
	}
	for _, c := range conns[:2] {
		if _, err := c.Exec(ctx, "begin; select 1"); err != nil {
			t.Fatal(err)
		}
	}
	if n, err := b.ClientConns(ctx, app); err != nil || n != 6 {
		t.Errorf("ClientConns = %d (%v), want 6", n, err)
	}
	pool, err = b.Pool(ctx)
	if err != nil || pool["sv_active"] != "2" {
		t.Errorf("SHOW POOLS %v (%v): want sv_active 2", pool, err)
	}
	if n, err := b.ServerConns(ctx); err != nil || n < 2 || n > 3 {
		t.Errorf("ServerConns = %d (%v), want 2 or 3 (at most default_pool_size)", n, err)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 2 {
		t.Errorf("the server shows %d backends named %s (%v), want the 2 in a transaction", n, app, err)
	}

	// Kill: the clients' connections are closed; Start brings it back on
	// the same port.
	pid := b.PID()
	if err := b.Kill(); err != nil {
		t.Fatal(err)
	}
	if b.PID() != 0 || !gone(pid) {
		t.Fatalf("after Kill: PID %d, process %d gone: %v", b.PID(), pid, gone(pid))
	}
	if err := conns[2].Ping(ctx); err == nil {
		t.Error("a client of a killed bouncer can still ping")
	}
	if err := b.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := b.Start(ctx); err == nil {
		t.Error("a second Start succeeded")
	}
	if err := selectOne(ctx, b.URL(exec)); err != nil {
		t.Fatalf("after Kill and Start: %v", err)
	}
	pid = b.PID()
	if err := b.Restart(ctx); err != nil {
		t.Fatal(err)
	}
	if b.PID() == pid || b.PID() == 0 || !gone(pid) {
		t.Fatalf("Restart: PID %d → %d", pid, b.PID())
	}
	if err := selectOne(ctx, b.URL(exec)); err != nil {
		t.Fatalf("after Restart: %v", err)
	}

	// Close: the process is gone, the directory too, twice is fine.
	dir := filepath.Dir(b.LogPath())
	pid = b.PID()
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	if !gone(pid) {
		t.Errorf("bouncer %d still running after Close", pid)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", dir, err)
	}
	if err := b.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := b.Start(ctx); err == nil {
		t.Error("Start after Close succeeded")
	}
}

// fakeTB records what PgBouncer does when it cannot start: Skipf and
// Fatalf end the goroutine, as testing's do.
type fakeTB struct {
	testing.TB
	mu      sync.Mutex
	skipped string
	failed  string
}

func (f *fakeTB) Helper() {}
func (f *fakeTB) Skipf(format string, args ...any) {
	f.mu.Lock()
	f.skipped = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}
func (f *fakeTB) Fatalf(format string, args ...any) {
	f.mu.Lock()
	f.failed = fmt.Sprintf(format, args...)
	f.mu.Unlock()
	runtime.Goexit()
}

// A missing pgbouncer skips the test, or fails it under CI=true.
func TestPgBouncerMissing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 10*time.Second)
	missing := filepath.Join(t.TempDir(), "pgbouncer")
	if _, err := pgtest.StartPgBouncer(ctx, srv, pgtest.WithBouncerBinary(missing)); !errors.Is(err, pgtest.ErrNoPgBouncer) {
		t.Fatalf("StartPgBouncer with a missing binary: %v, want ErrNoPgBouncer", err)
	}
	for _, ci := range []string{"", "true"} {
		t.Run("CI="+ci, func(t *testing.T) {
			t.Setenv("CI", ci)
			f := &fakeTB{TB: t}
			done := make(chan struct{})
			go func() {
				defer close(done)
				pgtest.PgBouncer(f, srv, pgtest.WithBouncerBinary(missing))
			}()
			<-done
			if ci == "true" && (f.failed == "" || f.skipped != "") {
				t.Errorf("CI=true: failed %q, skipped %q; want a failure", f.failed, f.skipped)
			}
			if ci == "" && (f.skipped == "" || f.failed != "") {
				t.Errorf("no CI: failed %q, skipped %q; want a skip", f.failed, f.skipped)
			}
			if msg := f.failed + f.skipped; !strings.Contains(msg, "no pgbouncer") || !strings.Contains(msg, missing) {
				t.Errorf("message %q does not say what is missing", msg)
			}
		})
	}
}

// A bouncer that cannot start (a bad setting) gives an error with its
// output, and leaves no process and no directory behind.
func TestPgBouncerStartFailure(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	b, err := pgtest.StartPgBouncer(ctx, srv, pgtest.WithBouncerPoolMode("sometimes"))
	if errors.Is(err, pgtest.ErrNoPgBouncer) {
		pgtest.PgBouncer(t, srv) // skips, or fails under CI
	}
	if err == nil {
		b.Close()
		t.Fatal("a bouncer with pool_mode=sometimes started")
	}
	if !strings.Contains(err.Error(), "pool_mode") {
		t.Errorf("the error does not show why: %v", err)
	}
	t.Logf("error: %v", err)
	matches, _ := filepath.Glob(filepath.Join(os.TempDir(), "warmpg-pgbouncer-*"))
	for _, m := range matches {
		if owner, err := os.ReadFile(filepath.Join(m, "owner.pid")); err == nil && strings.TrimSpace(string(owner)) == strconv.Itoa(os.Getpid()) {
			// Only a bouncer of this process that a running test holds may
			// exist; none does here (tests do not run in parallel).
			t.Errorf("a failed start left %s", m)
		}
	}
}
