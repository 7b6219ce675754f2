package warmpg

import (
	"cmp"
	"context"
	"database/sql"
	"log/slog"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// Who holds the pool's connections, and for how long (docs/exhaustion.md).
//
// warmpg sees both ends of a checkout: Connect hands out a new connection
// (database/sql returns it to its caller at once), ResetSession runs before
// database/sql hands out a used one, and IsValid runs when one comes back
// (Close when it is dropped instead). In Go 1.25 and 1.26 database/sql calls
// ResetSession on every hand-out of a connection that has been returned at
// least once (driverConn.needReset is set by the first return and never
// cleared). The one checkout warmpg does not see: a connection database/sql
// opens in its own connectionOpener goroutine (for requests that wait while
// a connection is replaced) is handed to a waiting request with no call
// into the driver. warmpg counts it out from that Connect until its first
// return, with no caller's stack (the opener's has no application frames),
// so it never reports it as held past pool_leak_threshold.
//
// The bookkeeping, while tracking is on (pool_exhausted_log_interval > 0,
// the default, or pool_leak_threshold > 0, or pool_log_level=debug): per
// checkout one clock read, an atomic store on the connection and an atomic
// add on the connector (and at return a store and an add). With
// pool_leak_threshold on, also the caller's program counters
// (runtime.Callers into a buffer the connection keeps: no formatting, no
// arguments) under the connection's own lock. With tracking off, a checkout
// costs one branch.
//
// One goroutine per Connector, started only when needed (the first checkout
// with pool_leak_threshold on, or the first checkout that finds the pool at
// its limit on a *sql.DB warmpg knows) and stopped by Close, looks for
// connections held past the threshold (every threshold/2) and follows an
// exhaustion while it lasts.
//
// An exhaustion is reported only when requests waited for a connection:
// database/sql's WaitCount and WaitDuration, read from the *sql.DB that
// Open or WarmDB introduced (setDB). A pool at its limit whose requests
// never wait — one goroutine on a pool of one, eight workers on eight
// connections — is busy, not exhausted. Without the *sql.DB (a plain
// sql.Open that no WarmDB call has seen) warmpg cannot see the waits and
// reports no exhaustion at all (docs/exhaustion.md).

// DefaultExhaustedLogInterval is pool_exhausted_log_interval's default.
const DefaultExhaustedLogInterval = time.Minute

const (
	// stackDepth is how many program counters a checkout keeps: enough for
	// database/sql's frames (about 8) and the application's below them.
	stackDepth = 32
	// maxHolders is how many holders an exhaustion report names.
	maxHolders = 3
	// maxExhaustGrace bounds how long the pool must stay at its limit
	// before it is reported exhausted, and below it before it is reported
	// recovered (pool_exhausted_log_interval, if shorter).
	maxExhaustGrace = time.Second
)

// holds tracks a Connector's checked-out connections.
type holds struct {
	c     *Connector
	track bool          // record checkouts at all
	leak  time.Duration // pool_leak_threshold; 0: off
	every time.Duration // pool_exhausted_log_interval; 0: off
	debug bool          // pool_log_level=debug: log every checkout and return
	epoch time.Time     // checkout times are monotonic nanoseconds since epoch, plus 1

	limit   atomic.Int64            // connections the pool may open; 0: unknown or no limit
	inUse   atomic.Int64            // connections checked out now
	full    atomic.Int64            // checkouts that found the pool at its limit
	episode atomic.Pointer[episode] // the current exhaustion; nil: none
	warming atomic.Int32            // WarmDB calls running: the pool is full on purpose
	db      atomic.Pointer[sql.DB]
	// The DB's WaitCount and WaitDuration (ns) when setDB saw it or the
	// last episode ended: where the next episode's waits count from.
	waitBase, waitedBase atomic.Int64
	ids                  atomic.Uint64
	leaks                atomic.Int64 // checkouts reported held past the threshold
	reports              atomic.Int64 // exhaustions reported
	running              atomic.Bool  // the monitor goroutine was started
	// evictGen counts Evict calls; a connection whose connect began at an
	// older count is evicted (evict.go).
	evictGen atomic.Uint64

	mu     sync.Mutex
	conns  map[*conn]struct{} // every open connection (tracking on)
	closed bool
	wake   chan struct{}
	stop   chan struct{}
	wg     sync.WaitGroup
}

// hold is one connection's part of holds.
type hold struct {
	id      uint64
	pid     uint32 // the server process, when the driver says (pgx)
	created int64  // epoch time of connect
	gen     uint64 // holds.evictGen when its connect began (evict.go)
	at      atomic.Int64

	// With pool_leak_threshold on: the checkout's program counters, and
	// whether the monitor reported it held past the threshold (warned) or
	// found it is no application's (ignored: WarmDB's, database/sql's
	// opener's).
	mu      sync.Mutex
	pcs     *[stackDepth]uintptr
	npc     int
	warned  bool
	ignored bool
}

func (h *holds) init(c *Connector) {
	cfg := &c.cfg
	h.c = c
	h.leak = cfg.leakThreshold
	h.every = cfg.exhaustedInterval
	h.debug = cfg.logLevel <= slog.LevelDebug
	h.track = h.leak > 0 || h.every > 0 || h.debug
	h.epoch = time.Now()
	h.limit.Store(int64(cfg.maxConns))
	h.conns = map[*conn]struct{}{}
	h.wake = make(chan struct{}, 1)
	h.stop = make(chan struct{})
}

// now is the epoch time: monotonic, never 0.
func (h *holds) now() int64 { return int64(time.Since(h.epoch)) + 1 }

// setDB records the *sql.DB over the connector (Open, WarmDB): its
// MaxOpenConns, after warmpg applied pool_max_conns, is the limit, and its
// wait counts go into exhaustion reports. A SetMaxOpenConns made later is
// not seen.
func (h *holds) setDB(db *sql.DB) {
	if h.c == nil {
		return
	}
	st := db.Stats()
	h.waitBase.Store(st.WaitCount)
	h.waitedBase.Store(int64(st.WaitDuration))
	h.db.Store(db)
	h.limit.Store(int64(st.MaxOpenConnections))
}

// add registers a new connection.
func (h *holds) add(c *conn) {
	if !h.track {
		return
	}
	c.hold.id = h.ids.Add(1)
	c.hold.created = h.now()
	if c.pgx != nil {
		c.hold.pid = c.pgx.Conn().PgConn().PID()
	}
	h.mu.Lock()
	h.conns[c] = struct{}{}
	h.mu.Unlock()
}

// remove drops a closed connection, checking it in if it was out.
func (h *holds) remove(c *conn) {
	if !h.track {
		return
	}
	c.checkin()
	h.mu.Lock()
	delete(h.conns, c)
	h.mu.Unlock()
}

// checkout records that database/sql handed c out (Connect, ResetSession).
func (c *conn) checkout() {
	h := &c.c.holds
	if !h.track {
		return
	}
	now := h.now()
	if h.leak > 0 {
		c.hold.mu.Lock()
		if c.hold.pcs == nil {
			c.hold.pcs = new([stackDepth]uintptr)
		}
		// Skip runtime.Callers and checkout; warmpg's and database/sql's
		// other frames are dropped when the stack is formatted.
		c.hold.npc = runtime.Callers(2, c.hold.pcs[:])
		c.hold.warned, c.hold.ignored = false, false
		c.hold.at.Store(now)
		c.hold.mu.Unlock()
		if !h.running.Load() {
			h.start()
		}
	} else {
		c.hold.at.Store(now)
	}
	n := h.inUse.Add(1)
	if lim := h.limit.Load(); lim > 0 && n >= lim && h.every > 0 {
		h.full.Add(1)
		if h.episode.Load() == nil && h.warming.Load() == 0 && h.db.Load() != nil {
			h.begin(now)
		}
	}
	if h.debug {
		c.logHold(slog.LevelDebug, "warmpg: connection checked out", now, 0, n)
	}
}

// checkin records that c came back (IsValid) or was dropped while out
// (Close). A connection that was not out is left alone: database/sql also
// validates a connection a waiting request gave up on before it used it.
func (c *conn) checkin() {
	h := &c.c.holds
	if !h.track {
		return
	}
	at := c.hold.at.Load()
	if at == 0 {
		return
	}
	warned := false
	if h.leak > 0 {
		c.hold.mu.Lock()
		warned = c.hold.warned
		c.hold.warned, c.hold.ignored = false, false
		c.hold.at.Store(0)
		c.hold.mu.Unlock()
	} else {
		c.hold.at.Store(0)
	}
	n := h.inUse.Add(-1)
	if warned {
		c.logHold(slog.LevelInfo, "warmpg: long-held connection returned", h.now(), at, n)
	} else if h.debug {
		c.logHold(slog.LevelDebug, "warmpg: connection returned", h.now(), at, n)
	}
}

// logHold logs a checkout (at == 0) or a return of c.
func (c *conn) logHold(l slog.Level, msg string, now, at, inUse int64) {
	cfg := &c.c.cfg
	if !cfg.logs(l) {
		return
	}
	attrs := []any{"conn", c.hold.id}
	if c.hold.pid != 0 {
		attrs = append(attrs, "pid", c.hold.pid)
	}
	attrs = append(attrs, "age", time.Duration(now-c.hold.created))
	if at != 0 {
		attrs = append(attrs, "held", time.Duration(now-at))
	}
	attrs = append(attrs, "in_use", inUse)
	cfg.log().Log(context.Background(), l, msg, attrs...)
}

// start starts the monitor goroutine once; not after close.
func (h *holds) start() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed || h.running.Load() {
		return
	}
	h.running.Store(true)
	h.wg.Add(1)
	go h.run()
}

