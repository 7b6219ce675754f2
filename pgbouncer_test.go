//go:build linux

package warmpg_test

// warmpg through a real PgBouncer (Debian's 1.18, which keeps no prepared
// statements) in transaction mode, started by internal/pgtest in front of
// a server: the prepared-statement break pool_pgbouncer=true fixes, warming,
// every reset mode across server and bouncer restarts, autocommit, and
// session state. docs/pgbouncer.md reports what these tests measure:
//
//	go test -race -count=1 -run 'PgBouncer|Bouncer' -v .

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// bouncerPoolSize is default_pool_size in these tests: 20 clients share 4
// server connections.
const bouncerPoolSize = 4

// bouncerQueries are what the load runs: three texts, so that pgx's
// statement cache holds several named statements per connection, each
// with an int parameter and a result that tells them apart.
var bouncerQueries = []struct {
	sql  string
	want func(int) int
}{
	{"select $1::int + 1", func(x int) int { return x + 1 }},
	{"select $1::int * 2", func(x int) int { return x * 2 }},
	{"select $1::int - 3", func(x int) int { return x - 3 }},
}

// bouncerLoadResult is what a load saw: queries run, failed, and answered
// with a wrong value (the result of another client's statement), and the
// failures by kind (SQLSTATE, or what the network said).
type bouncerLoadResult struct {
	queries, failed, wrong int
	kinds                  map[string]int
	first                  error
}

func (r bouncerLoadResult) String() string {
	var ks []string
	for k, n := range r.kinds {
		ks = append(ks, fmt.Sprintf("%d× %s", n, k))
	}
	sort.Strings(ks)
	return fmt.Sprintf("%d of %d failed (%s), %d wrong results", r.failed, r.queries, strings.Join(ks, ", "), r.wrong)
}

// bouncerLoad runs clients goroutines of perClient calls of query each, all
// at once, and stops at ctx's end whatever happens. query(c, i) runs client
// c's i-th query and returns what it got and what it should have got.
func bouncerLoad(ctx context.Context, clients, perClient int, query func(c, i int) (got, want int, err error)) bouncerLoadResult {
	var mu sync.Mutex
	res := bouncerLoadResult{kinds: map[string]int{}}
	var wg sync.WaitGroup
	var ready sync.WaitGroup
	ready.Add(clients)
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ready.Done()
			ready.Wait()
			for i := range perClient {
				if ctx.Err() != nil {
					return
				}
				got, want, err := query(c, i)
				mu.Lock()
				res.queries++
				switch {
				case err != nil:
					res.failed++
					res.kinds[faultKind(err)]++
					if res.first == nil {
						res.first = err
					}
				case got != want:
					res.wrong++
				}
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return res
}

// bouncerQuery is bouncerLoad's query for db: client c's i-th query is one
// of bouncerQueries, in turn, with an argument unique to it.
func bouncerQuery(ctx context.Context, db *sql.DB) func(c, i int) (got, want int, err error) {
	return func(c, i int) (got, want int, err error) {
		q := bouncerQueries[(c+i)%len(bouncerQueries)]
		x := c*1000 + i
		err = db.QueryRowContext(ctx, q.sql, x).Scan(&got)
		return got, q.want(x), err
	}
}

// bouncerDB opens a warmpg pool through b with params, closed when the
// test ends.
func bouncerDB(t *testing.T, b *pgtest.Bouncer, params ...string) *sql.DB {
	t.Helper()
	db, err := warmpg.Open(b.URL(params...), warmpg.WithLogger(faultQuietLog))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// The break pool_pgbouncer fixes. 20 clients × 50 parameterised queries
// through a transaction-mode bouncer with 4 server connections: pgx's
// default mode (named statements in its cache) fails with 42P05 and 26000
// — the control, which shows the load does break what it should — and
// with pool_pgbouncer=true no query fails and none returns a wrong value,
// for both backends. lib/pq without it fails worse: no error, but wrong
// answers — it prepares the unnamed statement in one round trip and binds
// it in a second, and the bouncer may lend another client's server
// connection in between, whose unnamed statement then runs with this
// client's argument (the second control).
func TestPgBouncerPreparedStatementBreak(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	const clients, perClient = 20, 50
	for _, tc := range []struct {
		name    string
		params  []string
		control bool // must fail
	}{
		{"pgx-default", []string{"pool_backend=pgx"}, true},
		{"pgx-pool_pgbouncer", []string{"pool_backend=pgx", "pool_pgbouncer=true"}, false},
		{"pq-default", []string{"pool_backend=pq"}, true},
		{"pq-pool_pgbouncer", []string{"pool_backend=pq", "pool_pgbouncer=true"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, time.Minute)
			db := bouncerDB(t, b, append(tc.params, fmt.Sprintf("pool_max_conns=%d", clients))...)
			start := time.Now()
			res := bouncerLoad(ctx, clients, perClient, bouncerQuery(ctx, db))
			t.Logf("%s: %v in %v; first error: %v", tc.name, res, time.Since(start).Round(time.Millisecond), res.first)
			if res.queries != clients*perClient {
				t.Fatalf("ran %d queries of %d: %v", res.queries, clients*perClient, ctx.Err())
			}
			switch {
			case tc.name == "pq-default":
				// lib/pq binds the unnamed statement in a second round
				// trip; the bouncer may lend another server connection in
				// between, whose unnamed statement is another client's:
				// that statement runs with this client's argument.
				if res.wrong == 0 && res.failed == 0 {
					t.Fatal("control: lib/pq without binary_parameters got every answer right through the bouncer, so this load proves nothing")
				}
			case tc.control:
				if res.failed == 0 {
					t.Fatal("control: pgx's default mode lost no query through the bouncer, so this load proves nothing")
				}
				if res.kinds["42P05"] == 0 {
					t.Errorf("control: no 42P05 (prepared statement already exists) among %v", res)
				}
				for k := range res.kinds {
					if k != "42P05" && k != "26000" {
						t.Errorf("control: a failure of kind %s, want only 42P05 and 26000", k)
					}
				}
			case strings.HasSuffix(tc.name, "pool_pgbouncer"):
				if res.failed != 0 || res.wrong != 0 {
					t.Errorf("pool_pgbouncer=true through the bouncer: %v; first error: %v", res, res.first)
				}
			}
			if res.wrong != 0 && tc.name != "pq-default" {
				t.Errorf("%d queries returned another statement's result", res.wrong)
			}
		})
	}
}

// Concurrency is not needed for the break: two client connections used in
// turn, served by the one server connection of a pool of 1, collide on the
// statement the first one prepared (pgx's default mode: 42P05).
func TestPgBouncerTwoClientsInTurn(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(1))
	for _, tc := range []struct {
		name     string
		params   []string
		wantFail bool
	}{
		{"pgx-default", []string{"pool_backend=pgx"}, true},
		{"pgx-pool_pgbouncer", []string{"pool_backend=pgx", "pool_pgbouncer=true"}, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db := bouncerDB(t, b, append(tc.params, "pool_max_conns=2")...)
			conns := make([]*sql.Conn, 2)
			var errs []error
			for i := range conns {
				c, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				conns[i] = c
				var n int
				if err := c.QueryRowContext(ctx, "select $1::int + 1", i).Scan(&n); err != nil {
					errs = append(errs, err)
				}
			}
			t.Logf("%s: client 1 then client 2, one server connection: errors %v", tc.name, errs)
			if tc.wantFail && (len(errs) != 1 || faultKind(errs[0]) != "42P05") {
				t.Errorf("control: want the second client's query to fail with 42P05, got %v", errs)
			}
			if !tc.wantFail && len(errs) != 0 {
				t.Errorf("pool_pgbouncer=true: %v", errs)
			}
		})
	}
}

