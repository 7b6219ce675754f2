package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"syscall"
	"time"
)

// The connector's ready store: open connections no one uses yet. It is
// filled at start by pool_prewarm (sql.Open path) and kept at
// pool_min_idle_conns by keep-warm. Connect hands these out, after the
// zero-round-trip liveness check, before it dials.
//
// One goroutine (run) decides what to dial; each dial runs in its own
// goroutine, at most pool_warm_parallelism at once, and after a failure only
// one at a time, spaced by an exponential, jittered backoff: a server that is
// down or out of slots sees about one attempt per backoff interval, not a
// storm. Close stops them all and closes every ready connection.
type ready struct {
	c *Connector

	mu          sync.Mutex
	conns       []*readyConn       // oldest first
	live        map[*conn]struct{} // handed out, not yet closed (keep-warm only)
	dialing     int
	prewarmOwed int // prewarm connections not yet dialled successfully
	failures    int // consecutive failed dials
	retryAt     time.Time
	closed      bool

	prewarmTotal int       // pool_prewarm's count, for its log events
	started      time.Time // when the filler started

	// slots is the server's connection slots not reserved for superusers
	// (see serverSlots): keep-warm's connections stay within half of them.
	// 0: not read yet (the first dial reads it, alone); -1: no limit
	// (unknown, through PgBouncer, or keep-warm off).
	slots        int
	slotsProbing bool
	slotsLogged  bool

	// win, after an Evict until the store is full again: its refill dials
	// through a dial window (warm.go), growing while connects stay fast,
	// not all at once. nil otherwise.
	win *dialWindow
	// epoch counts the Evicts the store has seen; staleDialing is how many
	// dials in flight began before the last one: their connections are
	// evicted on arrival, so no Connect waits for them (await).
	epoch, staleDialing int

	wake chan struct{} // buffered 1: something changed, reconcile
	// changed is closed and replaced whenever a dial ends, to wake the
	// Connects waiting for one (await); waiters counts them.
	changed chan struct{}
	waiters int
	ctx     context.Context
	cancel  context.CancelFunc
	wg      sync.WaitGroup // run and every dial
}

type readyConn struct {
	w     driver.Conn // the wrapped connection
	base  *conn
	since time.Time // ready since
}

// unfit reports whether a ready connection must be dropped: its lifetime
// passed, or the server closed it or sent something unasked (a ready
// connection has never been used: nothing it says can be expected). It
// logs why.
func (rc *readyConn) unfit(now time.Time) bool {
	var why error
	if rc.base.evicted() {
		why = errEvicted
	} else if rc.base.expired(now) {
		why = errExpired
	} else {
		switch rc.base.peek() {
		case peekEmpty:
			return false
		case peekClosed:
			why = errBadConn("server closed the connection", nil)
		default:
			why = errBadConn("server sent data unasked", nil)
		}
	}
	rc.base.c.cfg.logDiscard("ready store", why)
	return true
}

const (
	keepWarmTick  = 500 * time.Millisecond // how often ready connections are checked
	expiryLead    = 2 * time.Second        // how early a replacement is dialled before an expiry
	backoffBase   = 100 * time.Millisecond
	backoffMax    = 5 * time.Second
	connectBase   = 50 * time.Millisecond // Connect's own retry backoff
	connectMaxGap = time.Second
	// readOnlyMaxGap bounds Connect's retry while it looks for a writer
	// after a demotion (writer.go).
	readOnlyMaxGap = 200 * time.Millisecond
)

// startReady starts the background filler when prewarm or keep-warm asks
// for it. prewarm is false on the warmpg.Open path, which warms blocking.
func (c *Connector) startReady(prewarm bool) {
	owed := 0
	if prewarm && c.cfg.prewarm {
		owed = c.cfg.idleConns()
	}
	if owed == 0 && !c.cfg.keepWarm() {
		return
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &ready{c: c, prewarmOwed: owed, prewarmTotal: owed, started: time.Now(),
		live: map[*conn]struct{}{}, wake: make(chan struct{}, 1),
		changed: make(chan struct{}), ctx: ctx, cancel: cancel, slots: -1}
	if c.cfg.keepWarm() && c.ownInner && !c.cfg.pgbouncer {
		r.slots = 0 // read at the first dial
	}
	c.ready = r
	r.reconcile() // start the first dials now, so a Connect right away can await them
	r.wg.Add(1)
	go r.run()
}

func (r *ready) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *ready) run() {
	defer r.wg.Done()
	tick := time.NewTicker(keepWarmTick)
	defer tick.Stop()
	retry := time.NewTimer(time.Hour)
	defer retry.Stop()
	for {
		if wait := r.reconcile(); wait > 0 {
			retry.Reset(wait)
		}
		select {
		case <-r.ctx.Done():
			return
		case <-r.wake:
		case <-tick.C:
		case <-retry.C:
		}
	}
}

