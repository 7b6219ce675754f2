//go:build linux

package warmpg_test

// The fault suite behind RELIABILITY.md: what a pool sees when its server
// restarts, is stopped, kills its backends, hangs, disappears behind a
// black hole, or runs out of connection slots; and whether writes survive
// a restart exactly once. Every test runs against its own throwaway
// cluster (or, for the black hole, a proxy), is bounded in time and in
// work, and prints its rows of the tables in RELIABILITY.md with t.Logf:
//
//	go test -race -count=1 -run 'TestFault' -v .
//
// TestSoak (make soak) runs a random sequence of these faults for as long
// as -warmpg.soak says.

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/sys/unix"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

var (
	soakFor  = flag.Duration("warmpg.soak", 0, "run TestSoak for this long (at most 3m; make soak runs 150s); 0 skips it")
	soakSeed = flag.Uint64("warmpg.soak.seed", 0, "seed of TestSoak's fault sequence, to replay a run (0: a new seed)")
)

const (
	faultPoolSize = 8
	// Load: each client waits this long between queries (after a failure,
	// faultBackoff), and stops after faultMaxOps queries whatever happens.
	faultThink   = 10 * time.Millisecond
	faultBackoff = 20 * time.Millisecond
	faultMaxOps  = 3000
	// faultHangDeadline is the context deadline of queries against a hung
	// server; hangMargin how much later than it they may return on this
	// noisy 2-core machine.
	faultHangDeadline = 2 * time.Second
	faultHangMargin   = time.Second
)

var faultQuietLog = slog.New(slog.DiscardHandler)

// ---------------------------------------------------------------------------
// Servers: a private cluster, freezing it with SIGSTOP, killing backends.

// faultCluster starts a private cluster that the test may restart, stop
// and freeze; it is thawed and removed when the test ends.
func faultCluster(t *testing.T, ctx context.Context, opts ...pgtest.Option) *pgtest.Server {
	t.Helper()
	srv := pgtest.Own(t, ctx, opts...)
	// Cleanups run last first: thaw a server the test left frozen before
	// pgtest.Own's cleanup stops it.
	t.Cleanup(func() { faultThaw(srv) })
	return srv
}

// faultServerPIDs returns the postmaster's PID followed by its children's
// (backends and background processes), read from /proc.
func faultServerPIDs(srv *pgtest.Server) []int {
	pm := srv.PostmasterPID()
	if pm <= 0 {
		return nil
	}
	pids := []int{pm}
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 || i+2 >= len(s) {
			continue
		}
		if f := strings.Fields(s[i+2:]); len(f) > 1 && f[1] == strconv.Itoa(pm) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// faultFreeze stops the server with SIGSTOP: the postmaster first, so that it
// forks nothing more, then every child. The kernel still completes TCP
// handshakes on the listening socket and buffers what clients send: to a
// client the server is up and never answers.
func faultFreeze(t *testing.T, srv *pgtest.Server) {
	t.Helper()
	pids := faultServerPIDs(srv)
	if len(pids) == 0 {
		t.Fatal("no postmaster to freeze")
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil && !errors.Is(err, syscall.ESRCH) {
			t.Fatalf("SIGSTOP %d: %v", pid, err)
		}
	}
	// Children forked between the listing and the postmaster's stop.
	for _, pid := range faultServerPIDs(srv) {
		_ = syscall.Kill(pid, syscall.SIGSTOP)
	}
}

// faultThaw sends SIGCONT to the postmaster and every child.
func faultThaw(srv *pgtest.Server) {
	for _, pid := range faultServerPIDs(srv) {
		_ = syscall.Kill(pid, syscall.SIGCONT)
	}
}

// faultTerminate ends every client backend of the given application names
// (pg_terminate_backend) and waits until those backends are gone; new ones
// a pool opens meanwhile stay. It returns how many it signalled.
func faultTerminate(ctx context.Context, srv *pgtest.Server, apps []string) (int, error) {
	conn, err := srv.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer conn.Close(context.Background())
	// A probe connection, terminated last, tells when the kernel has
	// delivered what the terminated backends sent (a FATAL, then the end of
	// the stream): a backend gone from pg_stat_activity has sent them, but
	// on a loaded machine loopback delivery can lag (the receive path runs
	// in deferred softirq work), and until it arrives no client can see it.
	// The scenarios model backends terminated while the pool was idle, not
	// a termination racing the next query.
	probe, err := srv.Connect(ctx)
	if err != nil {
		return 0, err
	}
	defer probe.Close(context.Background())
	var pids []int32
	if err := conn.QueryRow(ctx, `select coalesce(array_agg(pid), '{}') from pg_stat_activity
		where backend_type = 'client backend' and application_name = any($1) and pid <> pg_backend_pid()`, apps).Scan(&pids); err != nil {
		return 0, err
	}
	if len(pids) > 0 {
		pids = append(pids, int32(probe.PgConn().PID()))
		defer func() {
			nc := probe.PgConn().Conn()
			nc.SetReadDeadline(time.Now().Add(10 * time.Second))
			io.ReadAll(nc) // the probe's FATAL, then EOF
			time.Sleep(50 * time.Millisecond)
		}()
	}
	var n int
	if err := conn.QueryRow(ctx, "select count(*) filter (where pg_terminate_backend(p)) from unnest($1::int[]) p", pids).Scan(&n); err != nil {
		return 0, err
	}
	for {
		var left int
		if err := conn.QueryRow(ctx, "select count(*) from pg_stat_activity where pid = any($1)", pids).Scan(&left); err != nil {
			return n, err
		}
		if left == 0 {
			return n, nil
		}
		select {
		case <-ctx.Done():
			return n, fmt.Errorf("%d terminated backends still there: %w", left, ctx.Err())
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// ---------------------------------------------------------------------------
// Pools under test.

// faultPool is one way of opening a pool of faultPoolSize connections.
type faultPool struct {
	name    string   // short label
	setting string   // the table's "setting" column
	params  []string // DSN parameters for warmpg.Open; unused for the control
	control bool     // plain pgx stdlib (sql.Open("pgx")), pgx's defaults
	// safe: must fail no query once the server is back (asserted).
	safe bool
}

var faultPools = []faultPool{
	{name: "check", setting: "`pool_reset=check` (default)", params: []string{"pool_reset=check"}, safe: true},
	{name: "ping", setting: "`pool_reset=ping`", params: []string{"pool_reset=ping"}, safe: true},
	{name: "rollback", setting: "`pool_reset=rollback`", params: []string{"pool_reset=rollback"}, safe: true},
	{name: "discard", setting: "`pool_reset=discard`", params: []string{"pool_reset=discard"}, safe: true},
	{name: "none", setting: "`pool_reset=none`", params: []string{"pool_reset=none"}},
	{name: "check-pq", setting: "`pool_reset=check`, `pool_backend=pq`", params: []string{"pool_reset=check", "pool_backend=pq"}, safe: true},
	{name: "pgx", setting: "plain pgx stdlib (control)", control: true},
}

// faultApp returns a unique application_name short enough that the server
// keeps all of it (63 bytes).
func faultApp(pool string) string { return fmt.Sprintf("fault%d_%s", appSeq.Add(1), pool) }

func faultPoolNamed(name string) faultPool {
	for _, p := range faultPools {
		if p.name == name {
			return p
		}
	}
	panic("no fault pool " + name)
}

// open opens the pool against srv (as srv's user) with application_name
// app, and warms all of its connections.
func (p faultPool) open(ctx context.Context, srv *pgtest.Server, app string) (*sql.DB, error) {
	var db *sql.DB
	var err error
	if p.control {
		db, err = sql.Open("pgx", srv.URL("application_name="+app))
		if err == nil {
			db.SetMaxOpenConns(faultPoolSize)
			db.SetMaxIdleConns(faultPoolSize)
		}
	} else {
		params := append([]string{"application_name=" + app, fmt.Sprintf("pool_max_conns=%d", faultPoolSize)}, p.params...)
		db, err = warmpg.Open(srv.URL(params...), warmpg.WithLogger(faultQuietLog))
	}
	if err != nil {
		return nil, err
	}
	if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(faultPoolSize), warmpg.WithLogger(faultQuietLog)); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// ---------------------------------------------------------------------------
// Queries, recorded.

// faultOp is one query the application ran: when, and how it ended.
type faultOp struct {
	start, end time.Time
	err        error
}

// faultOpLog collects ops from many goroutines.
type faultOpLog struct {
	mu  sync.Mutex
	ops []faultOp
}

func (l *faultOpLog) add(start time.Time, err error) {
	end := time.Now()
	l.mu.Lock()
	l.ops = append(l.ops, faultOp{start, end, err})
	l.mu.Unlock()
}

func (l *faultOpLog) all() []faultOp {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.ops)
}

// faultProbe runs one query that needs a working connection and checks its
// answer. hold keeps the connection 10 ms, so that a burst of them takes
// one connection each.
func faultProbe(ctx context.Context, db *sql.DB, i int, hold bool) error {
	q := "select $1::int"
	if hold {
		q = "select $1::int from pg_sleep(0.01)"
	}
	var got int
	err := db.QueryRowContext(ctx, q, i).Scan(&got)
	if err == nil && got != i {
		err = fmt.Errorf("select %d returned %d", i, got)
	}
	return err
}

// faultBurst runs n probes at once on db, each within d, and logs them.
func faultBurst(ctx context.Context, db *sql.DB, n int, d time.Duration, log *faultOpLog) {
	var wg, ready sync.WaitGroup
	ready.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			ready.Wait()
			qctx, cancel := context.WithTimeout(ctx, d)
			defer cancel()
			start := time.Now()
			log.add(start, faultProbe(qctx, db, i, true))
		}()
	}
	wg.Wait()
}

// faultKind names what kind of failure err is: the server's SQLSTATE, or
// what the network said; "connect:" when a new connection failed.
func faultKind(err error) string {
	var ce *pgconn.ConnectError
	prefix := ""
	if errors.As(err, &ce) {
		prefix = "connect: "
	}
	var coded interface{ SQLState() string }
	var ne net.Error
	switch {
	case errors.As(err, &coded):
		return prefix + coded.SQLState()
	case errors.Is(err, syscall.ECONNREFUSED):
		return prefix + "refused"
	case errors.Is(err, syscall.ECONNRESET):
		return prefix + "reset"
	case errors.Is(err, syscall.EPIPE):
		return prefix + "broken pipe"
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return prefix + "EOF"
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		return prefix + "deadline"
	case errors.Is(err, driver.ErrBadConn):
		return "ErrBadConn"
	}
	return prefix + "other"
}

// faultKinds summarises the failures among ops: "5× 57P01, 2× connect: reset".
func faultKinds(ops []faultOp) string {
	n := map[string]int{}
	for _, o := range ops {
		if o.err != nil {
			n[faultKind(o.err)]++
		}
	}
	if len(n) == 0 {
		return "–"
	}
	kinds := make([]string, 0, len(n))
	for k := range n {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		return n[kinds[i]] > n[kinds[j]] || n[kinds[i]] == n[kinds[j]] && kinds[i] < kinds[j]
	})
	for i, k := range kinds {
		kinds[i] = fmt.Sprintf("%d× %s", n[k], k)
	}
	return strings.Join(kinds, ", ")
}