// db.Prepare and one *sql.Stmt used by 20 goroutines at once through the
// bouncer: with pool_pgbouncer=true no execution fails or returns a wrong
// value, for both backends. Without it, database/sql prepares the
// statement once per client connection, on whichever server connection
// the bouncer lends at that moment (the controls, measured).
func TestPgBouncerPreparedStmtConcurrent(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	const clients, perClient = 20, 50
	for _, bk := range backends {
		for _, on := range []bool{false, true} {
			name := fmt.Sprintf("%s/pool_pgbouncer=%v", bk, on)
			t.Run(name, func(t *testing.T) {
				ctx := ctxT(t, time.Minute)
				app := appName(t)
				db := bouncerDB(t, b, "pool_backend="+string(bk), fmt.Sprintf("pool_pgbouncer=%v", on),
					fmt.Sprintf("pool_max_conns=%d", clients), "application_name="+app)
				res := bouncerLoadResult{kinds: map[string]int{}}
				stmt, err := db.PrepareContext(ctx, "select $1::int + 1")
				if err != nil {
					// Without pool_pgbouncer, even preparing may fail.
					res.queries, res.failed = 1, 1
					res.kinds[faultKind(err)]++
					res.first = err
				} else {
					defer stmt.Close()
					res = bouncerLoad(ctx, clients, perClient, func(c, i int) (got, want int, err error) {
						x := c*1000 + i
						err = stmt.QueryRowContext(ctx, x).Scan(&got)
						return got, x + 1, err
					})
				}
				t.Logf("%s: %v; first error: %v", name, res, res.first)
				n, err := b.ServerConns(ctx)
				if err != nil || n > bouncerPoolSize {
					t.Errorf("the bouncer holds %d server connections (%v), want at most %d", n, err, bouncerPoolSize)
				}
				if on {
					if res.queries != clients*perClient || res.failed != 0 || res.wrong != 0 {
						t.Errorf("pool_pgbouncer=true: %v; first error: %v", res, res.first)
					}
				} else if res.failed == 0 && res.wrong == 0 {
					t.Errorf("control: a *sql.Stmt prepared on the server worked through the bouncer (%v), so this load proves nothing", res)
				}
			})
		}
	}
}

