package warmpg

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
	"go.uber.org/goleak"
)

// TestPasswordFileFirstLine: pool_password_file gives the first line
// without its line end; an empty, missing or unreadable file fails with an
// error naming the key and the path and never the content.
func TestPasswordFileFirstLine(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	for _, tc := range []struct{ content, want string }{
		{"Zq9secret\n", "Zq9secret"},
		{"Zq9secret\r\n", "Zq9secret"},
		{"Zq9secret", "Zq9secret"},
		{"Zq9 secret \n# comment\nother\n", "Zq9 secret "},
		{"Zq9secret\r\nsecond\r\n", "Zq9secret"},
	} {
		got, err := readPasswordFile(write("ok", tc.content))
		if err != nil || got != tc.want {
			t.Errorf("%q: got %q, %v; want %q", tc.content, got, err, tc.want)
		}
	}
	for _, tc := range []struct{ name, content, want string }{
		{"empty", "", "its first line is empty"},
		{"newline-first", "\nZq9secret\n", "its first line is empty"},
		{"crlf-first", "\r\nZq9secret\n", "its first line is empty"},
		{"long", strings.Repeat("Zq9secret", maxPasswordFile/9+1), "longer than"},
	} {
		p := write(tc.name, tc.content)
		_, err := readPasswordFile(p)
		if err == nil || !strings.Contains(err.Error(), "warmpg: pool_password_file="+p+": ") || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want the key, the path and %q", tc.name, err, tc.want)
		} else if strings.Contains(err.Error(), "Zq9") {
			t.Errorf("%s: the error shows the content: %v", tc.name, err)
		}
	}
	missing := filepath.Join(dir, "missing")
	if _, err := readPasswordFile(missing); err == nil || !errors.Is(err, os.ErrNotExist) ||
		!strings.HasPrefix(err.Error(), "warmpg: pool_password_file="+missing+": ") {
		t.Errorf("missing file: %v", err)
	}
	if _, err := readPasswordFile(dir); err == nil || !strings.HasPrefix(err.Error(), "warmpg: pool_password_file="+dir+": ") {
		t.Errorf("a directory: %v", err)
	}
}

// TestPasswordSettings: the key, its environment variable and option; the
// refusals (both sources, nil, empty, NewConnector).
func TestPasswordSettings(t *testing.T) {
	f := func(context.Context) (string, error) { return "x", nil }
	withEnv(t)
	for _, tc := range []struct {
		dsn  string
		opts []Option
		env  []string
		want string // "": accepted
	}{
		{dsn: "postgres://u@h/db?pool_password_file=/run/pw"},
		{dsn: "postgres://u@h/db", env: []string{"WARMPG_POOL_PASSWORD_FILE=/run/pw"}},
		{dsn: "postgres://u@h/db", opts: []Option{WithPasswordFile("/run/pw")}},
		{dsn: "postgres://u@h/db", opts: []Option{WithPasswordFunc(f)}},
		{dsn: "postgres://u:dsnpw@h/db", opts: []Option{WithPasswordFunc(f)}},
		{dsn: "host=h user=u pool_backend=pq pool_password_file=/run/pw"},
		{dsn: "postgres://u@h/db?pool_password_file=", want: `warmpg: invalid DSN pool_password_file="": want the path of a file holding the password`},
		{dsn: "postgres://u@h/db", opts: []Option{WithPasswordFile("")}, want: `warmpg: invalid option pool_password_file="": want the path of a file holding the password`},
		{dsn: "postgres://u@h/db", opts: []Option{WithPasswordFunc(nil)}, want: "warmpg: invalid option WithPasswordFunc(nil): want a function that returns the password"},
		{dsn: "postgres://u@h/db?pool_password_file=/run/pw", opts: []Option{WithPasswordFunc(f)},
			want: "warmpg: WithPasswordFunc and pool_password_file=/run/pw are both set: a connect takes its password from one source (want one of them)"},
		{dsn: "postgres://u@h/db", env: []string{"WARMPG_POOL_PASSWORD_FILE=/run/pw"}, opts: []Option{WithPasswordFunc(f)},
			want: "warmpg: WithPasswordFunc and pool_password_file=/run/pw are both set"},
	} {
		withEnv(t, tc.env...)
		c, err := OpenConnector(tc.dsn, tc.opts...)
		if err == nil {
			if c.cfg.creds == nil {
				t.Errorf("%q: no password source", tc.dsn)
			}
			c.Close()
		}
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%q %v: %v", tc.dsn, tc.env, err)
		case tc.want != "" && (err == nil || !strings.HasPrefix(err.Error(), tc.want)):
			t.Errorf("%q %v: got %v, want %s", tc.dsn, tc.env, err, tc.want)
		}
	}
	withEnv(t)
	for _, o := range []Option{WithPasswordFunc(f), WithPasswordFile("/run/pw")} {
		if _, err := NewConnector(&fakeConnector{}, o); err == nil || !strings.Contains(err.Error(), "need a connector warmpg builds") {
			t.Errorf("NewConnector: %v", err)
		}
	}
}

