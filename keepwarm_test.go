package warmpg

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// waitFor polls cond every 5 ms until it holds or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func readyCount(c *Connector) int {
	n, _ := c.ready.count()
	return n
}

// pool_prewarm on the sql.Open path: the connector opens the connections
// in the background with no call from the application, and the first burst
// takes them instead of dialling.
func TestPrewarmInBackground(t *testing.T) {
	defer goleak.VerifyNone(t)
	fc := &fakeConnector{delay: 5 * time.Millisecond}
	db, c := openFake(t, fc, WithPrewarm(true), WithMaxConns(10))
	waitFor(t, 5*time.Second, "10 ready connections", func() bool { return readyCount(c) == 10 })
	if fc.maxSeen.Load() < 2 {
		t.Errorf("prewarm was not concurrent (peak %d)", fc.maxSeen.Load())
	}
	db.SetMaxIdleConns(10)
	burst(t, db, 10)
	if got := fc.connects.Load(); got != 10 {
		t.Errorf("%d connects after prewarm and a burst of 10, want 10", got)
	}
	if st := c.Stats(); st.FromReady != 10 {
		t.Errorf("counters %v, want 10 from ready", st)
	}
	// The prewarm is one-shot: taken connections are not replaced.
	time.Sleep(50 * time.Millisecond)
	if n := readyCount(c); n != 0 {
		t.Errorf("%d ready after the burst, want 0 (no keep-warm)", n)
	}
	db.Close()
	if fc.open.Load() != 0 {
		t.Errorf("%d connections open after db.Close", fc.open.Load())
	}
}

// pool_min_idle_conns keeps that many ready beyond what database/sql holds.
func TestKeepWarmReplenishes(t *testing.T) {
	defer goleak.VerifyNone(t)
	fc := &fakeConnector{}
	db, c := openFake(t, fc, WithMinIdleConns(3), WithMaxConns(20))
	waitFor(t, 5*time.Second, "3 ready", func() bool { return readyCount(c) == 3 })
	conns := make([]*sql.Conn, 0, 5)
	for range 5 {
		sc, err := db.Conn(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, sc)
	}
	waitFor(t, 5*time.Second, "3 ready again", func() bool { return readyCount(c) == 3 })
	if st := c.Stats(); st.FromReady < 3 {
		t.Errorf("counters %v: the burst should have taken the 3 ready ones", st)
	}
	// pool_max_conns bounds what database/sql holds plus what is ready.
	for _, sc := range conns {
		sc.Close()
	}
	db.Close()
	if fc.open.Load() != 0 {
		t.Errorf("%d connections open after db.Close", fc.open.Load())
	}
}

func TestKeepWarmRespectsMaxConns(t *testing.T) {
	defer goleak.VerifyNone(t)
	fc := &fakeConnector{}
	db, c := openFake(t, fc, WithMinIdleConns(4), WithMaxConns(4))
	waitFor(t, 5*time.Second, "4 ready", func() bool { return readyCount(c) == 4 })
	db.SetMaxIdleConns(4) // database/sql keeps all 4 after the burst
	burst(t, db, 4)
	time.Sleep(3 * keepWarmTick)
	if got := fc.connects.Load(); got != 4 {
		t.Errorf("%d connects with pool_max_conns=4, want 4", got)
	}
	db.Close()
}

// A server that refuses every connection sees a bounded number of
// attempts, and the store fills once it answers again.
func TestKeepWarmBacksOff(t *testing.T) {
	defer goleak.VerifyNone(t)
	down := make(chan struct{})
	refused := fmt.Errorf("dial tcp: %w", syscall.ECONNREFUSED)
	fc := &fakeConnector{fail: func(int64) error {
		select {
		case <-down:
			return nil
		default:
			return refused
		}
	}}
	db, c := openFake(t, fc, WithMinIdleConns(8), WithPrewarm(true), WithMaxIdleConns(8), WithWarmParallelism(8))
	time.Sleep(1500 * time.Millisecond)
	attempts := fc.connects.Load()
	// 8 at once at the start, then one probe per backoff interval
	// (100 ms doubling, jittered): far below a storm.
	if attempts > 8+12 {
		t.Errorf("%d connection attempts in 1.5 s against a refusing server", attempts)
	}
	if attempts < 9 {
		t.Errorf("%d attempts: the filler stopped retrying", attempts)
	}
	if _, dialing := c.ready.count(); dialing > 1 {
		t.Errorf("%d dials in flight after failures, want at most one probe", dialing)
	}
	close(down)
	waitFor(t, 10*time.Second, "the store to fill after recovery", func() bool { return readyCount(c) >= 8 })
	db.Close()
}