// bouncerWaitServerConns polls the bouncer until it holds want server
// connections or ctx ends, and returns the last count.
func bouncerWaitServerConns(ctx context.Context, b *pgtest.Bouncer, want int) (int, error) {
	for {
		n, err := b.ServerConns(ctx)
		if err != nil || n == want {
			return n, err
		}
		select {
		case <-ctx.Done():
			return n, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// Warming through the bouncer warms client connections: pool_prewarm and
// WarmDB open 12, the bouncer shows 12 clients, but a client's login needs
// no server connection once the pool has one (opened for the first login,
// to learn the server's parameters) — server connections come from
// queries, up to default_pool_size, or from the bouncer's min_pool_size.
func TestPgBouncerWarm(t *testing.T) {
	srv := pgtest.Get(t)
	const n = 12
	for _, tc := range []struct {
		backend warmpg.Backend
		how     string // "pool_prewarm" (warmpg.Open) or "WarmDB" (sql.Open, then WarmDB)
		minPool int
	}{
		{warmpg.BackendPgx, "pool_prewarm", 0},
		{warmpg.BackendPgx, "WarmDB", 0},
		{warmpg.BackendPgx, "pool_prewarm", bouncerPoolSize},
		{warmpg.BackendPQ, "pool_prewarm", 0},
		{warmpg.BackendPQ, "WarmDB", bouncerPoolSize},
	} {
		name := fmt.Sprintf("%s/%s/min_pool_size=%d", tc.backend, tc.how, tc.minPool)
		t.Run(name, func(t *testing.T) {
			ctx := ctxT(t, time.Minute)
			b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize),
				pgtest.WithBouncerSetting("min_pool_size", fmt.Sprint(tc.minPool)))
			app := appName(t)
			params := []string{"pool_backend=" + string(tc.backend), "pool_pgbouncer=true", "application_name=" + app,
				fmt.Sprintf("pool_max_conns=%d", n)}
			start := time.Now()
			var db *sql.DB
			if tc.how == "WarmDB" {
				var err error
				if db, err = sql.Open("warmpg", b.URL(params...)); err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				rep, err := warmpg.WarmDB(ctx, db, warmpg.WithLogger(faultQuietLog))
				if err != nil || rep.Warmed != n {
					t.Fatalf("WarmDB: %+v %v", rep, err)
				}
			} else {
				db = bouncerDB(t, b, append(params, "pool_prewarm=true")...)
			}
			took := time.Since(start)
			clients, err := b.ClientConns(ctx, app)
			if err != nil || clients != n {
				t.Errorf("the bouncer has %d clients named %s (%v), want the %d warmed", clients, app, err, n)
			}
			servers, err := b.ServerConns(ctx)
			if err != nil {
				t.Fatal(err)
			}
			t.Logf("%s: warmed %d client connections in %v; the bouncer holds %d server connections", name, n, took.Round(time.Millisecond), servers)
			if servers > 1 && tc.minPool == 0 {
				t.Errorf("%d server connections for %d warmed clients, want 1 (the first login's): warming through a bouncer opens client connections", servers, n)
			}
			if st := db.Stats(); st.Idle != n {
				t.Errorf("database/sql holds %d idle connections, want %d", st.Idle, n)
			}
			if tc.minPool > 0 {
				// The bouncer's janitor tops the pool up to min_pool_size.
				wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
				got, err := bouncerWaitServerConns(wctx, b, tc.minPool)
				cancel()
				if err != nil {
					t.Errorf("min_pool_size=%d: the bouncer holds %d server connections (%v)", tc.minPool, got, err)
				} else {
					t.Logf("%s: min_pool_size=%d server connections %v after the start of warming", name, got, time.Since(start).Round(10*time.Millisecond))
				}
			}
			// A burst of n queries uses the warmed client connections: no
			// connect, and at most default_pool_size server connections.
			if failed, errs := burstFailures(ctx, db, n); failed != 0 {
				t.Fatalf("%d of %d failed: %v", failed, n, errs)
			}
			if st, _ := warmpg.Stats(db); st.Connects != n {
				t.Errorf("counters %v: the burst dialled, want %d connects", st, n)
			}
			if servers, err := b.ServerConns(ctx); err != nil || servers > bouncerPoolSize {
				t.Errorf("after the burst the bouncer holds %d server connections (%v), want at most %d", servers, err, bouncerPoolSize)
			} else {
				t.Logf("%s: after a burst of %d queries: %d server connections", name, n, servers)
			}
		})
	}
}

// bouncerReasons is a slog handler that counts the reasons warmpg logs
// for discarding a connection (the "reason" attribute), whatever their
// wording.
type bouncerReasons struct {
	mu sync.Mutex
	n  map[string]int
}

func (h *bouncerReasons) Enabled(context.Context, slog.Level) bool { return true }
func (h *bouncerReasons) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *bouncerReasons) WithGroup(string) slog.Handler            { return h }
func (h *bouncerReasons) Handle(_ context.Context, r slog.Record) error {
	if !strings.Contains(r.Message, "discarded") {
		return nil
	}
	r.Attrs(func(a slog.Attr) bool {
		if a.Key == "reason" {
			h.mu.Lock()
			if h.n == nil {
				h.n = map[string]int{}
			}
			h.n[a.Value.String()]++
			h.mu.Unlock()
		}
		return true
	})
	return nil
}