func faultFailures(ops []faultOp) (failed int, first error) {
	for _, o := range ops {
		if o.err != nil {
			if failed == 0 {
				first = o.err
			}
			failed++
		}
	}
	return failed, first
}

// faultClients starts clients goroutines that each run op (client c, its
// i-th operation) until stop is closed or ctx is done, at most maxOps each,
// pausing faultThink after a success and faultBackoff after a failure. It
// returns a function that waits for them.
func faultClients(ctx context.Context, clients, maxOps int, stop <-chan struct{}, op func(c, i int) error) (wait func()) {
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range maxOps {
				select {
				case <-stop:
					return
				case <-ctx.Done():
					return
				default:
				}
				pause := faultThink
				if op(c, i) != nil {
					pause = faultBackoff
				}
				select {
				case <-stop:
					return
				case <-time.After(pause):
				}
			}
		}()
	}
	return wg.Wait
}

// faultLoad starts clients goroutines that each run probes on db, each
// within d, until stop is closed (at most maxOps each), logging every
// one. It returns a function that waits for them.
func faultLoad(ctx context.Context, db *sql.DB, clients, maxOps int, d time.Duration, stop <-chan struct{}, log *faultOpLog) (wait func()) {
	return faultClients(ctx, clients, maxOps, stop, func(c, i int) error {
		qctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		start := time.Now()
		err := faultProbe(qctx, db, c*maxOps+i, false)
		log.add(start, err)
		return err
	})
}

// ---------------------------------------------------------------------------
// Results.

// faultRow is one row of a fault table: one pool through one fault.
type faultRow struct {
	scenario, setting string
	down              time.Duration // fault injected → server back (as the harness saw it)
	before, beforeBad int           // ops that ended before the fault; failed
	during, duringBad int           // started before the server was back, ended after the fault
	after, afterBad   int           // started once the server was back
	firstOK           time.Duration // server back → first success; -1: none
	lastBad           time.Duration // server back → end of the last failure that started after it; -1: none
	recovered         bool          // a burst of faultPoolSize on the same *sql.DB succeeded afterwards
	firstErr          error         // first failure after the server was back, else during
	kinds             string        // what the failures after the fault were (faultKinds)
}

// faultClassify sorts ops around a fault injected at tFault and over at tBack.
func faultClassify(scenario, setting string, ops []faultOp, tFault, tBack time.Time) faultRow {
	r := faultRow{scenario: scenario, setting: setting, down: tBack.Sub(tFault), firstOK: -1, lastBad: -1}
	var duringErr error
	for _, o := range ops {
		switch {
		case o.end.Before(tFault):
			r.before++
			if o.err != nil {
				r.beforeBad++
			}
		case o.start.Before(tBack):
			r.during++
			if o.err != nil {
				r.duringBad++
				if duringErr == nil {
					duringErr = o.err
				}
			}
		default:
			r.after++
			if o.err != nil {
				r.afterBad++
				if r.firstErr == nil {
					r.firstErr = o.err
				}
				r.lastBad = max(r.lastBad, o.end.Sub(tBack))
			}
		}
		if o.err == nil && !o.start.Before(tFault) && !o.end.Before(tBack) {
			if d := o.end.Sub(tBack); r.firstOK < 0 || d < r.firstOK {
				r.firstOK = d
			}
		}
	}
	if r.firstErr == nil {
		r.firstErr = duringErr
	}
	var since []faultOp
	for _, o := range ops {
		if !o.end.Before(tFault) {
			since = append(since, o)
		}
	}
	r.kinds = faultKinds(since)
	return r
}

func faultDur(d time.Duration) string {
	switch {
	case d < 0:
		return "–"
	case d < 10*time.Millisecond:
		return fmt.Sprintf("%.1f ms", float64(d)/float64(time.Millisecond))
	case d < 10*time.Second:
		return fmt.Sprintf("%d ms", d.Milliseconds())
	}
	return fmt.Sprintf("%.1f s", d.Seconds())
}

func faultFrac(bad, total int) string {
	if total == 0 {
		return "–"
	}
	return fmt.Sprintf("%d/%d", bad, total)
}

func faultYesNo(b bool) string {
	if b {
		return "yes"
	}
	return "**no**"
}

const faultHeader = "| scenario | setting | server down | failed during outage | failed after server back | first OK after back | last failure after back | same `*sql.DB` recovers | what failed |\n" +
	"|---|---|---|---|---|---|---|---|---|"

func (r faultRow) String() string {
	return fmt.Sprintf("| %s | %s | %s | %s | %s | %s | %s | %s | %s |", r.scenario, r.setting, faultDur(r.down),
		faultFrac(r.duringBad, r.during), faultFrac(r.afterBad, r.after), faultDur(r.firstOK), faultDur(r.lastBad), faultYesNo(r.recovered), r.kinds)
}

// faultTable prints a table in one t.Logf, ready to paste.
func faultTable(t *testing.T, header string, rows []string) {
	t.Helper()
	t.Logf("\n%s\n%s", header, strings.Join(rows, "\n"))
}

// ---------------------------------------------------------------------------
// 1. Restarts, stops and terminated backends, per reset mode.

// faultScenario is one event every pool goes through at once.
type faultScenario struct {
	name string
	load bool // clients run queries throughout; else the pool idles, then a burst
	// staleLeft: the event leaves dead connections in an idle pool, so a
	// pool that checks nothing must fail (asserted for none; for pgx's
	// default only when reuse came within its 1 s ping rule).
	staleLeft bool
	inject    func(ctx context.Context, srv *pgtest.Server, apps []string) error
}

