package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Issue 15, part 2: statement warming (statements.go, docs/statements.md).

// warmTables creates a table of 64 rows (id, a, b) and an empty one (id)
// and returns their names.
func warmTables(t *testing.T, ctx context.Context, srv *pgtest.Server) (full, empty string) {
	t.Helper()
	n := appSeq.Add(1)
	full, empty = fmt.Sprintf("warmst_%d", n), fmt.Sprintf("warmst_ins_%d", n)
	if err := srv.Exec(ctx, "create table "+full+" (id int primary key, a int, b text); insert into "+full+
		" select i, i, 'x' || i from generate_series(1, 64) i; create table "+empty+" (id int)"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = srv.Exec(ctx, "drop table if exists "+full+"; drop table if exists "+empty)
	})
	return full, empty
}

// hotQueries are k parameterized statements on table full, and one INSERT
// into empty.
func hotQueries(full, empty string, k int) []string {
	qs := make([]string, 0, k+1)
	for i := range k {
		qs = append(qs, fmt.Sprintf("select id, a, b, %d as q from %s where id = $1", i, full))
	}
	return append(qs, "insert into "+empty+" (id) values ($1)")
}

// runOnce runs q with one argument, as the application would.
func runOnce(ctx context.Context, db *sql.DB, q string) error {
	if strings.HasPrefix(q, "insert") {
		_, err := db.ExecContext(ctx, q, 1)
		return err
	}
	rows, err := db.QueryContext(ctx, q, 1)
	if err != nil {
		return err
	}
	for rows.Next() {
	}
	rows.Close()
	return rows.Err()
}

// msgCount counts the proxy's messages of the given types, but for the
// Parse, Bind and Execute of statement warming's guard (its timeouts, sent
// ahead of each warming batch), whose Parses it counts apart.
func msgCount(p *pgproxy.Proxy, types string) (m map[byte]int, guards int) {
	m = map[byte]int{}
	skip := 0
	for _, msg := range p.Messages() {
		switch {
		case msg.Type == 'P' && strings.HasPrefix(msg.Text, warmGuardPrefix):
			guards++
			skip = 2 // its Bind and Execute
			continue
		case skip > 0 && (msg.Type == 'B' || msg.Type == 'E'):
			skip--
			continue
		}
		if strings.IndexByte(types, msg.Type) >= 0 {
			m[msg.Type]++
		}
	}
	return m, guards
}

// warmGuardPrefix begins the text of statement warming's guard.
const warmGuardPrefix = "select set_config('lock_timeout'"

func warmStats(t *testing.T, db *sql.DB) warmpg.Counters {
	t.Helper()
	st, ok := warmpg.Stats(db)
	if !ok {
		t.Fatal("not a warmpg DB")
	}
	return st
}

