package pgtest_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// startPrimary starts a private cluster to build standbys of, closed when
// the test ends; it skips (fails under CI) where no local cluster can be
// had, as Get does.
func startPrimary(t *testing.T, ctx context.Context) *pgtest.Server {
	t.Helper()
	srv, err := pgtest.StartLocal(ctx)
	if err != nil {
		if os.Getenv("CI") != "true" && strings.Contains(err.Error(), "no PostgreSQL server binaries") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func showSetting(t *testing.T, ctx context.Context, conn *pgx.Conn, name string) string {
	t.Helper()
	var v string
	if err := conn.QueryRow(ctx, "select current_setting($1)", name).Scan(&v); err != nil {
		t.Fatalf("current_setting(%s): %v", name, err)
	}
	return v
}

// A standby streams from its primary, serves reads of what the primary
// wrote once WaitReplayed returns, refuses writes, and after Promote takes
// writes and tells sessions opened before the promotion (ParameterStatus
// in_hot_standby=off). Close stops it and removes its files; the primary
// is untouched.
func TestStandbyStreamsReplaysAndPromotes(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	primary := startPrimary(t, ctx)
	start := time.Now()
	standby := pgtest.NewStandby(t, ctx, primary)
	t.Logf("standby built and streaming in %v", time.Since(start))
	if !standby.Managed() || standby.Kind != pgtest.KindLocal || standby.Port == primary.Port || standby.Host != "127.0.0.1" {
		t.Fatalf("standby %+v (primary port %d)", standby, primary.Port)
	}
	if standby.DataDir() == primary.DataDir() || standby.PostmasterPID() <= 0 {
		t.Fatalf("standby data dir %q pid %d", standby.DataDir(), standby.PostmasterPID())
	}
	for _, dsn := range []string{standby.URL(), standby.KeyValue()} {
		if err := selectOne(ctx, dsn); err != nil {
			t.Fatalf("select 1 on the standby: %v", err)
		}
	}

	// The primary sees it streaming under its name.
	pconn, err := primary.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pconn.Close(context.Background())
	var state string
	if err := pconn.QueryRow(ctx, "select state from pg_stat_replication where application_name = $1", standby.StandbyName()).Scan(&state); err != nil || state != "streaming" {
		t.Fatalf("pg_stat_replication for %s: %q %v", standby.StandbyName(), state, err)
	}

	sconn, err := standby.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer sconn.Close(context.Background())
	if got := showSetting(t, ctx, sconn, "in_hot_standby"); got != "on" {
		t.Fatalf("in_hot_standby = %q on the standby", got)
	}
	if got := sconn.PgConn().ParameterStatus("in_hot_standby"); got != "on" {
		t.Fatalf("reported in_hot_standby = %q", got)
	}
	_, err = sconn.Exec(ctx, "create table refused (i int)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("a write on the standby: %v, want SQLSTATE 25006", err)
	}
	if err := standby.WithPasswordUser(t).Exec(ctx, "select 1"); err != nil {
		t.Errorf("the password role is replicated: %v", err)
	}

	// What the primary writes (asynchronous commits), the standby reads
	// once WaitReplayed returns, round after round.
	if err := primary.Exec(ctx, "create table replayed (i int); insert into replayed select generate_series(1, 1000)"); err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	if err := standby.WaitReplayed(ctx, primary); err != nil {
		t.Fatal(err)
	}
	t.Logf("WaitReplayed took %v", time.Since(start))
	var n int
	if err := sconn.QueryRow(ctx, "select count(*) from replayed").Scan(&n); err != nil || n != 1000 {
		t.Fatalf("the standby reads %d rows (%v), want 1000", n, err)
	}
	for i := range 5 { // several rounds: each must wait for its own write
		if err := primary.Exec(ctx, "insert into replayed values (-1)"); err != nil {
			t.Fatal(err)
		}
		if err := standby.WaitReplayed(ctx, primary); err != nil {
			t.Fatal(err)
		}
		if err := sconn.QueryRow(ctx, "select count(*) from replayed").Scan(&n); err != nil || n != 1001+i {
			t.Fatalf("round %d: the standby reads %d rows (%v), want %d", i, n, err, 1001+i)
		}
	}

	// Promote: out of recovery, writable, and the session opened before
	// is told.
	start = time.Now()
	if err := standby.Promote(ctx); err != nil {
		t.Fatal(err)
	}
	t.Logf("Promote took %v", time.Since(start))
	if got := showSetting(t, ctx, sconn, "in_hot_standby"); got != "off" {
		t.Errorf("in_hot_standby = %q after promotion", got)
	}
	if got := sconn.PgConn().ParameterStatus("in_hot_standby"); got != "off" {
		t.Errorf("the session opened before the promotion was not told: in_hot_standby = %q", got)
	}
	if _, err := sconn.Exec(ctx, "insert into replayed values (-2)"); err != nil {
		t.Errorf("a write after promotion: %v", err)
	}
	if err := standby.WaitReplayed(ctx, primary); err == nil || !strings.Contains(err.Error(), "not a standby") {
		t.Errorf("WaitReplayed on a promoted server: %v, want an error saying it is not a standby", err)
	}
	if err := standby.Promote(ctx); err == nil {
		t.Error("promoting a server that is no standby succeeded")
	}

	// Close: the standby and its files are gone; the primary answers.
	dir := filepath.Dir(standby.DataDir())
	pid := standby.PostmasterPID()
	sconn.Close(context.Background())
	if err := standby.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Close left %s: %v", dir, err)
	}
	if b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat"); err == nil && !strings.Contains(string(b), ") Z") {
		t.Errorf("standby postmaster %d still running after Close", pid)
	}
	if err := selectOne(ctx, primary.URL()); err != nil {
		t.Errorf("primary after closing its standby: %v", err)
	}
}