var faultScenarios = []faultScenario{
	{name: "fast restart, idle pool", staleLeft: true, inject: faultRestartFast},
	{name: "fast restart under load", load: true, inject: faultRestartFast},
	{name: "pooled backends terminated, idle pool", staleLeft: true, inject: faultTerminateAll},
	{name: "pooled backends terminated under load", load: true, inject: faultTerminateAll},
	{name: "server stopped 1 s, idle pool", staleLeft: true, inject: faultStopOneSecond},
	{name: "server stopped 1 s under load", load: true, inject: faultStopOneSecond},
}

func faultRestartFast(ctx context.Context, srv *pgtest.Server, _ []string) error {
	return srv.Restart(ctx, "fast")
}

func faultTerminateAll(ctx context.Context, srv *pgtest.Server, apps []string) error {
	n, err := faultTerminate(ctx, srv, apps)
	if err == nil && n == 0 {
		err = errors.New("no backend to terminate")
	}
	return err
}

func faultStopOneSecond(ctx context.Context, srv *pgtest.Server, _ []string) error {
	if err := srv.Stop(ctx, "fast"); err != nil {
		return err
	}
	time.Sleep(time.Second)
	return srv.Start(ctx)
}

// TestFaultRestartMatrix puts a pool of 8 per reset mode, one on lib/pq,
// and plain pgx stdlib (the control) through each scenario at the same
// time, on one private cluster: the same event for every pool. It counts
// the queries that fail during the outage and after the server is back,
// and how soon after it is back the first query succeeds. Pools that check
// before reuse must fail nothing once the server is back; the control and
// pool_reset=none must fail where the event left stale connections, which
// shows the event really did.
func TestFaultRestartMatrix(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := faultCluster(t, ctx)
	var rows []string
	for _, sc := range faultScenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, r := range faultRunScenario(t, ctx, srv, sc) {
				rows = append(rows, r.String())
			}
		})
		if ctx.Err() != nil {
			break
		}
	}
	faultTable(t, faultHeader, rows)
}

func faultRunScenario(t *testing.T, ctx context.Context, srv *pgtest.Server, sc faultScenario) []faultRow {
	pools := faultPools
	dbs := make([]*sql.DB, len(pools))
	apps := make([]string, len(pools))
	logs := make([]*faultOpLog, len(pools))
	for i, p := range pools {
		apps[i] = faultApp(p.name)
		db, err := p.open(ctx, srv, apps[i])
		if err != nil {
			t.Fatalf("%s: open and warm: %v", p.name, err)
		}
		defer db.Close()
		dbs[i] = db
		logs[i] = &faultOpLog{}
	}
	each := func(f func(i int)) {
		var wg sync.WaitGroup
		for i := range pools {
			wg.Add(1)
			go func() { defer wg.Done(); f(i) }()
		}
		wg.Wait()
	}
	// Every connection used once, so that pgx's ping on a connection's
	// first reuse is spent and reuse follows its 1 s rule, as in a
	// service that has been running.
	preStart := time.Now()
	each(func(i int) { faultBurst(ctx, dbs[i], faultPoolSize, 10*time.Second, logs[i]) })

	var stop chan struct{}
	var waits []func()
	halt := func() {
		close(stop)
		for _, w := range waits {
			w()
		}
	}
	if sc.load {
		stop = make(chan struct{})
		for i := range pools {
			waits = append(waits, faultLoad(ctx, dbs[i], faultPoolSize, faultMaxOps, 5*time.Second, stop, logs[i]))
		}
		time.Sleep(300 * time.Millisecond)
	}
	tFault := time.Now()
	if err := sc.inject(ctx, srv, apps); err != nil {
		if sc.load {
			halt()
		}
		t.Fatalf("injecting the fault: %v", err)
	}
	tBack := time.Now()
	gap := tBack.Sub(preStart) // at least pgx's idle time at the next reuse
	if sc.load {
		time.Sleep(time.Second)
		halt()
	} else {
		each(func(i int) { faultBurst(ctx, dbs[i], faultPoolSize, 10*time.Second, logs[i]) })
	}
	// Recovery: the same *sql.DB, no reopening.
	recovered := make([]*faultOpLog, len(pools))
	each(func(i int) {
		recovered[i] = &faultOpLog{}
		faultBurst(ctx, dbs[i], faultPoolSize, 10*time.Second, recovered[i])
	})

	var rows []faultRow
	for i, p := range pools {
		r := faultClassify(sc.name, p.setting, logs[i].all(), tFault, tBack)
		bad, rerr := faultFailures(recovered[i].all())
		r.recovered = bad == 0
		rows = append(rows, r)
		if r.beforeBad != 0 {
			t.Errorf("%s: %d of %d queries failed before the fault", p.name, r.beforeBad, r.before)
		}
		if p.safe {
			if r.afterBad != 0 {
				// The counters tell whether check handed out connections
				// it found clean (what the kernel had not yet delivered)
				// or failed otherwise.
				st, _ := warmpg.Stats(dbs[i])
				t.Errorf("%s: %d of %d queries failed after the server was back (first: %v); counters: %s", p.name, r.afterBad, r.after, r.firstErr, st)
			}
			if !r.recovered {
				t.Errorf("%s: the pool did not recover: %d of %d failed: %v", p.name, bad, faultPoolSize, rerr)
			}
		}
		switch {
		case sc.staleLeft && p.name == "none" && r.afterBad == 0:
			t.Errorf("none: no query failed after the event, so it left no stale connection and this test proves nothing")
		case sc.staleLeft && p.control && gap < 900*time.Millisecond && r.afterBad == 0:
			t.Errorf("control: plain pgx lost no query %s after the last use (within its 1 s ping rule), so the event left no stale connection", gap.Round(time.Millisecond))
		case sc.load && p.control && r.duringBad+r.afterBad == 0:
			t.Errorf("control: plain pgx lost no query under load: the event did not reach the pools")
		}
		if r.afterBad > 0 || r.duringBad > 0 {
			t.Logf("%s: first failure: %v", p.name, r.firstErr)
		}
	}
	if sc.staleLeft {
		t.Logf("reuse came %s after the last use (pgx's stdlib pings only after 1 s idle)", gap.Round(time.Millisecond))
	}
	return rows
}

// ---------------------------------------------------------------------------
// 2. A hung server (SIGSTOP) and a black-holed connection.

// faultDeadlineBurst runs n probes at once, each with deadline d, and returns
// how long the slowest took, how many succeeded, and the first error.
func faultDeadlineBurst(ctx context.Context, db *sql.DB, n int, d time.Duration) (slowest time.Duration, succeeded int, first error) {
	log := &faultOpLog{}
	faultBurst(ctx, db, n, d, log)
	for _, o := range log.all() {
		slowest = max(slowest, o.end.Sub(o.start))
		if o.err == nil {
			succeeded++
		} else if first == nil {
			first = o.err
		}
	}
	return slowest, succeeded, first
}

// faultUntilOK probes db every 50 ms (each probe within 1 s) until one succeeds
// or limit passes, and returns how long that took.
func faultUntilOK(ctx context.Context, db *sql.DB, limit time.Duration) (time.Duration, error) {
	start := time.Now()
	for {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := faultProbe(qctx, db, 1, false)
		cancel()
		if err == nil {
			return time.Since(start), nil
		}
		if time.Since(start) > limit {
			return time.Since(start), err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// faultGoroutines counts this process's goroutines other than the test
// proxy's (which a black hole keeps by design: it holds even a close).
func faultGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			buf = buf[:n]
			break
		}
		buf = make([]byte, 2*len(buf))
	}
	count := 0
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.TrimSpace(g) != "" && !strings.Contains(g, "/internal/pgproxy.") {
			count++
		}
	}
	return count
}

// faultSettleGoroutines waits until faultGoroutines is at most limit, for
// at most d, and returns the last count.
func faultSettleGoroutines(limit int, d time.Duration) int {
	deadline := time.Now().Add(d)
	for {
		n := faultGoroutines()
		if n <= limit || time.Now().After(deadline) {
			return n
		}
		time.Sleep(50 * time.Millisecond)
	}
}