func (h *bouncerReasons) String() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []string
	for k, n := range h.n {
		out = append(out, fmt.Sprintf("%d× %q", n, k))
	}
	sort.Strings(out)
	return strings.Join(out, ", ")
}

var bouncerModes = []warmpg.ResetMode{warmpg.ResetNone, warmpg.ResetCheck, warmpg.ResetPing, warmpg.ResetRollback, warmpg.ResetDiscard}

// bouncerFaultRow is one line of the reset-mode table: how many of a burst
// of 8 queries (one per pooled client connection) failed after each fault.
type bouncerFaultRow struct {
	name                                               string
	before, serverRestart, bouncerRestart, bouncerKill int
	kinds                                              []string
	counters                                           string
}

// Every reset mode through the bouncer, both backends, a pool of 8 warmed
// client connections on 4 server connections, a burst of 8 queries after
// each fault: a fast restart of the PostgreSQL server behind the bouncer
// (pg_ctl restart -m fast), a restart of the bouncer (SIGTERM, start), and
// a crash of the bouncer (SIGKILL, start). Plain pgx's stdlib (exec mode)
// is the control. The table is docs/pgbouncer.md's.
func TestPgBouncerResetModesAcrossRestarts(t *testing.T) {
	ctx := ctxT(t, 5*time.Minute)
	srv := ownCluster(t, ctx)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	const pool = 8
	type pcase struct {
		name    string
		open    func() (*sql.DB, error)
		mode    warmpg.ResetMode // "" for the control
		reasons *bouncerReasons
	}
	var cases []pcase
	for _, bk := range backends {
		for _, mode := range bouncerModes {
			reasons := &bouncerReasons{}
			cases = append(cases, pcase{fmt.Sprintf("%s/%s", bk, mode), func() (*sql.DB, error) {
				return warmpg.Open(b.URL("pool_backend="+string(bk), "pool_reset="+string(mode), "pool_pgbouncer=true",
					fmt.Sprintf("pool_max_conns=%d", pool)), warmpg.WithLogger(slog.New(reasons)))
			}, mode, reasons})
		}
	}
	cases = append(cases, pcase{"pgx-stdlib-exec (control)", func() (*sql.DB, error) {
		db, err := sql.Open("pgx", b.URL("default_query_exec_mode=exec"))
		if err == nil {
			db.SetMaxOpenConns(pool)
			db.SetMaxIdleConns(pool)
		}
		return db, err
	}, "", nil})
	var rows []bouncerFaultRow
	for _, pc := range cases {
		t.Run(pc.name, func(t *testing.T) {
			db, err := pc.open()
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(pool), warmpg.WithLogger(faultQuietLog)); err != nil {
				t.Fatal(err)
			}
			row := bouncerFaultRow{name: pc.name}
			kinds := map[string]int{}
			burst := func(what string) int {
				failed, errs := burstFailures(ctx, db, pool)
				for _, err := range errs {
					kinds[what+": "+faultKind(err)]++
				}
				if failed != 0 {
					t.Logf("%s: %s: %d of %d failed, first: %v", pc.name, what, failed, pool, errs[0])
				}
				// The pool recovers at once: every stale connection was
				// discarded by the burst that failed on it (pgx's stdlib
				// keeps those it used within the last second: measured).
				if n, errs := burstFailures(ctx, db, pool); n != 0 && pc.mode != "" {
					t.Errorf("%s: the pool did not recover: %d of %d failed: %v", what, n, pool, errs[0])
				}
				return failed
			}
			row.before = burst("before")
			if err := srv.Restart(ctx, "fast"); err != nil {
				t.Fatal(err)
			}
			bouncerServes(t, ctx, b)
			row.serverRestart = burst("server restart")
			if err := b.Restart(ctx); err != nil {
				t.Fatal(err)
			}
			row.bouncerRestart = burst("bouncer restart")
			if err := b.Kill(); err != nil {
				t.Fatal(err)
			}
			if err := b.Start(ctx); err != nil {
				t.Fatal(err)
			}
			row.bouncerKill = burst("bouncer killed")
			for k, n := range kinds {
				row.kinds = append(row.kinds, fmt.Sprintf("%d× %s", n, k))
			}
			sort.Strings(row.kinds)
			if st, ok := warmpg.Stats(db); ok {
				row.counters = st.String() + "; discarded because: " + pc.reasons.String()
			}
			rows = append(rows, row)
			if row.before != 0 {
				t.Errorf("%d of %d queries failed before any fault", row.before, pool)
			}
			switch {
			case pc.mode == "":
				// The control is measured, not judged: pgx pings what
				// idled over a second, so its count depends on timing.
			case row.serverRestart != 0:
				// The bouncer's server connections die with the server;
				// its client connections, which are what the pool holds,
				// do not: the bouncer dials new server connections.
				t.Errorf("%d of %d queries failed after a fast restart of the server behind the bouncer", row.serverRestart, pool)
			case pc.mode == warmpg.ResetNone && strings.HasPrefix(pc.name, "pgx"):
				// The control for check: the bouncer's restart really
				// left every pooled connection stale.
				if row.bouncerRestart == 0 || row.bouncerKill == 0 {
					t.Errorf("control: pgx with pool_reset=none lost %d and %d queries after the bouncer restarted and died; want some, or this proves nothing",
						row.bouncerRestart, row.bouncerKill)
				}
			case pc.mode == warmpg.ResetNone:
				// lib/pq reports a write or read that fails before any
				// answer as driver.ErrBadConn, and database/sql retries on
				// another connection: measured, not asserted.
			default:
				if row.bouncerRestart != 0 || row.bouncerKill != 0 {
					t.Errorf("pool_reset=%s lost %d queries after the bouncer restarted and %d after it died; want 0",
						pc.mode, row.bouncerRestart, row.bouncerKill)
				}
				if st, _ := warmpg.Stats(db); st.Discarded < 2*pool {
					t.Errorf("counters %v: want the %d connections the bouncer closed, twice, discarded", st, pool)
				}
			}
		})
	}
	var tbl strings.Builder
	fmt.Fprintf(&tbl, "\n| pool | before | server restart | bouncer restart | bouncer killed | failures |\n|---|---|---|---|---|---|\n")
	for _, r := range rows {
		fmt.Fprintf(&tbl, "| %s | %d/%d | %d/%d | %d/%d | %d/%d | %s |\n", r.name, r.before, pool, r.serverRestart, pool,
			r.bouncerRestart, pool, r.bouncerKill, pool, strings.Join(r.kinds, ", "))
	}
	t.Log(tbl.String())
	for _, r := range rows {
		t.Logf("%s: %s", r.name, r.counters)
	}
}

