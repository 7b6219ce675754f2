package warmpg_test

import (
	"bytes"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

func mustStats(t *testing.T, db *sql.DB) warmpg.Counters {
	t.Helper()
	st, ok := warmpg.Stats(db)
	if !ok {
		t.Fatal("not a warmpg DB")
	}
	return st
}

// pool_prewarm with a plain sql.Open and no call from the application: the
// server shows N backends, and a first burst of N queries opens none.
func TestIntegrationPrewarmWithoutCode(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			app := appName(t)
			const n = 10
			db, err := sql.Open("warmpg", srv.URL("application_name="+app, "pool_backend="+string(b),
				fmt.Sprintf("pool_max_conns=%d", n), "pool_prewarm=true"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if got, err := srv.WaitBackendCount(ctx, app, n); err != nil {
				t.Fatalf("server shows %d backends (%v), want %d with no call from the application", got, err, n)
			}
			db.SetMaxIdleConns(n) // what the application sets for its pool
			if failed, errs := burstFailures(ctx, db, n); failed != 0 {
				t.Fatal(errors.Join(errs...))
			}
			if st := mustStats(t, db); st.Connects != n || st.FromReady != n {
				t.Errorf("counters %v: want %d connects, all handed out from the prewarmed store", st, n)
			}
			if got, _ := srv.BackendCount(ctx, app); got != n {
				t.Errorf("the first burst changed the backend count to %d, want %d", got, n)
			}
			db.Close()
			if got, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
				t.Errorf("%d backends remain after db.Close: %v", got, err)
			}
		})
	}
}

