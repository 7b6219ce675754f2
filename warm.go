package warmpg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// WarmReport is what one WarmDB call did.
type WarmReport struct {
	// Requested is how many connections WarmDB set out to hold at once.
	Requested int
	// Warmed is how many it held: new connections plus idle ones it found.
	// They are idle in the pool when WarmDB returns, or in use by the
	// application if WarmDB gave them back early to requests waiting for one
	// (see WarmDB). A connection that arrived after WarmDB yielded went
	// straight to a waiter and is not counted.
	Warmed int
	// Failed is Requested - Warmed: connections that failed, and those not
	// warmed because the application held or awaited the pool's connections
	// (ErrWarmYielded).
	Failed int
	// Parallelism is the most connections dialled at once.
	Parallelism int
	// Elapsed is the time from the call to the last connection held or failed.
	Elapsed time.Duration
	// ServerFull: the server refused a connection with SQLSTATE 53300 (no
	// connection slot left for the role), so WarmDB dialled no more; the
	// connections it did not dial are in Failed, as ErrWarmServerFull.
	ServerFull bool
}

// String returns "warmed 48/50 in 23ms", and when the server was full
// "warmed 41/60 in 95ms; server full (SQLSTATE 53300): stopped dialling".
func (r WarmReport) String() string {
	s := fmt.Sprintf("warmed %d/%d in %s", r.Warmed, r.Requested, r.Elapsed.Round(time.Microsecond))
	if r.ServerFull {
		s += "; server full (SQLSTATE 53300): stopped dialling"
	}
	return s
}

// WarmDB opens a pool's connections concurrently and leaves them idle in db,
// so the first requests find them ready instead of paying a connect each.
//
// On a DB opened through warmpg (sql.Open("warmpg", ...), Open, or
// sql.OpenDB with a *Connector) it first applies the pool settings the DSN,
// the environment and opts set (a limit set by hand on db stays unless one of
// them overrides it), then warms pool_max_idle_conns connections.
// On any other *sql.DB (lib/pq, plain pgx, go-sqlmock) the count must be given
// with WithMaxIdleConns, or WithMaxConns (which then sets both, as
// pool_max_conns does); WarmDB then also sets db.SetMaxIdleConns to it,
// since database/sql would otherwise close all but 2 of them, and applies
// WithMaxConns, WithMaxConnLifetime and WithMaxConnIdleTime if given. Behind
// a wrapper that hides warmpg's driver (otelsql), call (*Connector).WarmDB.
//
// It holds the connections at once with db.Conn (so idle ones already in the
// pool count), dialling at most pool_warm_parallelism at a time, within ctx
// and pool_warm_timeout, then returns them all to the pool. A count above the
// DB's MaxOpenConns is refused, since it could never be held at once.
// It starts with 4 dials; once one has connected, each connect lets one more
// start, doubling the window every connect time, until a wave of connects
// (max(8, window) of them) is slow: half of it, or 5 in a row, a third
// slower than the lowest median of a wave so far (a server busy with
// connects; single slow connects are noise). That puts it back to 4, from
// where it grows more slowly. So the pools
// of a fleet starting together against a server that cannot hold them all
// each keep a few dials in flight and share its slots, rather than the first
// to dial taking them all. At the server's first "too many clients" answer
// (SQLSTATE 53300) it dials no more and does not retry: the dials already
// in flight (at most the window) finish, WarmReport.ServerFull is set and
// the connections not dialled fail with ErrWarmServerFull.
//
// Warming never makes the application wait for a connection. On a pool with
// a MaxOpenConns limit, WarmDB asks for a connection only while one is free,
// and as soon as any request waits for one (db.Stats().WaitCount rises,
// checked every 2 ms) it gives back all it holds — to the waiters, or idle
// in the pool, warm — and stops. What it did not warm is counted in
// WarmReport.Failed and the error wraps ErrWarmYielded. Two WarmDB calls on
// one pool therefore yield to each other rather than wait: together they
// warm what is free, and return.
//
// When some connections fail, the others stay warm, the report says how many,
// and the error joins the distinct failures (the server's own message
// included). The pool stays usable either way. WarmDB logs
// "warmpg: warmed N/M in T" through log/slog (WithLogger).
func WarmDB(ctx context.Context, db *sql.DB, opts ...Option) (WarmReport, error) {
	if db == nil {
		return WarmReport{}, errors.New("warmpg: WarmDB: db is nil")
	}
	if ctx == nil {
		return WarmReport{}, errNilContext
	}
	c, _ := connectorOf(db)
	return warmDB(ctx, db, c, opts)
}