const faultHangHeader = "| scenario | setting | queries (deadline 2 s) | failed | slowest | goroutines: before → after each of 3 rounds → after recovery | recovery |\n" +
	"|---|---|---|---|---|---|---|"

// faultHangRounds runs three rounds of 12 queries with a 2 s deadline on a pool
// of 8 whose server does not answer. Every query must fail within the
// deadline, pool_cancel_grace (the wait for a cancelled statement to
// return, on either backend: cancelpgx.go, watchdog.go) and a margin, and
// the goroutine count must stay bounded: no growth from round to round.
func faultHangRounds(t *testing.T, ctx context.Context, db *sql.DB) (queries, failed int, slowest time.Duration, counts []int) {
	t.Helper()
	const n = faultPoolSize + 4 // some wait for a connection in database/sql
	for round := range 3 {
		s, ok, first := faultDeadlineBurst(ctx, db, n, faultHangDeadline)
		queries += n
		failed += n - ok
		slowest = max(slowest, s)
		if ok != 0 {
			t.Errorf("round %d: %d queries succeeded against a server that does not answer", round, ok)
		}
		if s > faultHangDeadline+warmpg.DefaultCancelGrace+faultHangMargin {
			t.Errorf("round %d: the slowest query returned after %s, deadline %s + grace %s", round, s.Round(time.Millisecond), faultHangDeadline, warmpg.DefaultCancelGrace)
		}
		if round == 0 {
			t.Logf("failure: %v", first)
		}
		time.Sleep(200 * time.Millisecond)
		counts = append(counts, faultGoroutines())
	}
	// pgx closes a connection whose deadline passed in a goroutine that
	// sends a CancelRequest and waits for the server, for at most 15 s:
	// one per connection, not per query or per round.
	if counts[2] > counts[0]+4 {
		t.Errorf("goroutines grew from round to round: %v", counts)
	}
	return queries, failed, slowest, counts
}

// TestFaultHungServer freezes the server (SIGSTOP on the postmaster and
// every child): queries with a 2 s deadline fail within it, goroutines stay
// bounded, and once the server is thawed the same pool works within
// seconds. connect_timeout bounds a connect with no deadline of its own.
func TestFaultHungServer(t *testing.T) {
	ctx := ctxT(t, 90*time.Second)
	srv := faultCluster(t, ctx)
	app := appName(t)
	p := faultPoolNamed("check")
	db, err := p.open(ctx, srv, app)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Pools opened while the server answers, to time a connect against the
	// frozen one with connect_timeout and no context deadline.
	timeouts := map[warmpg.Backend]*sql.DB{}
	for _, b := range backends {
		tdb, err := warmpg.Open(srv.URL("application_name="+app+"_ct", "pool_backend="+string(b), "pool_max_conns=1", "connect_timeout=1"),
			warmpg.WithLogger(faultQuietLog))
		if err != nil {
			t.Fatal(err)
		}
		defer tdb.Close()
		timeouts[b] = tdb
	}
	log := &faultOpLog{}
	faultBurst(ctx, db, faultPoolSize, 10*time.Second, log)
	if bad, err := faultFailures(log.all()); bad != 0 {
		t.Fatalf("before the freeze: %v", err)
	}
	time.Sleep(300 * time.Millisecond) // let the warm-up's goroutines end
	base := faultGoroutines()

	faultFreeze(t, srv)
	frozenAt := time.Now()
	queries, failed, slowest, counts := faultHangRounds(t, ctx, db)

	var ct []string
	for _, b := range backends {
		start := time.Now()
		err := timeouts[b].PingContext(context.Background())
		took := time.Since(start)
		t.Logf("%s: connect_timeout=1, no deadline, frozen server: %v after %s", b, err, took.Round(time.Millisecond))
		if err == nil {
			t.Errorf("%s: a connect to a frozen server succeeded", b)
		} else if took < 900*time.Millisecond || took > time.Second+faultHangMargin {
			t.Errorf("%s: connect_timeout=1 ended the connect after %s", b, took.Round(time.Millisecond))
		}
		ct = append(ct, fmt.Sprintf("| connect to the frozen server, no context deadline | `connect_timeout=1`, `pool_backend=%s` | 1 | %d | %s | – | – |",
			b, map[bool]int{true: 1}[err != nil], faultDur(took)))
	}

	faultThaw(srv)
	thawedAt := time.Now()
	rec, after := faultRecovered(t, ctx, db, base, "SIGCONT")
	t.Logf("frozen for %s", thawedAt.Sub(frozenAt).Round(time.Millisecond))
	faultTable(t, faultHangHeader, append([]string{fmt.Sprintf("| server frozen (SIGSTOP) | %s | %d | %d | %s | %d → %v → %d | first OK %s after SIGCONT |",
		p.setting, queries, failed, faultDur(slowest), base, counts, after, faultDur(rec))}, ct...))
}

// faultRecovered waits, after a hang ended (what: "SIGCONT", "the lift"),
// until a query on db succeeds, then checks that a burst of faultPoolSize
// queries all succeed and that the goroutines settle back to within 5 of
// base, the count before the hang. It returns how long the first success
// took and the settled goroutine count.
func faultRecovered(t *testing.T, ctx context.Context, db *sql.DB, base int, what string) (rec time.Duration, after int) {
	t.Helper()
	rec, err := faultUntilOK(ctx, db, 10*time.Second)
	if err != nil {
		t.Fatalf("the pool did not recover within %s of %s: %v", rec.Round(time.Millisecond), what, err)
	}
	log := &faultOpLog{}
	faultBurst(ctx, db, faultPoolSize, 10*time.Second, log)
	if bad, err := faultFailures(log.all()); bad != 0 {
		t.Errorf("after recovery %d of %d failed: %v", bad, faultPoolSize, err)
	}
	after = faultSettleGoroutines(base+5, 20*time.Second)
	if after > base+5 {
		t.Errorf("%d goroutines 20 s after %s, %d before the hang", after, what, base)
	}
	return rec, after
}