// fakeClock is a settable clock for the cache.
type fakeClock struct{ ns atomic.Int64 }

func (c *fakeClock) now() time.Time          { return time.Unix(0, c.ns.Load()) }
func (c *fakeClock) advance(d time.Duration) { c.ns.Add(int64(d)) }

// TestPasswordFuncCache holds the cache to its documented semantics: reuse
// within the TTL, a background refresh after half of it that no connect
// waits for, a wait after it, one call at a time, a refusal dropping the
// cached password, and Close cancelling a call and waiting for it.
func TestPasswordFuncCache(t *testing.T) {
	defer goleak.VerifyNone(t)
	var calls atomic.Int64
	release := make(chan struct{}, 100)
	block := atomic.Bool{}
	f := func(ctx context.Context) (string, error) {
		n := calls.Add(1)
		if block.Load() {
			select {
			case <-release:
			case <-ctx.Done():
				return "", ctx.Err()
			}
		}
		return fmt.Sprintf("pw%d", n), nil
	}
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	s := newPasswordSource(&config{passwordFunc: f})
	s.now = clk.now
	defer s.close()
	ctx := context.Background()
	get := func(want string) {
		t.Helper()
		pw, _, err := s.get(ctx)
		if err != nil || pw != want {
			t.Fatalf("got %q, %v; want %q", pw, err, want)
		}
	}
	waitIdle := func() {
		t.Helper()
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(time.Millisecond) {
			s.mu.Lock()
			idle := s.call == nil
			s.mu.Unlock()
			if idle {
				return
			}
			if time.Now().After(deadline) {
				t.Fatal("the call did not end")
			}
		}
	}

	get("pw1") // the first connect waits
	clk.advance(PasswordFuncTTL/2 - time.Second)
	get("pw1") // reused, no call
	if n := calls.Load(); n != 1 {
		t.Fatalf("%d calls within half the TTL, want 1", n)
	}

	// After half the TTL: the current password at once, a refresh behind.
	block.Store(true)
	clk.advance(2 * time.Second)
	start := time.Now()
	for range 10 {
		get("pw1")
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("connects waited %s for a background refresh", d)
	}
	release <- struct{}{}
	waitIdle()
	if n := calls.Load(); n != 2 {
		t.Fatalf("%d calls, want 2 (one refresh for 10 connects)", n)
	}
	get("pw2")

	// After the TTL: 20 connects wait for one call.
	clk.advance(PasswordFuncTTL + time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			pw, _, err := s.get(ctx)
			if err == nil && pw != "pw3" {
				err = fmt.Errorf("got %q, want pw3", pw)
			}
			errs <- err
		})
	}
	time.Sleep(50 * time.Millisecond)
	release <- struct{}{}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if n := calls.Load(); n != 3 {
		t.Fatalf("%d calls, want 3 (one for 20 waiting connects)", n)
	}

	// A refusal of an older password does not drop the current one; a
	// refusal of the current one does.
	_, gen, _ := s.get(ctx)
	s.refused(gen - 1)
	get("pw3")
	s.refused(gen)
	release <- struct{}{}
	get("pw4")

	// A connect whose context ends first names the provider; the call goes
	// on and serves the next connect.
	s.refused(gen + 1)
	short, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	_, _, err := s.get(short)
	cancel()
	if err == nil || !strings.HasPrefix(err.Error(), "warmpg: pool password func: ") || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short connect: %v", err)
	}
	release <- struct{}{}
	get("pw5")
	if n := calls.Load(); n != 5 {
		t.Fatalf("%d calls, want 5", n)
	}

	// Close cancels the call in flight and waits for it.
	s.refused(gen + 2)
	go s.get(ctx) //nolint:errcheck // ends with the close
	for calls.Load() != 6 {
		time.Sleep(time.Millisecond)
	}
	s.close()
	if _, _, err := s.get(ctx); err == nil {
		t.Error("get after close succeeded")
	}
}