// A transaction left open on a pooled connection (BEGIN through Exec on a
// *sql.Conn) holds one of the bouncer's server connections until it ends.
// Every mode but lib/pq with pool_reset=none or ping ends it before the
// next user runs: check and rollback send ROLLBACK through the same client
// connection, which the bouncer still links to that server connection;
// discard's statement ends it too; pgx's own check discards the client
// connection in none and ping mode, and the bouncer then closes the
// server connection it was linked to.
func TestPgBouncerLeakedTransaction(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	var table strings.Builder
	table.WriteString("\n| pool | server conns held by the leak | next user inside it | server conns linked after | counters |\n|---|---|---|---|---|\n")
	for _, bk := range backends {
		for _, mode := range bouncerModes {
			name := fmt.Sprintf("%s/%s", bk, mode)
			t.Run(name, func(t *testing.T) {
				ctx := ctxT(t, 30*time.Second)
				db := bouncerDB(t, b, "pool_backend="+string(bk), "pool_reset="+string(mode), "pool_pgbouncer=true", "pool_max_conns=1")
				conn, err := db.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				for _, q := range []string{"BEGIN", "select txid_current()"} {
					if _, err := conn.ExecContext(ctx, q); err != nil {
						t.Fatal(err)
					}
				}
				conn.Close() // back to the pool inside the transaction
				active := func() string {
					p, err := b.Pool(ctx)
					if err != nil {
						t.Fatal(err)
					}
					return p["sv_active"]
				}
				leaked := active()
				var inTx bool
				if err := db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null").Scan(&inTx); err != nil {
					t.Fatal(err)
				}
				after := active()
				st, _ := warmpg.Stats(db)
				fmt.Fprintf(&table, "| %s | %s | %v | %s | %v |\n", name, leaked, inTx, after, st)
				if leaked != "1" {
					t.Errorf("while the transaction is open the bouncer links %s server connections, want 1", leaked)
				}
				// lib/pq reports no transaction status: in every mode warmpg
				// reads the statements for a BEGIN (before that was done in
				// none and ping modes too, lib/pq handed the transaction to
				// the next user and pinned a server connection here).
				if inTx {
					t.Error("the next user ran inside the leaked transaction")
				}
				if after != "0" {
					t.Errorf("after the next user the bouncer still links %s server connections, want 0", after)
				}
			})
		}
	}
	t.Log(table.String())
}

// lib/pq reports no transaction status and its own ResetSession does
// nothing: without a bouncer too, warmpg's reading of the statements for a
// BEGIN is what keeps a leaked transaction from the next user, in every
// mode (none and ping handed it on before this was found).
func TestPgBouncerLeakedTransactionDirect(t *testing.T) {
	srv := pgtest.Get(t)
	for _, mode := range []warmpg.ResetMode{warmpg.ResetNone, warmpg.ResetPing, warmpg.ResetCheck} {
		t.Run(string(mode), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db, err := warmpg.Open(srv.URL("pool_backend=pq", "pool_reset="+string(mode), "pool_max_conns=1"), warmpg.WithLogger(faultQuietLog))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			for _, q := range []string{"BEGIN", "select txid_current()"} {
				if _, err := conn.ExecContext(ctx, q); err != nil {
					t.Fatal(err)
				}
			}
			conn.Close()
			var inTx bool
			if err := db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null").Scan(&inTx); err != nil {
				t.Fatal(err)
			}
			t.Logf("lib/pq, pool_reset=%s, no bouncer: next user inside the leaked transaction: %v", mode, inTx)
			if inTx {
				t.Error("the next user ran inside the leaked transaction")
			}
			if st, _ := warmpg.Stats(db); st.RolledBack != 1 || st.Connects != 1 {
				t.Errorf("counters %v: want the connection rolled back once and kept", st)
			}
		})
	}
}

