package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// The path issue 23 (part 4) names: every backend of a warm pool is
// terminated (a failover, an idle-session killer), the application pauses,
// then a burst arrives. database/sql still holds its idle connections, now
// dead; keep-warm holds its ready ones, also dead.

// terminateDSN is issue 23's pool: 6 idle connections in database/sql, 6
// ready ones in keep-warm, statement warming on.
const terminateDSN = "pool_max_conns=12&pool_max_idle_conns=6&pool_min_idle_conns=6"

// terminateBurst is one burst of the issue's: n concurrent
// `select $1::int + 1`, each on a connection of its own (db.Conn), so that
// the proxy's per-connection log shows what each one's use sent. It returns
// the latencies, sorted.
func terminateBurst(ctx context.Context, db *sql.DB, n int) ([]time.Duration, error) {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			t0 := time.Now()
			var x int
			errs[i] = db.QueryRowContext(ctx, "select $1::int + 1", i).Scan(&x)
			lat[i] = time.Since(t0)
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			return nil, err
		}
	}
	slices.Sort(lat)
	return lat, nil
}

// openTerminatePool opens the pool on url, warms it (WarmDB) and
// runs bursts bursts of 6, returning their latencies, sorted.
func openTerminatePool(ctx context.Context, url string, bursts int) (*sql.DB, []time.Duration, error) {
	db, err := warmpg.Open(url, warmpg.WithLogger(discardLog))
	if err != nil {
		return nil, nil, err
	}
	if _, err := warmpg.WarmDB(ctx, db); err != nil {
		db.Close()
		return nil, nil, err
	}
	var steady []time.Duration
	for range bursts {
		lat, err := terminateBurst(ctx, db, 6)
		if err != nil {
			db.Close()
			return nil, nil, err
		}
		steady = append(steady, lat...)
	}
	slices.Sort(steady)
	return db, steady, nil
}

