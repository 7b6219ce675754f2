package warmpg_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// backendPIDs returns the pids of app's backends.
func backendPIDs(t *testing.T, ctx context.Context, srv *pgtest.Server, app string) []int32 {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(context.Background())
	var pids []int32
	if err := c.QueryRow(ctx, `select coalesce(array_agg(pid order by pid), '{}') from pg_stat_activity
		where backend_type = 'client backend' and application_name = $1 and pid <> pg_backend_pid()`, app).Scan(&pids); err != nil {
		t.Fatal(err)
	}
	return pids
}

func waitBackends(t *testing.T, ctx context.Context, srv *pgtest.Server, app string, want int, when string) {
	t.Helper()
	if n, err := srv.WaitBackendCount(ctx, app, want); err != nil {
		t.Fatalf("%s: %d backends, want %d (%v)", when, n, want, err)
	}
}

// TestEvict: 6 warmed, 1 held. Evict closes the 5 idle ones at once and
// leaves the held one to its user; when it is returned it is closed too,
// and the next query runs on a new backend. The pool's idle limit is back
// afterwards: WarmDB fills it again.
func TestEvict(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 30*time.Second)
			app := appName(t)
			db, err := warmpg.Open(srv.URL("application_name="+app, "pool_backend="+string(b), "pool_max_conns=10", "pool_max_idle_conns=6"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if rep, err := warmpg.WarmDB(ctx, db); err != nil || rep.Warmed != 6 {
				t.Fatalf("warm: %v %v", rep, err)
			}
			waitBackends(t, ctx, srv, app, 6, "warmed")
			old := backendPIDs(t, ctx, srv, app)
			held, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			var heldPID int32
			if err := held.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&heldPID); err != nil {
				t.Fatal(err)
			}

			if err := warmpg.Evict(db); err != nil {
				t.Fatal(err)
			}
			// database/sql closes them in Evict's goroutine: gone at once
			// from the pool; the server reaps the backends shortly after.
			if st := db.Stats(); st.Idle != 0 || st.OpenConnections != 1 {
				t.Errorf("after Evict the pool has %d idle, %d open; want 0 and 1 (the held one)", st.Idle, st.OpenConnections)
			}
			waitBackends(t, ctx, srv, app, 1, "after Evict")
			if left := backendPIDs(t, ctx, srv, app); !slices.Equal(left, []int32{heldPID}) {
				t.Errorf("after Evict backends %v remain, want only the held one's %d", left, heldPID)
			}
			// The held connection still works for its user.
			var one int
			if err := held.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatalf("the held connection after Evict: %v", err)
			}
			held.Close()
			waitBackends(t, ctx, srv, app, 0, "after the held one came back")

			var pid int32
			if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
				t.Fatal(err)
			}
			if slices.Contains(old, pid) {
				t.Errorf("the next query ran on backend %d, one of the evicted %v", pid, old)
			}
			// MaxIdleConns is pool_max_idle_conns again.
			if rep, err := warmpg.WarmDB(ctx, db); err != nil || rep.Warmed != 6 {
				t.Fatalf("warm after Evict: %v %v", rep, err)
			}
			if st := db.Stats(); st.Idle != 6 {
				t.Errorf("after warming again %d idle, want 6: Evict must set MaxIdleConns back", st.Idle)
			}
		})
	}
}

