package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // "pgx"
	_ "github.com/lib/pq"              // "postgres"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// demotionRun is what a demotion did to a pool's writes.
type demotionRun struct {
	ok, failed int // writes during the run
	readOnly   int // of the failed: 25006
	// okReadOnly: writes that succeeded while the server was read-only:
	// sent 100 ms or more after the reload reached the server's sessions,
	// and answered before the writer's return began.
	okReadOnly int
	firstOK    time.Duration // from the writer's return to the first write that succeeded after it
}

// runDemotion writes from 4 workers through db (every 10 ms each, each
// write bounded by 3 s) for 2.5 s; at 0.5 s the server is made read-only
// (ALTER SYSTEM SET default_transaction_read_only = on, reload: what a
// writer that came back as a reader looks like to its sessions), at 1.5 s
// a writer again.
func runDemotion(t *testing.T, ctx context.Context, srv *pgtest.Server, db *sql.DB, table string) demotionRun {
	t.Helper()
	set := func(sql, want string) func() {
		return func() {
			if err := srv.Exec(ctx, sql); err != nil {
				t.Error(err)
			}
			if err := srv.Exec(ctx, "select pg_reload_conf()"); err != nil {
				t.Error(err)
			}
			// pg_reload_conf only signals the postmaster; it reloads and
			// signals the backends when it gets to it (tens of ms on a
			// loaded machine). A new session sees the setting once the
			// postmaster has reloaded, and the backends were signalled
			// then: the demotion counts from here.
			waitSetting(t, ctx, srv, "default_transaction_read_only", want)
		}
	}
	return runSwitch(t, ctx, db, table,
		set("alter system set default_transaction_read_only = on", "on"),
		set("alter system reset default_transaction_read_only", "off"))
}

// waitSetting waits (at most 10 s) until a new session on srv shows the
// setting name as want.
func waitSetting(t *testing.T, ctx context.Context, srv *pgtest.Server, name, want string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		conn, err := srv.Connect(ctx)
		var got string
		if err == nil {
			err = conn.QueryRow(ctx, "select current_setting($1)", name).Scan(&got)
			conn.Close(ctx)
		}
		if err == nil && got == want {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s is %q (err %v) 10 s after the reload, want %q", name, got, err, want)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// runSwitch is runDemotion's load around demote, at 0.5 s, and restore,
// at 1.5 s; with no restore, firstOK counts from the demotion.
func runSwitch(t *testing.T, ctx context.Context, db *sql.DB, table string, demote, restore func()) demotionRun {
	t.Helper()
	var mu sync.Mutex
	var run demotionRun
	var restored atomic.Int64  // UnixNano of the writer's return; 0 before
	var restoring atomic.Int64 // UnixNano of the start of the return; 0 before
	var demoted atomic.Int64   // UnixNano of the read-only reload; 0 before
	start := time.Now()
	stop := start.Add(2500 * time.Millisecond)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; time.Now().Before(stop) && ctx.Err() == nil; i++ {
				wctx, cancel := context.WithTimeout(ctx, 3*time.Second)
				sent := time.Now()
				_, err := db.ExecContext(wctx, "insert into "+table+" values ($1, $2)", w, i)
				cancel()
				at := time.Now()
				mu.Lock()
				if err == nil {
					run.ok++
					d := demoted.Load()
					if r := restoring.Load(); d != 0 && restore != nil && sent.After(time.Unix(0, d).Add(100*time.Millisecond)) &&
						(r == 0 || at.Before(time.Unix(0, r))) {
						run.okReadOnly++
					}
					if r := restored.Load(); r != 0 && run.firstOK == 0 {
						run.firstOK = at.Sub(time.Unix(0, r))
					}
				} else {
					run.failed++
					var coded interface{ SQLState() string }
					if errors.As(err, &coded) && coded.SQLState() == "25006" {
						run.readOnly++
					} else {
						t.Logf("a write failed with: %v", err)
					}
				}
				mu.Unlock()
				time.Sleep(10 * time.Millisecond)
			}
		}()
	}
	time.Sleep(time.Until(start.Add(500 * time.Millisecond)))
	demote()
	demoted.Store(time.Now().UnixNano())
	if restore == nil {
		restored.Store(time.Now().UnixNano())
	} else {
		time.Sleep(time.Until(start.Add(1500 * time.Millisecond)))
		restoring.Store(time.Now().UnixNano())
		restore()
		restored.Store(time.Now().UnixNano())
	}
	wg.Wait()
	return run
}

