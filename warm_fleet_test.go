package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// windowConnector is a fake server for the dial window: every connect takes
// delay, the first `slots` succeed and the rest fail with SQLSTATE 53300, and
// it counts the connects that started while more than `first` were in
// flight before any connect had ended.
type windowConnector struct {
	delay time.Duration
	slots int64
	first int64 // the first window the test expects

	connects, opened, inFlight, peak, full atomic.Int64
	anyEnded                               atomic.Bool
	overWindow                             atomic.Int64 // connects started beyond the first window
}

func (w *windowConnector) Connect(ctx context.Context) (driver.Conn, error) {
	w.connects.Add(1)
	cur := w.inFlight.Add(1)
	defer w.inFlight.Add(-1)
	if cur > w.first && !w.anyEnded.Load() {
		w.overWindow.Add(1)
	}
	for m := w.peak.Load(); cur > m && !w.peak.CompareAndSwap(m, cur); m = w.peak.Load() {
	}
	// Marked ended before Connect returns, so before warm can know it.
	defer w.anyEnded.Store(true)
	t := time.NewTimer(w.delay)
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if w.opened.Add(1) > w.slots {
		w.opened.Add(-1)
		w.full.Add(1)
		return nil, &pgconn.PgError{Severity: "FATAL", Code: "53300", Message: "sorry, too many clients already"}
	}
	return &fakeConn{}, nil
}

func (w *windowConnector) Driver() driver.Driver { return fakeDriver{} }

// WarmDB dials in a window that starts at 8 and grows as connects end in
// good time (issue 19, 1): before, it started pool_warm_parallelism dials at
// once — all 60 of a 60-connection pool at the default 64.
func TestWarmDBGrowsDialWindow(t *testing.T) {
	withEnv(t)
	w := &windowConnector{delay: 100 * time.Millisecond, slots: 1000, first: warmFirstWindow}
	c, err := NewConnector(w, WithMaxConns(60))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	rep, err := WarmDB(context.Background(), db)
	if err != nil || rep.Warmed != 60 || rep.ServerFull {
		t.Fatalf("%+v, %v: want 60 warmed", rep, err)
	}
	if n := w.overWindow.Load(); n > 0 {
		t.Errorf("%d connects started with more than %d in flight before any had ended (peak %d in flight)",
			n, warmFirstWindow, w.peak.Load())
	}
	// The window still grows: 8, then 16, 32... (all connects equally fast).
	if p := w.peak.Load(); p <= warmFirstWindow {
		t.Errorf("peak %d dials in flight: the window never grew past %d", p, warmFirstWindow)
	}
	// Every connect runs within one of WarmDB's dials.
	if p := int64(rep.Parallelism); p < w.peak.Load() || p > 60 {
		t.Errorf("report says %d dialled at once, the server saw %d", rep.Parallelism, w.peak.Load())
	}
	// pool_warm_parallelism below the first window is the window.
	w2 := &windowConnector{delay: 10 * time.Millisecond, slots: 1000, first: 3}
	c2, err := NewConnector(w2, WithMaxConns(12), WithWarmParallelism(3))
	if err != nil {
		t.Fatal(err)
	}
	db2 := sql.OpenDB(c2)
	defer db2.Close()
	if rep, err := WarmDB(context.Background(), db2); err != nil || rep.Warmed != 12 || w2.peak.Load() > 3 {
		t.Errorf("pool_warm_parallelism=3: %+v, %v, peak %d in flight", rep, err, w2.peak.Load())
	}
}