// reconcile drops ready connections that died, expired or idled too long,
// and starts the dials the target asks for. It returns how long to wait
// before a backoff allows the next dial, or 0.
func (r *ready) reconcile() time.Duration {
	now := time.Now()
	cfg := &r.c.cfg
	var drop []*readyConn
	r.mu.Lock()
	keep := r.conns[:0]
	for i, rc := range r.conns {
		// Idle trimming keeps the newest pool_min_idle_conns.
		idleTooLong := cfg.maxConnIdleTime > 0 && now.Sub(rc.since) > cfg.maxConnIdleTime && len(r.conns)-i > cfg.minIdleConns
		if idleTooLong || rc.unfit(now) {
			drop = append(drop, rc)
			continue
		}
		keep = append(keep, rc)
	}
	r.conns = keep
	target := r.prewarmOwed + cfg.minIdleConns
	retiring, gone := 0, 0
	if cfg.keepWarm() {
		for lc := range r.live {
			switch {
			case lc.serverGone():
				gone++
			case lc.expiresWithin(now, expiryLead):
				retiring++
			}
		}
		// A connection database/sql holds whose server closed it (its
		// backend was terminated: a failover, an idle-session killer) will
		// be discarded at its next use, and that use then takes a ready
		// connection: its replacement is dialled now, as for an expiry,
		// not during the burst that finds it dead.
		target += retiring + gone
	}
	// The connections the server still has for this connector.
	alive := len(r.live) - gone
	need := target - len(r.conns) - r.dialing
	if cfg.maxConns > 0 {
		// The store and database/sql's connections stay within
		// pool_max_conns, except that replacements for connections about
		// to reach their lifetime are dialled before those retire: up to
		// pool_min_idle_conns over the limit, for at most expiryLead.
		// Connections the server closed do not count: they hold no
		// backend.
		overlap := min(retiring, cfg.minIdleConns)
		need = min(need, cfg.maxConns+overlap-alive-len(r.conns)-r.dialing)
	}
	switch {
	case r.slots == 0 && r.slotsProbing:
		need = 0
	case r.slots == 0:
		// The first connection reads the server's slots before keep-warm
		// dials beyond it; pool_prewarm's connections (the pool's own
		// idle count) are dialled together as usual.
		need = min(need, max(r.prewarmOwed, 1)-r.dialing)
	case r.slots > 0:
		// Keep-warm never takes the server's last slots: this
		// connector's connections — in use, ready and being dialled —
		// stay within half of those not reserved for superusers.
		allowed := r.slots/2 - alive - len(r.conns) - r.dialing
		if need > allowed && !r.slotsLogged {
			r.slotsLogged = true
			cfg.logEvent(slog.LevelWarn, "warmpg: keep-warm holds fewer ready connections than pool_min_idle_conns: it stays within half of the server's connection slots",
				"pool_min_idle_conns", cfg.minIdleConns, "server_slots", r.slots, "in_use", alive)
		}
		need = min(need, allowed)
	}
	var wait time.Duration
	limit := cfg.parallelism(max(need, 1))
	if r.win != nil {
		if len(r.conns) >= target && r.dialing == 0 {
			r.win = nil // refilled
		} else {
			limit = min(limit, r.win.size)
		}
	}
	if r.failures > 0 {
		limit = 1 // probe, one at a time
		if wait = r.retryAt.Sub(now); wait > 0 {
			need = 0
		}
	}
	need = min(need, limit-r.dialing)
	for range max(need, 0) {
		r.dialing++
		r.wg.Add(1)
		go r.dial(r.epoch)
	}
	r.mu.Unlock()
	for _, rc := range drop {
		rc.w.Close()
	}
	return max(wait, 0)
}