// TestFaultHungServerLibPQDeadline: with pool_backend=pq a query on a
// server that does not answer ends at its context deadline plus
// pool_cancel_grace. lib/pq alone only sends a CancelRequest, which the
// hung server never reads, and blocked until the server woke; warmpg's
// watchdog (watchdog.go) sets a past deadline on lib/pq's socket when the
// statement has not returned a grace after its context ended. The
// connection is then discarded, and the pool answers once the server
// resumes.
func TestFaultHungServerLibPQDeadline(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	srv := faultCluster(t, ctx)
	db, err := faultPoolNamed("check-pq").open(ctx, srv, appName(t))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	faultFreeze(t, srv)
	done := make(chan error, 1)
	start := time.Now()
	go func() {
		qctx, cancel := context.WithTimeout(ctx, faultHangDeadline)
		defer cancel()
		done <- faultProbe(qctx, db, 1, false)
	}()
	select {
	case err := <-done:
		d := time.Since(start)
		t.Logf("lib/pq on a frozen server: returned after %s: %v", d.Round(time.Millisecond), err)
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Errorf("want context.DeadlineExceeded, got %v", err)
		}
		if d > faultHangDeadline+warmpg.DefaultCancelGrace+faultHangMargin {
			t.Errorf("lib/pq: returned after %s, deadline %s + grace %s", d.Round(time.Millisecond), faultHangDeadline, warmpg.DefaultCancelGrace)
		}
	case <-time.After(faultHangDeadline + warmpg.DefaultCancelGrace + 3*time.Second):
		faultThaw(srv)
		<-done
		t.Fatalf("lib/pq: a query with a %s deadline still blocked %s later against a frozen server", faultHangDeadline, 3*time.Second)
	}
	faultThaw(srv)
	deadline := time.Now().Add(10 * time.Second)
	for {
		qctx, cancel := context.WithTimeout(ctx, time.Second)
		err := faultProbe(qctx, db, 2, false)
		cancel()
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pool did not recover within 10 s of SIGCONT: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestFaultBlackHole puts a proxy between the pool and the server that
// stops forwarding both ways without closing anything: queries with a
// deadline fail within it, and the same pool recovers once the proxy
// forwards again, with the stuck connections handed their held bytes, or
// closed first (CloseConns, as a middlebox that resets them would).
func TestFaultBlackHole(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, err := pgproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	viaProxy := srv.WithUser(srv.User, srv.Password)
	viaProxy.Host, viaProxy.Port = proxy.Host(), proxy.Port()
	var rows []string
	for _, how := range []string{"lifted", "conns closed, then lifted"} {
		t.Run(how, func(t *testing.T) {
			ctx := ctxT(t, 60*time.Second)
			p := faultPoolNamed("check")
			db, err := p.open(ctx, viaProxy, appName(t))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			log := &faultOpLog{}
			faultBurst(ctx, db, faultPoolSize, 10*time.Second, log)
			if bad, err := faultFailures(log.all()); bad != 0 {
				t.Fatalf("before the black hole: %v", err)
			}
			time.Sleep(300 * time.Millisecond) // let the warm-up's goroutines end
			base := faultGoroutines()
			proxy.SetBlackHole(true)
			defer proxy.SetBlackHole(false)
			queries, failed, slowest, counts := faultHangRounds(t, ctx, db)
			if how != "lifted" {
				proxy.CloseConns()
			}
			proxy.SetBlackHole(false)
			rec, after := faultRecovered(t, ctx, db, base, "the lift")
			rows = append(rows, fmt.Sprintf("| black hole (proxy forwards nothing), %s | %s | %d | %d | %s | %d → %v → %d | first OK %s after the lift |",
				how, p.setting, queries, failed, faultDur(slowest), base, counts, after, faultDur(rec)))
		})
	}
	faultTable(t, faultHangHeader, rows)
}

// TestFaultQueryWhileServerDown issues queries, with a 10 s deadline, on a
// warm pool whose server is stopped and started again 1 s later: warmpg
// discards the dead connections and its connect retry
// (pool_connect_retry_timeout, 5 s) waits out "connection refused", so
// every query succeeds once the server is back; plain pgx, which does not
// retry, fails them (the control). Through a TCP proxy the stopped server
// does not refuse: the proxy accepts and then closes, which the client sees
// as a reset or EOF; warmpg retries those too (it did not at first: a
// connect that fails has run nothing, so any of them is safe to retry).
func TestFaultQueryWhileServerDown(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	srv := faultCluster(t, ctx)
	proxy, err := pgproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	viaProxy := srv.WithUser(srv.User, srv.Password)
	viaProxy.Host, viaProxy.Port = proxy.Host(), proxy.Port()
	var rows []string
	for _, path := range []struct {
		name string
		srv  *pgtest.Server
		pool string
	}{
		{"direct", srv, "check"},
		{"direct", srv, "pgx"},
		{"through a TCP proxy", viaProxy, "check"},
	} {
		t.Run(path.name+"/"+path.pool, func(t *testing.T) {
			p := faultPoolNamed(path.pool)
			db, err := p.open(ctx, path.srv, faultApp(p.name))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := srv.Stop(ctx, "fast"); err != nil {
				t.Fatal(err)
			}
			started := make(chan error, 1)
			go func() {
				time.Sleep(time.Second)
				started <- srv.Start(ctx)
			}()
			log := &faultOpLog{}
			faultBurst(ctx, db, faultPoolSize, 10*time.Second, log)
			if err := <-started; err != nil {
				t.Fatal(err)
			}
			ops := log.all()
			bad, first := faultFailures(ops)
			var slowest time.Duration
			for _, o := range ops {
				slowest = max(slowest, o.end.Sub(o.start))
			}
			switch {
			case p.control && bad == 0:
				t.Error("control: plain pgx failed no query while the server was down: it was not down")
			case !p.control && bad != 0:
				t.Errorf("%d of %d queries failed; the server was back within their deadline: %v", bad, faultPoolSize, first)
			}
			rows = append(rows, fmt.Sprintf("| queries issued while the server is stopped, started again 1 s later (%s) | %s | %s | %s | %s |",
				path.name, p.setting, faultFrac(bad, len(ops)), faultDur(slowest), faultKinds(ops)))
		})
	}
	faultTable(t, "| scenario | setting | failed | slowest | what failed |\n|---|---|---|---|---|", rows)
}

// TestFaultNoneHandsOutLeakedTransaction: pool_reset=none adds nothing, but
// pgx's own ResetSession still discards a connection returned inside a
// transaction (README). This was a bug: warmpg skipped pgx's ResetSession
// for the connector it builds in every mode, not just in check mode.
func TestFaultNoneHandsOutLeakedTransaction(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 20*time.Second)
	db, err := warmpg.Open(srv.URL("pool_max_conns=1", "pool_reset=none"), warmpg.WithLogger(faultQuietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// BEGIN, then txid_current() gives the transaction an id the next
	// user would see if it ran inside it.
	for _, q := range []string{"BEGIN", "select txid_current()"} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	c.Close() // back to the pool inside the transaction
	var inTx bool
	if err := db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null").Scan(&inTx); err != nil {
		t.Fatal(err)
	}
	if inTx {
		t.Error("pool_reset=none: the next user ran inside the transaction the previous one leaked")
	}
}

// TestFaultClientTCPTimeouts checks what RELIABILITY.md says about
// client-side TCP keepalives and TCP_USER_TIMEOUT: libpq's keys in a DSN
// connect (issue 27; before, pgx sent them to the server, which refused
// the connection with 42704; TestTCPKeysOnSocket reads them back on the
// socket), and the recipe for a connector warmpg does not build — a pgx
// DialFunc that sets them, under warmpg.NewConnector — keeps check mode
// seeing the socket.
func TestFaultClientTCPTimeouts(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 20*time.Second)
	app := faultApp("tcp")

	for _, key := range []string{"keepalives=1", "keepalives_idle=5"} {
		db, err := warmpg.Open(srv.URL(key), warmpg.WithLogger(faultQuietLog))
		if err == nil {
			err = db.PingContext(ctx)
			db.Close()
		}
		if err != nil {
			t.Errorf("%s in a pgx DSN: %v; RELIABILITY.md says warmpg sets it on the socket", key, err)
		}
	}

	cfg, err := pgx.ParseConfig(srv.URL("application_name=" + app))
	if err != nil {
		t.Fatal(err)
	}
	dialer := &net.Dialer{
		KeepAliveConfig: net.KeepAliveConfig{Enable: true, Idle: 5 * time.Second, Interval: 5 * time.Second, Count: 3},
		Control: func(_, _ string, c syscall.RawConn) error {
			var serr error
			err := c.Control(func(fd uintptr) {
				serr = unix.SetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, 10000) // ms
			})
			return errors.Join(err, serr)
		},
	}
	cfg.DialFunc = dialer.DialContext
	never := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false })
	wc, err := warmpg.NewConnector(stdlib.GetConnector(*cfg, never))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(wc)
	defer db.Close()
	db.SetMaxOpenConns(2)
	db.SetMaxIdleConns(2)
	var userTimeout, idle int
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = conn.Raw(func(dc any) error {
		nc := warmpg.Unwrap(dc).(*stdlib.Conn).Conn().PgConn().Conn()
		rc, err := nc.(syscall.Conn).SyscallConn()
		if err != nil {
			return err
		}
		var gerr error
		err = rc.Control(func(fd uintptr) {
			userTimeout, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
			if gerr == nil {
				idle, gerr = unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
			}
		})
		return errors.Join(err, gerr)
	})
	conn.Close()
	if err != nil {
		t.Fatal(err)
	}
	if userTimeout != 10000 || idle != 5 {
		t.Errorf("TCP_USER_TIMEOUT %d ms, TCP_KEEPIDLE %d s; want 10000 and 5", userTimeout, idle)
	}
	// Check mode still peeks at this socket: reuse sends nothing (no ping,
	// which it would send if it could not look), and a terminated backend
	// is discarded before use.
	log := &faultOpLog{}
	faultBurst(ctx, db, 2, 10*time.Second, log)
	faultBurst(ctx, db, 2, 10*time.Second, log)
	if st, _ := warmpg.Stats(db); st.Clean < 2 || st.Pinged != 0 {
		t.Errorf("counters %v: want clean reuses and no ping", st)
	}
	if _, err := faultTerminate(ctx, srv, []string{app}); err != nil {
		t.Fatal(err)
	}
	log = &faultOpLog{}
	faultBurst(ctx, db, 2, 10*time.Second, log)
	if bad, err := faultFailures(log.all()); bad != 0 {
		t.Errorf("%d of 2 queries failed after pg_terminate_backend: %v", bad, err)
	}
}

// ---------------------------------------------------------------------------
// 3. max_connections reached while warming.