// firstUseRoundTrips warms a one-connection pool and returns the round
// trips, and Parse messages, of the first execution of each query on it.
func firstUseRoundTrips(t *testing.T, ctx context.Context, db *sql.DB, p *pgproxy.Proxy, qs []string) (rts, parses []int) {
	t.Helper()
	for _, q := range qs {
		p.Reset()
		if err := runOnce(ctx, db, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		rts = append(rts, roundTrips(p))
		parses = append(parses, p.Count('P'))
	}
	return rts, parses
}

// TestWarmStatementsExecuteNothing holds pgx to what statement warming
// relies on (see statements.go): the warming batch prepares every
// statement in one round trip and executes none — no Bind, no Execute, and
// a warmed INSERT inserted nothing — and the first execution of each
// warmed statement is then one round trip with no Parse. Without warming
// (pool_warm_statements=0) the first execution is two round trips. A pgx
// upgrade that changes either fails here.
func TestWarmStatementsExecuteNothing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, empty := warmTables(t, ctx, srv)
	qs := hotQueries(full, empty, 5)
	p, url := proxied(t, srv)
	for _, warmOn := range []bool{true, false} {
		t.Run(fmt.Sprintf("warm=%v", warmOn), func(t *testing.T) {
			params := []string{"pool_max_conns=1", "application_name=" + appName(t)}
			if !warmOn {
				params = append(params, "pool_warm_statements=0")
			}
			db, err := warmpg.Open(url(params...), warmpg.WithWarmStatements(qs...))
			if !warmOn && err == nil {
				t.Fatal("WithWarmStatements with pool_warm_statements=0: no error")
			}
			if !warmOn {
				db, err = warmpg.Open(url(params...))
			}
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if err := srv.Exec(ctx, "truncate "+empty); err != nil {
				t.Fatal(err)
			}
			p.Reset()
			if _, err := warmpg.WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			got, guards := msgCount(p, "PDBES")
			want := map[byte]int{'P': len(qs), 'D': len(qs), 'B': 0, 'E': 0, 'S': 1}
			wantGuards := 1
			if !warmOn {
				want = map[byte]int{'P': 0, 'D': 0, 'B': 0, 'E': 0, 'S': 0}
				wantGuards = 0
			}
			if guards != wantGuards {
				t.Errorf("while warming: %d guards sent, want %d (one per round trip)", guards, wantGuards)
			}
			for typ, n := range want {
				if got[typ] != n {
					t.Errorf("while warming: %d %q messages, want %d (all: %v)", got[typ], typ, n, got)
				}
			}
			var rowsIn int
			if err := db.QueryRowContext(ctx, "select count(*) from "+empty).Scan(&rowsIn); err != nil || rowsIn != 0 {
				t.Fatalf("rows in %s after warming: %d (%v), want 0: the warmed INSERT ran", empty, rowsIn, err)
			}
			st := warmStats(t, db)
			if wantWarmed := map[bool]int64{true: int64(len(qs)), false: 0}[warmOn]; st.StatementsWarmed != wantWarmed || st.StatementsWarmFailed != 0 {
				t.Errorf("StatementsWarmed=%d StatementsWarmFailed=%d, want %d and 0", st.StatementsWarmed, st.StatementsWarmFailed, wantWarmed)
			}
			rts, parses := firstUseRoundTrips(t, ctx, db, p, qs)
			for i, q := range qs {
				wantRT, wantP := 1, 0
				if !warmOn {
					wantRT, wantP = 2, 1
				}
				if rts[i] != wantRT || parses[i] != wantP {
					t.Errorf("first execution of %q: %d round trips, %d Parse; want %d and %d", q, rts[i], parses[i], wantRT, wantP)
				}
			}
			t.Logf("warm=%v: round trips of the first execution of %d statements: %v", warmOn, len(qs), rts)
		})
	}
}

// Statements that cannot warm: lib/pq (no statement cache), pgx in another
// exec mode, pool_pgbouncer. Nothing is prepared ahead and nothing fails.
func TestWarmStatementsOnlyWhereTheyCan(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, empty := warmTables(t, ctx, srv)
	qs := hotQueries(full, empty, 2)
	p, url := proxied(t, srv)
	for _, params := range [][]string{
		{"pool_backend=pq"},
		{"default_query_exec_mode=exec"},
		{"default_query_exec_mode=cache_describe"},
		{"pool_pgbouncer=true"},
	} {
		t.Run(strings.Join(params, ","), func(t *testing.T) {
			db, err := warmpg.Open(url(append(params, "pool_max_conns=1", "application_name="+appName(t))...), warmpg.WithWarmStatements(qs...))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			p.Reset()
			if _, err := warmpg.WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			if n := p.Count('P'); n != 0 {
				t.Errorf("%d Parse messages while warming, want 0", n)
			}
			for _, q := range qs {
				if err := runOnce(ctx, db, q); err != nil {
					t.Fatalf("%s: %v", q, err)
				}
			}
			if st := warmStats(t, db); st.StatementsWarmed != 0 || st.StatementsWarmFailed != 0 {
				t.Errorf("StatementsWarmed=%d StatementsWarmFailed=%d, want 0 and 0", st.StatementsWarmed, st.StatementsWarmFailed)
			}
		})
	}
}