// WarmDB is the package's WarmDB for a db whose connections come from c
// through a wrapper that hides c from db.Driver() — otelsql.OpenDB(c), say:
// c's settings (the DSN's pool_* keys, the environment, its options) apply
// as on a DB warmpg opened, then opts.
func (c *Connector) WarmDB(ctx context.Context, db *sql.DB, opts ...Option) (WarmReport, error) {
	if db == nil {
		return WarmReport{}, errors.New("warmpg: WarmDB: db is nil")
	}
	if ctx == nil {
		return WarmReport{}, errNilContext
	}
	return warmDB(ctx, db, c, opts)
}

var errNilContext = errors.New("warmpg: WarmDB: ctx is nil (want context.Background() or a context with a deadline)")

// warmDB is WarmDB with c, warmpg's connector under db, or nil if unknown.
func warmDB(ctx context.Context, db *sql.DB, c *Connector, opts []Option) (WarmReport, error) {
	ours := c != nil
	cfg := newConfig()
	if ours {
		cfg = c.cfg
	}
	for _, o := range opts {
		o(&cfg)
	}
	if err := cfg.validate(); err != nil {
		return WarmReport{}, err
	}
	if !ours && cfg.set&(bitMaxIdleConns|bitMaxConns) == 0 {
		return WarmReport{}, errors.New("warmpg: WarmDB: db was not opened through warmpg, so the number of connections to warm is unknown: pass warmpg.WithMaxIdleConns(n) or warmpg.WithMaxConns(n) (or call WarmDB on the warmpg Connector under a wrapper)")
	}
	// Only what the DSN, the environment or opts set: a limit the
	// application set by hand on db stays unless a setting says otherwise.
	cfg.applyPool(db, cfg.set)
	if ours {
		c.holds.setDB(db)
		c.holds.warming.Add(1) // the pool is full on purpose: no exhaustion
		defer c.holds.warming.Add(-1)
	}

	n := cfg.idleConns()
	st := db.Stats()
	if st.MaxOpenConnections > 0 && n > st.MaxOpenConnections {
		return WarmReport{Requested: n}, fmt.Errorf("warmpg: WarmDB: cannot warm %d connections: the pool allows at most %d open (pool_max_conns / SetMaxOpenConns); lower pool_max_idle_conns or raise pool_max_conns", n, st.MaxOpenConnections)
	}
	rep, err := warm(ctx, db, n, cfg.parallelism(n), cfg.warmTimeout, &cfg)
	logWarm(&cfg, rep, err)
	if closed := db.Stats().MaxIdleClosed - st.MaxIdleClosed; closed > 0 {
		cfg.logEvent(slog.LevelWarn, "warmpg: database/sql closed warmed connections: its MaxIdleConns is below the warm count; set pool_max_idle_conns (or db.SetMaxIdleConns)",
			"closed", closed, "warmed", rep.Warmed)
	}
	return rep, err
}

// ErrWarmYielded is the failure WarmDB reports, in its error and in
// WarmReport.Failed, for connections it did not warm because the pool had
// none free or the application was waiting for one (see WarmDB).
var ErrWarmYielded = errors.New("warmpg: not warmed: the pool's connections were in use or awaited by the application")

// ErrWarmServerFull is the failure WarmDB reports, in its error and in
// WarmReport.Failed, for connections it did not dial because the server had
// already refused one with SQLSTATE 53300 (too many connections): what
// frees up is left to other clients, which need it more than a warm pool.
var ErrWarmServerFull = errors.New("warmpg: not dialled: the server refused a connection with SQLSTATE 53300 (no connection slot left), so WarmDB stopped dialling")

// yieldPoll is how often warm looks for application requests waiting for
// a connection while it holds some.
const yieldPoll = 2 * time.Millisecond