// TestFaultMaxConnectionsWhileWarming warms 20 connections as an ordinary
// role on a server with max_connections=12, two of them reserved for
// superusers: WarmDB keeps what it got, reports the rest with the server's
// own error (SQLSTATE 53300), leaks no connection, and the pool works.
func TestFaultMaxConnectionsWhileWarming(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	srv := faultCluster(t, ctx, pgtest.WithSetting("max_connections", "12"), pgtest.WithSetting("superuser_reserved_connections", "2"))
	const role = "warmpg_fault_app"
	if err := srv.Exec(ctx, "create role "+role+" login"); err != nil {
		t.Fatal(err)
	}
	user := srv.WithUser(role, "")
	var rows []string
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			app := appName(t)
			const want = 20
			db, err := warmpg.Open(user.URL("application_name="+app, "pool_backend="+string(b), fmt.Sprintf("pool_max_conns=%d", want)),
				warmpg.WithLogger(faultQuietLog))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			rep, werr := warmpg.WarmDB(ctx, db, warmpg.WithLogger(faultQuietLog))
			t.Logf("report %+v\nerror: %v", rep, werr)
			if werr == nil {
				t.Fatal("warming 20 with 10 slots: no error")
			}
			if rep.Requested != want || rep.Warmed+rep.Failed != want || rep.Warmed < 1 || rep.Warmed > 10 {
				t.Errorf("report %+v: want 1–10 warmed (12 slots, 2 reserved), the rest failed", rep)
			}
			var coded interface{ SQLState() string }
			if !errors.As(werr, &coded) || coded.SQLState() != "53300" {
				t.Errorf("errors.As does not reach the server's SQLSTATE 53300: %v", werr)
			}
			if msg := werr.Error(); !strings.Contains(msg, "remaining connection slots are reserved") && !strings.Contains(msg, "too many clients") {
				t.Errorf("the server's message is missing: %v", werr)
			}
			got, cerr := faultWaitBackends(ctx, srv, app, rep.Warmed)
			if cerr != nil {
				t.Errorf("server shows %d backends, WarmDB reports %d warmed: %v", got, rep.Warmed, cerr)
			}
			if st := db.Stats(); st.OpenConnections != rep.Warmed {
				t.Errorf("database/sql holds %d connections, WarmDB reports %d", st.OpenConnections, rep.Warmed)
			}
			log := &faultOpLog{}
			faultBurst(ctx, db, rep.Warmed, 10*time.Second, log)
			bad, berr := faultFailures(log.all())
			if bad != 0 {
				t.Errorf("the pool is not usable: %d of %d queries failed: %v", bad, rep.Warmed, berr)
			}
			db.Close()
			if n, err := faultWaitBackends(ctx, srv, app, 0); err != nil {
				t.Errorf("%d backends left after db.Close: %v", n, err)
			}
			rows = append(rows, fmt.Sprintf("| max_connections=12 (2 reserved), warming 20 as an ordinary role | `pool_backend=%s` | warmed %d/%d in %s | %s | %d | %d/%d |",
				b, rep.Warmed, rep.Requested, faultDur(rep.Elapsed), faultSQLStates(werr), got, bad, rep.Warmed))
		})
	}
	faultTable(t, "| scenario | setting | WarmDB | SQLSTATE of the failures | backends on the server | burst on the warmed pool: failed |\n|---|---|---|---|---|---|", rows)
}

