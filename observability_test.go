package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// recorder is a slog.Handler that keeps every record it is given, at or
// above its level.
type recorder struct {
	level slog.Level
	mu    sync.Mutex
	recs  []record
}

type record struct {
	level slog.Level
	msg   string
	attrs map[string]string
}

func (r *recorder) Enabled(_ context.Context, l slog.Level) bool { return l >= r.level }
func (r *recorder) WithAttrs([]slog.Attr) slog.Handler           { return r }
func (r *recorder) WithGroup(string) slog.Handler                { return r }

func (r *recorder) Handle(_ context.Context, rec slog.Record) error {
	attrs := map[string]string{}
	rec.Attrs(func(a slog.Attr) bool {
		attrs[a.Key] = a.Value.String()
		return true
	})
	r.mu.Lock()
	r.recs = append(r.recs, record{rec.Level, rec.Message, attrs})
	r.mu.Unlock()
	return nil
}

// find returns the records whose message starts with prefix.
func (r *recorder) find(prefix string) []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []record
	for _, rec := range r.recs {
		if strings.HasPrefix(rec.msg, prefix) {
			out = append(out, rec)
		}
	}
	return out
}

func (r *recorder) all() []record {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]record(nil), r.recs...)
}

// pool_log_level and the handler's own level both filter; warm progress
// comes at Debug about ten times, the summary at Info, failures at Warn.
func TestLogLevels(t *testing.T) {
	withEnv(t)
	failHalf := func(n int64) error {
		if n%2 == 0 {
			return errors.New("refused by the fake")
		}
		return nil
	}
	cases := []struct {
		name       string
		opts       []Option
		handler    slog.Level
		fail       func(int64) error
		progress   int // "warmpg: warming" events
		summary    slog.Level
		summaryNum int
	}{
		{"default", nil, slog.LevelDebug, nil, 0, slog.LevelInfo, 1},
		{"debug", []Option{WithLogLevel(slog.LevelDebug)}, slog.LevelDebug, nil, 9, slog.LevelInfo, 1},
		{"debug level, info handler", []Option{WithLogLevel(slog.LevelDebug)}, slog.LevelInfo, nil, 0, slog.LevelInfo, 1},
		{"warn", []Option{WithLogLevel(slog.LevelWarn)}, slog.LevelDebug, nil, 0, slog.LevelInfo, 0},
		{"warn, failures", []Option{WithLogLevel(slog.LevelWarn)}, slog.LevelDebug, failHalf, 0, slog.LevelWarn, 1},
		{"off, failures", []Option{WithLogLevel(LogOff)}, slog.LevelDebug, failHalf, 0, slog.LevelWarn, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rec := &recorder{level: tc.handler}
			f := &fakeConnector{fail: tc.fail}
			opts := append([]Option{WithLogger(slog.New(rec)), WithMaxIdleConns(20), WithMaxConns(20), WithWarmParallelism(1)}, tc.opts...)
			c, err := NewConnector(f, opts...)
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			_, _ = WarmDB(context.Background(), db)
			if got := len(rec.find("warmpg: warming")); got != tc.progress {
				t.Errorf("%d progress events, want %d: %v", got, tc.progress, rec.all())
			}
			sum := rec.find("warmpg: warmed ")
			if len(sum) != tc.summaryNum {
				t.Fatalf("%d summary events, want %d: %v", len(sum), tc.summaryNum, rec.all())
			}
			if len(sum) == 1 && (sum[0].level != tc.summary || sum[0].attrs["requested"] != "20") {
				t.Errorf("summary %+v, want level %v and requested=20", sum[0], tc.summary)
			}
		})
	}
}

