package warmpg

import (
	"context"
	"database/sql"
	"log/slog"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// waitRecord waits, bounded by d, for a record whose message starts with
// prefix, and returns the first.
func waitRecord(t *testing.T, rec *recorder, prefix string, d time.Duration) record {
	t.Helper()
	for deadline := time.Now().Add(d); ; time.Sleep(5 * time.Millisecond) {
		if rs := rec.find(prefix); len(rs) > 0 {
			return rs[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q logged within %s; logged: %v", prefix, d, rec.all())
		}
	}
}

// leakSecretArg is a query argument that must appear in no log record.
const leakSecretArg = "arg-4f1c-must-not-be-logged"

// handlerForgetsRowsClose is a request handler with the classic leak: it
// returns without rows.Close(), so the connection stays checked out.
func handlerForgetsRowsClose(ctx context.Context, db *sql.DB) (*sql.Rows, error) {
	rows, err := db.QueryContext(ctx, "select $1::text from generate_series(1, 3)", leakSecretArg)
	if err != nil {
		return nil, err
	}
	rows.Next() // reads one row and forgets the rest
	return rows, nil
}

// A handler that forgets rows.Close() is named in the log within the
// threshold (plus one scan interval, threshold/2), once; when the rows are
// finally closed, one Info line says the connection came back and after
// how long. No record holds the query's argument or the DSN's password.
func TestIntegrationLeakNamesForgottenRowsClose(t *testing.T) {
	srv := pgtest.Get(t).WithPasswordUser(t)
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			const threshold = 300 * time.Millisecond
			rec := &recorder{level: slog.LevelDebug}
			db, err := Open(srv.URL("pool_backend="+string(b), "pool_max_conns=4", "pool_leak_threshold="+threshold.String()),
				WithLogger(slog.New(rec)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			// A checkout that comes back in time is not reported.
			var one int
			if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatal(err)
			}

			start := time.Now()
			rows, err := handlerForgetsRowsClose(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			w := waitRecord(t, rec, "warmpg: connection held past pool_leak_threshold", 10*time.Second)
			if took := time.Since(start); took < threshold {
				t.Errorf("reported after %s, before the threshold %s", took, threshold)
			}
			if w.level != slog.LevelWarn {
				t.Errorf("level %v, want Warn", w.level)
			}
			stack := w.attrs["stack"]
			if !strings.Contains(stack, "warmpg.handlerForgetsRowsClose") || !strings.Contains(stack, "leak_integration_test.go:") {
				t.Errorf("stack does not name the handler:\n%s", stack)
			}
			if strings.Contains(stack, "database/sql.") || strings.Contains(stack, "warmpg.(*conn)") {
				t.Errorf("stack holds database/sql's or warmpg's own frames:\n%s", stack)
			}
			if held, err := time.ParseDuration(w.attrs["held"]); err != nil || held < threshold {
				t.Errorf("held=%q, want at least %s", w.attrs["held"], threshold)
			}

			// Once per checkout: a few more scans add nothing.
			time.Sleep(2 * threshold)
			if n := len(rec.find("warmpg: connection held past pool_leak_threshold")); n != 1 {
				t.Errorf("%d leak reports for one checkout, want 1", n)
			}
			rows.Close()
			r := waitRecord(t, rec, "warmpg: long-held connection returned", 5*time.Second)
			if r.level != slog.LevelInfo {
				t.Errorf("level %v, want Info", r.level)
			}
			if held, err := time.ParseDuration(r.attrs["held"]); err != nil || held < 3*threshold {
				t.Errorf("returned with held=%q, want at least %s", r.attrs["held"], 3*threshold)
			}
			if st, _ := Stats(db); st.HeldPastThreshold != 1 || st.InUse != 0 {
				t.Errorf("counters %v, want held_past_threshold=1 in_use=0", st)
			}
			for _, r := range rec.all() {
				line := r.msg + " " + strings.Join(attrValues(r), " ")
				if strings.Contains(line, leakSecretArg) || strings.Contains(line, pgtest.PasswordUserPassword) {
					t.Errorf("a record holds the query argument or the password: %s", line)
				}
			}
		})
	}
}

func attrValues(r record) []string {
	var vs []string
	for k, v := range r.attrs {
		vs = append(vs, k+"="+v)
	}
	return vs
}

// holdBoth checks out every connection of the pool and keeps them.
func holdBoth(ctx context.Context, db *sql.DB) ([]*sql.Conn, error) {
	var cs []*sql.Conn
	for range 2 {
		c, err := db.Conn(ctx)
		if err != nil {
			return cs, err
		}
		if _, err := c.ExecContext(ctx, "select 1"); err != nil {
			return cs, err
		}
		cs = append(cs, c)
	}
	return cs, nil
}

// An exhausted pool is reported at Warn with in use / limit, for how long,
// how many requests waited, and its holders with their stacks (leak
// detection on, with a threshold too long to fire); then once more, at
// Info, when it recovers.
func TestIntegrationPoolExhaustedReported(t *testing.T) {
	srv := pgtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	const interval = 400 * time.Millisecond
	rec := &recorder{level: slog.LevelInfo}
	db, err := Open(srv.URL("pool_max_conns=2", "pool_exhausted_log_interval="+interval.String(), "pool_leak_threshold=10m"),
		WithLogger(slog.New(rec)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	held, err := holdBoth(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	// A request that waits for a connection, and gives up.
	wctx, wcancel := context.WithTimeout(ctx, 2*interval)
	_, werr := db.ExecContext(wctx, "select 1")
	wcancel()
	if werr == nil {
		t.Fatal("a third request got a connection from a pool of 2, all held")
	}
	w := waitRecord(t, rec, "warmpg: pool exhausted", 10*time.Second)
	if w.level != slog.LevelWarn || w.attrs["in_use"] != "2" || w.attrs["limit"] != "2" {
		t.Errorf("exhausted record %v, want Warn in_use=2 limit=2", w)
	}
	if d, err := time.ParseDuration(w.attrs["for"]); err != nil || d < min(interval, maxExhaustGrace) {
		t.Errorf("for=%q, want at least %s", w.attrs["for"], interval)
	}
	if w.attrs["waits"] == "" || w.attrs["waits"] == "0" {
		t.Errorf("waits=%q, want the request that waited", w.attrs["waits"])
	}
	for _, k := range []string{"holder_1", "holder_2"} {
		if h := w.attrs[k]; !strings.Contains(h, "held=") || !strings.Contains(h, "warmpg.holdBoth") {
			t.Errorf("%s=%q, want its age and a stack naming holdBoth", k, h)
		}
	}
	if len(rec.find("warmpg: pool no longer exhausted")) != 0 {
		t.Fatal("recovered while still exhausted")
	}
	for _, c := range held {
		c.Close()
	}
	r := waitRecord(t, rec, "warmpg: pool no longer exhausted", 10*time.Second)
	if d, err := time.ParseDuration(r.attrs["exhausted_for"]); err != nil || d < interval {
		t.Errorf("exhausted_for=%q, want at least %s", r.attrs["exhausted_for"], interval)
	}
	if st, _ := Stats(db); st.Exhaustions != 1 || st.InUse != 0 {
		t.Errorf("counters %v, want exhaustions=1 in_use=0", st)
	}
	// Used again below the limit: nothing more is reported.
	if _, err := db.ExecContext(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * interval)
	if n := len(rec.find("warmpg: pool exhausted")); n > 2 {
		t.Errorf("%d exhaustion reports; want at most one per interval while it lasted", n)
	}
}

// monitorRunning reports whether a goroutine runs the monitor.
func monitorRunning() bool {
	buf := make([]byte, 1<<20)
	return strings.Contains(string(buf[:runtime.Stack(buf, true)]), "warmpg.(*holds).run")
}

// With pool_leak_threshold and pool_exhausted_log_interval off nothing is
// reported, however long a connection is held and though the pool is at its
// limit, and no goroutine starts; with them on, the monitor's goroutine
// ends with Close.
func TestIntegrationLeakOffNoEvents(t *testing.T) {
	srv := pgtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, tc := range []struct {
		name string
		keys []string
	}{
		{"off", []string{"pool_exhausted_log_interval=0"}},
		{"default-without-limit", nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{level: slog.LevelDebug}
			keys := append([]string{"pool_max_conns=2"}, tc.keys...)
			if tc.keys == nil {
				keys = nil // no limit: nothing can be exhausted
			}
			db, err := Open(srv.URL(keys...), WithLogger(slog.New(rec)))
			if err != nil {
				t.Fatal(err)
			}
			held, err := holdBoth(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			time.Sleep(1500 * time.Millisecond) // past the exhaustion grace
			for _, c := range held {
				c.Close()
			}
			c, _ := connectorOf(db)
			running := c.holds.running.Load()
			db.Close()
			if running {
				t.Error("the monitor goroutine started")
			}
			for _, r := range rec.all() {
				if strings.HasPrefix(r.msg, "warmpg: connection") || strings.HasPrefix(r.msg, "warmpg: pool") ||
					strings.HasPrefix(r.msg, "warmpg: long-held") {
					t.Errorf("logged %q with it off", r.msg)
				}
			}
		})
	}
	t.Run("close-stops-monitor", func(t *testing.T) {
		db, err := Open(srv.URL("pool_leak_threshold=1h"), WithLogLevel(LogOff))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		if !monitorRunning() {
			t.Fatal("no monitor goroutine with pool_leak_threshold on")
		}
		db.Close()
		if monitorRunning() {
			t.Error("monitor goroutine left after Close")
		}
	})
}

// pool_log_level=debug logs every checkout and return with the connection's
// id and age (SQLAlchemy's pool echo); at info, none.
func TestIntegrationPoolEventsAtDebug(t *testing.T) {
	srv := pgtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for _, level := range []string{"debug", "info"} {
		t.Run(level, func(t *testing.T) {
			rec := &recorder{level: slog.LevelDebug}
			db, err := Open(srv.URL("pool_max_conns=1", "pool_log_level="+level), WithLogger(slog.New(rec)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			for range 2 {
				if _, err := db.ExecContext(ctx, "select 1"); err != nil {
					t.Fatal(err)
				}
			}
			outs, backs := rec.find("warmpg: connection checked out"), rec.find("warmpg: connection returned")
			if level == "info" {
				if len(outs)+len(backs) != 0 {
					t.Errorf("pool events at pool_log_level=info: %v %v", outs, backs)
				}
				return
			}
			if len(outs) != 2 || len(backs) != 2 {
				t.Fatalf("%d checkouts and %d returns logged, want 2 and 2", len(outs), len(backs))
			}
			for _, r := range append(outs, backs...) {
				if r.level != slog.LevelDebug || r.attrs["conn"] != "1" || r.attrs["pid"] == "" || r.attrs["age"] == "" {
					t.Errorf("%s: %v, want Debug with conn=1, pid and age", r.msg, r.attrs)
				}
			}
			if backs[0].attrs["held"] == "" || backs[0].attrs["in_use"] != "0" {
				t.Errorf("return %v, want held and in_use=0", backs[0].attrs)
			}
		})
	}
}