// warm holds n connections of db at once, dialling at most p at a time, then
// returns them all to the pool. On a pool with a MaxOpenConns limit it
// never makes the application wait: it asks for a connection only while
// one is free (InUse below the limit), and as soon as a request of anyone's
// waits for one (db.Stats().WaitCount rises) it gives back every
// connection it holds — each goes to a waiter or to the idle pool, warm —
// and every one its dials still in flight bring, starts no more, and
// reports the rest as not warmed (ErrWarmYielded).
func warm(ctx context.Context, db *sql.DB, n, p int, timeout time.Duration, cfg *config) (WarmReport, error) {
	rep := WarmReport{Requested: n}
	start := time.Now()
	if n == 0 {
		return rep, nil
	}
	ctx, cancel := context.WithTimeout(context.WithValue(ctx, warmingKey{}, true), timeout)
	defer cancel()
	// yctx ends when warm yields to the application, or with ctx.
	yctx, yield := context.WithCancelCause(ctx)
	defer yield(nil)

	var (
		mu      sync.Mutex
		held    = make([]*sql.Conn, 0, n)
		warmed  int
		yielded bool
		fails   = map[string]*warmFailure{}
		order   []string
	)
	st := db.Stats()
	limit, waits := st.MaxOpenConnections, st.WaitCount
	// database/sql hands out idle connections first: about the first
	// st.Idle requests take one, in microseconds, and say nothing of the
	// server's connect time.
	idle := st.Idle
	ask := n
	if limit > 0 {
		// Never more than are free now, so that warm's own requests
		// cannot make each other wait.
		ask = max(0, min(n, limit-st.InUse))
	}
	stopWatch := func() {}
	if limit > 0 {
		// Without a limit database/sql never makes a request wait.
		done := make(chan struct{})
		var wg sync.WaitGroup
		wg.Add(1)
		go func() {
			defer wg.Done()
			tick := time.NewTicker(yieldPoll)
			defer tick.Stop()
			for {
				select {
				case <-done:
					return
				case <-yctx.Done():
					return
				case <-tick.C:
				}
				if db.Stats().WaitCount == waits {
					continue
				}
				yield(ErrWarmYielded)
				mu.Lock()
				yielded = true
				give := held
				held = nil
				mu.Unlock()
				for _, c := range give {
					c.Close() // to a waiter, or idle in the pool
				}
				return
			}
		}()
		stopWatch = func() { close(done); wg.Wait() }
	}
	fail := func(err error) {
		mu.Lock()
		recordFailure(fails, &order, err)
		mu.Unlock()
	}
	// Dials start in a small window that grows while connects stay fast
	// and falls back when they slow down (see dialWindow). Alone on a
	// server whose CPUs bound the connects a pool fills about as fast as
	// with p at once: a few dials in flight already keep it busy. A fleet
	// of instances starting together against a scarce server share its
	// slots, instead of the first to dial taking them all.
	win := newDialWindow(cfg, p)
	results := make(chan dialEnd, n)
	var (
		wg       sync.WaitGroup
		inFlight int // goroutines started and not reported
		dialing  atomic.Int32
		peak     atomic.Int32
		full     bool
	)
	trace, _ := ctx.Value(warmTraceKey{}).(*warmTrace)
	note := func(e dialEnd) {
		inFlight--
		if e.r == dialOK && !e.reused {
			win.connected(e.began, e.took)
		}
		if e.r == dialFull && !cfg.warmIgnoreFull {
			full = true
		}
		if trace != nil {
			mu.Lock()
			h := warmed
			mu.Unlock()
			trace.Ends = append(trace.Ends, traceEnd{At: time.Since(start), Took: e.took, R: e.r, Window: win.size, Held: h})
		}
	}
	for i := 0; i < n; i++ {
		if i >= ask {
			fail(ErrWarmYielded)
			continue
		}
		// Take every result in, then wait while the window is full.
		for more := true; more; {
			select {
			case e := <-results:
				note(e)
			default:
				more = false
			}
		}
		for inFlight >= win.size {
			note(<-results)
		}
		if yctx.Err() != nil {
			// Do not start dials that cannot succeed; count them as failed.
			fail(context.Cause(yctx))
			continue
		}
		if full {
			// The server has no slot left for this role: leave what
			// frees up to other clients rather than race them for it.
			fail(ErrWarmServerFull)
			continue
		}
		inFlight++
		wg.Add(1)
		reused := i < idle
		go func() {
			defer wg.Done()
			if yctx.Err() != nil {
				fail(context.Cause(yctx))
				results <- dialEnd{r: dialSkipped}
				return
			}
			if limit > 0 && db.Stats().InUse >= limit {
				// The request would wait for a connection someone else
				// holds: leave the rest to the application.
				yield(ErrWarmYielded)
				fail(ErrWarmYielded)
				results <- dialEnd{r: dialSkipped}
				return
			}
			raise(&peak, dialing.Add(1))
			began := time.Now()
			// ctx, not yctx: a dial in flight when warm yields completes,
			// and its connection goes to a waiter (below).
			conn, err := db.Conn(ctx)
			took := time.Since(began)
			dialing.Add(-1)
			if err != nil {
				fail(err)
				if serverFull(err) {
					results <- dialEnd{dialFull, began, took, reused}
				} else {
					results <- dialEnd{dialFailed, began, took, reused}
				}
				return
			}
			mu.Lock()
			if yielded {
				// A waiter needs it more. Not counted: a request of warm's
				// that waited may have been handed one warm gave back.
				recordFailure(fails, &order, ErrWarmYielded)
				mu.Unlock()
				conn.Close()
				results <- dialEnd{dialOK, began, took, reused}
				return
			}
			warmed++
			now := warmed
			held = append(held, conn)
			mu.Unlock()
			if progressStep(now, n) && now < n {
				cfg.logEvent(slog.LevelDebug, "warmpg: warming", "warmed", now, "requested", n, "elapsed", time.Since(start))
			}
			results <- dialEnd{dialOK, began, took, reused}
		}()
	}
	wg.Wait()
	for inFlight > 0 {
		note(<-results)
	}
	rep.ServerFull = full
	rep.Parallelism = int(peak.Load())
	stopWatch()
	rep.Elapsed = time.Since(start)
	rep.Warmed = warmed
	rep.Failed = n - rep.Warmed
	mu.Lock()
	give := held
	held = nil
	mu.Unlock()
	for _, c := range give {
		c.Close() // back to the idle pool
	}
	if rep.Failed == 0 {
		return rep, nil
	}
	errs := make([]error, 0, len(order))
	for _, msg := range order {
		errs = append(errs, fails[msg])
	}
	return rep, fmt.Errorf("warmpg: warmed %d of %d connections, %d failed: %w", rep.Warmed, rep.Requested, rep.Failed, errors.Join(errs...))
}