func (h *holds) poke() {
	select {
	case h.wake <- struct{}{}:
	default:
	}
}

// close stops the monitor goroutine and waits for it.
func (h *holds) close() {
	if h.c == nil {
		return
	}
	h.mu.Lock()
	if !h.closed {
		h.closed = true
		close(h.stop)
	}
	h.mu.Unlock()
	h.wg.Wait()
}

// grace is how long the pool must stay at its limit to be reported
// exhausted (and below it to be reported recovered).
func (h *holds) grace() time.Duration { return min(maxExhaustGrace, h.every) }

// run is the monitor: every leak/2 it looks for connections held past the
// threshold; while the pool is at its limit it looks every grace/4.
func (h *holds) run() {
	defer h.wg.Done()
	var ex exhaustion
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		var wait time.Duration
		if h.leak > 0 {
			wait = max(h.leak/2, time.Millisecond)
		}
		if h.episode.Load() != nil {
			poll := max(h.grace()/4, time.Millisecond)
			if wait == 0 || poll < wait {
				wait = poll
			}
		}
		var tc <-chan time.Time
		if wait > 0 {
			timer.Reset(wait)
			tc = timer.C
		}
		select {
		case <-h.stop:
			return
		case <-h.wake:
		case <-tc:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
		now := h.now()
		if h.leak > 0 {
			h.scanLeaks(now)
		}
		if h.every > 0 {
			h.followExhaustion(&ex, now)
		}
	}
}

