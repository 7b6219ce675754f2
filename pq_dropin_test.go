package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lib/pq"
	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// A request whose context ends while warmpg dials for it fails with the
// context's own error on lib/pq — context.Canceled, context.DeadlineExceeded,
// not the *net.OpError of the cancelled dial ("operation was canceled") —
// as lib/pq's sql.Open driver, which dials without the context, fails the
// same request from its statement. On pgx, pgx's error, which wraps it.
func TestPQConnectContextError(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			c, err := warmpg.OpenConnector(srv.URL("pool_backend=" + string(b)))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			cancelled, cancel := context.WithCancel(context.Background())
			cancel()
			past, cancel := context.WithDeadline(context.Background(), time.Now().Add(-time.Second))
			defer cancel()
			for _, ctx := range []context.Context{cancelled, past} {
				conn, err := c.Connect(ctx)
				if err == nil {
					conn.Close()
					t.Fatalf("Connect with an ended context (%v) succeeded", ctx.Err())
				}
				if !errors.Is(err, ctx.Err()) {
					t.Errorf("Connect: %v (%T), want errors.Is %v", err, err, ctx.Err())
				}
				if b == warmpg.BackendPQ && err != ctx.Err() { //nolint:errorlint // lib/pq's own suite compares with ==
					t.Errorf("Connect: %v (%T), want %v itself, as lib/pq", err, err, ctx.Err())
				}
			}
		})
	}
}

// The same through database/sql, as lib/pq's own TestQueryRowContextBad
// does it: the context is cancelled while the request runs, which lib/pq
// answers by marking the connection bad, so most requests dial. Each one
// must succeed, fail with the context's error, or be cancelled by the
// server (57014); none may return the dial's *net.OpError. Then the same
// with a deadline that passes while the request runs.
func TestPQRequestContextEndsWhileDialing(t *testing.T) {
	srv := pgtest.Get(t)
	db, err := sql.Open("warmpg", srv.URL("pool_backend=pq"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	check := func(want, err error) {
		t.Helper()
		var pqErr *pq.Error
		var opErr *net.OpError
		switch {
		case err == nil:
		case errors.As(err, &opErr):
			t.Fatalf("%v (%T): the dial's error, not the context's", err, err)
		case errors.As(err, &pqErr) && pqErr.Code == "57014":
		case err != want: //nolint:errorlint // as lib/pq's suite
			t.Fatalf("%v (%T), want nil, 57014 or %v", err, err, want)
		}
	}
	var v int
	for range 20 {
		ctx, cancel := context.WithCancel(context.Background())
		go cancel()
		check(context.Canceled, db.QueryRowContext(ctx, "select 1").Scan(&v))
		cancel()
	}
	for i := range 20 {
		ctx, cancel := context.WithTimeout(context.Background(), time.Duration(i%8)*100*time.Microsecond)
		check(context.DeadlineExceeded, db.QueryRowContext(ctx, "select 1").Scan(&v))
		cancel()
	}
	st, _ := warmpg.Stats(db)
	t.Logf("counters %v", st)
	if st.ConnectErrors == 0 {
		t.Log("no dial was cut short by its context this run: only the direct test (TestPQConnectContextError) covered it")
	}
}

// A connect retried against a server that refuses connections, when the
// request's context ends during the retry: the error says both, the
// context's error and the last refusal (errors.Is holds for each).
func TestPQConnectRetryEndsWithContext(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now: every connect is refused
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			c, err := warmpg.OpenConnector(fmt.Sprintf("postgres://warmpg@%s/warmpg?sslmode=disable&pool_backend=%s&pool_connect_retry_timeout=30s", addr, b))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			conn, err := c.Connect(ctx)
			if err == nil {
				conn.Close()
				t.Fatal("connected to a closed port")
			}
			if !errors.Is(err, context.DeadlineExceeded) || !errors.Is(err, syscall.ECONNREFUSED) {
				t.Errorf("Connect: %v, want it to wrap context.DeadlineExceeded and the refusal", err)
			}
		})
	}
}

// A DSN the driver refuses to parse fails sql.Open with warmpg, with the
// driver's own message, where lib/pq's and pgx's sql.Open succeed and the
// first connect fails: a decision (docs/wrapping.md), pinned here. warmpg
// parses the DSN at open for what it builds from it (the backend's
// connector, pool_read_only, target_session_attrs, pool_prewarm).
func TestPQDSNRefusedAtOpen(t *testing.T) {
	srv := pgtest.Get(t)
	for _, bad := range []string{"sslmode=bogus", "connect_timeout=x", "target_session_attrs=bogus"} {
		for _, b := range []struct {
			plain   string // the driver's registered name
			backend warmpg.Backend
		}{{"postgres", warmpg.BackendPQ}, {"pgx", warmpg.BackendPgx}} {
			plain, err := sql.Open(b.plain, srv.URL(bad))
			if err != nil {
				t.Fatalf("%s: sql.Open(%q): %v, want the error at the first connect", b.plain, bad, err)
			}
			perr := plain.Ping()
			plain.Close()
			if perr == nil {
				t.Fatalf("%s: %s: Ping succeeded", b.plain, bad)
			}
			db, err := sql.Open("warmpg", srv.URL("pool_backend="+string(b.backend), bad))
			if err == nil {
				db.Close()
				t.Errorf("warmpg (%s): sql.Open with %s succeeded, want %q", b.backend, bad, perr)
				continue
			}
			if !strings.Contains(err.Error(), perr.Error()) {
				t.Errorf("warmpg (%s): sql.Open with %s: %v, want it to hold the driver's %q", b.backend, bad, err, perr)
			}
		}
	}
}