// Keep-warm replaces ready connections whose backends were terminated, and
// none of them is handed out dead, not even right after the kill.
func TestIntegrationKeepWarmReplacesKilled(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			app := appName(t)
			db, err := sql.Open("warmpg", srv.URL("application_name="+app, "pool_backend="+string(b),
				"pool_min_idle_conns=4", "pool_max_conns=20"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := srv.WaitBackendCount(ctx, app, 4); err != nil {
				t.Fatal("keep-warm did not open 4 ready connections:", err)
			}
			killBackends(t, ctx, srv, app, 4)
			// Right away, before the filler's next look: the dead ones
			// must be seen at hand-out and not given to database/sql.
			if failed, errs := burstFailures(ctx, db, 4); failed != 0 {
				t.Fatalf("%d queries failed on killed ready connections: %v", failed, errors.Join(errs...))
			}
			// And the store is refilled: 4 ready beyond the 4 database/sql
			// now holds (2 idle there by default; the rest closed by it).
			deadline := time.Now().Add(10 * time.Second)
			for {
				got, _ := srv.BackendCount(ctx, app)
				st := mustStats(t, db)
				if got >= 4 && st.Connects >= 8 {
					break
				}
				if time.Now().After(deadline) {
					t.Fatalf("store not refilled: %d backends, counters %v", got, st)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}
}

// A server that is down when the pool opens: the filler's attempts stay
// bounded (no storm), and warming completes once the server is up.
func TestIntegrationServerDownAtOpen(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := ownCluster(t, ctx)
	if err := srv.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	const n = 6
	app := appName(t)
	db, err := sql.Open("warmpg", srv.URL("application_name="+app, fmt.Sprintf("pool_max_conns=%d", n),
		"pool_prewarm=true", "pool_min_idle_conns=2"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	const down = 2 * time.Second
	time.Sleep(down)
	st := mustStats(t, db)
	t.Logf("server down %s: %d connection attempts (%v)", down, st.ConnectErrors, st)
	// n at once at the start, then one probe per backoff step (100 ms
	// doubling, jittered, capped at 5 s): ~6 more in 2 s at most.
	if st.ConnectErrors > n+10 {
		t.Errorf("%d attempts in %s against a stopped server: a storm", st.ConnectErrors, down)
	}
	if st.ConnectErrors < n+1 {
		t.Errorf("%d attempts: the filler gave up", st.ConnectErrors)
	}
	if err := srv.Start(ctx); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if got, err := srv.WaitBackendCount(ctx, app, n); err != nil {
		t.Fatalf("warming did not complete after the server came back: %d backends: %v", got, err)
	}
	t.Logf("warm %s after the server came back", time.Since(start).Round(time.Millisecond))
	if failed, errs := burstFailures(ctx, db, n); failed != 0 {
		t.Fatal(errors.Join(errs...))
	}
}

// The blocking form: warmpg.Open with pool_prewarm waits out a server that
// is starting, and fails with the server's error when it never comes.
func TestIntegrationOpenPrewarmWaitsForServer(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := ownCluster(t, ctx)
	if err := srv.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	startErr := make(chan error, 1)
	go func() {
		time.Sleep(time.Second)
		startErr <- srv.Start(ctx)
	}()
	db, err := warmpg.Open(srv.URL("pool_max_conns=4", "pool_prewarm=true", "pool_warm_timeout=20s", "pool_connect_retry_timeout=20s"))
	if serr := <-startErr; serr != nil {
		t.Fatal(serr)
	}
	if err != nil {
		t.Fatalf("Open did not wait for the server: %v", err)
	}
	if st := db.Stats(); st.Idle != 4 {
		t.Errorf("%d idle after Open, want 4 warm", st.Idle)
	}
	db.Close()

	if err := srv.Stop(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	begin := time.Now()
	_, err = warmpg.Open(srv.URL("pool_max_conns=2", "pool_prewarm=true", "pool_warm_timeout=1s"))
	if err == nil {
		t.Fatal("Open succeeded with the server down")
	}
	if el := time.Since(begin); el > 5*time.Second {
		t.Errorf("Open took %s with pool_warm_timeout=1s", el)
	}
	t.Logf("server down: %v", err)
}

// Connections that expire on their own jittered lifetimes, under steady
// load: no query fails, and the pool turns over.
func TestIntegrationLifetimeChurn(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	db, err := warmpg.Open(srv.URL("pool_max_conns=8", "pool_min_idle_conns=2",
		"pool_max_conn_lifetime=600ms", "pool_max_conn_lifetime_jitter=300ms"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := warmpg.WarmDB(ctx, db); err != nil {
		t.Fatal(err)
	}
	var failed, done atomic.Int64
	var wg sync.WaitGroup
	stop := time.Now().Add(2500 * time.Millisecond)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 10000 && time.Now().Before(stop); i++ {
				var x int
				if err := db.QueryRowContext(ctx, "select 1").Scan(&x); err != nil {
					failed.Add(1)
				}
				done.Add(1)
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	st := mustStats(t, db)
	t.Logf("%d queries, %d failed, counters %v", done.Load(), failed.Load(), st)
	if failed.Load() != 0 {
		t.Errorf("%d queries failed while connections expired", failed.Load())
	}
	if st.Connects < 16 {
		t.Errorf("only %d connects in 2.5 s with a 300-600 ms lifetime: connections did not expire", st.Connects)
	}
	if st.FromReady == 0 {
		t.Error("no expiry was served from the keep-warm store")
	}
}

// A known secret never shows in logs, errors, counters or reports: a wrong
// password, through background prewarm (which logs its failures) and WarmDB.
func TestIntegrationSecretNeverLogged(t *testing.T) {
	srv := pgtest.Get(t).WithPasswordUser(t)
	const secret = "N0t-The-Pa55word-42"
	bad := srv.WithUser(srv.User, secret)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			var logs syncBuffer
			logger := slog.New(slog.NewTextHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
			c, err := warmpg.OpenConnector(bad.URL("pool_backend="+string(b), "pool_prewarm=true", "pool_max_conns=3", "pool_min_idle_conns=1"),
				warmpg.WithLogger(logger))
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			ctx := ctxT(t, 20*time.Second)
			rep, err := warmpg.WarmDB(ctx, db, warmpg.WithWarmTimeout(2*time.Second))
			if err == nil {
				t.Fatal("wrong password: no error")
			}
			waitLogged := time.Now().Add(5 * time.Second)
			for !strings.Contains(logs.String(), "background connect failed") && time.Now().Before(waitLogged) {
				time.Sleep(10 * time.Millisecond)
			}
			st, _ := warmpg.Stats(db)
			texts := map[string]string{"error": err.Error(), "logs": logs.String(), "report": rep.String(), "counters": st.String()}
			if !strings.Contains(texts["logs"], "password authentication failed") {
				t.Errorf("logs lack the server's error: %q", texts["logs"])
			}
			for where, text := range texts {
				if strings.Contains(text, secret) {
					t.Errorf("the password shows in the %s: %q", where, text)
				}
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's goroutines.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