// dial opens one connection into the store; epoch is r.epoch when it
// began.
func (r *ready) dial(epoch int) {
	defer r.wg.Done()
	ctx, cancel := context.WithTimeout(context.WithValue(r.ctx, warmingKey{}, true), r.c.cfg.warmTimeout)
	began := time.Now()
	w, base, err := r.c.dialOnce(ctx)
	took := time.Since(began)
	cancel()
	r.mu.Lock()
	r.dialing--
	if epoch != r.epoch {
		r.staleDialing--
	}
	close(r.changed) // wake awaiting Connects: a connection, or one fewer dial to wait for
	r.changed = make(chan struct{})
	if err != nil && r.ctx.Err() != nil {
		r.mu.Unlock() // closing: not the server's fault
		return
	}
	if err != nil {
		// Dials that were in flight together fail together: one backoff
		// step for all of them.
		now := time.Now()
		stepped := !now.Before(r.retryAt)
		if stepped {
			r.failures++
			backoff := min(backoffBase<<min(r.failures-1, 16), backoffMax)
			r.retryAt = now.Add(backoff/2 + rand.N(backoff/2+1))
		}
		failures := r.failures
		r.mu.Unlock()
		if stepped && (failures == 1 || failures%10 == 0) {
			r.c.cfg.logEvent(slog.LevelWarn, "warmpg: background connect failed; backing off", "failures", failures, "error", err)
		}
		r.poke()
		return
	}
	r.failures = 0
	if r.win != nil {
		r.win.connected(began, took)
	}
	if r.slots == 0 && !r.slotsProbing {
		r.slotsProbing = true
		r.mu.Unlock()
		pctx, pcancel := context.WithTimeout(r.ctx, r.c.cfg.warmTimeout)
		slots := r.c.serverSlots(pctx, base)
		pcancel()
		r.mu.Lock()
		r.slots, r.slotsProbing = slots, false
	}
	if r.prewarmOwed > 0 {
		r.prewarmOwed--
		r.logPrewarm()
	}
	closed := r.closed
	if !closed {
		r.conns = append(r.conns, &readyConn{w: w, base: base, since: time.Now()})
	}
	r.mu.Unlock()
	if closed {
		w.Close()
	}
	r.poke()
}

// slotsSQL reads the connection slots an ordinary role may use:
// max_connections less superuser_reserved_connections and (PostgreSQL 16
// and later) reserved_connections.
const slotsSQL = "select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int" +
	" - coalesce(current_setting('reserved_connections', true)::int, 0)"

// serverSlots reads slotsSQL on a new connection (no statement of the
// application's has run on it; lib/pq's watchdog bounds it), or returns
// -1 — no limit — if it cannot.
func (c *Connector) serverSlots(ctx context.Context, base *conn) int {
	rows, err := base.QueryContext(ctx, slotsSQL, nil)
	if err != nil {
		c.cfg.logEvent(slog.LevelWarn, "warmpg: keep-warm could not read the server's connection slots; not limited by them", "error", err)
		return -1
	}
	defer rows.Close()
	dest := make([]driver.Value, 1)
	if err := rows.Next(dest); err != nil {
		return -1
	}
	switch n := dest[0].(type) {
	case int64:
		return max(int(n), 1)
	case int32:
		return max(int(n), 1)
	}
	return -1
}

// logPrewarm logs the background prewarm's progress after a connection
// opened (r.mu held): each tenth at Debug, the end at Info.
func (r *ready) logPrewarm() {
	done := r.prewarmTotal - r.prewarmOwed
	cfg := &r.c.cfg
	elapsed := time.Since(r.started)
	switch {
	case r.prewarmOwed == 0:
		cfg.logEvent(slog.LevelInfo, fmt.Sprintf("warmpg: prewarmed %d/%d in %s", done, r.prewarmTotal, elapsed.Round(time.Microsecond)),
			"warmed", done, "requested", r.prewarmTotal, "elapsed", elapsed)
	case progressStep(done, r.prewarmTotal):
		cfg.logEvent(slog.LevelDebug, "warmpg: prewarming", "warmed", done, "requested", r.prewarmTotal, "elapsed", elapsed)
	}
}