// The window: one more per dial that took at most twice the fastest, halved
// (down to the first window, at most once per slow connect's time) by a
// slower one.
func TestDialWindow(t *testing.T) {
	w := newDialWindow(&config{}, 60)
	if w.size != warmFirstWindow {
		t.Fatalf("first window %d, want %d", w.size, warmFirstWindow)
	}
	now := time.Unix(1000, 0)
	ms := time.Millisecond
	for range 8 {
		w.ended(10*ms, false, now) // the first wave: each lets two more start
	}
	if w.size != 16 {
		t.Fatalf("after 8 fast connects: %d, want 16", w.size)
	}
	w.ended(20*ms, false, now) // twice the fastest: still good time
	if w.size != 17 {
		t.Fatalf("after a connect at 2x: %d, want 17", w.size)
	}
	w.ended(25*ms, false, now) // slow: halve
	w.ended(25*ms, false, now.Add(ms))
	if w.size != 8 {
		t.Fatalf("after slow connects: %d, want 17/2 = 8, halved once within 25ms", w.size)
	}
	w.ended(30*ms, false, now.Add(30*ms))
	if w.size != 8 {
		t.Fatalf("halved below the first window: %d", w.size)
	}
	for range 100 {
		w.ended(10*ms, false, now)
	}
	if w.size != 60 {
		t.Fatalf("window %d, want at most p=60", w.size)
	}
	// An idle connection handed out in a microsecond widens the window
	// and is not the fastest connect.
	w = newDialWindow(&config{}, 60)
	w.ended(time.Microsecond, true, now)
	w.ended(10*ms, false, now)
	w.ended(20*ms, false, now)
	if w.size != 11 || w.fastest != 10*ms {
		t.Errorf("after a reuse and two connects: window %d, fastest %s; want 11, 10ms", w.size, w.fastest)
	}
	// pool_warm_parallelism below 8, and the old way.
	if w := newDialWindow(&config{}, 3); w.size != 3 {
		t.Errorf("p=3: first window %d", w.size)
	}
	if w := newDialWindow(&config{warmRamp: MaxWarmParallelism}, 60); w.size != 60 {
		t.Errorf("all at once: first window %d, want 60", w.size)
	}
}

// WarmDB stops dialling at the server's first "too many clients" answer
// (SQLSTATE 53300) and says so (issue 19, 1): before, it dialled all 60
// against a full server and collected 60 refusals, taking every slot that
// freed up meanwhile from the other clients.
func TestWarmDBStopsWhenServerFull(t *testing.T) {
	withEnv(t)
	var logs strings.Builder
	var mu sync.Mutex
	open := func(w *windowConnector, opts ...Option) *sql.DB {
		c, err := NewConnector(w, append([]Option{WithMaxConns(60), WithLogger(slog.New(slog.NewTextHandler(lockedWriter{&mu, &logs}, nil)))}, opts...)...)
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(c)
		t.Cleanup(func() { db.Close() })
		return db
	}

	// A server already full refuses the first window's 8 dials, all at
	// once; the first refusal stops WarmDB before it dials again.
	w := &windowConnector{delay: 20 * time.Millisecond, slots: 0, first: warmFirstWindow}
	rep, err := WarmDB(context.Background(), open(w))
	t.Logf("full server: %d connects; %v; %v", w.connects.Load(), rep, err)
	if got := w.connects.Load(); got != warmFirstWindow {
		t.Errorf("%d connects to a full server: want the first window's %d, and none after the first 53300", got, warmFirstWindow)
	}
	if rep.Warmed != 0 || rep.Failed != 60 || !rep.ServerFull {
		t.Errorf("report %+v: want 0 warmed, 60 failed, ServerFull", rep)
	}
	var pgErr *pgconn.PgError
	if err == nil || !errors.Is(err, ErrWarmServerFull) || !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Errorf("error %v: want ErrWarmServerFull and the server's 53300 reachable", err)
	}
	if !strings.Contains(rep.String(), "server full (SQLSTATE 53300)") {
		t.Errorf("report string %q does not say the server was full", rep.String())
	}
	mu.Lock()
	log := logs.String()
	mu.Unlock()
	if !strings.Contains(log, "server full") || !strings.Contains(log, "server_full=true") {
		t.Errorf("log %q does not say the server was full", log)
	}

	// 20 slots: WarmDB keeps the 20 it opened warm and stops.
	w = &windowConnector{delay: 20 * time.Millisecond, slots: 20, first: warmFirstWindow}
	db := open(w)
	rep, err = WarmDB(context.Background(), db)
	t.Logf("20 slots: %d connects; %v", w.connects.Load(), rep)
	if rep.Warmed != 20 || rep.Failed != 40 || !rep.ServerFull || !errors.Is(err, ErrWarmServerFull) {
		t.Errorf("report %+v, %v: want 20 warmed, 40 failed, ServerFull", rep, err)
	}
	if st := db.Stats(); st.Idle != 20 {
		t.Errorf("%d idle, want the 20 opened kept warm", st.Idle)
	}

	// The old way, kept for the fleet comparison, dials them all.
	w = &windowConnector{delay: 20 * time.Millisecond, slots: 0, first: 60}
	rep, _ = WarmDB(context.Background(), open(w), withWarmAllAtOnce())
	if w.connects.Load() != 60 || rep.ServerFull {
		t.Errorf("all at once: %d connects, %+v; want 60, not stopped", w.connects.Load(), rep)
	}
}