// waitCounters polls db's counters until ok holds or d passes, and returns
// the last ones read.
func waitCounters(db *sql.DB, d time.Duration, ok func(warmpg.Counters) bool) warmpg.Counters {
	deadline := time.Now().Add(d)
	for {
		st, _ := warmpg.Stats(db)
		if ok(st) || time.Now().After(deadline) {
			return st
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// After every backend of the pool is terminated, keep-warm replaces, before
// the next burst, both its own ready connections and database/sql's idle
// ones: the burst finds every dead connection it discards replaced by a
// ready one with the learned statement prepared, so each first use is one
// round trip (Bind, Execute, Sync: no Parse), no connection is dialled
// while it runs, and none has to be dialled after it. Counted by the proxy
// and the counters, not timed; the burst holds its 6 connections at once
// (heldBurst), so it uses 6 however the goroutines are scheduled.
func TestKeepWarmTerminatedReplacedBeforeUse(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	app := appName(t)
	p, url := proxied(t, srv)
	db, _, err := openTerminatePool(ctx, url("application_name="+app)+"&"+terminateDSN, 48)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// 288 executions, one in 16 sampled: the statement is learned (two
	// samples) but with probability below 1e-6.
	if n, err := srv.WaitBackendCount(ctx, app, 12); err != nil {
		t.Fatalf("%d backends, want 6 in database/sql and 6 ready: %v", n, err)
	}
	st0 := settled(t, db)
	if n, err := srv.TerminateBackends(ctx, app); err != nil || n != 12 {
		t.Fatalf("terminated %d backends (%v), want 12", n, err)
	}
	// The pause was 3 s; here only as long as keep-warm takes
	// (bounded), then two more of its ticks for anything it would still do.
	waitCounters(db, 10*time.Second, func(st warmpg.Counters) bool { return st.Connects >= st0.Connects+12 })
	st1 := settled(t, db)
	if got := st1.Connects - st0.Connects; got != 12 {
		t.Errorf("keep-warm dialled %d connections after the terminate, want 12: its 6 ready ones and database/sql's 6 idle ones (counters %v)", got, st1)
	}
	// The dead ones hold no backend: the server sees pool_max_conns.
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 12 {
		t.Errorf("%d backends after the replacements (%v), want 12 (pool_max_conns)", n, err)
	}

	p.Reset()
	if err := heldBurst(ctx, db, 6); err != nil {
		t.Fatal(err)
	}
	st2 := mustStats(t, db)
	// Anything the burst made keep-warm dial would show within its ticks.
	time.Sleep(time.Second)
	st3 := mustStats(t, db)
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 12 {
		t.Errorf("%d backends after the burst (%v), want 12: 6 in database/sql, 6 ready", n, err)
	}

	// What each connection sent, apart from those opened since the
	// Reset (their startup and warming).
	perConn := map[int]string{}
	dialled := map[int]bool{}
	for _, m := range p.Messages() {
		if m.Type == pgproxy.KeyStartup {
			dialled[m.Conn] = true
		}
		perConn[m.Conn] += string(rune(m.Type))
	}
	used := 0
	for c, msgs := range perConn {
		if dialled[c] {
			continue
		}
		used++
		if msgs != "BES" {
			t.Errorf("connection %d's first use sent %q, want \"BES\" (Bind, Execute, Sync: one round trip, the statement warmed)", c, msgs)
		}
	}
	if used != 6 {
		t.Errorf("the burst used %d connections opened before it, want 6", used)
	}
	if st2.Discarded-st1.Discarded != 6 || st2.FromReady-st1.FromReady != 6 {
		t.Errorf("counters %v: want database/sql's 6 dead connections discarded and 6 taken from the ready store", st2)
	}
	if st3.Connects != st1.Connects || len(dialled) != 0 {
		t.Errorf("%d connects and %d connections dialled during and after the burst, want none: keep-warm had replaced every dead connection before it (counters %v)",
			st3.Connects-st1.Connects, len(dialled), st3)
	}
}

// heldBurst is terminateBurst with each of the n connections taken before
// any query runs, so that none returns to database/sql's pool before all
// are out: the burst uses n distinct connections however the goroutines
// are scheduled, and every dead idle connection is found by one of them.
func heldBurst(ctx context.Context, db *sql.DB, n int) error {
	errs := make([]error, n)
	var got, wg sync.WaitGroup
	got.Add(n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := db.Conn(ctx)
			got.Done()
			if err != nil {
				errs[i] = err
				return
			}
			defer c.Close()
			got.Wait()
			var x int
			errs[i] = c.QueryRowContext(ctx, "select $1::int + 1", i).Scan(&x)
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// settled waits (bounded) until db's Connects has not changed for longer
// than keep-warm's tick, and returns the counters.
func settled(t *testing.T, db *sql.DB) warmpg.Counters {
	t.Helper()
	last := mustStats(t, db)
	for range 20 {
		time.Sleep(600 * time.Millisecond)
		st := mustStats(t, db)
		if st.Connects == last.Connects {
			return st
		}
		last = st
	}
	t.Fatalf("connects still rising: %v", last)
	return last
}

// BenchmarkKeepWarmTerminated is issue 23's part 4 at 5 ms RTT: the pool
// of terminateDSN, WarmDB, 20 bursts of 6 concurrent `select $1::int + 1`
// (steady), pg_terminate_backend for every backend of the pool, a 3 s
// pause, then one burst of 6 (after). A fresh pool per iteration and
// variant; variants, interleaved:
//
//	warm     pool_warm_statements=16
//	off      pool_warm_statements=0
//	idle     as warm, but nothing is terminated: the same pause, the same
//	         connections (what the pause alone costs on this machine)
//	pgx      plain database/sql over pgx, the same pool sizes, terminated
//
// Metrics, medians over iterations: <variant>-steady-ms (p50 of the 20
// bursts), <variant>-after-ms (p50 of the burst after the pause), and
// <variant>-after/steady, their ratio (the target for warm:
// <= 1.3); warm-after/idle-after says what terminating cost beyond the
// pause.
//
//	go test -run '^$' -bench BenchmarkKeepWarmTerminated -benchtime 5x .
func BenchmarkKeepWarmTerminated(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), benchTimeout)
	defer cancel()
	url := serverURL(b, srv, 5*time.Millisecond)
	names := []string{"warm", "off", "idle", "pgx"}
	steady := map[string][]time.Duration{}
	after := map[string][]time.Duration{}
	ratio := map[string][]float64{}
	for i := 0; b.Loop(); i++ {
		for _, name := range warmbench.Rotate(names, i) {
			app := fmt.Sprintf("warmpg_bench_terminated_%s", name)
			s, a, err := terminatedRun(ctx, srv, url("application_name="+app), app, name)
			if err != nil {
				b.Fatalf("%s: %v", name, err)
			}
			steady[name] = append(steady[name], s)
			after[name] = append(after[name], a)
			ratio[name] = append(ratio[name], float64(a)/float64(s))
		}
	}
	for _, name := range names {
		b.ReportMetric(ms(warmbench.Median(steady[name])), name+"-steady-ms")
		b.ReportMetric(ms(warmbench.Median(after[name])), name+"-after-ms")
		b.ReportMetric(warmbench.Median(ratio[name]), name+"-after/steady")
	}
	b.ReportMetric(ms(warmbench.Median(after["warm"]))/ms(warmbench.Median(after["idle"])), "warm-after/idle-after")
}

// terminatedRun is one of BenchmarkKeepWarmTerminated's iterations for one
// variant: it returns the steady p50 and the p50 of the burst after the
// pause, and leaves no backend of app behind.
func terminatedRun(ctx context.Context, srv *pgtest.Server, url, app, name string) (steady, after time.Duration, err error) {
	var db *sql.DB
	var lat []time.Duration
	if name == "pgx" {
		db, err = sql.Open("pgx", url)
		if err == nil {
			db.SetMaxOpenConns(12)
			db.SetMaxIdleConns(6)
			lat, err = plainBursts(ctx, db, 20)
		}
	} else {
		k := map[string]string{"warm": "16", "off": "0", "idle": "16"}[name]
		db, lat, err = openTerminatePool(ctx, url+"&"+terminateDSN+"&pool_warm_statements="+k, 20)
	}
	if err != nil {
		if db != nil {
			db.Close()
		}
		return 0, 0, err
	}
	defer func() {
		db.Close()
		if _, werr := srv.WaitBackendCount(ctx, app, 0); err == nil {
			err = werr
		}
	}()
	steady = pct(lat, 0.5)
	if name != "idle" {
		if _, err := srv.TerminateBackends(ctx, app); err != nil {
			return 0, 0, err
		}
	}
	time.Sleep(3 * time.Second)
	lat, err = terminateBurst(ctx, db, 6)
	if err != nil {
		return 0, 0, err
	}
	return steady, pct(lat, 0.5), nil
}

// plainBursts runs bursts bursts of 6 on db and returns their latencies,
// sorted.
func plainBursts(ctx context.Context, db *sql.DB, bursts int) ([]time.Duration, error) {
	var all []time.Duration
	for range bursts {
		lat, err := terminateBurst(ctx, db, 6)
		if err != nil {
			return nil, err
		}
		all = append(all, lat...)
	}
	slices.Sort(all)
	return all, nil
}