// A standby restarts (it is a managed server like any other) and streams
// again; a standby outlives its primary's Close.
func TestStandbyRestartAndPrimaryGone(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	primary := startPrimary(t, ctx)
	standby := pgtest.NewStandby(t, ctx, primary, pgtest.WithSetting("work_mem", "'7MB'"))
	sconn, err := standby.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got := showSetting(t, ctx, sconn, "work_mem"); got != "7MB" {
		t.Errorf("WithSetting on the standby: work_mem = %q", got)
	}
	sconn.Close(context.Background())
	if err := standby.Restart(ctx, "fast"); err != nil {
		t.Fatal(err)
	}
	if err := primary.Exec(ctx, "create table after_restart (i int)"); err != nil {
		t.Fatal(err)
	}
	if err := standby.WaitReplayed(ctx, primary); err != nil {
		t.Fatalf("after the standby's restart: %v", err)
	}
	if err := standby.Exec(ctx, "select * from after_restart"); err != nil {
		t.Fatal(err)
	}
	if err := primary.Close(); err != nil {
		t.Fatal(err)
	}
	if err := selectOne(ctx, standby.URL()); err != nil {
		t.Fatalf("the standby after its primary closed: %v", err)
	}
}

// Only a cluster this harness started can have a standby; an env server
// (Kind env: not managed) is refused with ErrNotManaged, the shared server
// and copies with an error.
func TestStandbyNeedsManagedPrimary(t *testing.T) {
	ctx := ctxT(t, 30*time.Second)
	env := &pgtest.Server{Host: "127.0.0.1", Port: 1, User: "u", Database: "d", Kind: pgtest.KindEnv}
	if _, err := pgtest.StartStandby(ctx, env); !errors.Is(err, pgtest.ErrNotManaged) {
		t.Errorf("StartStandby of an env server: %v, want ErrNotManaged", err)
	}
	if _, err := pgtest.StartStandby(ctx, nil); !errors.Is(err, pgtest.ErrNotManaged) {
		t.Errorf("StartStandby(nil): %v, want ErrNotManaged", err)
	}
	if err := env.Promote(ctx); !errors.Is(err, pgtest.ErrNotManaged) {
		t.Errorf("Promote of an env server: %v, want ErrNotManaged", err)
	}
	shared := pgtest.Get(t)
	_, err := pgtest.StartStandby(ctx, shared)
	switch {
	case shared.Managed() && (err == nil || !strings.Contains(err.Error(), "shared server")):
		t.Errorf("StartStandby of the shared server: %v, want a refusal", err)
	case !shared.Managed() && !errors.Is(err, pgtest.ErrNotManaged):
		t.Errorf("StartStandby of the shared %s server: %v, want ErrNotManaged", shared.Kind, err)
	}
	if shared.Managed() {
		// A copy shares the cluster but does not own it.
		if _, err := pgtest.StartStandby(ctx, shared.WithUser("postgres", "")); err == nil || !strings.Contains(err.Error(), "WithUser") {
			t.Errorf("StartStandby of a WithUser copy: %v, want a refusal", err)
		}
	}
}