type lockedWriter struct {
	mu *sync.Mutex
	b  *strings.Builder
}

func (l lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

// Both drivers' server errors say their SQLSTATE; others never mean full.
func TestServerFullError(t *testing.T) {
	full := []error{
		&pgconn.PgError{Code: "53300"},
		&pq.Error{Code: "53300"},
		fmt.Errorf("warmpg: connect: %w", &pgconn.PgError{Code: "53300"}),
	}
	for _, err := range full {
		if !serverFull(err) {
			t.Errorf("%#v: a 53300 answer means the server is full", err)
		}
	}
	for _, err := range []error{
		&pgconn.PgError{Code: "57P03"}, &pq.Error{Code: "28P01"},
		errors.New("FATAL: sorry, too many clients already (SQLSTATE 53300)"), // no SQLState: not guessed from text
		context.DeadlineExceeded,
	} {
		if serverFull(err) {
			t.Errorf("%v: not a full server", err)
		}
	}
}

// withWarmAllAtOnce is WarmDB as it was before issue 19: every dial
// (pool_warm_parallelism of them) at once, and on after SQLSTATE 53300.
func withWarmAllAtOnce() Option {
	return func(c *config) { c.warmRamp, c.warmIgnoreFull = MaxWarmParallelism, true }
}

var (
	fleetRun     = flag.Bool("warmpg.fleet", false, "run TestFleetWarm: six pools of 60 warming at once against max_connections=300, old way and new (about a minute)")
	fleetRounds  = flag.Int("warmpg.fleet.rounds", 5, "TestFleetWarm: rounds of each way, interleaved")
	fleetStagger = flag.Duration("warmpg.fleet.stagger", 3*time.Millisecond, "TestFleetWarm: delay between the instances' starts")
)

// TestFleetWarm is the measurement of issue 19, 1 (not a pass/fail speed
// test, and not part of make test): six instances, each a pool of
// pool_max_conns=60 as the scram password role, start WarmDB a few ms apart
// against one server with max_connections=300 (297 slots for the role), and
// it prints how many each warmed, the old way (all 60 dials at once, on after
// "too many clients") and the new, interleaved round by round. It fails only
// if the new way leaves an instance with fewer than 40.
//
//	go test -run TestFleetWarm -count=1 -v . -args -warmpg.fleet
func TestFleetWarm(t *testing.T) {
	if !*fleetRun {
		t.Skip("a measurement: run with -args -warmpg.fleet")
	}
	const instances, poolSize = 6, 60
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	owner := pgtest.Own(t, ctx, pgtest.WithSetting("max_connections", "300"))
	srv := owner.WithPasswordUser(t)
	ways := []struct {
		name string
		opts []Option
	}{
		{"old (all at once)", []Option{withWarmAllAtOnce()}},
		{"new (window, stop at 53300)", nil},
	}
	minNew := poolSize
	for round := range *fleetRounds {
		for wi := range ways {
			way := ways[(wi+round)%len(ways)] // alternate which goes first
			app := fmt.Sprintf("warmpg_fleet_%d", round)
			dbs := make([]*sql.DB, instances)
			for i := range dbs {
				db, err := Open(srv.URL("application_name="+app, fmt.Sprintf("pool_max_conns=%d", poolSize)),
					append([]Option{WithLogger(slog.New(slog.DiscardHandler)), WithWarmTimeout(time.Minute)}, way.opts...)...)
				if err != nil {
					t.Fatal(err)
				}
				dbs[i] = db
			}
			reps := make([]WarmReport, instances)
			errs := make([]error, instances)
			var wg sync.WaitGroup
			for i, db := range dbs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(i) * *fleetStagger)
					reps[i], errs[i] = WarmDB(ctx, db)
				}()
			}
			wg.Wait()
			warmed := make([]int, instances)
			var took []string
			sum, full := 0, 0
			for i, r := range reps {
				warmed[i] = r.Warmed
				sum += r.Warmed
				took = append(took, r.Elapsed.Round(time.Millisecond).String())
				if r.ServerFull {
					full++
				}
				if errs[i] != nil && !strings.Contains(errs[i].Error(), "53300") {
					t.Errorf("instance %d: %v", i, errs[i])
				}
			}
			sorted := slices.Sorted(slices.Values(warmed))
			t.Logf("round %d %-28s warmed %v (sum %d, min %d); %d stopped at 53300; took %v",
				round, way.name, warmed, sum, sorted[0], full, took)
			if way.opts == nil {
				minNew = min(minNew, sorted[0])
			}
			for _, db := range dbs {
				db.Close()
			}
			if _, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
				t.Fatal(err)
			}
		}
	}
	t.Logf("new way: the fewest any instance warmed in %d rounds: %d of %d", *fleetRounds, minNew, poolSize)
	if minNew < 40 {
		t.Errorf("an instance warmed %d of %d: the goal is at least 40 each", minNew, poolSize)
	}
}

