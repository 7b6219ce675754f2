package warmpg

import (
	"bytes"
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"testing"
	"time"
)

func openFake(t *testing.T, fc *fakeConnector, opts ...Option) (*sql.DB, *Connector) {
	t.Helper()
	withEnv(t)
	c, err := NewConnector(fc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	t.Cleanup(func() { db.Close() })
	return db, c
}

func TestWarmDBOpensConcurrently(t *testing.T) {
	// The default dial window starts at warmFirstWindow and grows while
	// connects stay fast (TestDialWindow walks it step by step): how far
	// it gets here depends on how steady a loaded machine keeps a 20 ms
	// connect, so this asserts only that it dials in parallel, within
	// pool_warm_parallelism.
	{
		fc := &fakeConnector{delay: 20 * time.Millisecond}
		db, _ := openFake(t, fc, WithMaxConns(60), WithMaxIdleConns(50), WithWarmParallelism(10))
		rep, err := WarmDB(context.Background(), db)
		if err != nil || rep.Warmed != 50 {
			t.Fatalf("default window: %v, %v", rep, err)
		}
		if got := fc.maxSeen.Load(); got < 2 || got > 10 {
			t.Errorf("default window: peak concurrent connects %d, want 2 to 10", got)
		}
	}
	// With the window open from the start, exactly pool_warm_parallelism.
	fc := &fakeConnector{delay: 20 * time.Millisecond}
	var logs bytes.Buffer
	db, _ := openFake(t, fc, WithMaxConns(60), WithMaxIdleConns(50), WithWarmParallelism(10),
		WithLogger(slog.New(slog.NewTextHandler(&logs, nil))), withWarmAllAtOnce())
	rep, err := WarmDB(context.Background(), db)
	if err != nil {
		t.Fatal(err)
	}
	if rep.Requested != 50 || rep.Warmed != 50 || rep.Failed != 0 || rep.Parallelism != 10 {
		t.Errorf("report %+v", rep)
	}
	if got := fc.connects.Load(); got != 50 {
		t.Errorf("%d connects, want 50", got)
	}
	// Bounded, and actually parallel: exactly 10 at once at the peak.
	if got := fc.maxSeen.Load(); got != 10 {
		t.Errorf("peak concurrent connects %d, want 10", got)
	}
	st := db.Stats()
	if st.Idle != 50 || st.OpenConnections != 50 || st.MaxIdleClosed != 0 {
		t.Errorf("after warm: idle %d open %d maxIdleClosed %d, want 50/50/0", st.Idle, st.OpenConnections, st.MaxIdleClosed)
	}
	if st.MaxOpenConnections != 60 {
		t.Errorf("MaxOpenConnections %d, want 60 from pool_max_conns", st.MaxOpenConnections)
	}
	if !strings.Contains(logs.String(), "warmpg: warmed 50/50 in ") {
		t.Errorf("log: %q", logs.String())
	}
	// A second call finds them idle and dials nothing.
	if _, err := WarmDB(context.Background(), db); err != nil {
		t.Fatal(err)
	}
	if got := fc.connects.Load(); got != 50 {
		t.Errorf("second warm dialled: %d connects, want 50", got)
	}
	// A burst of 50 concurrent users opens nothing new.
	burst(t, db, 50)
	if got := fc.connects.Load(); got != 50 {
		t.Errorf("burst after warm dialled: %d connects, want 50", got)
	}
}

// burst holds n connections at once, so all of them must be distinct.
func burst(t *testing.T, db *sql.DB, n int) {
	t.Helper()
	conns := make([]*sql.Conn, 0, n)
	for range n {
		c, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
	}
	for _, c := range conns {
		c.Close()
	}
}

func TestWarmDBDefaultCountIsMaxConns(t *testing.T) {
	fc := &fakeConnector{}
	db, _ := openFake(t, fc, WithMaxConns(7))
	rep, err := WarmDB(context.Background(), db)
	if err != nil || rep.Warmed != 7 || db.Stats().Idle != 7 {
		t.Fatalf("%v %+v idle %d", err, rep, db.Stats().Idle)
	}
}

func TestWarmDBPartialFailure(t *testing.T) {
	boom := errors.New(`FATAL: sorry, too many clients already (SQLSTATE 53300)`)
	other := errors.New("dial tcp 127.0.0.1:1: connect: connection refused")
	fc := &fakeConnector{fail: func(n int64) error {
		switch {
		case n%5 == 0:
			return boom
		case n == 3:
			return other
		}
		return nil
	}}
	db, _ := openFake(t, fc, WithMaxIdleConns(20))
	rep, err := WarmDB(context.Background(), db)
	if err == nil {
		t.Fatal("want an error")
	}
	if rep.Requested != 20 || rep.Warmed != 15 || rep.Failed != 5 {
		t.Errorf("report %+v, want 15/20 warmed", rep)
	}
	msg := err.Error()
	for _, want := range []string{"warmed 15 of 20", "5 failed", "4× FATAL: sorry, too many clients already", "connection refused"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if !errors.Is(err, boom) || !errors.Is(err, other) {
		t.Error("errors.Is must reach every distinct failure")
	}
	if db.Stats().Idle != 15 {
		t.Errorf("idle %d, want the 15 that opened kept warm", db.Stats().Idle)
	}
	// The pool stays usable.
	fc.fail = nil
	var n int
	if err := db.QueryRow("select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
}

func TestWarmDBTimeoutLeaksNothing(t *testing.T) {
	fc := &fakeConnector{delay: time.Hour} // a server that never answers
	db, _ := openFake(t, fc, WithMaxIdleConns(8), WithWarmTimeout(50*time.Millisecond))
	start := time.Now()
	rep, err := WarmDB(context.Background(), db)
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("WarmDB took %s with a 50ms warm timeout", el)
	}
	if err == nil || !errors.Is(err, context.DeadlineExceeded) || rep.Warmed != 0 || rep.Failed != 8 {
		t.Fatalf("%v %+v", err, rep)
	}
	if got := fc.open.Load(); got != 0 {
		t.Errorf("%d connections open after a failed warm", got)
	}
	if db.Stats().OpenConnections != 0 {
		t.Errorf("pool counts %d open connections", db.Stats().OpenConnections)
	}
}

func TestWarmDBCallerContext(t *testing.T) {
	fc := &fakeConnector{delay: time.Hour}
	db, _ := openFake(t, fc, WithMaxIdleConns(4))
	ctx, cancel := context.WithCancel(context.Background())
	go func() { time.Sleep(20 * time.Millisecond); cancel() }()
	rep, err := WarmDB(ctx, db)
	if !errors.Is(err, context.Canceled) || rep.Warmed != 0 {
		t.Fatalf("%v %+v", err, rep)
	}
}

func TestWarmDBRefusesMoreThanMaxOpen(t *testing.T) {
	fc := &fakeConnector{}
	db, _ := openFake(t, fc, WithMaxConns(5))
	_, err := WarmDB(context.Background(), db, WithMaxIdleConns(10))
	if err == nil || !strings.Contains(err.Error(), "pool_max_idle_conns=10") || !strings.Contains(err.Error(), "pool_max_conns=5") {
		t.Fatalf("want a refusal naming both settings, got %v", err)
	}
	// A limit set by hand on a DB warmpg did not open.
	foreign := sql.OpenDB(fc)
	defer foreign.Close()
	foreign.SetMaxOpenConns(5)
	_, err = WarmDB(context.Background(), foreign, WithMaxIdleConns(10))
	if err == nil || !strings.Contains(err.Error(), "cannot warm 10") || !strings.Contains(err.Error(), "at most 5") {
		t.Fatalf("want a refusal naming 10 and 5, got %v", err)
	}
	if fc.connects.Load() != 0 {
		t.Error("a refused warm must dial nothing")
	}
}

func TestWarmDBForeignDB(t *testing.T) {
	fc := &fakeConnector{delay: 5 * time.Millisecond}
	db := sql.OpenDB(fc)
	defer db.Close()
	if _, err := WarmDB(context.Background(), db); err == nil || !strings.Contains(err.Error(), "WithMaxIdleConns") {
		t.Fatalf("want a clear error naming WithMaxIdleConns, got %v", err)
	}
	rep, err := WarmDB(context.Background(), db, WithMaxIdleConns(12))
	if err != nil || rep.Warmed != 12 {
		t.Fatalf("%v %+v", err, rep)
	}
	if st := db.Stats(); st.Idle != 12 || st.MaxIdleClosed != 0 {
		t.Errorf("idle %d maxIdleClosed %d: WarmDB must raise MaxIdleConns", st.Idle, st.MaxIdleClosed)
	}
	if fc.maxSeen.Load() < 2 {
		t.Errorf("foreign warm was not concurrent (peak %d)", fc.maxSeen.Load())
	}
	// WithMaxConns alone means what pool_max_conns alone means: warm that
	// many, the limit.
	rep, err = WarmDB(context.Background(), db, WithMaxConns(14))
	if st := db.Stats(); err != nil || rep.Warmed != 14 || st.MaxOpenConnections != 14 || st.Idle != 14 {
		t.Errorf("WithMaxConns(14) alone: %v %+v, max open %d, idle %d; want 14 warmed within a limit of 14", err, rep, st.MaxOpenConnections, st.Idle)
	}
}

// Behind a wrapper that hides warmpg's driver from db.Driver(), the
// Connector's own WarmDB applies its DSN's pool settings.
func TestConnectorWarmDBBehindWrapper(t *testing.T) {
	withEnv(t)
	fc := &fakeConnector{}
	c, err := NewConnector(fc, WithMaxConns(6), WithMaxIdleConns(5))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(hidingConnector{c}) // db.Driver() is not warmpg's
	defer db.Close()
	if _, err := WarmDB(context.Background(), db); err == nil {
		t.Fatal("the package WarmDB found the hidden connector; this test needs a wrapper that hides it")
	}
	rep, err := c.WarmDB(context.Background(), db)
	if st := db.Stats(); err != nil || rep.Warmed != 5 || st.MaxOpenConnections != 6 || st.Idle != 5 {
		t.Errorf("(*Connector).WarmDB: %v %+v, max open %d, idle %d; want 5 warmed, limit 6", err, rep, st.MaxOpenConnections, st.Idle)
	}
	if got := c.Stats().Connects; got != 5 {
		t.Errorf("connector counted %d connects, want 5", got)
	}
}

// hidingConnector wraps a connector and reports a driver of its own, as
// otelsql does.
type hidingConnector struct{ driver.Connector }

func (h hidingConnector) Driver() driver.Driver { return fakeDriver{} }

func TestWarmDBZeroAndClosed(t *testing.T) {
	fc := &fakeConnector{}
	db, _ := openFake(t, fc, WithMaxIdleConns(0))
	rep, err := WarmDB(context.Background(), db)
	if err != nil || rep.Requested != 0 || fc.connects.Load() != 0 {
		t.Fatalf("warming 0: %v %+v", err, rep)
	}
	db2, _ := openFake(t, &fakeConnector{}, WithMaxIdleConns(3))
	db2.Close()
	if _, err := WarmDB(context.Background(), db2); err == nil {
		t.Fatal("warming a closed DB must fail")
	}
	if _, err := WarmDB(context.Background(), nil); err == nil {
		t.Fatal("nil DB must fail")
	}
	if _, err := WarmDB(context.Background(), db, WithWarmParallelism(-1)); err == nil {
		t.Fatal("bad option must fail")
	}
}

func TestOpenPrewarm(t *testing.T) {
	withEnv(t)
	// Open with an unreachable server fails within the warm timeout.
	start := time.Now()
	_, err := Open("postgres://nobody@127.0.0.1:1/db?connect_timeout=1&pool_max_conns=2&pool_prewarm=true&pool_warm_timeout=3s")
	if err == nil {
		t.Fatal("prewarm against a closed port must fail")
	}
	if time.Since(start) > 10*time.Second {
		t.Errorf("took %s", time.Since(start))
	}
	if !strings.Contains(err.Error(), "warmed 0 of 2") {
		t.Errorf("error: %v", err)
	}
}

func TestWarmReportString(t *testing.T) {
	r := WarmReport{Requested: 50, Warmed: 48, Elapsed: 23 * time.Millisecond}
	if got := r.String(); got != "warmed 48/50 in 23ms" {
		t.Errorf("%q", got)
	}
	_ = fmt.Sprint(r)
}

// A limit the application set by hand on a warmpg DB survives WarmDB when
// no DSN key or option overrides it.
func TestWarmDBKeepsHandSetLimits(t *testing.T) {
	fc := &fakeConnector{}
	db, _ := openFake(t, fc)
	db.SetMaxOpenConns(5)
	if _, err := WarmDB(context.Background(), db, WithMaxIdleConns(3)); err != nil {
		t.Fatal(err)
	}
	if st := db.Stats(); st.MaxOpenConnections != 5 || st.Idle != 3 {
		t.Errorf("MaxOpenConnections %d idle %d, want 5 and 3", st.MaxOpenConnections, st.Idle)
	}
}

// database/sql closing warmed connections (MaxIdleConns below the count) is
// logged, not silent.
func TestWarmDBWarnsWhenIdleLimitCloses(t *testing.T) {
	var logs bytes.Buffer
	fc := &fakeConnector{}
	db, _ := openFake(t, fc, WithLogger(slog.New(slog.NewTextHandler(&logs, nil))))
	// No pool_max_idle_conns: WarmDB warms database/sql's default 2, and
	// the application lowered MaxIdleConns to 1 by hand.
	db.SetMaxIdleConns(1)
	rep, err := WarmDB(context.Background(), db)
	if err != nil || rep.Warmed != 2 {
		t.Fatalf("%v %+v", err, rep)
	}
	if !strings.Contains(logs.String(), "database/sql closed warmed connections") {
		t.Errorf("no warning in %q", logs.String())
	}
}