// Session state under transaction pooling, with one server connection (a
// pool of 1) shared by two client pools A and B, A in check mode: A sets
// something outside a transaction, B then reads it, then A (whose reuse
// runs check) reads it. What check sees is what the bouncer passes on:
// PgBouncer 1.18 tracks client_encoding, DateStyle, TimeZone,
// standard_conforming_strings and application_name per client (it sets
// them again on whichever server connection serves the client), and
// forwards the other settings the server reports
// (default_transaction_read_only, session_authorization, is_superuser) as
// they come. Everything else a SET changes stays on the server connection
// and reaches the next client: B reads A's role, A's read-only default, A's
// statement_timeout — whatever A's reset mode, since B runs before A's next
// reuse. With server_reset_query_always=1 the bouncer runs DISCARD ALL
// each time a server connection goes back to its pool (safe with
// pool_pgbouncer=true, which leaves no prepared statement to discard), and
// nothing reaches B. The table is docs/pgbouncer.md's.
func TestPgBouncerSessionState(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	role := fmt.Sprintf("warmpg_bouncer_role_%d", appSeq.Add(1))
	if err := srv.Exec(ctx, "create role "+role); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Exec(context.Background(), "drop role if exists "+role) })
	settings := []struct {
		name, set, show, param string
		tracked, reported      bool // by the bouncer; by the server (PostgreSQL < 18) to pgx
	}{
		{"TimeZone", "SET TimeZone = 'Asia/Tokyo'", "select current_setting('TimeZone')", "TimeZone", true, true},
		{"DateStyle", "SET DateStyle = 'German'", "select current_setting('DateStyle')", "DateStyle", true, true},
		{"application_name", "SET application_name = 'other_app'", "select current_setting('application_name')", "application_name", true, true},
		{"default_transaction_read_only", "SET default_transaction_read_only = on", "select current_setting('default_transaction_read_only')", "default_transaction_read_only", false, true},
		{"session_authorization", "SET SESSION AUTHORIZATION " + role, "select current_user::text", "session_authorization", false, true},
		{"statement_timeout", "SET statement_timeout = '4321ms'", "select current_setting('statement_timeout')", "", false, false},
		{"search_path", "SET search_path = pg_catalog", "select current_setting('search_path')", "search_path", false, false},
	}
	var pg18 bool
	if n, err := srv.Connect(ctx); err == nil {
		pg18 = n.PgConn().ParameterStatus("search_path") != ""
		n.Close(ctx)
	}
	var table strings.Builder
	table.WriteString("\n| setup | A runs | A's client sees | B then reads | A's reuse (check) | A then reads |\n|---|---|---|---|---|---|\n")
	for _, setup := range []string{"pgx", "pq", "pgx+server_reset_query_always"} {
		bk, resetAlways := warmpg.Backend(strings.TrimSuffix(setup, "+server_reset_query_always")), strings.HasSuffix(setup, "always")
		for _, s := range settings {
			t.Run(setup+"/"+s.name, func(t *testing.T) {
				opts := []pgtest.BouncerOption{pgtest.WithBouncerPoolSize(1)}
				if resetAlways {
					opts = append(opts, pgtest.WithBouncerSetting("server_reset_query", "DISCARD ALL"),
						pgtest.WithBouncerSetting("server_reset_query_always", "1"))
				}
				b := pgtest.PgBouncer(t, srv, opts...)
				a := bouncerDB(t, b, "pool_backend="+string(bk), "pool_pgbouncer=true", "pool_max_conns=1", "application_name=client_a")
				other := bouncerDB(t, b, "pool_backend="+string(bk), "pool_pgbouncer=true", "pool_max_conns=1", "application_name=client_b")
				show := func(db *sql.DB) string {
					var v string
					if err := db.QueryRowContext(ctx, s.show).Scan(&v); err != nil {
						t.Fatalf("%s: %v", s.show, err)
					}
					return v
				}
				initial, bInitial := show(a), show(other)
				c, err := a.Conn(ctx)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := c.ExecContext(ctx, s.set); err != nil {
					t.Fatal(err)
				}
				reported := "—"
				if bk == warmpg.BackendPgx && s.param != "" {
					_ = c.Raw(func(dc any) error {
						reported = warmpg.Unwrap(dc).(interface{ Conn() *pgx.Conn }).Conn().PgConn().ParameterStatus(s.param)
						if reported == "" {
							reported = "(not reported)"
						}
						return nil
					})
				}
				c.Close()
				before, _ := warmpg.Stats(a)
				bSees := show(other)
				aSees := show(a)
				after, _ := warmpg.Stats(a)
				reuse := "clean"
				switch {
				case after.Discarded > before.Discarded:
					reuse = "discarded"
				case after.Reset > before.Reset:
					reuse = "reset"
				case after.Pinged > before.Pinged:
					reuse = "pinged"
				}
				fmt.Fprintf(&table, "| %s | `%s` | %s | %s | %s | %s (was %s) |\n", setup, s.set, reported, bSees, reuse, aSees, initial)

				// What B reads: its own value for what the bouncer tracks,
				// A's for the rest — unless the bouncer resets.
				if leaked := bSees != bInitial; leaked == (s.tracked || resetAlways) {
					t.Errorf("B reads %q (its own before: %q): want A's value to reach B only for a setting the bouncer neither tracks nor resets", bSees, bInitial)
				}
				// What check does on A's reuse: both backends read the SET
				// statement and reset (pgx then sets back, with set_config,
				// what the reset took to the bouncer's server defaults, see
				// TestPgBouncerResetKeepsClientSettings). With
				// server_reset_query_always the bouncer's DISCARD ALL has
				// undone it already, but pgx was not told (no client was
				// linked when the server reported it): for a reported
				// setting the bouncer does not track, pgx's value stays
				// stale, the server reports nothing new, and the connection
				// is discarded — the safe outcome.
				wantReuse := "reset"
				if bk == warmpg.BackendPgx && resetAlways && !s.tracked && (s.reported || (s.name == "search_path" && pg18)) {
					wantReuse = "discarded"
				}
				if reuse != wantReuse {
					t.Errorf("A's reuse: %s, want %s", reuse, wantReuse)
				}
			})
		}
	}
	t.Log(table.String())
}