// BenchmarkWarmWindow is one instance's WarmDB(60) alone on a server, the
// new way (a growing window) against the old (all 60 at once), interleaved
// in each iteration, over loopback and at 5 ms injected round-trip time,
// as the scram password role with sslmode=prefer (4 round trips a connect).
// It reports both times in ms and new/old (issue 19's target: <= 1.2).
//
//	go test -run '^$' -bench BenchmarkWarmWindow -benchtime 10x .
func BenchmarkWarmWindow(b *testing.B) {
	srv := pgtest.Get(b).WithPasswordUser(b)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(5*time.Millisecond), pgproxy.WithSpin(0))
	if err != nil {
		b.Fatal(err)
	}
	defer proxy.Close()
	const n = 60
	for _, path := range []struct{ name, addr string }{{"loopback", srv.Addr()}, {"rtt=5ms", proxy.Addr()}} {
		b.Run(path.name, func(b *testing.B) {
			app := "warmpg_bench_window_" + strings.ReplaceAll(path.name, "=", "")
			dsn := strings.Replace(srv.URL("application_name="+app, "sslmode=prefer", fmt.Sprintf("pool_max_conns=%d", n)), srv.Addr(), path.addr, 1)
			ways := [][]Option{{withWarmAllAtOnce()}, nil}
			var sum [2]time.Duration
			ctx := context.Background()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				for k := range ways {
					k = (k + i) % 2 // alternate which goes first
					db, err := Open(dsn, append([]Option{WithLogger(slog.New(slog.DiscardHandler)), WithWarmTimeout(time.Minute)}, ways[k]...)...)
					if err != nil {
						b.Fatal(err)
					}
					rep, err := WarmDB(ctx, db)
					db.Close()
					if err != nil || rep.Warmed != n {
						b.Fatalf("%+v, %v", rep, err)
					}
					sum[k] += rep.Elapsed
					// Untimed: let the server reap the pool.
					if _, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
						b.Fatal(err)
					}
				}
			}
			ms := func(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(ms(sum[0]), "old-ms")
			b.ReportMetric(ms(sum[1]), "new-ms")
			b.ReportMetric(float64(sum[1])/float64(sum[0]), "new/old")
		})
	}
}