// progressStep reports whether done of total is the first count at or past
// a tenth of total (so a progress event comes about ten times per warm).
func progressStep(done, total int) bool {
	step := max(total/10, 1)
	return done%step == 0
}

// take hands out the oldest healthy ready connection, or nil. With
// keep-warm on it counts the connection as live in the same step, so the
// filler never sees it in neither place.
func (r *ready) take() driver.Conn {
	now := time.Now()
	var drop []*readyConn
	var got *readyConn
	r.mu.Lock()
	for len(r.conns) > 0 {
		rc := r.conns[0]
		r.conns[0] = nil // let the array drop it
		r.conns = r.conns[1:]
		if rc.unfit(now) {
			drop = append(drop, rc)
			continue
		}
		got = rc
		if r.c.cfg.keepWarm() {
			r.live[rc.base] = struct{}{}
		}
		break
	}
	r.mu.Unlock()
	for _, rc := range drop {
		rc.w.Close()
	}
	r.poke()
	if got == nil {
		return nil
	}
	r.c.stats.readyHits.Add(1)
	return got.w
}

// await waits for a dial already in flight instead of starting another:
// right after open, the prewarm's dials finish sooner than a new one would.
// It waits only while there are more dials in flight than Connects waiting
// for them, and returns nil when there is nothing (left) to wait for.
func (r *ready) await(ctx context.Context) driver.Conn {
	r.mu.Lock()
	if r.dialing-r.staleDialing <= r.waiters || r.failures > 0 {
		r.mu.Unlock()
		return nil
	}
	r.waiters++
	defer func() {
		r.mu.Lock()
		r.waiters--
		r.mu.Unlock()
	}()
	for {
		ch := r.changed
		r.mu.Unlock()
		select {
		case <-ctx.Done():
			return nil
		case <-r.ctx.Done():
			return nil
		case <-ch:
		}
		if w := r.take(); w != nil {
			return w
		}
		r.mu.Lock()
		if r.dialing-r.staleDialing < r.waiters || r.failures > 0 {
			r.mu.Unlock()
			return nil
		}
	}
}

func (r *ready) track(c *conn) {
	r.mu.Lock()
	r.live[c] = struct{}{}
	r.mu.Unlock()
}

func (r *ready) untrack(c *conn) {
	r.mu.Lock()
	delete(r.live, c)
	r.mu.Unlock()
	r.poke()
}

// close stops the filler, waits for every dial, and closes every ready
// connection.
func (r *ready) close() {
	r.mu.Lock()
	r.closed = true
	r.mu.Unlock()
	r.cancel()
	r.wg.Wait()
	r.mu.Lock()
	conns := r.conns
	r.conns = nil
	r.mu.Unlock()
	for _, rc := range conns {
		rc.w.Close()
	}
}

// count returns the ready connections and dials in flight (for tests).
func (r *ready) count() (ready, dialing int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.conns), r.dialing
}

// dialOnce opens and wraps one connection through the inner connector.
func (c *Connector) dialOnce(ctx context.Context) (driver.Conn, *conn, error) {
	slot := &socketSlot{}
	gen := c.holds.evictGen.Load() // a connect begun before an Evict is evicted
	sctx := context.WithValue(ctx, socketSlotKey{}, slot)
	var ic driver.Conn
	var host *hostEntry
	var err error
	if hs := c.cfg.hosts; hs != nil {
		ic, host, err = hs.connect(sctx, c.inner.Connect) // hosts.go
	} else {
		ic, err = c.inner.Connect(sctx)
	}
	if err != nil {
		c.stats.connectErrors.Add(1)
		return nil, nil, err
	}
	c.stats.connects.Add(1)
	w := wrapConn(ic, c, slot.nc)
	baseConn(w).host.Store(host)
	baseConn(w).hold.gen = gen
	// (w.Close, not ic.Close, on the way out: wrapConn registered w.)
	if err := c.checkNewWriter(ctx, baseConn(w)); err != nil {
		w.Close()
		return nil, nil, err
	}
	if err := baseConn(w).captureSession(ctx); err != nil {
		w.Close()
		return nil, nil, err
	}
	if err := c.warmStatements(ctx, baseConn(w)); err != nil {
		w.Close()
		return nil, nil, err
	}
	return w, baseConn(w), nil
}