// Through a transaction-mode bouncer, discardSQL's RESET ALL resets the
// settings to the defaults of the server connection the bouncer lent — not
// to what this client connected with — and the bouncer records the result as
// the client's own. With pgx, warmpg then sets the reported settings that
// differ from their values at connect back with set_config, so a client's
// application_name (from its DSN) survives a discard-mode reuse, and a
// check-mode reset after a SET keeps the connection. lib/pq reports no
// settings, so through the bouncer its application_name is lost after a
// reset (documented in docs/pgbouncer.md). Without a bouncer RESET ALL
// returns to the connection's startup values and nothing is lost (the
// control).
func TestPgBouncerResetKeepsClientSettings(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(1))
	appOf := func(t *testing.T, ctx context.Context, db *sql.DB) string {
		var s string
		if err := db.QueryRowContext(ctx, "select current_setting('application_name')").Scan(&s); err != nil {
			t.Fatal(err)
		}
		return s
	}
	for _, bk := range backends {
		for _, via := range []string{"bouncer", "direct"} {
			t.Run(string(bk)+"/discard/"+via, func(t *testing.T) {
				ctx := ctxT(t, 20*time.Second)
				params := []string{"pool_backend=" + string(bk), "pool_pgbouncer=true", "pool_max_conns=1", "pool_reset=discard", "application_name=client_a"}
				var db *sql.DB
				if via == "bouncer" {
					db = bouncerDB(t, b, params...)
				} else {
					var err error
					if db, err = warmpg.Open(srv.URL(params...), warmpg.WithLogger(faultQuietLog)); err != nil {
						t.Fatal(err)
					}
					defer db.Close()
				}
				first, second := appOf(t, ctx, db), appOf(t, ctx, db)
				t.Logf("%s, pool_reset=discard, %s: application_name %q on first use, %q after one reuse", bk, via, first, second)
				if first != "client_a" {
					t.Fatalf("first use: application_name %q", first)
				}
				if lost := second != "client_a"; lost != (via == "bouncer" && bk == warmpg.BackendPQ) {
					t.Errorf("after a reuse: application_name %q; want it kept, but for lib/pq through the bouncer (see the comment)", second)
				}
			})
		}
	}
	t.Run("pgx/check/SET", func(t *testing.T) {
		ctx := ctxT(t, 20*time.Second)
		db := bouncerDB(t, b, "pool_backend=pgx", "pool_pgbouncer=true", "pool_max_conns=1", "application_name=client_a")
		if _, err := db.ExecContext(ctx, "SET TimeZone = 'Asia/Tokyo'"); err != nil {
			t.Fatal(err)
		}
		app := appOf(t, ctx, db)
		st, _ := warmpg.Stats(db)
		t.Logf("pgx, check, a SET TimeZone through the bouncer: the reuse reset and kept the connection: %v; application_name %q", st, app)
		if st.Discarded != 0 || st.Connects != 1 || st.Reset != 1 || app != "client_a" {
			t.Errorf("counters %v, application_name %q: want the connection reset and kept, its application_name set back", st, app)
		}
	})
}

// bouncerXacts returns the bouncer's total_xact_count and
// total_query_count for b's database (SHOW STATS, kept up to date as
// transactions end).
func bouncerXacts(t *testing.T, ctx context.Context, b *pgtest.Bouncer) (xacts, queries int) {
	t.Helper()
	rows, err := b.Show(ctx, "STATS")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rows {
		if r["database"] == b.Database {
			fmt.Sscan(r["total_xact_count"], &xacts)
			fmt.Sscan(r["total_query_count"], &queries)
			return xacts, queries
		}
	}
	t.Fatalf("SHOW STATS has no line for %s: %v", b.Database, rows)
	return 0, 0
}

