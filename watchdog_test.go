package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"net"
	"slices"
	"sync"
	"testing"
	"time"
)

// deadlineConn is a net.Conn that records SetDeadline calls.
type deadlineConn struct {
	net.Conn
	mu  sync.Mutex
	set []time.Time
}

func (d *deadlineConn) SetDeadline(t time.Time) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.set = append(d.set, t)
	return nil
}

func (d *deadlineConn) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return len(d.set)
}

func watchedConn(grace time.Duration) (*conn, *deadlineConn) {
	cfg := newConfig()
	cfg.cancelGrace = grace
	nc := &deadlineConn{}
	return &conn{inner: &fakeConn{}, c: &Connector{cfg: cfg}, nc: nc}, nc
}

// A watchdog callback that runs after its statement was disarmed — as
// context.AfterFunc's goroutine may, once the connection already carries
// the next statement — touches nothing (issue 18, 1).
func TestWatchdogLateCallbackTouchesNothing(t *testing.T) {
	for _, grace := range []time.Duration{0, time.Millisecond} {
		c, nc := watchedConn(grace)
		ctx, cancel := context.WithCancel(context.Background())
		disarm := c.watch(ctx)
		c.watchMu.Lock()
		tok := c.watchTok
		c.watchMu.Unlock()
		disarm()
		// The next statement arms again, with a context that never ends.
		next := c.watch(context.Background())
		c.ctxEnded(tok) // the first arming's callback, late
		cancel()
		time.Sleep(20 * time.Millisecond) // a grace timer, had one started, has fired
		if n := nc.count(); n != 0 || c.timedOut.Load() {
			t.Errorf("grace %s: a late callback set %d deadlines, timedOut %v", grace, n, c.timedOut.Load())
		}
		next()
	}
}

// When the context ends, the socket is cut only after the grace, and not
// at all if the statement is done within it (issue 13, 1).
func TestWatchdogWaitsForGrace(t *testing.T) {
	c, nc := watchedConn(time.Hour)
	ctx, cancel := context.WithCancel(context.Background())
	disarm := c.watch(ctx)
	cancel()
	waitFor(t, 5*time.Second, "the grace timer", func() bool {
		c.watchMu.Lock()
		defer c.watchMu.Unlock()
		return c.graceTimer != nil
	})
	if n := nc.count(); n != 0 || c.timedOut.Load() {
		t.Fatalf("context ended, grace not over: %d deadlines set, timedOut %v", n, c.timedOut.Load())
	}
	disarm() // the statement returned (cancelled by the server) within the grace
	if c.armed() || c.timedOut.Load() {
		t.Error("disarmed within the grace: the connection must stay usable")
	}

	c, nc = watchedConn(time.Millisecond)
	ctx, cancel = context.WithCancel(context.Background())
	disarm = c.watch(ctx)
	cancel()
	waitFor(t, 5*time.Second, "the deadline", func() bool { return nc.count() == 1 })
	if !c.timedOut.Load() || !nc.set[0].Before(time.Now()) {
		t.Errorf("grace over: want a past deadline and the connection marked, got %v, timedOut %v", nc.set, c.timedOut.Load())
	}
	disarm()
}

// recConn records the statements sent and begins transactions whose
// Rollback fails, as a driver's may when its connection breaks.
type recConn struct {
	*fakeConn
	mu    sync.Mutex
	stmts []string
}

func (c *recConn) ExecContext(_ context.Context, q string, _ []driver.NamedValue) (driver.Result, error) {
	c.mu.Lock()
	c.stmts = append(c.stmts, q)
	c.mu.Unlock()
	return driver.RowsAffected(0), nil
}

func (c *recConn) BeginTx(context.Context, driver.TxOptions) (driver.Tx, error) {
	return failTx{}, nil
}

func (c *recConn) sent() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.stmts)
}

type failTx struct{}

func (failTx) Commit() error   { return nil }
func (failTx) Rollback() error { return errors.New("rollback failed") }

// A transaction begun through a foreign driver, whose rollback failed, is
// rolled back before the connection's next user gets it, in every reset
// mode that checks ("Also" of issue 18); a committed one costs nothing.
func TestForeignDriverFailedRollbackRolledBackOnReuse(t *testing.T) {
	for _, mode := range []ResetMode{ResetCheck, ResetNone, ResetPing} {
		rc := &recConn{fakeConn: &fakeConn{}}
		db, _ := openFake(t, &fakeConnector{newConn: func() driver.Conn { return rc }}, WithReset(mode), WithMaxConns(1))
		ctx := context.Background()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err == nil {
			t.Fatal("want the rollback to fail")
		}
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
		if got := rc.sent(); !slices.Equal(got, []string{"ROLLBACK", "select 1"}) {
			t.Errorf("%s: sent %q, want a ROLLBACK before the next user's statement", mode, got)
		}
		// A committed transaction leaves nothing to roll back.
		tx, err = db.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if err := tx.Commit(); err != nil {
			t.Fatal(err)
		}
		if _, err := db.ExecContext(ctx, "select 2"); err != nil {
			t.Fatal(err)
		}
		if got := rc.sent(); !slices.Equal(got, []string{"ROLLBACK", "select 1", "select 2"}) {
			t.Errorf("%s: sent %q after a commit, want no ROLLBACK", mode, got)
		}
		db.Close()
	}
}