// faultWaitBackends waits up to 5 s until the server shows want backends
// of app. It asks as the superuser, in a reserved slot; a connect refused
// with 53300 is retried: backends the server just turned away may hold
// their slot for a moment while they exit.
func faultWaitBackends(ctx context.Context, srv *pgtest.Server, app string, want int) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	for {
		got, err := srv.WaitBackendCount(ctx, app, want)
		var coded interface{ SQLState() string }
		if err == nil || ctx.Err() != nil || !errors.As(err, &coded) || coded.SQLState() != "53300" {
			return got, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// faultSQLStates lists the distinct SQLSTATEs in a joined error tree.
func faultSQLStates(err error) string {
	seen := map[string]bool{}
	var walk func(error)
	walk = func(e error) {
		if e == nil {
			return
		}
		if c, ok := e.(interface{ SQLState() string }); ok {
			seen[c.SQLState()] = true
		}
		switch u := e.(type) {
		case interface{ Unwrap() []error }:
			for _, x := range u.Unwrap() {
				walk(x)
			}
		case interface{ Unwrap() error }:
			walk(u.Unwrap())
		}
	}
	walk(err)
	var out []string
	for s := range seen {
		out = append(out, s)
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

// ---------------------------------------------------------------------------
// 4. Writes across a restart: none lost, none applied twice.

// faultWrite is one insert the application attempted.
type faultWrite struct {
	id         int64
	pool       string
	seq        int64 // the server's sequence value, when the insert returned one
	start, end time.Time
	err        error
}

type faultWriteLog struct {
	mu     sync.Mutex
	writes []faultWrite
}

func (l *faultWriteLog) add(w faultWrite) {
	l.mu.Lock()
	l.writes = append(l.writes, w)
	l.mu.Unlock()
}

func (l *faultWriteLog) all() []faultWrite {
	l.mu.Lock()
	defer l.mu.Unlock()
	return slices.Clone(l.writes)
}

const faultWritesTable = "fault_writes"

func faultCreateWritesTable(ctx context.Context, srv *pgtest.Server) error {
	return srv.Exec(ctx, `create sequence fault_writes_seq;
		create table `+faultWritesTable+` (id bigint primary key, seq bigint not null default nextval('fault_writes_seq'), pool text not null)`)
}

// faultWriters starts clients goroutines inserting rows with distinct ids
// from next, in autocommit, each within d, until stop is closed (at most
// maxOps each), logging every attempt. Each attempt is one statement
// whose RETURNING gives the server's sequence value for the row.
func faultWriters(ctx context.Context, db *sql.DB, pool string, clients, maxOps int, d time.Duration, next *atomic.Int64, stop <-chan struct{}, log *faultWriteLog) (wait func()) {
	return faultClients(ctx, clients, maxOps, stop, func(int, int) error {
		w := faultWrite{id: next.Add(1), pool: pool, start: time.Now()}
		qctx, cancel := context.WithTimeout(ctx, d)
		w.err = db.QueryRowContext(qctx, "insert into "+faultWritesTable+" (id, pool) values ($1, $2) returning seq", w.id, pool).Scan(&w.seq)
		cancel()
		w.end = time.Now()
		log.add(w)
		return w.err
	})
}

// faultWriteAudit is what the table holds compared with what the application saw.
type faultWriteAudit struct {
	attempted, acked, failed int
	lost                     int // acknowledged, absent (or another row's seq)
	ambiguous                int // failed, yet present: the server committed, the reply was lost
	badConn                  int // errors wrapping driver.ErrBadConn the application saw
	dupKey                   int // 23505 on the application's own single attempt: applied twice
	// By faultKind: failed inserts, and those of them committed anyway.
	failedKinds, ambiguousKinds map[string]int
}

// faultAuditWrites compares the writes the application attempted with the
// table and reports every violation of exactly-once: an acknowledged
// insert missing (or holding another sequence value), a row nobody
// attempted, an id twice, a duplicate-key error, an ErrBadConn for an
// insert that was applied. It returns the audit per pool and the lost ids.
func faultAuditWrites(t *testing.T, ctx context.Context, srv *pgtest.Server, writes []faultWrite) (map[string]*faultWriteAudit, map[int64]bool) {
	t.Helper()
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())
	var total, distinct int
	if err := conn.QueryRow(ctx, "select count(*), count(distinct id) from "+faultWritesTable).Scan(&total, &distinct); err != nil {
		t.Fatal(err)
	}
	if total != distinct {
		t.Errorf("%d rows for %d distinct ids", total, distinct)
	}
	rows, err := conn.Query(ctx, "select id, seq, pool from "+faultWritesTable)
	if err != nil {
		t.Fatal(err)
	}
	type stored struct {
		seq  int64
		pool string
	}
	table := map[int64]stored{}
	for rows.Next() {
		var id, seq int64
		var pool string
		if err := rows.Scan(&id, &seq, &pool); err != nil {
			t.Fatal(err)
		}
		table[id] = stored{seq, pool}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	audits := map[string]*faultWriteAudit{}
	lostIDs := map[int64]bool{}
	attempted := map[int64]bool{}
	for _, w := range writes {
		a := audits[w.pool]
		if a == nil {
			a = &faultWriteAudit{failedKinds: map[string]int{}, ambiguousKinds: map[string]int{}}
			audits[w.pool] = a
		}
		attempted[w.id] = true
		a.attempted++
		row, present := table[w.id]
		if w.err == nil {
			a.acked++
			if !present || row.seq != w.seq || row.pool != w.pool {
				a.lost++
				lostIDs[w.id] = true
				t.Errorf("%s: insert of id %d acknowledged (seq %d), table holds %+v (present %v)", w.pool, w.id, w.seq, row, present)
			}
			continue
		}
		a.failed++
		a.failedKinds[faultKind(w.err)]++
		var pgErr *pgconn.PgError
		if errors.As(w.err, &pgErr) && pgErr.Code == "23505" {
			a.dupKey++
			t.Errorf("%s: id %d: duplicate key on the application's only attempt: an insert was applied twice: %v", w.pool, w.id, w.err)
		}
		if errors.Is(w.err, driver.ErrBadConn) {
			a.badConn++
			if present {
				t.Errorf("%s: id %d failed with ErrBadConn (nothing executed), yet the row is there", w.pool, w.id)
			}
		}
		if present {
			a.ambiguous++
			a.ambiguousKinds[faultKind(w.err)]++
			if a.ambiguous <= 3 {
				t.Logf("%s: id %d failed (%v) but was committed: the reply was lost after the commit", w.pool, w.id, w.err)
			}
		}
	}
	for id := range table {
		if !attempted[id] {
			t.Errorf("row %d was never attempted", id)
		}
	}
	return audits, lostIDs
}

// faultAmbiguity says, per kind of error, how many failed inserts were
// committed anyway: "64 of 64 deadline, 0 of 58 57P01".
func faultAmbiguity(a *faultWriteAudit) string {
	kinds := make([]string, 0, len(a.failedKinds))
	for k := range a.failedKinds {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool { return a.failedKinds[kinds[i]] > a.failedKinds[kinds[j]] })
	var out []string
	for _, k := range kinds {
		out = append(out, fmt.Sprintf("%d of %d %s", a.ambiguousKinds[k], a.failedKinds[k], k))
	}
	if len(out) == 0 {
		return "no insert failed"
	}
	return strings.Join(out, ", ")
}

const faultWriteHeader = "| scenario | setting | inserts | acknowledged | failed during outage | failed after server back | lost | committed though reported failed | applied twice | `ErrBadConn` seen |\n" +
	"|---|---|---|---|---|---|---|---|---|---|"

// TestFaultWritesAcrossRestart runs 8 writers per pool, inserting distinct
// ids in autocommit, across a fast restart: every insert the application
// saw succeed is in the table with the sequence value it returned, no id
// is there twice, no insert was applied twice by database/sql's retry (a
// duplicate-key error would show it), and an insert reported failed is in
// the table only with an error that does not wrap driver.ErrBadConn.
// warmpg (check) must fail no insert once the server is back.
func TestFaultWritesAcrossRestart(t *testing.T) {
	ctx := ctxT(t, time.Minute)
	srv := faultCluster(t, ctx)
	if err := faultCreateWritesTable(ctx, srv); err != nil {
		t.Fatal(err)
	}
	pools := []faultPool{faultPoolNamed("check"), faultPoolNamed("pgx")}
	dbs := make([]*sql.DB, len(pools))
	for i, p := range pools {
		db, err := p.open(ctx, srv, faultApp(p.name))
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		dbs[i] = db
	}
	var next atomic.Int64
	log := &faultWriteLog{}
	stop := make(chan struct{})
	var waits []func()
	for i, p := range pools {
		waits = append(waits, faultWriters(ctx, dbs[i], p.name, faultPoolSize, faultMaxOps, 5*time.Second, &next, stop, log))
	}
	time.Sleep(700 * time.Millisecond)
	tFault := time.Now()
	rerr := srv.Restart(ctx, "fast")
	tBack := time.Now()
	if rerr == nil {
		time.Sleep(time.Second)
	}
	close(stop)
	for _, w := range waits {
		w()
	}
	if rerr != nil {
		t.Fatal(rerr)
	}
	writes := log.all()
	audits, _ := faultAuditWrites(t, ctx, srv, writes)
	var rows []string
	for _, p := range pools {
		var ops []faultOp
		for _, w := range writes {
			if w.pool == p.name {
				ops = append(ops, faultOp{w.start, w.end, w.err})
			}
		}
		r := faultClassify("", "", ops, tFault, tBack)
		a := audits[p.name]
		if a == nil {
			t.Fatalf("%s wrote nothing", p.name)
		}
		if r.beforeBad != 0 {
			t.Errorf("%s: %d inserts failed before the restart", p.name, r.beforeBad)
		}
		if p.safe && r.afterBad != 0 {
			t.Errorf("%s: %d of %d inserts failed after the server was back: %v", p.name, r.afterBad, r.after, r.firstErr)
		}
		if !p.control && a.badConn != 0 {
			t.Errorf("%s: the application saw %d errors wrapping driver.ErrBadConn", p.name, a.badConn)
		}
		if p.control && r.duringBad+r.afterBad == 0 {
			t.Error("control: plain pgx lost no insert across the restart: the restart did not reach the writers")
		}
		if r.duringBad+r.afterBad > 0 {
			t.Logf("%s: first failure: %v", p.name, r.firstErr)
		}
		rows = append(rows, fmt.Sprintf("| fast restart under 8 writers | %s | %d | %d | %s | %s | %d | %d | %d | %d |",
			p.setting, a.attempted, a.acked, faultFrac(r.duringBad, r.during), faultFrac(r.afterBad, r.after), a.lost, a.ambiguous, a.dupKey, a.badConn))
	}
	t.Logf("server down %s", faultDur(tBack.Sub(tFault)))
	for _, p := range pools {
		t.Logf("%s: failed inserts committed anyway, by error: %s", p.name, faultAmbiguity(audits[p.name]))
	}
	faultTable(t, faultWriteHeader, rows)
}

// ---------------------------------------------------------------------------
// 5. Soak: a random sequence of the faults above, under steady load.

// faultSoakEnv is what a soak fault acts on.
type faultSoakEnv struct {
	srv   *pgtest.Server
	proxy *pgproxy.Proxy
	app   string
	role  string
}

// faultSoakFault is one fault TestSoak can inject; inject returns once the
// fault is over (the server back, thawed, the hole lifted).
type faultSoakFault struct {
	name, setting string
	inject        func(ctx context.Context, t *testing.T, s *faultSoakEnv, rng *rand.Rand) error
}

// faultBetween returns a random duration in [lo, hi).
func faultBetween(rng *rand.Rand, lo, hi time.Duration) time.Duration {
	return lo + time.Duration(rng.Int64N(int64(hi-lo)))
}

var faultSoakFaults = []faultSoakFault{
	{"fast restart", "`pg_ctl restart -m fast`", func(ctx context.Context, _ *testing.T, s *faultSoakEnv, _ *rand.Rand) error {
		return s.srv.Restart(ctx, "fast")
	}},
	{"backends terminated", "`pg_terminate_backend` on every pooled backend", func(ctx context.Context, _ *testing.T, s *faultSoakEnv, _ *rand.Rand) error {
		_, err := faultTerminate(ctx, s.srv, []string{s.app})
		return err
	}},
	{"server stopped 0.5–1.5 s", "`pg_ctl stop -m fast`, then `start`", func(ctx context.Context, _ *testing.T, s *faultSoakEnv, rng *rand.Rand) error {
		if err := s.srv.Stop(ctx, "fast"); err != nil {
			return err
		}
		time.Sleep(faultBetween(rng, 500*time.Millisecond, 1500*time.Millisecond))
		return s.srv.Start(ctx)
	}},
	{"server frozen 1–3 s", "SIGSTOP, then SIGCONT", func(_ context.Context, t *testing.T, s *faultSoakEnv, rng *rand.Rand) error {
		faultFreeze(t, s.srv)
		time.Sleep(faultBetween(rng, time.Second, 3*time.Second))
		faultThaw(s.srv)
		return nil
	}},
	{"black hole 1–3 s", "proxy forwards nothing, then lifts", func(_ context.Context, _ *testing.T, s *faultSoakEnv, rng *rand.Rand) error {
		s.proxy.SetBlackHole(true)
		time.Sleep(faultBetween(rng, time.Second, 3*time.Second))
		s.proxy.SetBlackHole(false)
		return nil
	}},
	{"connection slots exhausted 1 s", "role `CONNECTION LIMIT 2`, pooled backends terminated, limit lifted after 1 s", func(ctx context.Context, _ *testing.T, s *faultSoakEnv, _ *rand.Rand) error {
		if err := s.srv.Exec(ctx, "alter role "+s.role+" connection limit 2"); err != nil {
			return err
		}
		if _, err := faultTerminate(ctx, s.srv, []string{s.app}); err != nil {
			return err
		}
		time.Sleep(time.Second)
		return s.srv.Exec(ctx, "alter role "+s.role+" connection limit -1")
	}},
}

// TestSoak runs a random sequence of the faults above (seeded: the seed is
// printed, -warmpg.soak.seed replays the sequence) against one private
// cluster, through a proxy, for -warmpg.soak (at most 3 minutes), under
// steady load: 8 clients inserting distinct ids and 8 reading, each
// statement with a 2 s deadline, on one warmpg pool of 16 in check mode,
// as an ordinary role. Every fault gets a
// row: queries failed during it and after it ended, acknowledged inserts
// lost, and how soon a query succeeded once it ended.
func TestSoak(t *testing.T) {
	if *soakFor <= 0 {
		t.Skip("soak not requested: make soak, or go test -race -run TestSoak -v -timeout 10m . -args -warmpg.soak=150s [-warmpg.soak.seed=N]")
	}
	limit := min(*soakFor, 3*time.Minute)
	seed := *soakSeed
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("seed %d (replay the sequence with -warmpg.soak.seed=%d), for %s", seed, seed, limit)
	rng := rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15))

	ctx := ctxT(t, limit+2*time.Minute)
	srv := faultCluster(t, ctx)
	s := &faultSoakEnv{srv: srv, app: appName(t), role: "warmpg_soak"}
	if err := faultCreateWritesTable(ctx, srv); err != nil {
		t.Fatal(err)
	}
	if err := srv.Exec(ctx, "create role "+s.role+" login; grant all on "+faultWritesTable+", fault_writes_seq to "+s.role); err != nil {
		t.Fatal(err)
	}
	proxy, err := pgproxy.New(srv.Addr())
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	s.proxy = proxy
	via := srv.WithUser(s.role, "")
	via.Host, via.Port = proxy.Host(), proxy.Port()
	const pool = 2 * faultPoolSize
	db, err := warmpg.Open(via.URL("application_name="+s.app, fmt.Sprintf("pool_max_conns=%d", pool)), warmpg.WithLogger(faultQuietLog))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := warmpg.WarmDB(ctx, db, warmpg.WithLogger(faultQuietLog)); err != nil {
		t.Fatal(err)
	}

	var next atomic.Int64
	writes := &faultWriteLog{}
	reads := &faultOpLog{}
	stop := make(chan struct{})
	maxOps := int(limit/faultThink) + 100 // bounded, and more than the time allows
	waitW := faultWriters(ctx, db, "check", faultPoolSize, maxOps, faultHangDeadline, &next, stop, writes)
	waitR := faultLoad(ctx, db, faultPoolSize, maxOps, faultHangDeadline, stop, reads)
	halt := func() {
		close(stop)
		waitW()
		waitR()
	}

	type injected struct {
		f             faultSoakFault
		tFault, tBack time.Time
		end           time.Time // just before the next fault, or the end of the load
	}
	var events []injected
	start := time.Now()
	time.Sleep(time.Second)
	for time.Since(start) < limit-6*time.Second && ctx.Err() == nil {
		f := faultSoakFaults[rng.IntN(len(faultSoakFaults))]
		tFault := time.Now()
		if err := f.inject(ctx, t, s, rng); err != nil {
			halt()
			t.Fatalf("%s: %v", f.name, err)
		}
		tBack := time.Now()
		time.Sleep(faultBetween(rng, 2*time.Second, 4*time.Second))
		events = append(events, injected{f: f, tFault: tFault, tBack: tBack, end: time.Now()})
	}
	halt()
	elapsed := time.Since(start)

	allWrites := writes.all()
	audits, lostIDs := faultAuditWrites(t, ctx, srv, allWrites)
	audit := audits["check"]
	if audit == nil {
		t.Fatal("no insert was attempted")
	}
	allReads := reads.all()
	if len(events) > 0 {
		var before []faultOp
		for _, o := range allReads {
			if o.end.Before(events[0].tFault) {
				before = append(before, o)
			}
		}
		if bad, err := faultFailures(before); bad != 0 {
			t.Errorf("%d reads failed before the first fault: %v", bad, err)
		}
	}
	type agg struct {
		n                                  int
		during, duringBad, after, afterBad int
		lost                               int
		worstFirstOK                       time.Duration
		ops                                []faultOp
	}
	byFault := map[string]*agg{}
	var rows []string
	for i, e := range events {
		// An operation belongs to the fault during or after which it
		// ended: one that the next fault cut short is that fault's.
		in := func(end time.Time) bool { return !end.Before(e.tFault) && end.Before(e.end) }
		if i+1 == len(events) {
			in = func(end time.Time) bool { return !end.Before(e.tFault) }
		}
		var ops []faultOp
		for _, o := range allReads {
			if in(o.end) {
				ops = append(ops, o)
			}
		}
		lost := 0
		for _, w := range allWrites {
			if in(w.end) {
				ops = append(ops, faultOp{w.start, w.end, w.err})
				if lostIDs[w.id] {
					lost++
				}
			}
		}
		r := faultClassify(e.f.name, e.f.setting, ops, e.tFault, e.tBack)
		a := byFault[e.f.name]
		if a == nil {
			a = &agg{}
			byFault[e.f.name] = a
		}
		a.n++
		a.during += r.during
		a.duringBad += r.duringBad
		a.after += r.after
		a.afterBad += r.afterBad
		a.lost += lost
		a.worstFirstOK = max(a.worstFirstOK, r.firstOK)
		a.ops = append(a.ops, ops...)
		rows = append(rows, fmt.Sprintf("| %d | %s | %s | %s | %s | %s | %d | %s |", i+1, e.f.name, faultDur(e.tFault.Sub(start)), faultDur(r.down),
			faultFrac(r.duringBad, r.during), faultFrac(r.afterBad, r.after), lost, faultDur(r.firstOK)))
		if r.afterBad > 0 {
			t.Errorf("%s at %s: %d of %d queries started after the fault ended failed: %v", e.f.name, faultDur(e.tFault.Sub(start)), r.afterBad, r.after, r.firstErr)
			for _, o := range ops {
				if o.err != nil && !o.start.Before(e.tBack) {
					t.Logf("  started %s after the fault ended, took %s: %v", o.start.Sub(e.tBack), o.end.Sub(o.start), o.err)
				}
			}
		}
	}
	faultTable(t, "| # | fault | at | lasted | failed during | failed after it ended | lost writes | first OK after it ended |\n|---|---|---|---|---|---|---|---|", rows)
	var sum []string
	for _, f := range faultSoakFaults {
		if a := byFault[f.name]; a != nil {
			sum = append(sum, fmt.Sprintf("| %s | %s | %d | %s | %s | %d | %s | %s |", f.name, f.setting, a.n,
				faultFrac(a.duringBad, a.during), faultFrac(a.afterBad, a.after), a.lost, faultDur(a.worstFirstOK), faultKinds(a.ops)))
		}
	}
	faultTable(t, "| fault | how | times | failed/total during | failed/total after it ended | lost writes | worst first OK after it ended | what failed |\n|---|---|---|---|---|---|---|---|", sum)
	t.Logf("%s, seed %d: %d faults; %d inserts, %d acknowledged, %d lost, %d committed though reported failed, %d applied twice, %d ErrBadConn seen; %d reads",
		elapsed.Round(time.Second), seed, len(events), audit.attempted, audit.acked, audit.lost, audit.ambiguous, audit.dupKey, audit.badConn, len(allReads))
	t.Logf("failed inserts committed anyway, by error: %s", faultAmbiguity(audit))
	if audit.badConn != 0 {
		t.Errorf("the application saw %d errors wrapping driver.ErrBadConn", audit.badConn)
	}
}
