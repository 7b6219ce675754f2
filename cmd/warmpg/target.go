package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// target is the server demo and bench measure, reached through a proxy that
// injects the round-trip time.
type target struct {
	srv     *pgtest.Server // a superuser (or -dsn's user): counting backends, restarting
	user    *pgtest.Server // whom the measured pools connect as
	proxy   *pgproxy.Proxy
	rtt     time.Duration
	where   string // "throwaway local cluster" or "server at host:port"
	version string
	prefer  bool // a throwaway cluster: connect as production does (sslmode=prefer)
	cmd     string
	p       progress
	started time.Time
}

// openTarget starts a throwaway local cluster (c.dsn == "") or describes
// the server at c.dsn (a postgres:// URL), checks that it answers, and puts
// a proxy injecting c.rtt in front of it. Progress goes to stderr. The
// caller closes it.
func openTarget(ctx context.Context, cmd string, c loadConfig, stderr io.Writer) (t *target, err error) {
	t = &target{rtt: c.rtt, cmd: cmd, p: progress{stderr}, started: time.Now()}
	p, dsn, rtt := t.p, c.dsn, c.rtt
	defer func() {
		if err != nil {
			t.close()
		}
	}()
	if dsn == "" {
		p.printf("starting a throwaway PostgreSQL cluster...")
		srv, err := pgtest.StartLocal(ctx)
		if err != nil {
			return t, fmt.Errorf("no -dsn given and no local PostgreSQL cluster could be started "+
				"(make demo installs PostgreSQL; or pass -dsn postgres://...): %w", err)
		}
		t.srv, t.where, t.prefer = srv, "throwaway local cluster", true
	} else {
		srv, err := pgtest.FromURL(dsn)
		if err != nil {
			return t, badInput("-dsn: %v", err)
		}
		t.srv, t.where = srv, "server at "+srv.Addr()
	}
	// Connect as production does: scram-sha-256 password auth (PostgreSQL's
	// default) and, on the throwaway cluster, sslmode=prefer (pgx's and
	// libpq's default, one more round trip when the server has no TLS): 4
	// round trips per connect.
	t.user = t.srv
	if t.srv.HasPasswordUser() {
		t.user = t.srv.WithUser(pgtest.PasswordUser, pgtest.PasswordUserPassword)
	}
	cctx, cancel := context.WithTimeout(ctx, 15*time.Second)
	defer cancel()
	conn, err := t.srv.Connect(cctx)
	if err != nil {
		return t, fmt.Errorf("the server does not answer: %w", err)
	}
	t.version = conn.PgConn().ParameterStatus("server_version")
	conn.Close(cctx)
	t.proxy, err = pgproxy.New(t.srv.Addr(), pgproxy.WithLatency(rtt), pgproxy.WithSpin(0), pgproxy.WithMaxMessages(0))
	if err != nil {
		return t, err
	}
	return t, nil
}

// done says on stderr how long the command took.
func (t *target) done() {
	t.p.printf("%s done in %s", t.cmd, time.Since(t.started).Round(100*time.Millisecond))
}

// close closes the proxy and removes a throwaway cluster.
func (t *target) close() {
	if t.proxy != nil {
		t.proxy.Close()
	}
	if t.srv != nil && t.srv.Managed() {
		t.srv.Close()
	}
}

// app is an application_name unique to this process and what is measured,
// so that waitGone counts only its own backends.
func (t *target) app(what string) string {
	return fmt.Sprintf("warmpg_%s_%d_%s", t.cmd, os.Getpid(), what)
}

// url is the URL the measured pools use: through the proxy, as t.user,
// application_name app, with params added.
func (t *target) url(app string, params ...string) string {
	ps := []string{"application_name=" + app}
	if t.prefer {
		ps = append(ps, "sslmode=prefer")
	}
	u := t.user.URL(append(ps, params...)...)
	return strings.Replace(u, t.srv.Addr(), t.proxy.Addr(), 1)
}

// waitGone waits until the server has no backend of app left (a closed
// pool's backends take a moment to exit), at most 30 s.
func (t *target) waitGone(ctx context.Context, app string) error {
	ctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	n, err := t.srv.WaitBackendCount(ctx, app, 0)
	if err != nil {
		return fmt.Errorf("%d backends of %s still open: %w", n, app, err)
	}
	return nil
}

// heading describes the server and the injected round-trip time.
func (t *target) heading() string {
	return fmt.Sprintf("PostgreSQL %s, %s, %s injected round-trip time", t.version, t.where, t.rtt)
}