// TestPasswordFuncErrors: the provider's error, wrapped and naming it; an
// empty password; a failed refresh keeps the current password and is
// logged.
func TestPasswordFuncErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	fail := atomic.Bool{}
	empty := atomic.Bool{}
	f := func(context.Context) (string, error) {
		switch {
		case fail.Load():
			return "", errors.New("vault: permission denied")
		case empty.Load():
			return "", nil
		}
		return "Zq9good", nil
	}
	rec := &recorder{level: slog.LevelDebug}
	s := newPasswordSource(&config{passwordFunc: f, logger: slog.New(rec)})
	defer s.close()
	clk := &fakeClock{}
	clk.ns.Store(time.Now().UnixNano())
	s.now = clk.now
	ctx := context.Background()
	fail.Store(true)
	if _, _, err := s.get(ctx); err == nil || err.Error() != "warmpg: pool password func: vault: permission denied" {
		t.Errorf("got %v", err)
	}
	fail.Store(false)
	empty.Store(true)
	if _, _, err := s.get(ctx); err == nil || err.Error() != "warmpg: pool password func: it returned an empty password" {
		t.Errorf("got %v", err)
	}
	empty.Store(false)
	if pw, _, err := s.get(ctx); pw != "Zq9good" || err != nil {
		t.Fatalf("got %q, %v", pw, err)
	}
	fail.Store(true)
	clk.advance(PasswordFuncTTL * 3 / 4)
	if pw, _, err := s.get(ctx); pw != "Zq9good" || err != nil {
		t.Fatalf("a failing refresh: got %q, %v", pw, err)
	}
	for deadline := time.Now().Add(5 * time.Second); len(rec.find("warmpg: pool password func failed")) == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("the failed refresh was not logged")
		}
	}
	r := rec.find("warmpg: pool password func failed")[0]
	if r.level != slog.LevelWarn || !strings.Contains(r.attrs["error"], "vault: permission denied") || strings.Contains(r.attrs["error"], "Zq9") {
		t.Errorf("logged %v %q", r.level, r.attrs["error"])
	}
	if pw, _, err := s.get(ctx); pw != "Zq9good" || err != nil {
		t.Fatalf("after a failed refresh, within the TTL: got %q, %v", pw, err)
	}
}

// Rotation against a real server: the password role's password changes on
// the server and in the source, its backends are terminated, and 4 workers
// query for a second.

const rotationPassword = "Zq9-rotated-pw"

// setRolePassword sets PasswordUser's password on srv; the test's end puts
// the harness's own back.
func setRolePassword(t *testing.T, srv *pgtest.Server, pw string) {
	t.Helper()
	t.Cleanup(func() {
		if err := srv.Exec(context.Background(), fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgtest.PasswordUser, pgtest.PasswordUserPassword)); err != nil {
			t.Errorf("restore %s's password: %v", pgtest.PasswordUser, err)
		}
	})
	if err := srv.Exec(context.Background(), fmt.Sprintf("ALTER ROLE %s PASSWORD '%s'", pgtest.PasswordUser, pw)); err != nil {
		t.Fatal(err)
	}
}

// rotationResult is what one rotation measured.
type rotationResult struct {
	queries, failures int
	firstErr          error
	heldKept          bool // a connection held across the change kept its backend and worked
}