// TestWriterDemoted (issue 27): a writer that became a reader. The same
// demotion through plain pgx and lib/pq and through warmpg on each: a plain
// driver fails every write while the server is read-only; warmpg fails the
// first write on each connection (with the server's 25006: it is not
// resent), discards the connection, and holds the next connects until a
// writer answers — fewer failed writes, and a first write after the
// writer's return at most 0.5 s after the plain driver's (warmpg retries
// its connect every 50–200 ms while it looks for a writer).
func TestWriterDemoted(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	srv := pgtest.Own(t, ctx)
	table := "warmpg_demoted"
	if err := srv.Exec(ctx, "create table "+table+" (w int, i int)"); err != nil {
		t.Fatal(err)
	}
	open := func(t *testing.T, which string) *sql.DB {
		var db *sql.DB
		var err error
		app := "application_name=" + appName(t)
		switch which {
		case "pgx", "postgres":
			db, err = sql.Open(which, srv.URL(app))
		case "warmpg-pgx":
			db, err = warmpg.Open(srv.URL(app, "pool_max_conns=4"), warmpg.WithLogger(faultQuietLog))
		case "warmpg-pq":
			db, err = warmpg.Open(srv.URL(app, "pool_max_conns=4", "pool_backend=pq"), warmpg.WithLogger(faultQuietLog))
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		db.SetMaxOpenConns(4)
		db.SetMaxIdleConns(4)
		if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(4)); err != nil {
			t.Fatal(err)
		}
		return db
	}
	results := map[string]demotionRun{}
	for _, which := range []string{"pgx", "warmpg-pgx", "postgres", "warmpg-pq"} {
		t.Run(which, func(t *testing.T) {
			run := runDemotion(t, ctx, srv, open(t, which), table)
			t.Logf("%s: %d writes ok (%d while the server was read-only), %d failed (%d with 25006); first write %v after the writer's return",
				which, run.ok, run.okReadOnly, run.failed, run.readOnly, run.firstOK)
			if run.okReadOnly != 0 {
				// Before issue 27, check mode's reset set the session's
				// default_transaction_read_only back to its value at
				// connect: writes went on on a server made read-only.
				t.Errorf("%s: %d writes applied while the server was read-only", which, run.okReadOnly)
			}
			if run.firstOK == 0 {
				t.Errorf("%s: no write succeeded after the writer's return", which)
			}
			results[which] = run
		})
	}
	for _, pair := range [][2]string{{"pgx", "warmpg-pgx"}, {"postgres", "warmpg-pq"}} {
		plain, w := results[pair[0]], results[pair[1]]
		if w.failed > 4 || w.failed >= plain.failed {
			t.Errorf("%s: %d failed writes (plain %s: %d); want at most one per connection (4), and fewer than plain",
				pair[1], w.failed, pair[0], plain.failed)
		}
		if w.failed != w.readOnly {
			t.Errorf("%s: %d of %d failed writes were not the server's 25006", pair[1], w.failed-w.readOnly, w.failed)
		}
		if w.firstOK > plain.firstOK+500*time.Millisecond {
			t.Errorf("%s: first write %v after the writer's return, plain %s %v: want at most 0.5 s more",
				pair[1], w.firstOK, pair[0], plain.firstOK)
		}
	}
}

// TestWriterDemotedMultiHost (issue 27): a switchover over a multi-host
// DSN (host=P,S, no target_session_attrs): the primary P becomes read-only
// (ALTER SYSTEM, as when it comes back as a standby) and its standby S is
// promoted. Plain pgx keeps P's connections and connects to P again, the
// DSN's first host that answers: every write fails from then on. warmpg
// fails the first write on each connection, and its connects, refusing a
// reader, go on to S: at most one failed write per connection, and writes
// land on S.
func TestWriterDemotedMultiHost(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	table := "warmpg_switch"
	results := map[string]demotionRun{}
	for _, which := range []string{"pgx", "warmpg-pgx"} {
		t.Run(which, func(t *testing.T) {
			primary, standby := replicaPair(t, ctx)
			// port: the server that ran the insert.
			if err := primary.Exec(ctx, "create table "+table+" (w int, i int, port int default inet_server_port())"); err != nil {
				t.Fatal(err)
			}
			// The table on the standby before the switchover.
			deadline := time.Now().Add(30 * time.Second)
			for standby.Exec(ctx, "select 1 from "+table) != nil {
				if time.Now().After(deadline) {
					t.Fatal("the table did not reach the standby")
				}
				time.Sleep(50 * time.Millisecond)
			}
			dsn := multiHostKV([]*pgtest.Server{primary, standby}, "application_name="+appName(t))
			var db *sql.DB
			var err error
			if which == "pgx" {
				db, err = sql.Open("pgx", dsn)
			} else {
				db, err = warmpg.Open(dsn+" pool_max_conns=4", warmpg.WithLogger(faultQuietLog))
			}
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			db.SetMaxOpenConns(4)
			db.SetMaxIdleConns(4)
			if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(4)); err != nil {
				t.Fatal(err)
			}
			run := runSwitch(t, ctx, db, table, func() {
				for _, q := range []string{"alter system set default_transaction_read_only = on", "select pg_reload_conf()"} {
					if err := primary.Exec(ctx, q); err != nil {
						t.Error(err)
					}
				}
				if err := standby.Exec(ctx, "select pg_promote()"); err != nil {
					t.Error(err)
				}
			}, nil)
			t.Logf("%s: %d writes ok, %d failed (%d with 25006); first write %v after the switchover",
				which, run.ok, run.failed, run.readOnly, run.firstOK)
			results[which] = run
			if which == "warmpg-pgx" {
				pc, err := standby.Connect(ctx)
				if err != nil {
					t.Fatal(err)
				}
				defer pc.Close(ctx)
				var onS int
				if err := pc.QueryRow(ctx, "select count(*) from "+table+" where port = $1", standby.Port).Scan(&onS); err != nil {
					t.Fatal(err)
				}
				t.Logf("writes the promoted standby ran: %d", onS)
				if run.firstOK == 0 || onS == 0 {
					t.Errorf("no write reached the promoted standby (first write after the switchover: %v)", run.firstOK)
				}
			}
		})
	}
	plain, w := results["pgx"], results["warmpg-pgx"]
	if w.failed > 4 || w.failed >= plain.failed {
		t.Errorf("warmpg: %d failed writes over the switchover (plain pgx: %d); want at most one per connection (4), and fewer than plain", w.failed, plain.failed)
	}
}