// Connect retries a server that refuses or is starting up, within
// pool_connect_retry_timeout, and gives up on other errors at once.
func TestConnectRetriesTransientErrors(t *testing.T) {
	refused := fmt.Errorf("dial: %w", syscall.ECONNREFUSED)
	fc := &fakeConnector{fail: func(n int64) error {
		if n <= 3 {
			return refused
		}
		return nil
	}}
	db, _ := openFake(t, fc)
	if err := db.PingContext(context.Background()); err != nil {
		t.Fatalf("Connect did not retry: %v", err)
	}
	if got := fc.connects.Load(); got != 4 {
		t.Errorf("%d attempts, want 4", got)
	}

	other := errors.New("password authentication failed")
	fc2 := &fakeConnector{fail: func(int64) error { return other }}
	db2, _ := openFake(t, fc2)
	if err := db2.PingContext(context.Background()); !errors.Is(err, other) {
		t.Fatalf("got %v", err)
	}
	if got := fc2.connects.Load(); got != 1 {
		t.Errorf("%d attempts for a permanent error, want 1", got)
	}

	fc3 := &fakeConnector{fail: func(int64) error { return refused }}
	db3, _ := openFake(t, fc3, WithConnectRetryTimeout(0))
	if err := db3.PingContext(context.Background()); !errors.Is(err, syscall.ECONNREFUSED) {
		t.Fatalf("got %v", err)
	}
	if got := fc3.connects.Load(); got != 1 {
		t.Errorf("%d attempts with retries off, want 1", got)
	}

	fc4 := &fakeConnector{fail: func(int64) error { return refused }}
	db4, _ := openFake(t, fc4, WithConnectRetryTimeout(time.Minute))
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := db4.PingContext(ctx); err == nil {
		t.Fatal("no error")
	}
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("retries ignored the caller's deadline: %s", el)
	}
}

func TestTransientConnectError(t *testing.T) {
	if !transientConnectError(fmt.Errorf("x: %w", syscall.ECONNREFUSED)) {
		t.Error("ECONNREFUSED")
	}
	if !transientConnectError(sqlStateErr("57P03")) {
		t.Error("57P03")
	}
	for _, err := range []error{fmt.Errorf("read: %w", syscall.ECONNRESET), fmt.Errorf("receive: %w", io.ErrUnexpectedEOF), io.EOF} {
		if !transientConnectError(err) {
			t.Errorf("%v: a connect reset or closed before startup must be retried", err)
		}
	}
	if transientConnectError(sqlStateErr("28P01")) || transientConnectError(errors.New("x")) {
		t.Error("permanent errors must not be retried")
	}
}

type sqlStateErr string

func (e sqlStateErr) Error() string    { return "server error " + string(e) }
func (e sqlStateErr) SQLState() string { return string(e) }

// Each connection draws its own expiry within the jitter window, so
// connections opened together do not expire together; none outlives the
// lifetime.
func TestLifetimeJitterSpreads(t *testing.T) {
	withEnv(t)
	c, err := NewConnector(&fakeConnector{}, WithMaxConnLifetime(10*time.Second), WithMaxConnLifetimeJitter(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	lo, hi := time.Duration(1<<62), time.Duration(0)
	buckets := make([]int, 5) // one per second of the window
	for range 500 {
		w := &conn{c: c}
		w.setLifetime(now)
		d := w.expiresAt.Sub(now)
		lo, hi = min(lo, d), max(hi, d)
		if d <= 5*time.Second || d > 10*time.Second {
			t.Fatalf("expiry %s outside (5s, 10s]", d)
		}
		buckets[int((d-5*time.Second-1)/time.Second)]++
	}
	for i, n := range buckets {
		if n < 50 { // 100 expected per second
			t.Errorf("second %d of the jitter window holds %d of 500 expiries: %v", i, n, buckets)
		}
	}
	t.Logf("expiries from %s to %s, per second of the window: %v", lo, hi, buckets)
}

// An expired connection is refused with no I/O: IsValid on return to the
// pool, ResetSession before reuse.
func TestLifetimeEnforcedByConn(t *testing.T) {
	fc := &fakeConnector{}
	db, c := openFake(t, fc, WithMaxConnLifetime(30*time.Millisecond), WithMaxConnLifetimeJitter(0), WithMaxConns(1))
	var n int
	if err := db.QueryRow("select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	time.Sleep(40 * time.Millisecond)
	if err := db.QueryRow("select 1").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if got := fc.connects.Load(); got != 2 {
		t.Errorf("%d connects, want the expired connection replaced (2)", got)
	}
	if st := c.Stats(); st.Discarded != 1 {
		t.Errorf("counters %v, want one discarded", st)
	}
}

// Ready connections idle past pool_max_conn_idle_time are closed, except the
// pool_min_idle_conns newest.
func TestReadyIdleTrim(t *testing.T) {
	defer goleak.VerifyNone(t)
	fc := &fakeConnector{}
	db, c := openFake(t, fc, WithPrewarm(true), WithMaxIdleConns(6), WithMinIdleConns(2), WithMaxConnIdleTime(100*time.Millisecond))
	waitFor(t, 5*time.Second, "8 ready (6 prewarm + 2 keep-warm)", func() bool { return readyCount(c) == 8 })
	// The store drops the connections before it closes them.
	waitFor(t, 5*time.Second, "trim to 2, and the rest closed", func() bool { return readyCount(c) == 2 && fc.open.Load() == 2 })
	db.Close()
}

// Right after open, before the prewarm's dials finish, a request waits for
// one of them instead of starting a dial of its own.
func TestConnectAwaitsPrewarmDials(t *testing.T) {
	defer goleak.VerifyNone(t)
	fc := &fakeConnector{delay: 100 * time.Millisecond}
	db, c := openFake(t, fc, WithPrewarm(true), WithMaxIdleConns(6))
	db.SetMaxIdleConns(6)
	start := time.Now()
	burst(t, db, 4) // at once, while the 6 prewarm dials are in flight
	if el := time.Since(start); el > time.Second {
		t.Errorf("burst took %s", el)
	}
	if got := fc.connects.Load(); got != 6 {
		t.Errorf("%d connects, want the 6 prewarm dials and no others", got)
	}
	if st := c.Stats(); st.FromReady != 4 {
		t.Errorf("counters %v, want 4 from ready", st)
	}
	db.Close()
}