// pool_autocommit through the bouncer, counted by a proxy between the
// client and the bouncer and by the bouncer's own statistics: a read-only
// transaction of two statements sends no BEGIN, COMMIT or ROLLBACK, costs
// the round trips of its statements alone, and is two transactions at the
// bouncer (which may run them on different server connections: they share
// no snapshot, as without a bouncer). A read-write transaction still sends
// BEGIN and COMMIT, is one transaction at the bouncer, and keeps one
// server connection throughout.
func TestPgBouncerAutocommit(t *testing.T) {
	srv := pgtest.Get(t)
	b := pgtest.PgBouncer(t, srv, pgtest.WithBouncerPoolSize(bouncerPoolSize))
	proxy, via := proxiedAt(t, b.Addr(), b.URL)
	for _, bk := range backends {
		t.Run(string(bk), func(t *testing.T) {
			ctx := ctxT(t, 20*time.Second)
			db, err := warmpg.Open(via("pool_backend="+string(bk), "pool_pgbouncer=true", "pool_autocommit=true", "pool_max_conns=1"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			useOnce(t, ctx, db)
			const n = 3
			proxy.Reset()
			for range 2 * n {
				useOnce(t, ctx, db)
			}
			plain := roundTrips(proxy)
			proxy.Reset()
			x0, q0 := bouncerXacts(t, ctx, b)
			for i := range n {
				tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
				if err != nil {
					t.Fatal(err)
				}
				for range 2 {
					var got int
					if err := tx.QueryRowContext(ctx, "select $1::int", i).Scan(&got); err != nil || got != i {
						t.Fatalf("read-only transaction through the bouncer: %d %v", got, err)
					}
				}
				if err := tx.Commit(); err != nil {
					t.Fatal(err)
				}
			}
			ro := roundTrips(proxy)
			roQueries := simpleQueries(proxy)
			x1, q1 := bouncerXacts(t, ctx, b)
			if len(roQueries) != 0 {
				t.Errorf("autocommit read-only transactions sent %q", roQueries)
			}
			if ro != plain {
				t.Errorf("%d round trips for %d autocommit transactions of two queries, want %d as for the queries alone", ro, n, plain)
			}
			if x1-x0 != 2*n || q1-q0 != 2*n {
				t.Errorf("the bouncer counted %d transactions and %d queries for %d autocommit transactions of two statements, want %d and %d",
					x1-x0, q1-q0, n, 2*n, 2*n)
			}
			proxy.Reset()
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				t.Fatal(err)
			}
			var pid1, pid2 int
			if err := tx.QueryRowContext(ctx, "select pg_backend_pid() + $1::int", 0).Scan(&pid1); err != nil {
				t.Fatal(err)
			}
			if err := tx.QueryRowContext(ctx, "select pg_backend_pid() + $1::int", 0).Scan(&pid2); err != nil {
				t.Fatal(err)
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			x2, q2 := bouncerXacts(t, ctx, b)
			rw := txControl(proxy)
			if len(rw) != 2 || !strings.HasPrefix(strings.ToLower(rw[0]), "begin") || !strings.EqualFold(rw[1], "commit") {
				t.Errorf("read-write transaction sent %q, want BEGIN and COMMIT", rw)
			}
			// The bouncer counts a query per Sync or simple Query: on pgx
			// the BEGIN travels with the first statement (pool_lazy_begin).
			wantQ := 4
			if bk == warmpg.BackendPgx {
				wantQ = 3
			}
			if x2-x1 != 1 || q2-q1 != wantQ {
				t.Errorf("the bouncer counted %d transactions and %d queries for one read-write transaction of two statements, want 1 and %d", x2-x1, q2-q1, wantQ)
			}
			if pid1 != pid2 {
				t.Errorf("a real transaction ran on two server connections (%d, %d)", pid1, pid2)
			}
			st, _ := warmpg.Stats(db)
			t.Logf("%s: %d queries: %d round trips; %d autocommit read-only transactions of 2 queries: %d round trips, %d transactions at the bouncer, BEGIN/COMMIT sent: %q; read-write: %q, 1 transaction; counters %v",
				bk, 2*n, plain, n, ro, x1-x0, roQueries, rw, st)
			if st.AutocommitTxs != n {
				t.Errorf("counters %v: want %d autocommit transactions", st, n)
			}
		})
	}
}

// bouncerServes waits until a new client of b gets an answer from the
// server behind it. A server login the bouncer tried while a loaded machine
// was still restarting the server fails every client for
// server_login_retry after it ("server login has been failing"), whatever
// the pool: the bursts after a restart measure the pool's stale
// connections, so they start once the bouncer itself serves again.
func bouncerServes(t *testing.T, ctx context.Context, b *pgtest.Bouncer) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := pgx.Connect(ctx, b.URL())
		if err == nil {
			err = c.QueryRow(ctx, "select 1").Scan(new(int))
			c.Close(ctx)
		}
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("the bouncer does not serve 30 s after the server restarted: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