func TestParseLogLevel(t *testing.T) {
	for in, want := range map[string]slog.Level{"debug": slog.LevelDebug, " INFO ": slog.LevelInfo, "warn": slog.LevelWarn, "error": slog.LevelError, "off": LogOff} {
		if got, err := ParseLogLevel(in); err != nil || got != want {
			t.Errorf("ParseLogLevel(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := ParseLogLevel("trace"); err == nil || !strings.Contains(err.Error(), `"trace"`) {
		t.Errorf("ParseLogLevel(trace): %v", err)
	}
}

// Against a server: an escalation (a transaction left open) is a Debug event
// naming what was sent and why; each discarded connection is an Info event
// naming where and why, one per connection Stats counts as discarded.
func TestIntegrationLogEvents(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			rec := &recorder{level: slog.LevelDebug}
			app := fmt.Sprintf("warmpg_log_%s", b)
			db, err := Open(srv.URL("application_name="+app, "pool_backend="+string(b), "pool_max_conns=4", "pool_log_level=debug"),
				WithLogger(slog.New(rec)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(ctx, "BEGIN"); err != nil {
				t.Fatal(err)
			}
			conn.Close() // back to the pool inside a transaction
			// Every pooled connection is reused at least once: the one
			// left in a transaction among them.
			useAll(t, ctx, db, 4)
			esc := rec.find("warmpg: reuse escalated")
			if len(esc) != 1 || esc[0].level != slog.LevelDebug || esc[0].attrs["outcome"] != "rolled_back" ||
				esc[0].attrs["reason"] != "transaction left open" {
				t.Errorf("escalation events: %+v", esc)
			}

			if n, err := srv.TerminateBackends(ctx, app); err != nil || n != 4 {
				t.Fatalf("terminated %d backends (%v), want 4", n, err)
			}
			if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
				t.Fatalf("%d backends left: %v", n, err)
			}
			useAll(t, ctx, db, 4)
			disc := rec.find("warmpg: discarded connection")
			st, _ := Stats(db)
			if int64(len(disc)) != st.Discarded || len(disc) != 4 {
				t.Fatalf("%d discard events, Stats says %d, want 4: %+v", len(disc), st.Discarded, disc)
			}
			for _, d := range disc {
				if d.level != slog.LevelInfo || d.attrs["at"] != "reuse" || !strings.HasPrefix(d.attrs["reason"], "server ") {
					t.Errorf("discard event %+v: want Info, at=reuse, a reason naming the server", d)
				}
			}
		})
	}
}

// useAll holds n connections at once and runs a query on each, so that every
// idle connection of a pool of n is reused.
func useAll(t *testing.T, ctx context.Context, db *sql.DB, n int) {
	t.Helper()
	conns := make([]*sql.Conn, 0, n)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for range n {
		c, err := db.Conn(ctx)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		if _, err := c.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	}
}

// A message the server sends an idle connection unasked (here a
// notification for a LISTEN) is read by pgx, which check mode then inspects
// (the ping reads it, then the LISTEN the statement reading saw is reset);
// lib/pq reports nothing of what it read, so check mode discards the
// connection instead of handing out a session that may have changed.
func TestIntegrationUnaskedMessage(t *testing.T) {
	srv := pgtest.Get(t)
	want := map[Backend]Counters{
		BackendPgx: {Connects: 1, Reset: 1},
		BackendPQ:  {Connects: 2, Discarded: 1},
	}
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			channel := fmt.Sprintf("warmpg_unasked_%s", b)
			db, err := Open(srv.URL("pool_backend="+string(b), "pool_max_conns=1"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := conn.ExecContext(ctx, "LISTEN "+channel); err != nil {
				t.Fatal(err)
			}
			if err := srv.Exec(ctx, "NOTIFY "+channel); err != nil {
				t.Fatal(err)
			}
			// Wait, bounded, until the notification is in the socket.
			var state peekState
			for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
				if err := conn.Raw(func(dc any) error { state = baseConn(dc.(driver.Conn)).peek(); return nil }); err != nil {
					t.Fatal(err)
				}
				if state == peekPending {
					break
				}
			}
			if state != peekPending {
				t.Fatalf("the notification never reached the socket (peek state %d)", state)
			}
			conn.Close()
			var one int
			if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
				t.Fatalf("query after the unasked message: %v", err)
			}
			st, _ := Stats(db)
			w := want[b]
			if st.Connects != w.Connects || st.Reset != w.Reset || st.Discarded != w.Discarded {
				t.Errorf("counters %v; want connects=%d reset=%d discarded=%d", st, w.Connects, w.Reset, w.Discarded)
			}
		})
	}
}