// rotate runs the rotation on a warmed keep-warm pool of dsn (no password
// in it) with opts, calling change between the server's change and the
// termination.
func rotate(t *testing.T, srv *pgtest.Server, app, dsn string, change func(), opts ...Option) rotationResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	opts = append([]Option{WithPrewarm(true), WithMinIdleConns(4), WithMaxConns(12), WithMaxIdleConns(6),
		WithLogger(slog.New(slog.DiscardHandler))}, opts...)
	db, err := Open(dsn, opts...)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := srv.WaitBackendCount(ctx, app, 10); err != nil {
		t.Fatal(err) // 6 warmed + 4 ready
	}
	held, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var before, after int
	if err := held.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&before); err != nil {
		t.Fatal(err)
	}

	setRolePassword(t, srv, rotationPassword)
	change()

	var res rotationResult
	res.heldKept = held.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&after) == nil && after == before
	held.Close()
	var pids []int32
	rows, err := db.QueryContext(ctx, "select pid from pg_stat_activity where usename = $1", pgtest.PasswordUser)
	if err != nil {
		t.Fatal(err)
	}
	for rows.Next() {
		var pid int32
		if err := rows.Scan(&pid); err != nil {
			t.Fatal(err)
		}
		pids = append(pids, pid)
	}
	rows.Close()
	if err := srv.Exec(ctx, fmt.Sprintf("select pg_terminate_backend(pid) from pg_stat_activity where usename = '%s'", pgtest.PasswordUser)); err != nil {
		t.Fatal(err)
	}
	// Wait until those backends are gone: their sockets are closed.
	su, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer su.Close(ctx)
	for {
		var n int
		if err := su.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = any($1)", pids).Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n == 0 {
			break
		}
		if ctx.Err() != nil {
			t.Fatal("terminated backends still there")
		}
		time.Sleep(5 * time.Millisecond)
	}

	var mu sync.Mutex
	var wg sync.WaitGroup
	end := time.Now().Add(time.Second)
	for range 4 {
		wg.Go(func() {
			for time.Now().Before(end) {
				var one int
				err := db.QueryRowContext(ctx, "select 1").Scan(&one)
				mu.Lock()
				res.queries++
				if err != nil {
					res.failures++
					if res.firstErr == nil {
						res.firstErr = err
					}
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return res
}

// TestPasswordRotation: with WithPasswordFunc and with pool_password_file,
// on both backends, the second after a rotation and the termination of
// every backend of the role fails 0 queries, and a connection held across
// the change keeps its backend.
func TestPasswordRotation(t *testing.T) {
	withEnv(t)
	srv := pgtest.Get(t)
	pwSrv := srv.WithPasswordUser(t)
	for _, backend := range []string{"pgx", "pq"} {
		for _, source := range []string{"func", "file"} {
			t.Run(backend+"/"+source, func(t *testing.T) {
				app := "warmpg_rotation_" + backend + "_" + source
				dsn := pwSrv.WithUser(pgtest.PasswordUser, "").URL("application_name="+app, "pool_backend="+backend)
				var change func()
				var opt Option
				var calls atomic.Int64
				switch source {
				case "func":
					var current atomic.Value
					current.Store(pgtest.PasswordUserPassword)
					opt = WithPasswordFunc(func(context.Context) (string, error) {
						calls.Add(1)
						return current.Load().(string), nil
					})
					change = func() { current.Store(rotationPassword) }
				case "file":
					dir := t.TempDir()
					path := filepath.Join(dir, "password")
					write := func(pw string) {
						// As a Kubernetes secret volume does: a new file, renamed over.
						tmp := filepath.Join(dir, ".tmp")
						if err := os.WriteFile(tmp, []byte(pw+"\n"), 0o600); err != nil {
							t.Fatal(err)
						}
						if err := os.Rename(tmp, path); err != nil {
							t.Fatal(err)
						}
					}
					write(pgtest.PasswordUserPassword)
					opt = WithPasswordFile(path)
					change = func() { write(rotationPassword) }
				}
				res := rotate(t, srv, app, dsn, change, opt)
				t.Logf("%s/%s: %d queries, %d failed, held connection kept: %v, provider calls: %d",
					backend, source, res.queries, res.failures, res.heldKept, calls.Load())
				if res.failures != 0 {
					t.Errorf("%d of %d queries failed after the rotation; first: %v", res.failures, res.queries, res.firstErr)
				}
				if res.queries < 40 {
					t.Errorf("only %d queries in a second", res.queries)
				}
				if !res.heldKept {
					t.Error("the connection held across the change lost its backend")
				}
			})
		}
	}
}

// TestPasswordRotationStaticFails is the control: the same rotation with
// the password fixed in the DSN fails queries (what TestPasswordRotation
// would see without a password source).
func TestPasswordRotationStaticFails(t *testing.T) {
	withEnv(t)
	srv := pgtest.Get(t)
	pwSrv := srv.WithPasswordUser(t)
	for _, backend := range []string{"pgx", "pq"} {
		t.Run(backend, func(t *testing.T) {
			app := "warmpg_rotation_static_" + backend
			res := rotate(t, srv, app, pwSrv.URL("application_name="+app, "pool_backend="+backend), func() {})
			t.Logf("%s/static: %d queries, %d failed; first: %v", backend, res.queries, res.failures, res.firstErr)
			if res.failures == 0 {
				t.Error("no query failed with a stale password: the rotation test tests nothing")
			}
		})
	}
}

// TestPasswordWrong: a password the server refuses fails the connect with
// the server's 28P01 and no part of the password; the provider is asked
// again once (it may have rotated), and the same answer is not retried.
func TestPasswordWrong(t *testing.T) {
	withEnv(t)
	pwSrv := pgtest.Get(t).WithPasswordUser(t)
	for _, backend := range []string{"pgx", "pq"} {
		t.Run(backend, func(t *testing.T) {
			var calls atomic.Int64
			dsn := pwSrv.WithUser(pgtest.PasswordUser, "").URL("pool_backend="+backend, "pool_connect_retry_timeout=0")
			db, err := Open(dsn, WithPasswordFunc(func(context.Context) (string, error) {
				calls.Add(1)
				return "Zq9-wr0ng-pw", nil
			}))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			err = db.PingContext(context.Background())
			if !authRefused(err) {
				t.Fatalf("got %v, want 28P01", err)
			}
			for _, part := range []string{"Zq9", "wr0ng"} {
				if strings.Contains(err.Error(), part) {
					t.Errorf("the error shows the password: %v", err)
				}
			}
			if n := calls.Load(); n != 2 {
				t.Errorf("%d provider calls for a refused connect, want 2 (the cached password, then a fresh one)", n)
			}
		})
	}
}

// TestPasswordSlowProvider: a connect whose deadline passes while the
// provider works fails naming the provider, wrapping the deadline; the
// call goes on, and the next connect takes its answer without a second
// call, as does the one after, from the cache.
func TestPasswordSlowProvider(t *testing.T) {
	withEnv(t)
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	pwSrv := pgtest.Get(t).WithPasswordUser(t)
	for _, backend := range []string{"pgx", "pq"} {
		t.Run(backend, func(t *testing.T) {
			var calls atomic.Int64
			slow := func(ctx context.Context) (string, error) {
				calls.Add(1)
				select {
				case <-time.After(time.Second):
					return pgtest.PasswordUserPassword, nil
				case <-ctx.Done():
					return "", ctx.Err()
				}
			}
			dsn := pwSrv.WithUser(pgtest.PasswordUser, "").URL("pool_backend="+backend, "pool_connect_retry_timeout=0")
			db, err := Open(dsn, WithPasswordFunc(slow))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			start := time.Now()
			err = db.PingContext(ctx)
			cancel()
			if err == nil || !strings.HasPrefix(err.Error(), "warmpg: pool password func: ") || !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("short deadline: got %v, want the provider named and DeadlineExceeded", err)
			}
			// Waiting for the provider would take its full second.
			if d := time.Since(start); d > 700*time.Millisecond {
				t.Errorf("the short connect took %s, want its 50 ms deadline, not the provider's 1 s", d)
			}
			for i := range 2 {
				c, err := db.Conn(context.Background())
				if err != nil {
					t.Fatalf("connect %d: %v", i+2, err)
				}
				if err := c.PingContext(context.Background()); err != nil {
					t.Fatal(err)
				}
				defer c.Close()
			}
			if n := calls.Load(); n != 1 {
				t.Errorf("%d provider calls for three connects, want 1", n)
			}
		})
	}
}

// passwordFileDSN is dsn with pool_password_file=path (for the secrets test).
func passwordFileDSN(dsn, path string) string {
	sep := "?"
	if strings.Contains(dsn, "?") {
		sep = "&"
	}
	return dsn + sep + "pool_password_file=" + path
}

// TestPasswordSourceWinsOverDSN: a password left in the DSN is not used
// when a source is set (docs/credentials.md, "Which password wins").
func TestPasswordSourceWinsOverDSN(t *testing.T) {
	withEnv(t)
	pwSrv := pgtest.Get(t).WithPasswordUser(t)
	file := filepath.Join(t.TempDir(), "pw")
	if err := os.WriteFile(file, []byte(pgtest.PasswordUserPassword+"\r\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	for _, backend := range []string{"pgx", "pq"} {
		dsn := pwSrv.WithUser(pgtest.PasswordUser, "Zq9-stale-dsn-pw").URL("pool_backend="+backend, "pool_connect_retry_timeout=0")
		for name, opt := range map[string]Option{
			"func": WithPasswordFunc(func(context.Context) (string, error) { return pgtest.PasswordUserPassword, nil }),
			"file": WithPasswordFile(file),
		} {
			db, err := Open(dsn, opt)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.PingContext(context.Background()); err != nil {
				t.Errorf("%s/%s: %v", backend, name, err)
			}
			db.Close()
		}
	}
}
