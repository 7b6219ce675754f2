package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

// slowLastConnector connects at once but for its slowAt-th connect, which
// takes slow.
type slowLastConnector struct {
	*fakeConnector
	slowAt int64
	slow   time.Duration
	n      atomic.Int64
}

func (s *slowLastConnector) Connect(ctx context.Context) (driver.Conn, error) {
	if s.n.Add(1) == s.slowAt {
		t := time.NewTimer(s.slow)
		defer t.Stop()
		select {
		case <-t.C:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	return s.fakeConnector.Connect(ctx)
}

// WarmDB gives back what it holds as soon as the application waits for a
// connection (issue 13, 3): here three connections open at once and the
// fourth takes 2 s; an application request made meanwhile used to wait
// for the whole warm (2 s), and now gets one of the three within a few
// polls.
func TestWarmDBYieldsToWaitingApplication(t *testing.T) {
	withEnv(t)
	sc := &slowLastConnector{fakeConnector: &fakeConnector{}, slowAt: 4, slow: 2 * time.Second}
	c, err := NewConnector(sc, WithMaxConns(4))
	if err != nil {
		t.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	done := make(chan struct{})
	var rep WarmReport
	var werr error
	go func() {
		defer close(done)
		rep, werr = WarmDB(context.Background(), db)
	}()
	waitFor(t, 5*time.Second, "WarmDB holding 3 and dialling 1", func() bool { return db.Stats().InUse == 4 })
	start := time.Now()
	conn, err := db.Conn(context.Background())
	waited := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	conn.Close()
	<-done
	t.Logf("application waited %s for a connection during WarmDB; report %+v, %v", waited, rep, werr)
	if waited > time.Second {
		t.Errorf("the application waited %s for a connection WarmDB held (its slow dial: 2 s)", waited)
	}
	if rep.Warmed != 3 || rep.Failed != 1 || !errors.Is(werr, ErrWarmYielded) {
		t.Errorf("report %+v, %v: want the 3 held, given back early, and the slow one not counted", rep, werr)
	}
}