// scanLeaks reports, once per checkout, each connection out longer than the
// threshold.
func (h *holds) scanLeaks(now int64) {
	type cand struct {
		c  *conn
		at int64
	}
	var cands []cand
	h.mu.Lock()
	for c := range h.conns {
		if at := c.hold.at.Load(); at != 0 && time.Duration(now-at) >= h.leak {
			cands = append(cands, cand{c, at})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(cands, func(a, b cand) int { return cmp.Compare(a.at, b.at) })
	for _, cd := range cands {
		c := cd.c
		c.hold.mu.Lock()
		if c.hold.at.Load() != cd.at || c.hold.warned || c.hold.ignored {
			c.hold.mu.Unlock()
			continue
		}
		st := describeStack(c.hold.pcs[:c.hold.npc])
		if st.own || st.unknown {
			// warmpg's own (WarmDB holds connections on purpose), or
			// database/sql's opener: a holder warmpg cannot name, which
			// may be idle in the pool.
			c.hold.ignored = true
			c.hold.mu.Unlock()
			continue
		}
		c.hold.warned = true
		h.leaks.Add(1)
		// Logged under the connection's lock, so that its return, which
		// logs too, cannot be logged first.
		cfg := &h.c.cfg
		if cfg.logs(slog.LevelWarn) {
			attrs := []any{"conn", c.hold.id}
			if c.hold.pid != 0 {
				attrs = append(attrs, "pid", c.hold.pid)
			}
			attrs = append(attrs, "held", time.Duration(now-cd.at), "threshold", h.leak, "stack", st.text)
			cfg.log().Log(context.Background(), slog.LevelWarn, "warmpg: connection held past pool_leak_threshold", attrs...)
		}
		c.hold.mu.Unlock()
	}
}

// episode is a spell of the pool at its limit, as the checkout that found
// it there began it: a candidate exhaustion, reported only if requests
// waited (followExhaustion).
type episode struct {
	at     int64 // epoch time
	waits  int64 // the DB's WaitCount then
	waited int64 // the DB's WaitDuration then, ns
}

// begin starts an episode at now, unless one is already on, and wakes the
// monitor. Only a checkout that finds the pool at its limit gets here, on
// a DB warmpg knows (without it, waits cannot be seen: no episode), so the
// DB's statistics are read once per episode.
func (h *holds) begin(now int64) {
	db := h.db.Load()
	if db == nil {
		return
	}
	st := db.Stats()
	// A request may begin to wait before this checkout is counted (to
	// database/sql a connection is open from before its Connect returns):
	// waits since the base count as this episode's, unless one of them
	// has already ended, outside any episode.
	waits := h.waitBase.Load()
	if int64(st.WaitDuration) != h.waitedBase.Load() {
		waits = st.WaitCount
	}
	e := &episode{at: now, waits: waits, waited: int64(st.WaitDuration)}
	if h.episode.CompareAndSwap(nil, e) {
		h.start()
		h.poke()
	}
}

// exhaustion is the monitor's state of one episode.
type exhaustion struct {
	ep       *episode // the episode followed
	lastFull int64    // h.full at the last look
	quiet    int64    // since when the pool has been below its limit with no checkout at it; 0: it is not
	reported bool
	lastWarn int64 // when it was last reported (across exhaustions: at most once per interval)

	// The DB's wait statistics at the last look, and at the last report.
	lastWaits, lastWaited int64
	warnWaited            int64
	// pending: since when (epoch time) a request has been waiting, as far
	// as the statistics tell: WaitCount grew and WaitDuration, which grows
	// as each wait ends, did not since. 0: none known.
	pending int64
}

// followExhaustion looks at the pool while it is (or was just) at its
// limit: it reports an exhaustion once requests have waited for a
// connection for grace — a request still waiting after grace, or waits
// that add up to grace — again every interval while they go on, and its
// end once the pool stayed below its limit for grace.
func (h *holds) followExhaustion(ex *exhaustion, now int64) {
	ep := h.episode.Load()
	if ep == nil {
		return
	}
	if ep != ex.ep {
		*ex = exhaustion{ep: ep, lastFull: h.full.Load(), lastWarn: ex.lastWarn,
			lastWaits: ep.waits, lastWaited: ep.waited, warnWaited: ep.waited}
	}
	lim := h.limit.Load()
	full := h.full.Load()
	n := h.inUse.Load()
	atLimit := full != ex.lastFull || (lim > 0 && n >= lim)
	ex.lastFull = full
	grace := int64(h.grace())
	waits, waited := ex.lastWaits, ex.lastWaited
	if db := h.db.Load(); db != nil {
		st := db.Stats()
		waits, waited = st.WaitCount, int64(st.WaitDuration)
	}
	began, ended := waits > ex.lastWaits, waited > ex.lastWaited
	switch {
	case ended:
		// Some wait ended, perhaps every one: none known to be pending.
		// What they waited counts below.
		ex.pending = 0
	case began && ex.pending == 0:
		ex.pending = now // begun since the last look: waiting since now at least
	}
	ex.lastWaits, ex.lastWaited = waits, waited
	switch {
	case h.warming.Load() > 0 || lim <= 0:
		// WarmDB fills the pool on purpose; or the limit went away.
		h.endExhaustion(ex, now, false)
	case atLimit:
		ex.quiet = 0
		// Reported only while the pool is at its limit now (a pool that
		// touched it in bursts and is below it at this look is not
		// reported as exhausted with fewer in use than the limit), and
		// only if requests waited for grace since the last report: one
		// still waiting, or waits adding up to it.
		waitedLong := (ex.pending != 0 && now-ex.pending >= grace) || waited-ex.warnWaited >= grace
		if n >= lim && waitedLong && (ex.lastWarn == 0 || now-ex.lastWarn >= int64(h.every)) {
			if !ex.reported {
				h.reports.Add(1)
			}
			ex.reported = true
			ex.lastWarn = now
			ex.warnWaited = waited
			h.logExhausted(ex, now, n, lim, waits, waited)
		}
	case ex.quiet == 0:
		ex.quiet = now
	case now-ex.quiet >= grace:
		h.endExhaustion(ex, now, true)
	}
}

func (h *holds) endExhaustion(ex *exhaustion, now int64, recovered bool) {
	if recovered && ex.reported {
		h.c.cfg.logEvent(slog.LevelInfo, "warmpg: pool no longer exhausted",
			"exhausted_for", time.Duration(ex.quiet-ex.ep.at), "in_use", h.inUse.Load(), "limit", h.limit.Load())
	}
	if ex.ep != nil {
		h.waitBase.Store(ex.lastWaits)
		h.waitedBase.Store(ex.lastWaited)
	}
	h.episode.CompareAndSwap(ex.ep, nil)
	*ex = exhaustion{lastWarn: ex.lastWarn}
	// A checkout at the limit between the look above and the reset did not
	// start a new exhaustion; look again.
	if lim := h.limit.Load(); lim > 0 && h.inUse.Load() >= lim && h.warming.Load() == 0 {
		h.begin(now)
	}
}

// holder is one checked-out connection, for a report.
type holder struct {
	c  *conn
	at int64
}

// holders returns the checked-out connections, longest held first.
func (h *holds) holders() []holder {
	var hs []holder
	h.mu.Lock()
	for c := range h.conns {
		if at := c.hold.at.Load(); at != 0 {
			hs = append(hs, holder{c, at})
		}
	}
	h.mu.Unlock()
	slices.SortFunc(hs, func(a, b holder) int { return cmp.Compare(a.at, b.at) })
	return hs
}

func (h *holds) logExhausted(ex *exhaustion, now, n, lim, waits, waited int64) {
	cfg := &h.c.cfg
	if !cfg.logs(slog.LevelWarn) {
		return
	}
	attrs := []any{"in_use", n, "limit", lim, "for", time.Duration(now - ex.ep.at),
		"waits", waits - ex.ep.waits, "waited", time.Duration(waited - ex.ep.waited)}
	for i, hd := range h.holders() {
		if i == maxHolders {
			break
		}
		g := []any{"conn", hd.c.hold.id}
		if hd.c.hold.pid != 0 {
			g = append(g, "pid", hd.c.hold.pid)
		}
		g = append(g, "held", time.Duration(now-hd.at))
		if h.leak > 0 {
			hd.c.hold.mu.Lock()
			if hd.c.hold.at.Load() == hd.at {
				g = append(g, "stack", describeStack(hd.c.hold.pcs[:hd.c.hold.npc]).text)
			}
			hd.c.hold.mu.Unlock()
		}
		attrs = append(attrs, slog.Group("holder_"+strconv.Itoa(i+1), g...))
	}
	cfg.log().Log(context.Background(), slog.LevelWarn, "warmpg: pool exhausted", attrs...)
}

// oldest returns how long the longest holder has held its connection.
func (h *holds) oldest() time.Duration {
	if !h.track {
		return 0
	}
	now := h.now()
	var first int64
	h.mu.Lock()
	for c := range h.conns {
		if at := c.hold.at.Load(); at != 0 && (first == 0 || at < first) {
			first = at
		}
	}
	h.mu.Unlock()
	if first == 0 {
		return 0
	}
	return time.Duration(now - first)
}

// stackInfo is a checkout's stack, formatted.
type stackInfo struct {
	text    string // the application's frames, one "function\n\tfile:line" each
	own     bool   // the caller is warmpg itself (WarmDB)
	unknown bool   // no application frame: database/sql's connection opener
}

// maxStackFrames bounds the frames a report shows.
const maxStackFrames = 16

// describeStack formats a checkout's program counters: the application's
// frames only, without warmpg's and database/sql's. Function names, files
// and lines only: a stack from runtime.Callers holds no argument.
func describeStack(pcs []uintptr) stackInfo {
	var (
		b       strings.Builder
		info    stackInfo
		n       int
		seenDB  bool // passed database/sql's frames
		decided bool // the caller below database/sql was looked at
	)
	frames := runtime.CallersFrames(pcs)
	for {
		f, more := frames.Next()
		ours := strings.HasPrefix(f.Function, "github.com/warmpg/warmpg.") && !strings.HasSuffix(f.File, "_test.go")
		switch {
		case f.Function == "" || f.Function == "runtime.goexit":
		case strings.HasPrefix(f.Function, "database/sql."):
			seenDB = true
		case ours:
			// Above database/sql: the hook itself (checkout, Connect,
			// ResetSession). Right below it: warmpg's own caller (WarmDB).
			if seenDB && !decided {
				info.own = true
			}
			decided = decided || seenDB
		default:
			// A wrapper between database/sql and warmpg (otelsql) shows;
			// so does everything from the application.
			decided = decided || seenDB
			if n < maxStackFrames {
				if n > 0 {
					b.WriteByte('\n')
				}
				b.WriteString(f.Function)
				b.WriteString("\n\t")
				b.WriteString(f.File)
				b.WriteByte(':')
				b.WriteString(strconv.Itoa(f.Line))
			}
			n++
		}
		if !more {
			break
		}
	}
	if n > maxStackFrames {
		b.WriteString("\n...")
	}
	info.unknown = seenDB && !decided
	info.text = b.String()
	return info
}