// warmFirstWindow is how many connections WarmDB dials at first (or
// pool_warm_parallelism if lower), and goes back to when connects slow
// down; see dialWindow.
const warmFirstWindow = 4

// waveSlack: a connect is slow if it took more than the reference plus a
// waveSlack-th of it (33%); see dialWindow.
const waveSlack = 3

// minWave is the fewest connects a wave has; slowRun, how many slow
// connects in a row make a wave slow before it is complete.
const (
	minWave = 8
	slowRun = 5
)

// dialWindow is how many dials warm may have in flight.
//
// It starts at first (4) and stays there until one of warm's connects has
// ended. Those first dials' times say where they stood in the server's
// queue when this WarmDB began — the first instance of a fleet to start
// finds the server idle, the last finds it busy with the others' dials —
// not what a connect costs once everyone dials, so they do not count.
//
// From then on, like TCP's congestion window: each connect lets one more
// dial start, so the window doubles every connect time up to p (slow
// start), until the connects slow down. That is judged by waves, not by
// single connects. A wave is the next max(minWave, window) connects to
// end; the reference is the lowest median of a wave so far, and a connect
// is slow if it took more than the reference plus a third. A wave is slow
// as soon as half of its connects (its upper median), or slowRun in a
// row, were slow; a wave that ends otherwise becomes the reference if its
// upper median is lower. A slow wave means the server is busy with
// connects (each a fork and an authentication), where more dials in
// flight only queue: the window goes back to first, and from half the
// window the slow wave began with it grows by one per window of connects
// (congestion avoidance). Connects that began before that back-off say
// what the wider window cost, and do not count.
//
// Why waves: connect times vary from one connect to the next whatever is
// in flight (the network, the scheduler, the server's other work), ±20%
// on an ordinary network. Judged one by one against the fastest connect
// ever seen, as before issue 25, most connects were slow and the window
// stayed near first: a lone WarmDB(300) took 8 times as long. A wave's
// median moves with what the server does, not with one connect's luck;
// a server bound by its CPUs slows every connect in proportion to what
// is in flight, and a wave begun at twice the window has about twice the
// median, so it trips the limit within a few connects.
//
// Why so: when a fleet's pools ask for more than the server has, what an
// instance holds when the server fills is about its share of the dials in
// flight. Every instance sees the same busy server (only the first wave
// sees it differently, and does not count), so all back off together and
// get about the same share. Alone on a server that keeps up, connects stay
// as fast and the window grows as before; on one that does not, more in
// flight would not have been faster. docs/fleet.md has the measurements.
type dialWindow struct {
	first, p, size int
	since          time.Time       // connects that began before it do not count; zero: none has ended yet
	wave           []time.Duration // the current wave's connect times
	waveLen        int             // how many connects make the current wave
	slow, run      int             // the current wave's slow connects, and slow ones in a row
	ref            time.Duration   // the lowest median of a wave so far; 0: none yet
	threshold      int             // slow start below it, +1 per window above; 0: none
	credit         int             // connects towards the next +1 above threshold
}

