package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// Issue 23, part 2: warming never holds up a connect. Parse takes the locks
// of the tables a statement names: while another session holds a lock that
// conflicts (SHARE, which a plain CREATE INDEX takes, against an UPDATE's
// ROW EXCLUSIVE; ACCESS EXCLUSIVE, which ALTER TABLE takes, against
// anything), a connection warming that statement would wait for it —
// before it is handed out, and with no deadline at all for prewarm and
// keep-warm. Warming's guard gives the server a lock_timeout for that round
// trip: warming stops on that connection, which is handed out; the
// connections of the next second warm all but the locked statement, and
// those after that try it again.

// holdLock takes mode on table in a transaction of its own and returns the
// function that ends it.
func holdLock(t *testing.T, ctx context.Context, srv *pgtest.Server, table, mode string) func() {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "begin; lock table "+table+" in "+mode+" mode"); err != nil {
		c.Close(ctx)
		t.Fatal(err)
	}
	done := false
	release := func() {
		if !done {
			done = true
			_, _ = c.Exec(context.Background(), "rollback")
			c.Close(context.Background())
		}
	}
	t.Cleanup(release)
	return release
}

func TestWarmStatementsNeverWaitOnALock(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	for _, mode := range []string{"share", "access exclusive"} {
		t.Run(mode, func(t *testing.T) {
			hot := newTable(t, ctx, srv, "hot", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
			cold := newTable(t, ctx, srv, "cold", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
			update := "update " + hot + " set v = v + 1 where id = $1"
			others := []string{"select v from " + cold + " where id = $1", "update " + cold + " set v = v + 1 where id = $1"}
			declared := append(append([]string{}, others[0]), update, others[1])
			p, url := proxied(t, srv)
			db, err := warmpg.Open(url("pool_max_conns=1", "application_name="+appName(t)), warmpg.WithWarmStatements(declared...))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			before := warmStats(t, db)

			release := holdLock(t, ctx, srv, hot, mode)
			// A new connection, dialled for a request, then its first
			// query, which touches no locked table. Before the fix it
			// waited for the lock until its deadline.
			db.SetMaxIdleConns(0)
			db.SetMaxIdleConns(1)
			qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
			start := time.Now()
			var one int
			err = db.QueryRowContext(qctx, "select 1").Scan(&one)
			took := time.Since(start)
			cancel()
			if err != nil {
				t.Fatalf("first query on a new connection while %s is held on %s: %v after %v", mode, hot, err, took)
			}
			st := warmStats(t, db)
			if warmed, failed := st.StatementsWarmed-before.StatementsWarmed, st.StatementsWarmFailed-before.StatementsWarmFailed; warmed != 0 || failed != 3 {
				t.Errorf("the connection that met the lock: %d statements warmed, %d not; want 0 and 3 (warming stops at a lock)", warmed, failed)
			}
			// The connections after it leave the locked statement out
			// for a while, and warm the others: their first use sends
			// no Parse.
			before = warmStats(t, db)
			db.SetMaxIdleConns(0)
			db.SetMaxIdleConns(1)
			if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
			st = warmStats(t, db)
			if warmed, failed := st.StatementsWarmed-before.StatementsWarmed, st.StatementsWarmFailed-before.StatementsWarmFailed; warmed != 2 || failed != 0 {
				t.Errorf("the next connection: %d statements warmed, %d not; want 2 and 0 (all but the locked one)", warmed, failed)
			}
			for _, q := range others {
				p.Reset()
				if err := runOnce(ctx, db, q); err != nil {
					t.Fatal(err)
				}
				if n := p.Count('P'); n != 0 {
					t.Errorf("first use of %q on the next connection: %d Parse, want 0", q, n)
				}
			}

			// Prewarm and keep-warm dial without a request's deadline:
			// they complete too.
			db2, err := warmpg.Open(url("pool_max_conns=3", "pool_prewarm=true", "pool_warm_timeout=20s",
				"application_name="+appName(t)), warmpg.WithWarmStatements(declared...))
			if err != nil {
				t.Fatalf("prewarm while %s is held: %v", mode, err)
			}
			defer db2.Close()
			if s := db2.Stats(); s.Idle != 3 {
				t.Errorf("prewarm while %s is held: %d idle, want 3", mode, s.Idle)
			}
			db3, err := warmpg.Open(url("pool_max_conns=4", "pool_min_idle_conns=2", "application_name="+appName(t)),
				warmpg.WithWarmStatements(declared...))
			if err != nil {
				t.Fatal(err)
			}
			defer db3.Close()
			deadline := time.Now().Add(20 * time.Second)
			for warmStats(t, db3).Connects < 2 && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if n := warmStats(t, db3).Connects; n < 2 {
				t.Errorf("keep-warm while %s is held: %d connects, want its 2 ready connections", mode, n)
			}

			// Skipped, not forgotten: once the lock is gone (and the
			// second it is left out for has passed), a new connection
			// warms it, and its first use is one round trip.
			release()
			time.Sleep(1200 * time.Millisecond)
			before = warmStats(t, db)
			db.SetMaxIdleConns(0)
			db.SetMaxIdleConns(1)
			if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatal(err)
			}
			if st := warmStats(t, db); st.StatementsWarmed-before.StatementsWarmed != 3 {
				t.Errorf("after the lock: %d statements warmed, want 3: the locked one was forgotten", st.StatementsWarmed-before.StatementsWarmed)
			}
			p.Reset()
			if err := runOnce(ctx, db, update); err != nil {
				t.Fatal(err)
			}
			if n := p.Count('P'); n != 0 {
				t.Errorf("first use of %q after the lock: %d Parse, want 0", update, n)
			}
			t.Logf("%s held: first query on a new connection in %v", mode, took)
		})
	}
}

// The same with the statement learned rather than declared, and with
// database/sql's own opener goroutine dialling (a request waiting behind a
// busy pool of one): the connect completes.
func TestWarmStatementsLearnedUnderLock(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	hot := newTable(t, ctx, srv, "hot", "create table %[1]s (id int primary key, v int); insert into %[1]s values (1, 0)")
	update := "update " + hot + " set v = v + 1 where id = $1"
	db, err := warmpg.Open(srv.URL("pool_max_conns=1", "application_name="+appName(t)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	for range 1000 { // sampled one in 16: learned with near certainty
		if _, err := db.ExecContext(ctx, update, 1); err != nil {
			t.Fatal(err)
		}
	}
	holdLock(t, ctx, srv, hot, "access exclusive")
	before := warmStats(t, db)
	db.SetMaxIdleConns(0)
	db.SetMaxIdleConns(1)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// While c holds the only connection, a second request waits; c's
	// return with a bad connection makes database/sql's opener dial.
	got := make(chan error, 1)
	go func() {
		qctx, cancel := context.WithTimeout(ctx, 20*time.Second)
		defer cancel()
		var one int
		got <- db.QueryRowContext(qctx, "select 1").Scan(&one)
	}()
	_ = c.Raw(func(any) error { return fmt.Errorf("drop it: %w", sql.ErrConnDone) })
	c.Close()
	if err := <-got; err != nil {
		t.Fatalf("a request behind the pool's only connection while ACCESS EXCLUSIVE is held: %v", err)
	}
	if st := warmStats(t, db); st.StatementsWarmFailed == before.StatementsWarmFailed {
		t.Errorf("the locked statement was not skipped (StatementsWarmFailed %d → %d)", before.StatementsWarmFailed, st.StatementsWarmFailed)
	}
}