// TestEvictKeepWarm: keep-warm's ready connections are evicted too, and
// the filler replaces them with new ones.
func TestEvictKeepWarm(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	app := appName(t)
	db, err := warmpg.Open(srv.URL("application_name="+app, "pool_max_conns=10", "pool_min_idle_conns=3"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	waitBackends(t, ctx, srv, app, 3, "keep-warm")
	old := backendPIDs(t, ctx, srv, app)
	if err := warmpg.Evict(db); err != nil {
		t.Fatal(err)
	}
	for {
		now := backendPIDs(t, ctx, srv, app)
		fresh := !slices.ContainsFunc(now, func(p int32) bool { return slices.Contains(old, p) })
		if fresh && len(now) == 3 {
			break
		}
		if ctx.Err() != nil {
			t.Fatalf("after Evict backends %v, want 3 new ones (evicted: %v)", now, old)
		}
		time.Sleep(20 * time.Millisecond)
	}
	var pid int32
	if err := db.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&pid); err != nil {
		t.Fatal(err)
	}
	if slices.Contains(old, pid) {
		t.Errorf("a query after Evict ran on evicted backend %d", pid)
	}
}

// TestEvictNotWarmpg: a *sql.DB warmpg did not open is refused, clearly.
func TestEvictNotWarmpg(t *testing.T) {
	srv := pgtest.Get(t)
	db, err := sql.Open("pgx", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = warmpg.Evict(db)
	if err == nil || !strings.Contains(err.Error(), "not opened through warmpg") {
		t.Errorf("Evict on a pgx DB: %v, want a refusal saying it was not opened through warmpg", err)
	}
	if err := warmpg.Evict(nil); err == nil {
		t.Error("Evict(nil): no error")
	}
}

// TestEvictUnderTraffic: Evict again and again while 4 workers query: no
// query fails, and after Close no backend is left: none was leaked out of
// database/sql's and keep-warm's hands (and TestMain's goleak sees no
// goroutine left).
func TestEvictUnderTraffic(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, 40*time.Second)
			app := appName(t)
			db, err := warmpg.Open(srv.URL("application_name="+app, "pool_backend="+string(b), "pool_max_conns=6", "pool_min_idle_conns=2"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			stop := make(chan struct{})
			var wg sync.WaitGroup
			var queries, failed atomic.Int64
			var firstErr atomic.Value
			for range 4 {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						default:
						}
						var one int
						if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
							failed.Add(1)
							firstErr.CompareAndSwap(nil, err)
						}
						queries.Add(1)
					}
				}()
			}
			// Connects take 40-60 ms on a loaded 2-core machine: Evicts
			// closer together would retire most connections before their
			// first use (correct, but no traffic to speak of).
			for range 10 {
				time.Sleep(150 * time.Millisecond)
				if err := warmpg.Evict(db); err != nil {
					t.Error(err)
				}
			}
			close(stop)
			wg.Wait()
			if n := failed.Load(); n > 0 {
				t.Errorf("%d of %d queries failed; first: %v", n, queries.Load(), firstErr.Load())
			}
			st, _ := warmpg.Stats(db)
			t.Logf("%d queries, 10 Evicts; %d connects", queries.Load(), st.Connects)
			// A connection neither database/sql nor keep-warm holds would
			// outlive Close.
			if err := db.Close(); err != nil && !errors.Is(err, context.Canceled) {
				t.Fatal(err)
			}
			waitBackends(t, ctx, srv, app, 0, "after Close")
		})
	}
}

// gateConnector's first connect waits for gate; the others succeed at once.
type gateConnector struct {
	gate chan struct{}
	n    atomic.Int64
}

func (g *gateConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if g.n.Add(1) == 1 {
		select {
		case <-g.gate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return stubConn{}, nil
}

func (g *gateConnector) Driver() driver.Driver { return nil }

type stubConn struct{}

func (stubConn) Prepare(string) (driver.Stmt, error) { return nil, errors.New("stub") }
func (stubConn) Close() error                        { return nil }
func (stubConn) Begin() (driver.Tx, error)           { return nil, errors.New("stub") }

// TestEvictNoWaitForStaleDial: a request does not wait for a keep-warm
// dial that began before an Evict (its connection is evicted on arrival),
// but dials its own. Before, under repeated Evicts and slow connects,
// requests waited on such dials one after another (a query took 920 ms
// where a connect took 50-250 ms).
func TestEvictNoWaitForStaleDial(t *testing.T) {
	g := &gateConnector{gate: make(chan struct{})}
	defer close(g.gate)
	c, err := warmpg.NewConnector(g, warmpg.WithMinIdleConns(1), warmpg.WithLogLevel(warmpg.LogOff))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	for g.n.Load() == 0 {
		time.Sleep(time.Millisecond) // keep-warm's first dial, held at the gate
	}
	if err := warmpg.Evict(db); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatalf("Conn after Evict: %v (after %v): it waited for a dial begun before the Evict", err, time.Since(start))
	}
	conn.Close()
	if took := time.Since(start); took > time.Second {
		t.Errorf("Conn after Evict took %v: it waited for a dial begun before the Evict", took)
	}
}
