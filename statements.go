package warmpg

import (
	"container/heap"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// Statement warming (docs/statements.md).
//
// In pgx's default mode (cache_statement) the first execution of a
// parameterized query on a connection costs two round trips: Parse and
// Describe, then Bind and Execute. warmpg learns each connector's hot
// statements (hotStmts) and takes declared ones (WithWarmStatements); every
// connection it opens prepares them into pgx's statement cache before it is
// handed out, all in one pipelined round trip (warmStatements), so that
// their first execution costs one.
//
// pgx has no public way to fill its statement cache. SendBatch in
// cache_statement mode prepares every statement of the batch it has not
// cached in one pipeline, puts them in the cache, and only then encodes
// each query's arguments (pgx v5.12 conn.go, sendBatchExtendedWithDescription):
// an encoding error returns before any Bind or Execute is written. The
// batch warmStatements sends gives its first query more arguments than any
// statement can have parameters (65536; the protocol counts them in 16 bits),
// so pgx prepares and caches every statement and executes none.
// TestWarmStatementsExecuteNothing holds pgx to it, against a real server:
// no Bind or Execute sent, a warmed INSERT inserted nothing, and the first
// execution of each warmed statement is one round trip.

// WithWarmStatementLimit sets the most statements each new connection
// prepares ahead — those WithWarmStatements declares, then the ones this
// connector ran most (pool_warm_statements; default DefaultWarmStatements, 0
// to MaxWarmStatements; 0: off). Only on pgx in its default
// default_query_exec_mode=cache_statement, and not with pool_pgbouncer.
func WithWarmStatementLimit(k int) Option {
	return intOption("pool_warm_statements", bitWarmStatements, k, 0, MaxWarmStatements, func(c *config) *int { return &c.warmStmts })
}

// WithWarmStatements declares statements every new connection prepares
// before it is handed out, before those warmpg learned, so that their
// first execution costs one round trip, not two (docs/statements.md). The
// text must be exactly what the application runs, with $1-style
// parameters: pgx sends a statement without arguments by the simple
// protocol, which prepares nothing. Declared statements count toward
// pool_warm_statements. A statement that fails to prepare (a table not
// there yet) is skipped on that connection and counted in
// Counters.StatementsWarmFailed; it does not fail the connect. Give it to
// Open, OpenConnector or NewConnector: WarmDB's options do not change how
// the connector opens connections.
func WithWarmStatements(sql ...string) Option {
	return func(c *config) {
		for _, s := range sql {
			if strings.TrimSpace(s) == "" {
				c.errs = append(c.errs, errors.New("warmpg: invalid option WithWarmStatements: an empty statement (want the SQL text the application runs)"))
				return
			}
			if !slices.Contains(c.warmDeclared, s) {
				c.warmDeclared = append(c.warmDeclared, s)
			}
		}
	}
}

func (c *config) validateWarmStatements() error {
	if n := len(c.warmDeclared); n > c.warmStmts {
		return fmt.Errorf("warmpg: WithWarmStatements declares %d statements but pool_warm_statements=%d warms at most %d per connection (want pool_warm_statements from %d to %d)",
			n, c.warmStmts, c.warmStmts, n, MaxWarmStatements)
	}
	return nil
}

// Learning: a sample of the parameterized statements run directly on the
// connector's pgx connections feeds a Space-Saving counter (Metwally et
// al.), which keeps the most frequent of a stream in bounded memory.
const (
	// hotSample: one execution in hotSample is counted, so the hot path
	// pays one random number, and the lock one time in hotSample.
	hotSample = 16
	// hotMinSamples: a statement is warmed once sampled this often
	// (guaranteed, net of Space-Saving's overestimate), so a one-off
	// statement is not.
	hotMinSamples = 2
	// hotMaxSQL: longer statements are not learned (generated ones, with
	// long IN lists, rarely repeat); they can still be declared.
	hotMaxSQL = 8 << 10
	// hotSlots per warmed statement: the counter tracks hotSlots×K.
	hotSlots = 4
	// hotAgeEvery: after hotAgeEvery×slots samples every count halves, so
	// that statements that stopped running make room.
	hotAgeEvery = 64
)

// hotStmts is a Space-Saving counter of statement texts.
type hotStmts struct {
	mu      sync.Mutex
	slots   int
	byText  map[string]*hotEntry
	h       hotHeap // least count first
	samples int
}

type hotEntry struct {
	sql        string
	count, err int // estimated count; by how much it may overestimate
	i          int // index in h
}

func newHotStmts(k int) *hotStmts {
	n := max(hotSlots*k, 16)
	return &hotStmts{slots: n, byText: make(map[string]*hotEntry, n)}
}

// observe counts one sampled execution of sql.
func (h *hotStmts) observe(sql string) {
	if len(sql) > hotMaxSQL {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if e := h.byText[sql]; e != nil {
		e.count++
		heap.Fix(&h.h, e.i)
	} else if len(h.h) < h.slots {
		e = &hotEntry{sql: sql, count: 1}
		h.byText[sql] = e
		heap.Push(&h.h, e)
	} else {
		// Replace the least counted: the newcomer may have run up to that
		// often unseen.
		e = h.h[0]
		delete(h.byText, e.sql)
		e.sql, e.err = sql, e.count
		e.count++
		h.byText[sql] = e
		heap.Fix(&h.h, 0)
	}
	if h.samples++; h.samples >= hotAgeEvery*h.slots {
		h.samples = 0
		for _, e := range h.h { // halving keeps the heap's order
			e.count /= 2
			e.err /= 2
		}
	}
}

// top returns up to k statements sampled at least hotMinSamples times
// (net of the overestimate), most counted first.
func (h *hotStmts) top(k int) []string {
	h.mu.Lock()
	es := make([]*hotEntry, 0, len(h.h))
	for _, e := range h.h {
		if e.count-e.err >= hotMinSamples {
			es = append(es, e)
		}
	}
	slices.SortFunc(es, func(a, b *hotEntry) int { return b.count - a.count })
	out := make([]string, 0, min(k, len(es)))
	for _, e := range es[:min(k, len(es))] {
		out = append(out, e.sql)
	}
	h.mu.Unlock()
	return out
}

// forget drops sql (it failed to prepare).
func (h *hotStmts) forget(sql string) {
	h.mu.Lock()
	if e := h.byText[sql]; e != nil {
		delete(h.byText, sql)
		heap.Remove(&h.h, e.i)
	}
	h.mu.Unlock()
}

type hotHeap []*hotEntry

func (h hotHeap) Len() int           { return len(h) }
func (h hotHeap) Less(i, j int) bool { return h[i].count < h[j].count }
func (h hotHeap) Swap(i, j int) {
	h[i], h[j] = h[j], h[i]
	h[i].i, h[j].i = i, j
}
func (h *hotHeap) Push(x any) {
	e := x.(*hotEntry)
	e.i = len(*h)
	*h = append(*h, e)
}
func (h *hotHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	old[len(old)-1] = nil
	*h = old[:len(old)-1]
	return e
}

// warmCap returns how many statements a new connection c may warm: 0
// unless c is pgx in cache_statement mode with a statement cache, outside
// pool_pgbouncer, on a socket warmpg's wire layer sits on (warming's
// timeouts travel through it: a pgx connector given to NewConnector has
// none, and warms nothing); at most pgx's statement cache capacity (a statement
// the cache evicts again is deallocated at the next query, a round trip).
func (c *conn) warmCap() int {
	cfg := &c.c.cfg
	if c.pgx == nil || c.bc == nil || cfg.warmStmts == 0 || cfg.pgbouncer || c.c.warmOff.Load() {
		return 0
	}
	pc := c.pgx.Conn().Config()
	if pc.DefaultQueryExecMode != pgx.QueryExecModeCacheStatement || pc.StatementCacheCapacity <= 0 {
		return 0
	}
	return min(cfg.warmStmts, pc.StatementCacheCapacity)
}

// learn counts, one time in hotSample, a statement run directly on c
// with arguments (without, pgx sends it by the simple protocol and caches
// nothing).
func (c *conn) learn(query string, args int) {
	// learns: set at connect, from warmCap and c.c.hot.
	if c.learns && args > 0 && rand.Uint32()%hotSample == 0 {
		c.c.hot.observe(query)
	}
}

// warmList returns the statements a new connection warms, at most k:
// the declared ones, then the learned ones, most run first, but for those
// a lock stopped lately (lockedFor).
func (c *Connector) warmList(k int) []string {
	list := c.cfg.warmDeclared[:min(k, len(c.cfg.warmDeclared)):min(k, len(c.cfg.warmDeclared))]
	if c.lockedN.Load() > 0 {
		list = c.unlocked(slices.Clone(c.cfg.warmDeclared))
		list = list[:min(k, len(list)):min(k, len(list))]
	}
	if c.hot == nil || len(list) >= k {
		return list
	}
	hot := c.hot.top(k + int(c.lockedN.Load()))
	if c.lockedN.Load() > 0 {
		hot = c.unlocked(hot)
	}
	for _, s := range hot {
		if len(list) >= k {
			break
		}
		if !slices.Contains(c.cfg.warmDeclared, s) {
			list = append(list, s)
		}
	}
	return list
}

// lockedFor leaves sql out of warming for d: a lock stopped it.
func (c *Connector) lockedFor(sql string, d time.Duration) {
	c.lockMu.Lock()
	defer c.lockMu.Unlock()
	if c.locked == nil {
		c.locked = make(map[string]time.Time)
	}
	c.locked[sql] = time.Now().Add(d)
	c.lockedN.Store(int32(len(c.locked)))
}

// unlocked returns list without the statements a lock stopped lately, and
// forgets the locks whose time is up.
func (c *Connector) unlocked(list []string) []string {
	c.lockMu.Lock()
	defer c.lockMu.Unlock()
	now := time.Now()
	for s, until := range c.locked {
		if now.After(until) {
			delete(c.locked, s)
		}
	}
	c.lockedN.Store(int32(len(c.locked)))
	return slices.DeleteFunc(list, func(s string) bool { _, ok := c.locked[s]; return ok })
}

// impossibleArgs has one more argument than a statement can have
// parameters; allocated (1 MiB) at the first warming. pgx only counts it.
var impossibleArgs = sync.OnceValue(func() []any { return make([]any, 1<<16) })

// errWarmUnexpected: pgx answered the warming batch in a way its v5.12
// code does not (see above); warming stops for the connector.
var errWarmUnexpected = errors.New("warmpg: statement warming: pgx did not answer as expected; warming is off for this connector")

// Warming never waits on a lock or a slow server for long (issue 23): Parse
// takes the locks of the tables a statement names, so a statement on a
// table a migration holds (an ALTER TABLE running or queued, a plain CREATE
// INDEX) would hold up the connect — with no deadline at all for
// database/sql's opener, prewarm and keep-warm. Each warming round trip
// carries, in the same write and the same implicit transaction (it ends at
// the batch's Sync), a guard that sets, for that transaction only,
// lock_timeout to warmLockTimeout and statement_timeout to what is left of
// warmBudget; the server enforces both. A statement that hits either is
// skipped on this connection and kept for the next ones.
const (
	// warmLockTimeout: a lock not granted within it is held by someone
	// else (granting a free lock takes microseconds).
	warmLockTimeout = time.Millisecond
	// warmBudget bounds a connection's warming, every round trip included.
	warmBudget = 500 * time.Millisecond
	// warmLockCooldown: how long the connections after one that met a
	// lock leave the locked statement out (they warm the rest); then
	// they try it again.
	warmLockCooldown = time.Second
)

// SQLSTATEs of the guard's timeouts.
const (
	codeLockNotAvailable = "55P03" // lock_timeout
	codeQueryCanceled    = "57014" // statement_timeout
)

// warmGuardSQL sets warming's timeouts for the implicit transaction that
// ends at the round trip's Sync; left is what remains of warmBudget.
func warmGuardSQL(left time.Duration) string {
	return fmt.Sprintf("select set_config('lock_timeout', '%dms', true), set_config('statement_timeout', '%dms', true)",
		warmLockTimeout.Milliseconds(), max(left.Milliseconds(), 1))
}

// warmStatements prepares, on the new connection b, the statements
// warmList names, in one pipelined round trip, and executes none. A
// statement the server refuses to prepare is skipped (and, if learned,
// forgotten): the rest are prepared again in one more round trip (two
// when some had been prepared before it: pgx deallocates them first). A
// statement stopped by warming's lock_timeout is skipped but not forgotten,
// and statement_timeout (warmBudget) ends warming on b. It returns an error
// only when the connection broke (or ctx ended, which breaks it): the
// connect fails as any other would.
func (c *Connector) warmStatements(ctx context.Context, b *conn) error {
	k := b.warmCap()
	if k == 0 {
		return nil
	}
	list := c.warmList(k)
	pc := b.pgx.Conn()
	deadline := time.Now().Add(warmBudget)
	defer b.bc.disarm()
	for len(list) > 0 {
		left := time.Until(deadline)
		if left <= 0 {
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			return nil
		}
		batch := &pgx.Batch{}
		batch.Queue(list[0], impossibleArgs()...)
		for _, s := range list[1:] {
			batch.Queue(s)
		}
		b.bc.armGuard(warmGuardSQL(left))
		err := pc.SendBatch(ctx, batch).Close()
		guard, _ := b.bc.state()
		b.bc.disarm()
		var pre pgx.ErrPreprocessingBatch
		var pgErr *pgconn.PgError
		switch {
		case pc.IsClosed():
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			if err == nil {
				err = errors.New("warmpg: connection closed while preparing statements")
			}
			return err
		case guard != beginDone:
			// The guard did not run (the server refused it): nothing
			// is warmed on this connection without it.
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			c.cfg.logEvent(slog.LevelDebug, "warmpg: statements not warmed on a new connection", "error", err)
			return nil
		case errors.As(err, &pre) && pre.SQL() == list[0] && !errors.As(err, &pgErr) &&
			strings.Contains(err.Error(), "mismatched param and argument count"):
			// Prepared, cached, and nothing executed.
			c.stats.stmtsWarmed.Add(int64(len(list)))
			b.warmed = list
			return nil
		case errors.As(err, &pre) && errors.As(err, &pgErr) && slices.Contains(list, pre.SQL()) &&
			(pgErr.Code == codeLockNotAvailable || pgErr.Code == codeQueryCanceled) && pc.PgConn().TxStatus() == 'I':
			// A lock someone else holds, or the budget spent: not the
			// statement's fault, and not forgotten. This connection
			// warms no more: pgx dropped what the batch prepared, and
			// preparing it again costs two round trips (a deallocation,
			// then the batch), more than the connect can spare. The
			// connections of the next warmLockCooldown warm the rest,
			// then try the locked statement again.
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			c.cfg.logEvent(slog.LevelDebug, "warmpg: a statement waited too long to prepare; warming stopped on this connection", "error", err)
			if pgErr.Code == codeLockNotAvailable {
				c.lockedFor(pre.SQL(), warmLockCooldown)
			}
			return nil
		case errors.As(err, &pre) && errors.As(err, &pgErr) && slices.Contains(list, pre.SQL()) &&
			pc.PgConn().TxStatus() == 'I':
			bad := pre.SQL()
			c.stats.stmtsWarmFailed.Add(1)
			if c.hot != nil && !slices.Contains(c.cfg.warmDeclared, bad) {
				c.hot.forget(bad)
			}
			c.cfg.logEvent(slog.LevelDebug, "warmpg: a statement failed to prepare; skipped", "error", err)
			list = slices.DeleteFunc(slices.Clone(list), func(s string) bool { return s == bad })
		case err != nil && !errors.As(err, &pre) && errors.As(err, &pgErr):
			// The server refused something else (pgx deallocating
			// statements it had invalidated): this connection warms no
			// more, the next ones will try again.
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			c.cfg.logEvent(slog.LevelDebug, "warmpg: statements not warmed on a new connection", "error", err)
			return nil
		default:
			// No error (pgx ran the batch) or one pgx v5.12 does not
			// give: stop warming on this connector.
			c.stats.stmtsWarmFailed.Add(int64(len(list)))
			if !c.warmOff.Swap(true) {
				c.cfg.logEvent(slog.LevelWarn, errWarmUnexpected.Error(), "error", err)
			}
			return nil
		}
	}
	return nil
}

// Stale warmed statements. A statement warmed on a connection is prepared
// there before the application runs it: a migration that changes its
// result columns makes it fail where plain pgx, which would prepare it at
// its first use, would not. Where the failure can be resent (replan.go)
// nothing is lost; inside a transaction, after a statement that ran, it
// cannot. So the first connection that meets the error tells the
// connector (markStale), and every other connection that warmed the
// statement drops its copy from pgx's cache before its next statement
// (dropStale): pgx prepares it again at its use, as plain pgx would have.

// staleKeep bounds the log of stale statements (the oldest go first).
const staleKeep = 256

// markStale records that sql's result columns changed under a prepared
// copy (the server said so on some connection).
func (c *Connector) markStale(sql string) {
	c.staleMu.Lock()
	defer c.staleMu.Unlock()
	gen := c.staleGen.Load() + 1
	if len(c.staleLog) >= staleKeep {
		c.staleLog = slices.Delete(c.staleLog, 0, len(c.staleLog)-staleKeep+1)
	}
	c.staleLog = append(c.staleLog, staleEntry{sql: sql, gen: gen})
	c.staleGen.Store(gen)
}

type staleEntry struct {
	sql string
	gen uint64
}

// noteStale runs before each statement on a connection that warmed
// statements: one atomic load, unless a statement went stale since.
func (c *conn) noteStale(ctx context.Context) {
	if c.warmed != nil && c.c.staleGen.Load() != c.staleSeen {
		c.dropStale(ctx)
	}
}

// dropStale drops from pgx's statement cache the statements c warmed that
// went stale since c last looked (or since c connected). pgx has no call
// that drops one entry: an execution it refuses before sending anything
// (more arguments than any statement has) makes it drop the statement
// from its cache, and deallocate it at its next call. A statement older
// than the log's memory is dropped all the same.
func (c *conn) dropStale(ctx context.Context) {
	c.c.staleMu.Lock()
	gen := c.c.staleGen.Load()
	var stale []string
	lost := len(c.c.staleLog) > 0 && c.c.staleLog[0].gen > c.staleSeen+1
	for _, e := range c.c.staleLog {
		if e.gen > c.staleSeen && slices.Contains(c.warmed, e.sql) {
			stale = append(stale, e.sql)
		}
	}
	c.c.staleMu.Unlock()
	c.staleSeen = gen
	if lost {
		stale = c.warmed
	}
	pc := c.pgx.Conn()
	for _, q := range stale {
		_, _ = pc.Exec(ctx, q, impossibleArgs()...)
	}
	c.warmed = slices.DeleteFunc(slices.Clone(c.warmed), func(s string) bool { return slices.Contains(stale, s) })
	if len(c.warmed) == 0 {
		c.warmed = nil
	}
}

// warmState is the Connector's statement warming state.
type warmState struct {
	hot     *hotStmts   // nil: nothing learned (off, or pool_pgbouncer)
	warmOff atomic.Bool // pgx answered a warming batch unexpectedly
	// locked: statements a lock stopped, left out until the time given
	// (lockedFor); lockedN is its size, for the fast path.
	lockMu  sync.Mutex
	locked  map[string]time.Time
	lockedN atomic.Int32
	// staleLog: statements whose prepared copies went stale (markStale),
	// each with the staleGen it set.
	staleMu  sync.Mutex
	staleLog []staleEntry
	staleGen atomic.Uint64
}

// initWarm sets up learning when statement warming is on.
func (c *Connector) initWarm() {
	if c.cfg.warmStmts > 0 && !c.cfg.pgbouncer {
		c.hot = newHotStmts(c.cfg.warmStmts)
	}
}