// A declared statement that cannot be prepared (its table is gone) is
// skipped and counted; the connect succeeds and the others are warm.
func TestWarmStatementsSkipFailing(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, empty := warmTables(t, ctx, srv)
	good := hotQueries(full, empty, 3)
	bad := "select * from warmst_no_such_table where id = $1"
	qs := append([]string{good[0], bad}, good[1:]...)
	p, url := proxied(t, srv)
	db, err := warmpg.Open(url("pool_max_conns=1", "application_name="+appName(t)), warmpg.WithWarmStatements(qs...))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	rep, err := warmpg.WarmDB(ctx, db)
	if err != nil || rep.Warmed != 1 {
		t.Fatalf("WarmDB: %v %v", rep, err)
	}
	st := warmStats(t, db)
	if st.StatementsWarmed != int64(len(good)) || st.StatementsWarmFailed != 1 {
		t.Errorf("StatementsWarmed=%d StatementsWarmFailed=%d, want %d and 1", st.StatementsWarmed, st.StatementsWarmFailed, len(good))
	}
	rts, parses := firstUseRoundTrips(t, ctx, db, p, good)
	for i, q := range good {
		if rts[i] != 1 || parses[i] != 0 {
			t.Errorf("first execution of %q: %d round trips, %d Parse; want 1 and 0", q, rts[i], parses[i])
		}
	}

	// Only failing statements: the connect still succeeds.
	db2, err := warmpg.Open(url("pool_max_conns=1", "application_name="+appName(t)), warmpg.WithWarmStatements(bad, bad+" and 1 = 1"))
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	if rep, err := warmpg.WarmDB(ctx, db2); err != nil || rep.Warmed != 1 {
		t.Fatalf("WarmDB: %v %v", rep, err)
	}
	if st := warmStats(t, db2); st.StatementsWarmed != 0 || st.StatementsWarmFailed != 2 {
		t.Errorf("StatementsWarmed=%d StatementsWarmFailed=%d, want 0 and 2", st.StatementsWarmed, st.StatementsWarmFailed)
	}
	if err := runOnce(ctx, db2, good[0]); err != nil {
		t.Fatal(err)
	}
}

// forceNewConn closes db's idle connections and warms a new one.
func forceNewConn(t *testing.T, ctx context.Context, db *sql.DB, n int) {
	t.Helper()
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(n)
	if rep, err := warmpg.WarmDB(ctx, db); err != nil || rep.Warmed != n {
		t.Fatalf("WarmDB: %v %v", rep, err)
	}
}