// dial opens a connection for Connect, retrying errors that say the server
// is not accepting connections yet (refused, 57P03 starting up), with a
// jittered exponential backoff, within ctx and pool_connect_retry_timeout.
func (c *Connector) dial(ctx context.Context) (driver.Conn, error) {
	deadline := time.Now().Add(c.cfg.connectRetry)
	gap := connectBase
	var refused error // the last transient failure, while retrying
	for {
		w, _, err := c.dialOnce(ctx)
		if err != nil && refused != nil {
			if cerr := ctxEnded(ctx); cerr != nil {
				// The context ended during a retry's dial: say why it
				// was retrying, too.
				return nil, fmt.Errorf("%w (%w)", cerr, refused)
			}
		}
		readOnly := errors.Is(err, errServerReadOnly)
		if err == nil || !(readOnly || transientConnectError(err)) || ctx.Err() != nil {
			return w, err
		}
		refused = err
		if readOnly {
			// A demoted writer's pool looks for a writer (writer.go):
			// often, since a writer that answers again should be found
			// at once.
			gap = min(gap, readOnlyMaxGap)
		}
		sleep := gap/2 + rand.N(gap/2+1)
		if time.Now().Add(sleep).After(deadline) {
			if readOnly {
				// No writer within pool_connect_retry_timeout: a
				// reader, as the wrapped driver would have given at once.
				w, _, err = c.dialOnce(context.WithValue(ctx, acceptReaderKey{}, true))
				return w, err
			}
			return nil, err
		}
		c.cfg.logEvent(slog.LevelDebug, "warmpg: connect failed; retrying", "error", err, "wait", sleep)
		t := time.NewTimer(sleep)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, err
		case <-t.C:
		}
		gap = min(2*gap, connectMaxGap)
	}
}

// ctxEnded is ctx's error, or context.DeadlineExceeded once its deadline
// has passed (a socket's deadline can fire before the context's timer).
func ctxEnded(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if dl, ok := ctx.Deadline(); ok && !time.Now().Before(dl) {
		return context.DeadlineExceeded
	}
	return nil
}

// transientConnectError reports whether a connect failed because the server
// is not accepting connections yet: refused, reset or closed before the
// session started (a server shutting down resets pending connects; a proxy
// in front of a stopped server closes them), or SQLSTATE 57P03 (the
// database system is starting up / shutting down / in recovery). A failed
// connect has run nothing, so retrying it is always safe.
func transientConnectError(err error) bool {
	if errors.Is(err, syscall.ECONNREFUSED) || errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return true
	}
	return sqlState(err) == "57P03"
}

// sqlState returns the SQLSTATE of a server error, as pgx's
// *pgconn.PgError and lib/pq's *pq.Error both say it, or "".
func sqlState(err error) string {
	var coded interface{ SQLState() string }
	if errors.As(err, &coded) {
		return coded.SQLState()
	}
	return ""
}

// expired reports whether the connection's own, jittered lifetime has
// passed, or an Evict retired it (evict.go).
func (c *conn) expired(now time.Time) bool {
	return !c.expiresAt.IsZero() && !now.Before(c.expiresAt) || c.evicted()
}

// expiredNow is expired(time.Now()), without the clock read when no
// lifetime is set (the hot path of IsValid and ResetSession).
func (c *conn) expiredNow() bool {
	return !c.expiresAt.IsZero() && !time.Now().Before(c.expiresAt) || c.evicted()
}

// serverGone reports, without I/O, whether the server closed c's socket
// (see peerClosed); false when warmpg cannot see the socket.
func (c *conn) serverGone() bool { return c.raw != nil && peerClosed(c.raw) }

func (c *conn) expiresWithin(now time.Time, d time.Duration) bool {
	return !c.expiresAt.IsZero() && c.expiresAt.Sub(now) < d
}

// setLifetime draws the connection's expiry: the lifetime less a random
// part of the jitter, so that connections opened together spread out, and
// none outlives pool_max_conn_lifetime.
func (c *conn) setLifetime(now time.Time) {
	lt := c.c.cfg.maxConnLifetime
	if lt <= 0 {
		return
	}
	var j time.Duration
	if jit := c.c.cfg.jitter(); jit > 0 {
		j = rand.N(jit)
	}
	c.expiresAt = now.Add(lt - j)
}