func newDialWindow(cfg *config, p int) *dialWindow {
	w := warmFirstWindow
	if cfg.warmRamp > 0 {
		w = cfg.warmRamp
	}
	w = max(1, min(w, p))
	return &dialWindow{first: w, p: p, size: w}
}

// connected notes a new connection whose connect began at began and took
// took. (Failed dials and idle connections the pool handed out say nothing
// of the server's connect time.)
func (w *dialWindow) connected(began time.Time, took time.Duration) {
	end := began.Add(took)
	if w.since.IsZero() {
		w.since = end
		w.waveLen = max(minWave, w.size)
	}
	if began.Before(w.since) {
		return // one of the first dials, or begun before a back-off
	}
	if w.threshold == 0 || w.size < w.threshold {
		w.size = min(w.p, w.size+1)
	} else if w.credit++; w.credit >= w.size {
		w.credit = 0
		w.size = min(w.p, w.size+1)
	}
	took = max(took, time.Microsecond)
	w.wave = append(w.wave, took)
	limit := w.ref + w.ref/waveSlack
	if w.ref != 0 && took > limit {
		w.slow++
		w.run++
	} else {
		w.run = 0
	}
	slow := w.ref != 0 && (w.slow > (w.waveLen-1)/2 || w.run >= slowRun)
	if !slow && len(w.wave) < w.waveLen {
		return
	}
	if !slow {
		slices.Sort(w.wave)
		med := w.wave[len(w.wave)/2]
		if w.ref == 0 || med < w.ref {
			w.ref = med
		}
	}
	began0 := w.waveLen
	w.wave, w.slow, w.run = w.wave[:0], 0, 0
	w.waveLen = max(minWave, w.size)
	if !slow {
		return
	}
	w.threshold = max(w.first, began0/2)
	w.credit = 0
	w.size = w.first
	w.waveLen = max(minWave, w.first)
	w.since = end
}

// warmTrace records how warm's dials ended, for the fleet measurement: a
// test puts a *warmTrace in WarmDB's context under warmTraceKey.
type warmTrace struct{ Ends []traceEnd }

type warmTraceKey struct{}

// traceEnd is one dial's end as warm noted it: when (since WarmDB began),
// how long it took, how it ended, the window after it and how many
// connections warm held then.
type traceEnd struct {
	At, Took time.Duration
	R        dialResult
	Window   int
	Held     int
}

// dialEnd is how one of warm's dials ended, when it began and how long it
// took.
type dialEnd struct {
	r      dialResult
	began  time.Time
	took   time.Duration
	reused bool // one of the first requests, while the pool had idle ones
}

// dialResult is how one of warm's dials ended.
type dialResult uint8

const (
	dialOK dialResult = iota
	dialFailed
	dialFull    // the server answered SQLSTATE 53300
	dialSkipped // not made: warm yielded or timed out
)

// serverFull reports whether a connect failed because the server has no
// connection slot left for the role: SQLSTATE 53300 (too_many_connections:
// "sorry, too many clients already", "remaining connection slots are
// reserved ...", "too many connections for role ...").
func serverFull(err error) bool {
	return sqlState(err) == "53300"
}

// raise sets m to v if v is larger.
func raise(m *atomic.Int32, v int32) {
	for old := m.Load(); v > old && !m.CompareAndSwap(old, v); old = m.Load() {
	}
}

// warmFailure is one distinct error and how many connections failed with it.
type warmFailure struct {
	err   error
	count int
}

func (f *warmFailure) Error() string {
	if f.count == 1 {
		return f.err.Error()
	}
	return fmt.Sprintf("%d× %v", f.count, f.err)
}

func (f *warmFailure) Unwrap() error { return f.err }

func recordFailure(fails map[string]*warmFailure, order *[]string, err error) {
	msg := err.Error()
	if f, ok := fails[msg]; ok {
		f.count++
		return
	}
	fails[msg] = &warmFailure{err: err, count: 1}
	*order = append(*order, msg)
}

func logWarm(cfg *config, rep WarmReport, err error) {
	msg := "warmpg: " + rep.String()
	attrs := []any{"requested", rep.Requested, "warmed", rep.Warmed, "elapsed", rep.Elapsed, "parallelism", rep.Parallelism}
	if rep.ServerFull {
		attrs = append(attrs, "server_full", true)
	}
	if err != nil {
		cfg.logEvent(slog.LevelWarn, msg, append(attrs, "failed", rep.Failed, "error", err)...)
		return
	}
	cfg.logEvent(slog.LevelInfo, msg, attrs...)
}