// Learned statements: after the application ran a statement often, a new
// connection prepares it ahead; one run once is not learned.
func TestWarmStatementsLearned(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, empty := warmTables(t, ctx, srv)
	qs := hotQueries(full, empty, 2)
	once := fmt.Sprintf("select id from %s where a = $1", full)
	p, url := proxied(t, srv)
	db, err := warmpg.Open(url("pool_max_conns=1", "application_name="+appName(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// Sampled one in 16; 1,000 runs of each sample it about 60 times,
	// and fewer than 2 with a probability below 1e-20.
	for range 1000 {
		for _, q := range qs {
			if err := runOnce(ctx, db, q); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := runOnce(ctx, db, once); err != nil {
		t.Fatal(err)
	}
	p.Reset()
	forceNewConn(t, ctx, db, 1)
	if m, _ := msgCount(p, "P"); m['P'] != len(qs) {
		t.Errorf("the new connection prepared %d statements, want %d", m['P'], len(qs))
	}
	for _, m := range p.Messages() {
		if m.Type == 'P' && m.Text == once {
			t.Errorf("a statement run once was warmed")
		}
	}
	rts, parses := firstUseRoundTrips(t, ctx, db, p, qs)
	for i, q := range qs {
		if rts[i] != 1 || parses[i] != 0 {
			t.Errorf("first execution of %q: %d round trips, %d Parse; want 1 and 0", q, rts[i], parses[i])
		}
	}

	// The selects' table goes: the next connection fails to prepare them,
	// counts it, connects anyway with the INSERT warm, and forgets them, so
	// the one after prepares the INSERT alone.
	if err := srv.Exec(ctx, "drop table "+full); err != nil {
		t.Fatal(err)
	}
	before := warmStats(t, db)
	forceNewConn(t, ctx, db, 1)
	selects := int64(len(qs) - 1)
	if st := warmStats(t, db); st.StatementsWarmFailed-before.StatementsWarmFailed != selects || st.StatementsWarmed-before.StatementsWarmed != 1 {
		t.Errorf("after DROP TABLE: StatementsWarmFailed %d → %d, StatementsWarmed %d → %d; want +%d and +1",
			before.StatementsWarmFailed, st.StatementsWarmFailed, before.StatementsWarmed, st.StatementsWarmed, selects)
	}
	p.Reset()
	forceNewConn(t, ctx, db, 1)
	if m, _ := msgCount(p, "P"); m['P'] != 1 {
		t.Errorf("the connection after prepared %d statements, want 1 (the INSERT): the failed ones were not forgotten", m['P'])
	}
}

// Part 1 works on warmed statements: after ALTER TABLE … ADD COLUMN from
// another session, the first execution of a warmed SELECT * on each
// connection succeeds with the new column: the first connection resends
// it, and tells the others, which drop their warmed copy before they run
// it (markStale): one resend in all.
func TestWarmStatementsReplan(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, _ := warmTables(t, ctx, srv)
	q := "select * from " + full + " where id = $1"
	const n = 3
	db, err := warmpg.Open(srv.URL(fmt.Sprintf("pool_max_conns=%d", n), "application_name="+appName(t)), warmpg.WithWarmStatements(q))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := warmpg.WarmDB(ctx, db); err != nil {
		t.Fatal(err)
	}
	if st := warmStats(t, db); st.StatementsWarmed != n {
		t.Fatalf("StatementsWarmed=%d, want %d", st.StatementsWarmed, n)
	}
	if err := srv.Exec(ctx, "alter table "+full+" add column c int default 7"); err != nil {
		t.Fatal(err)
	}
	conns := make([]*sql.Conn, n) // each warmed connection once
	for i := range conns {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns[i] = c
		cols, err := replanColumns(c.QueryContext(ctx, q, 1))
		if err != nil || cols != 4 {
			t.Errorf("connection %d: %d columns, %v; want 4 and no error", i, cols, err)
		}
	}
	for _, c := range conns {
		c.Close()
	}
	if got := replans(t, db); got != 1 {
		t.Errorf("Replans=%d, want 1 (the first connection's; the others dropped their copy first)", got)
	}
}

// pool_reset=discard keeps warmed statements: its reset drops no protocol
// statement (reset.go, discardSQL), so pgx's cache stays true and reused
// connections run them in one round trip.
func TestWarmStatementsSurviveDiscardReset(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	full, empty := warmTables(t, ctx, srv)
	qs := hotQueries(full, empty, 2)
	p, url := proxied(t, srv)
	db, err := warmpg.Open(url("pool_max_conns=1", "pool_reset=discard", "application_name="+appName(t)), warmpg.WithWarmStatements(qs...))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := warmpg.WarmDB(ctx, db); err != nil {
		t.Fatal(err)
	}
	for round := range 3 {
		for _, q := range qs {
			p.Reset()
			if err := runOnce(ctx, db, q); err != nil {
				t.Fatalf("round %d, %s: %v", round, q, err)
			}
			if n := p.Count('P'); n != 0 {
				t.Errorf("round %d, %s: %d Parse, want 0: the statement was lost", round, q, n)
			}
		}
	}
	if st := warmStats(t, db); st.Reset == 0 {
		t.Errorf("no discard reset ran (Reset=%d)", st.Reset)
	}
}
