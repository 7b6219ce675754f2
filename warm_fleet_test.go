package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"math/rand/v2"
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

// WarmDB dials in a window that starts at 4 and grows as connects end in
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
	// The window still grows: 4, then 8, 16... (all connects equally fast).
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

// The window, step by step (issues 19 and 25): the first dials' times do
// not count (the first connect of the first instance to start, on an idle
// server, would otherwise be the reference and hold that instance back
// while the others grew); then one more per connect. Slowness is judged by
// waves of max(8, window) connects against the lowest wave median so far:
// a connect a third slower than that is slow, and a wave is slow once half
// of it, or 5 in a row, were. A slow wave puts the window back to the
// first window; above half the window the slow wave began with it grows
// by one per window. Before issue 25 a single connect 12.5% slower than
// the fastest ever seen did that, so noise looked like load.
func TestDialWindow(t *testing.T) {
	const first = warmFirstWindow
	w := newDialWindow(&config{}, 60)
	if w.size != first {
		t.Fatalf("first window %d, want %d", w.size, first)
	}
	t0 := time.Unix(1000, 0)
	ms := time.Millisecond
	// The first wave began at t0. Its first connect took 10ms (an idle
	// server), the others longer (the rest of a fleet arrived): none moves
	// the window, and none is the reference.
	for i := range first {
		w.connected(t0, time.Duration(10+300*i)*ms)
	}
	// A dial that began before the first ended is of the first wave too.
	w.connected(t0.Add(9*ms), 50*ms)
	if w.size != first || w.ref != 0 {
		t.Fatalf("after the first wave: window %d, reference %s; want %d, none", w.size, w.ref, first)
	}
	// Dials that began after the first connect ended: slow start, one
	// more per connect. The first complete wave (8 connects) sets the
	// reference, its lower median.
	t1 := t0.Add(20 * ms)
	for _, d := range []int{800, 700, 900, 750, 850, 720, 880, 800} {
		w.connected(t1, time.Duration(d)*ms)
	}
	if w.size != first+8 || w.ref != 800*ms || w.waveLen != first+8 {
		t.Fatalf("after the first wave of 8: window %d, reference %s, next wave %d; want %d, 800ms, %d", w.size, w.ref, w.waveLen, first+8, first+8)
	}
	// Noise: single connects much slower than the reference, even twice
	// as slow, and a few in a row, do not shrink the window as long as
	// fewer than half the wave are slow; a wave with a lower median moves
	// the reference down.
	wave := []int{1700, 700, 1100, 1090, 600, 1500, 700, 700, 700, 700, 1070, 700}
	for _, d := range wave {
		w.connected(t1, time.Duration(d)*ms)
	}
	if w.size != first+8+len(wave) || w.ref != 700*ms {
		t.Fatalf("after a noisy wave: window %d, reference %s; want %d, 700ms", w.size, w.ref, first+8+len(wave))
	}
	// Half of a wave (24 now) slower than the reference plus a third:
	// back to the first window, and the threshold is half the window
	// the wave began with.
	waveLen := w.waveLen
	limit := 700*ms + 700*ms/waveSlack
	for i := range waveLen - 1 { // slow, fast, slow, ...: the 12th slow one is the 23rd
		d := 700 * ms
		if i%2 == 0 {
			d = limit + ms
		}
		w.connected(t1, d)
		if i < waveLen-2 && w.size == first {
			t.Fatalf("window back to %d after %d connects of a wave of %d, %d of them slow", w.size, i+1, waveLen, i/2+1)
		}
	}
	if w.size != first || w.threshold != waveLen/2 {
		t.Fatalf("after half a wave of %d slow: window %d, threshold %d; want %d, %d", waveLen, w.size, w.threshold, first, waveLen/2)
	}
	// Connects that began before the back-off do not count, fast or slow.
	for range 20 {
		w.connected(t1, 2000*ms)
		w.connected(t1, 100*ms)
	}
	if w.size != first {
		t.Fatalf("connects begun before the back-off moved the window to %d", w.size)
	}
	// Slow start again up to the threshold, then one per window.
	t2 := t1.Add(3 * time.Second)
	for range w.threshold - first {
		w.connected(t2, 700*ms)
	}
	if w.size != w.threshold {
		t.Fatalf("slow start again: window %d, want the threshold %d", w.size, w.threshold)
	}
	at := w.size
	for range at - 1 {
		w.connected(t2, 700*ms)
	}
	if w.size != at {
		t.Fatalf("above the threshold: window %d after %d connects, want %d", w.size, at-1, at)
	}
	w.connected(t2, 700*ms)
	if w.size != at+1 {
		t.Fatalf("above the threshold: window %d after %d connects, want %d", w.size, at, at+1)
	}
	// slowRun slow connects in a row: back off before the wave is done.
	for i := range slowRun {
		if w.size == first {
			t.Fatalf("backed off after %d slow connects in a row, want %d", i, slowRun)
		}
		w.connected(t2, 2*limit)
	}
	if w.size != first {
		t.Fatalf("after %d slow connects in a row: window %d, want %d", slowRun, w.size, first)
	}
	t3 := t2.Add(5 * time.Second)
	for range 2000 {
		w.connected(t3, 700*ms)
	}
	if w.size != 60 {
		t.Fatalf("window %d, want at most p=60", w.size)
	}
	// pool_warm_parallelism below the first window, and the old way.
	if w := newDialWindow(&config{}, 3); w.size != 3 {
		t.Errorf("p=3: first window %d", w.size)
	}
	w = newDialWindow(&config{warmRamp: MaxWarmParallelism}, 60)
	w.connected(t0, ms)
	w.connected(t0.Add(2*ms), ms)
	w.connected(t0.Add(2*ms), 10*ms)
	if w.size != 60 {
		t.Errorf("all at once: window %d, want 60 throughout", w.size)
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

	// A server already full refuses the first window's 4 dials, all at
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
	fleetOld     = flag.Bool("warmpg.fleet.old", true, "TestFleetWarm: also measure the old way (all at once)")
	fleetTrace   = flag.Bool("warmpg.fleet.trace", false, "TestFleetWarm: log each instance's dials of the new way: window, connect times, first 53300")
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
			if way.opts != nil && !*fleetOld {
				continue
			}
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
			traces := make([]*warmTrace, instances)
			var wg sync.WaitGroup
			for i, db := range dbs {
				wg.Add(1)
				go func() {
					defer wg.Done()
					time.Sleep(time.Duration(i) * *fleetStagger)
					traces[i] = &warmTrace{}
					reps[i], errs[i] = WarmDB(context.WithValue(ctx, warmTraceKey{}, traces[i]), db)
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
				if *fleetTrace {
					for i, tr := range traces {
						t.Logf("  instance %d: %s", i, tr.summary())
					}
				}
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
// in each iteration: over loopback and at 5 ms injected round-trip time as
// the scram password role with sslmode=prefer (4 round trips a connect),
// where the CPUs bound the time, and at 20 ms as a trusted role without
// TLS, where the round trips do. It reports both times in ms and new/old
// (issue 19's target: <= 1.2).
//
//	go test -run '^$' -bench BenchmarkWarmWindow -benchtime 6x .
func BenchmarkWarmWindow(b *testing.B) {
	base := pgtest.Get(b)
	srv := base.WithPasswordUser(b)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(5*time.Millisecond), pgproxy.WithSpin(0))
	if err != nil {
		b.Fatal(err)
	}
	defer proxy.Close()
	far, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(20*time.Millisecond), pgproxy.WithSpin(0))
	if err != nil {
		b.Fatal(err)
	}
	defer far.Close()
	const n = 60
	for _, path := range []struct {
		name, addr string
		srv        *pgtest.Server
		ssl        string
	}{
		{"loopback", srv.Addr(), srv, "sslmode=prefer"},
		{"rtt=5ms", proxy.Addr(), srv, "sslmode=prefer"},
		{"trust,rtt=20ms", far.Addr(), base, "sslmode=disable"},
	} {
		b.Run(path.name, func(b *testing.B) {
			app := "warmpg_bench_window_" + strings.NewReplacer("=", "", ",", "_").Replace(path.name)
			dsn := strings.Replace(path.srv.URL("application_name="+app, path.ssl, fmt.Sprintf("pool_max_conns=%d", n)), srv.Addr(), path.addr, 1)
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

// summary is one WarmDB's dials in a line: the window and what was held
// every 50 ms, the connect times' quartiles, and when the first 53300 came.
func (tr *warmTrace) summary() string {
	var b strings.Builder
	var took []time.Duration
	next := time.Duration(0)
	full := -1
	for i, e := range tr.Ends {
		if e.R == dialOK {
			took = append(took, e.Took)
		}
		if e.R == dialFull && full < 0 {
			full = i
		}
		if e.At >= next {
			fmt.Fprintf(&b, "%dms:w%d/h%d ", e.At.Milliseconds(), e.Window, e.Held)
			next = e.At + 50*time.Millisecond
		}
	}
	slices.Sort(took)
	if len(took) > 0 {
		q := func(f float64) time.Duration { return took[int(f*float64(len(took)-1))].Round(time.Millisecond / 10) }
		fmt.Fprintf(&b, "| took min %s q1 %s med %s q3 %s max %s ", q(0), q(0.25), q(0.5), q(0.75), q(1))
	}
	if full >= 0 {
		e := tr.Ends[full]
		fmt.Fprintf(&b, "| first 53300 at %dms holding %d, window %d", e.At.Milliseconds(), e.Held, e.Window)
	}
	return b.String()
}

// fleetModel is a model of a server that a fleet of WarmDB calls dial at
// once, in virtual time, to test the dial window's policy deterministically.
// Like PostgreSQL's postmaster it starts backends one at a time, in arrival
// order (fork CPU each); a backend takes a slot as it starts, or the connect
// is refused with 53300 if none is left; then it needs work CPU (the
// authentication), and all that is runnable shares the server's cores; the
// client sees the answer after round trips.
type fleetModel struct {
	name    string
	slots   int
	cores   int
	fork    time.Duration // postmaster CPU per connect, one at a time
	work    time.Duration // backend CPU per connect
	jitter  float64       // work varies by ±jitter (seeded: deterministic)
	rtt     time.Duration
	stagger time.Duration // between the instances' starts
}

type modelDial struct {
	inst          int
	start, arrive time.Duration
	forkLeft      float64 // fork work left, ns
	left          float64 // backend work left, ns
	served        bool    // started as a backend, holding a slot
	done          time.Duration
	refused       bool
}

// run has `instances` WarmDB loops of n each dial against the model with
// the window newWin returns, the way warm does (start dials while fewer
// than the window are in flight, none after a 53300), and returns how many
// each holds at the end, and when the last answer came.
func (m fleetModel) run(instances, n int, seed uint64, newWin func() *dialWindow) ([]int, time.Duration) {
	r := m.trace(instances, n, seed, newWin)
	return r.held, r.end
}

// modelRun is what fleetModel.trace saw: per instance how many it held at
// the end, the most dials it had in flight and how often its window shrank;
// and when the last answer came.
type modelRun struct {
	held, peak, shrinks []int
	end                 time.Duration
}

// trace is run, with each instance's peak in flight and window shrinks.
func (m fleetModel) trace(instances, n int, seed uint64, newWin func() *dialWindow) modelRun {
	rng := rand.New(rand.NewPCG(seed, 19))
	type inst struct {
		win                     *dialWindow
		started, inFlight, held int
		full                    bool
	}
	insts := make([]*inst, instances)
	res := modelRun{held: make([]int, instances), peak: make([]int, instances), shrinks: make([]int, instances)}
	var dials []*modelDial // not yet answered, in start order
	var now time.Duration
	base := time.Unix(1_000_000, 0)
	used := 0 // slots held
	launch := func(i int) {
		in := insts[i]
		for !in.full && in.started < n && in.inFlight < in.win.size {
			in.started++
			in.inFlight++
			res.peak[i] = max(res.peak[i], in.inFlight)
			w := float64(m.work) * (1 + m.jitter*(2*rng.Float64()-1))
			dials = append(dials, &modelDial{inst: i, start: now, arrive: now + m.rtt/2, forkLeft: float64(m.fork), left: w, done: -1})
		}
	}
	const never = time.Duration(1<<62 - 1)
	begun := 0
	for {
		next := never
		if begun < instances {
			next = time.Duration(begun) * m.stagger
		}
		// Runnable: the backends authenticating and the postmaster while a
		// connect waits for it (the first to arrive).
		var forking *modelDial
		var running []*modelDial
		for _, d := range dials {
			switch {
			case d.done >= 0:
				next = min(next, d.done)
			case d.served:
				running = append(running, d)
			case d.arrive > now:
				next = min(next, d.arrive)
			case forking == nil || d.arrive < forking.arrive:
				forking = d
			}
		}
		runnable := len(running)
		if forking != nil {
			runnable++
		}
		rate := 1.0
		if runnable > m.cores {
			rate = float64(m.cores) / float64(runnable)
		}
		for _, d := range running {
			next = min(next, now+time.Duration(math.Ceil(d.left/rate)))
		}
		if forking != nil {
			next = min(next, now+time.Duration(math.Ceil(forking.forkLeft/rate)))
		}
		if next == never {
			break
		}
		for _, d := range running {
			d.left -= rate * float64(next-now)
		}
		if forking != nil {
			forking.forkLeft -= rate * float64(next-now)
		}
		now = next
		if begun < instances && time.Duration(begun)*m.stagger == now {
			insts[begun] = &inst{win: newWin()}
			begun++
			launch(begun - 1)
		}
		if forking != nil && forking.forkLeft <= 0.5 {
			if used >= m.slots {
				forking.refused, forking.done = true, now+m.rtt/2
			} else {
				forking.served = true
				used++
			}
		}
		keep := dials[:0]
		var answered []*modelDial
		for _, d := range dials {
			switch {
			case d.served && d.done < 0 && d.left <= 0.5:
				d.done = now + m.rtt*7/2 // the authentication's round trips
			case d.done >= 0 && d.done <= now:
				answered = append(answered, d)
				continue
			}
			keep = append(keep, d)
		}
		dials = keep
		for _, d := range answered {
			in := insts[d.inst]
			in.inFlight--
			if d.refused {
				in.full = true
			} else {
				in.held++
				was := in.win.size
				in.win.connected(base.Add(d.start), d.done-d.start)
				if in.win.size < was {
					res.shrinks[d.inst]++
				}
			}
		}
		for i := range begun {
			launch(i)
		}
	}
	for i, in := range insts {
		res.held[i] = in.held
	}
	res.end = now
	return res
}

// TestDialWindowFleetModel runs the dial window of six instances of 60
// against a model of a server with 297 slots, in virtual time (no clock,
// no flake): every instance must warm at least 40 (issue 19, 1) where the
// server's CPUs bound the connects, as on the machine TestFleetWarm runs
// on — whatever the delay between the instances' starts, for 8 seeds of
// the connects' jitter. Before, the first instance to start measured an
// idle server's connect as "the fastest", judged every later one slow and
// stayed at its first window while the others grew: 36-40 here, 27 in
// TestFleetWarm. Where the round trips bound the connects (a server with
// many CPUs, far away), connects do not slow down before the server is
// full, every window grows alike and the instances that start later get
// less (logged, not asserted; docs/fleet.md says so); so is how long one
// instance alone takes against all dials at once.
func TestDialWindowFleetModel(t *testing.T) {
	type model struct {
		fleetModel
		fair bool // asserted: every instance at least 40
	}
	var models []model
	for _, st := range []time.Duration{0, time.Millisecond, 3 * time.Millisecond, 10 * time.Millisecond} {
		models = append(models,
			model{fleetModel{name: "2cpu", slots: 297, cores: 2, work: 30 * time.Millisecond, jitter: 0.3, rtt: 100 * time.Microsecond, stagger: st}, true},
			model{fleetModel{name: "2cpu-fork", slots: 297, cores: 2, fork: 5 * time.Millisecond, work: 30 * time.Millisecond, jitter: 0.3, rtt: 100 * time.Microsecond, stagger: st}, true},
			model{fleetModel{name: "2cpu-fast", slots: 297, cores: 2, fork: 300 * time.Microsecond, work: 3 * time.Millisecond, jitter: 0.3, rtt: 100 * time.Microsecond, stagger: st}, true},
			model{fleetModel{name: "16cpu-rtt5", slots: 297, cores: 16, fork: 300 * time.Microsecond, work: 5 * time.Millisecond, jitter: 0.3, rtt: 5 * time.Millisecond, stagger: st}, false},
			model{fleetModel{name: "64cpu-rtt20", slots: 297, cores: 64, fork: 300 * time.Microsecond, work: 3 * time.Millisecond, jitter: 0.3, rtt: 20 * time.Millisecond, stagger: st}, false},
		)
	}
	for _, m := range models {
		worst := []int{60}
		for seed := range uint64(8) {
			held, _ := m.run(6, 60, seed, func() *dialWindow { return newDialWindow(&config{}, 60) })
			if slices.Min(held) < slices.Min(worst) {
				worst = held
			}
		}
		if m.fair && slices.Min(worst) < 40 {
			t.Errorf("%s, starts %s apart: an instance warmed %d (worst of 8: %v); want at least 40 each", m.name, m.stagger, slices.Min(worst), worst)
		} else {
			t.Logf("%-11s starts %-4s apart: worst of 8 %v", m.name, m.stagger, worst)
		}
	}
	for _, m := range models[:5] {
		m.slots = 1000
		var sum [2]time.Duration
		for seed := range uint64(8) {
			_, a := m.run(1, 60, seed, func() *dialWindow { return newDialWindow(&config{warmRamp: MaxWarmParallelism}, 60) })
			_, b := m.run(1, 60, seed, func() *dialWindow { return newDialWindow(&config{}, 60) })
			sum[0] += a
			sum[1] += b
		}
		t.Logf("alone, %-11s all at once %5.0fms, window %5.0fms: %.2fx", m.name,
			float64(sum[0].Microseconds())/8000, float64(sum[1].Microseconds())/8000, float64(sum[1])/float64(sum[0]))
	}
}

// jitterConnector is a fake server for the dial window whose connects take
// base varied by ±jitter, drawn per connect from a seeded generator: noise
// that does not depend on how many connects are in flight, as on a real
// network. With cores > 0 it is also a server whose CPUs bound the
// connects: a connect that starts with more than cores in flight takes
// base × inFlight/cores, as processor sharing would make it.
type jitterConnector struct {
	base   time.Duration
	jitter float64
	cores  int64

	mu       sync.Mutex
	rng      *rand.Rand
	inFlight atomic.Int64
	peak     atomic.Int64
}

func newJitterConnector(base time.Duration, jitter float64, cores int64, seed uint64) *jitterConnector {
	return &jitterConnector{base: base, jitter: jitter, cores: cores, rng: rand.New(rand.NewPCG(seed, 25))}
}

func (j *jitterConnector) Connect(ctx context.Context) (driver.Conn, error) {
	cur := j.inFlight.Add(1)
	defer j.inFlight.Add(-1)
	for m := j.peak.Load(); cur > m && !j.peak.CompareAndSwap(m, cur); m = j.peak.Load() {
	}
	j.mu.Lock()
	f := 1 + j.jitter*(2*j.rng.Float64()-1)
	j.mu.Unlock()
	if j.cores > 0 && cur > j.cores {
		f *= float64(cur) / float64(j.cores)
	}
	t := time.NewTimer(time.Duration(f * float64(j.base)))
	defer t.Stop()
	select {
	case <-t.C:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return &fakeConn{}, nil
}

func (j *jitterConnector) Driver() driver.Driver { return fakeDriver{} }

// warmJitter is one WarmDB(n) on a jitterConnector, through the public API.
func warmJitter(tb testing.TB, j *jitterConnector, n int) WarmReport {
	tb.Helper()
	c, err := NewConnector(j, WithMaxConns(n), WithLogger(slog.New(slog.DiscardHandler)), WithWarmTimeout(time.Minute))
	if err != nil {
		tb.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	rep, err := WarmDB(context.Background(), db)
	if err != nil || rep.Warmed != n {
		tb.Fatalf("%+v, %v: want %d warmed", rep, err, n)
	}
	return rep
}

// Connect times that vary by ±20% whatever is in flight are noise, not a
// busy server (issue 25, 1): a lone WarmDB(300) still opens its window to
// pool_warm_parallelism (64), as with flat connects. Before, a connect
// 12.5% slower than the fastest ever seen put the window back to 4, and it
// never dialled more than about 5 at once (3.8 s where flat connects took
// 0.46 s: BenchmarkWarmJitter). A server whose CPUs bound the connects
// (4 cores here) still makes it back off. No time is asserted: how many
// dials were in flight at most (WarmReport.Parallelism) says which way the
// window went.
func TestWarmDBWindowJitter(t *testing.T) {
	withEnv(t)
	const n = 300
	noise := newJitterConnector(50*time.Millisecond, 0.2, 0, 1)
	rep := warmJitter(t, noise, n)
	t.Logf("±20%% noise: %v, %d dials at once at most", rep, rep.Parallelism)
	if rep.Parallelism < DefaultWarmParallelism*3/4 {
		t.Errorf("±20%% noise: at most %d dials at once; want the window open to about %d, as with flat connects", rep.Parallelism, DefaultWarmParallelism)
	}
	busy := newJitterConnector(20*time.Millisecond, 0.2, 4, 2)
	rep = warmJitter(t, busy, n)
	t.Logf("4-core server: %v, %d dials at once at most", rep, rep.Parallelism)
	if rep.Parallelism > DefaultWarmParallelism/2 {
		t.Errorf("a server bound by 4 cores: %d dials at once; want the window to back off, well below %d", rep.Parallelism, DefaultWarmParallelism)
	}
}

// BenchmarkWarmJitter is issue 25's measurement: a lone WarmDB(300) on a
// fake connector whose connects take 50 ms flat, 45-55 ms (±10%) and
// 40-60 ms (±20%), drawn independently of what is in flight; the three in
// each iteration, in an order rotated each iteration. It reports each
// one's time in ms, the most dials it had in flight, and jitter/flat
// (the goal: at most 1.15).
//
//	go test -run '^$' -bench BenchmarkWarmJitter -benchtime 5x .
func BenchmarkWarmJitter(b *testing.B) {
	const n = 300
	jitters := []struct {
		name string
		j    float64
	}{{"flat", 0}, {"j10", 0.1}, {"j20", 0.2}}
	sum := make([]time.Duration, len(jitters))
	par := make([]int, len(jitters))
	i := 0
	for b.Loop() {
		for k := range jitters {
			k = (k + i) % len(jitters)
			rep := warmJitter(b, newJitterConnector(50*time.Millisecond, jitters[k].j, 0, uint64(i*len(jitters)+k)), n)
			sum[k] += rep.Elapsed
			par[k] = max(par[k], rep.Parallelism)
		}
		i++
	}
	for k, j := range jitters {
		b.ReportMetric(float64(sum[k].Microseconds())/1000/float64(i), j.name+"-ms")
		b.ReportMetric(float64(par[k]), j.name+"-dials")
		if k > 0 {
			b.ReportMetric(float64(sum[k])/float64(sum[0]), j.name+"/flat")
		}
	}
}

// TestDialWindowJitterModel runs one instance's window in virtual time (no
// clock, no flake) against two servers (issue 25, 1):
//
//   - noise: connects take 50 ms ±10% or ±20% whatever is in flight (the
//     server has CPUs to spare; the network varies). WarmDB(300) must take
//     at most 1.15× its time with flat connects, for 8 seeds. Before, the
//     window went back to 4 at any connect 12.5% slower than the fastest
//     ever seen, and took about 4× as long;
//   - overload: a server with 2 CPUs whose connects (30 ms of CPU, ±30%)
//     slow down as more are in flight, and one with a slow postmaster. The
//     window must back off: shrink at least once and never reach
//     pool_warm_parallelism (64) in flight, for 8 seeds. All at once fails
//     it.
func TestDialWindowJitterModel(t *testing.T) {
	const n = 300
	cfg := newConfig()
	p := cfg.parallelism(n)
	win := func() *dialWindow { return newDialWindow(&config{}, p) }
	noise := fleetModel{name: "noise", slots: 1000, cores: 1 << 20, work: 50 * time.Millisecond}
	for _, j := range []float64{0.1, 0.2} {
		worst := 0.0
		for seed := range uint64(8) {
			flat := noise.trace(1, n, seed, win)
			m := noise
			m.jitter = j
			jit := m.trace(1, n, seed, win)
			r := float64(jit.end) / float64(flat.end)
			worst = max(worst, r)
			if r > 1.15 {
				t.Errorf("±%.0f%% noise, seed %d: %s against %s flat (%.2f×, at most %d in flight, %d shrinks); want at most 1.15×",
					j*100, seed, jit.end, flat.end, r, jit.peak[0], jit.shrinks[0])
			}
		}
		t.Logf("±%.0f%% noise: worst of 8 %.3f× the flat time", j*100, worst)
	}
	for _, m := range []fleetModel{
		{name: "2cpu", slots: 1000, cores: 2, work: 30 * time.Millisecond, jitter: 0.3, rtt: 100 * time.Microsecond},
		{name: "2cpu-fork", slots: 1000, cores: 2, fork: 5 * time.Millisecond, work: 30 * time.Millisecond, jitter: 0.3, rtt: 100 * time.Microsecond},
		{name: "2cpu-flat", slots: 1000, cores: 2, work: 30 * time.Millisecond, rtt: 100 * time.Microsecond},
	} {
		for seed := range uint64(8) {
			r := m.trace(1, n, seed, win)
			if r.shrinks[0] == 0 || r.peak[0] >= p {
				t.Errorf("%s, seed %d: %d in flight at most, window shrank %d times; want it to back off below %d", m.name, seed, r.peak[0], r.shrinks[0], p)
			}
			if seed == 0 {
				t.Logf("%s: %d in flight at most, window shrank %d times, %s", m.name, r.peak[0], r.shrinks[0], r.end)
			}
		}
	}
}
