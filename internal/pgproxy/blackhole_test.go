package pgproxy

import (
	"bytes"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"go.uber.org/goleak"
)

// readTimesOut reports whether a read on c gets nothing for d.
func readTimesOut(t *testing.T, c net.Conn, d time.Duration) bool {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(d))
	defer c.SetReadDeadline(time.Time{})
	n, err := c.Read(make([]byte, 64))
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	t.Errorf("read during the black hole: %d bytes, %v; want a timeout", n, err)
	return false
}

func readExactly(t *testing.T, c net.Conn, want []byte) {
	t.Helper()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	defer c.SetReadDeadline(time.Time{})
	got := make([]byte, len(want))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read: %v", err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("read %q, want %q", got, want)
	}
}

// Client to server: nothing reaches the server while the hole is on, the
// sockets stay open, and what was held arrives in order when it lifts.
func TestBlackHoleHoldsClientToServer(t *testing.T) {
	defer goleak.VerifyNone(t)
	for _, rtt := range []time.Duration{0, 2 * time.Millisecond} {
		t.Run(rtt.String(), func(t *testing.T) {
			echo := startEcho(t)
			defer echo.stop()
			p := newProxy(t, echo.Addr(), WithLatency(rtt))
			defer p.Close()
			c := dial(t, p.Addr())
			defer c.Close()
			roundTrips(t, c, 3, 16)

			p.SetBlackHole(true)
			if !p.BlackHoled() {
				t.Fatal("BlackHoled() = false after SetBlackHole(true)")
			}
			for _, part := range []string{"held-1 ", "held-2 ", "held-3"} {
				if _, err := c.Write([]byte(part)); err != nil {
					t.Fatal(err)
				}
			}
			waitFor(t, 5*time.Second, "the proxy to hold the client's bytes", func() bool { return p.Held() >= 1 })
			readTimesOut(t, c, 300*time.Millisecond)
			if p.Active() != 1 || echo.Active() != 1 {
				t.Fatalf("Active=%d upstream=%d during the black hole, want 1 1: nothing may be closed", p.Active(), echo.Active())
			}

			p.SetBlackHole(false)
			readExactly(t, c, []byte("held-1 held-2 held-3"))
			roundTrips(t, c, 3, 16)
			if p.Held() != 0 {
				t.Errorf("Held() = %d after the hole lifted", p.Held())
			}
		})
	}
}

// Server to client, and a connection accepted while the hole is on: the
// server's unasked bytes and the new client's first bytes are held too.
func TestBlackHoleHoldsServerToClientAndNewConns(t *testing.T) {
	defer goleak.VerifyNone(t)
	push := make(chan []byte, 1)
	done := make(chan struct{})
	srv := startServer(t, func(c net.Conn) {
		buf := make([]byte, 64)
		n, err := c.Read(buf) // the greeting
		if err != nil {
			return
		}
		_, _ = c.Write(buf[:n])
		select {
		case b := <-push:
			_, _ = c.Write(b)
		case <-done:
			return
		}
		_, _ = io.Copy(c, c)
	})
	defer srv.stop()
	defer close(done)
	p := newProxy(t, srv.Addr())
	defer p.Close()
	c := dial(t, p.Addr())
	defer c.Close()
	if _, err := c.Write([]byte("hi")); err != nil {
		t.Fatal(err)
	}
	readExactly(t, c, []byte("hi"))

	p.SetBlackHole(true)
	p.SetBlackHole(true) // idempotent
	push <- []byte("unasked")
	readTimesOut(t, c, 300*time.Millisecond)

	// A new connection while the hole is on: accepted, nothing passes.
	c2 := dial(t, p.Addr())
	defer c2.Close()
	if _, err := c2.Write([]byte("c2")); err != nil {
		t.Fatal(err)
	}
	readTimesOut(t, c2, 300*time.Millisecond)

	p.SetBlackHole(false)
	p.SetBlackHole(false) // idempotent
	readExactly(t, c, []byte("unasked"))
	readExactly(t, c2, []byte("c2"))
	if p.BlackHoled() {
		t.Error("BlackHoled() = true after SetBlackHole(false)")
	}
}

// A close on one side does not pass the hole either; CloseConns and Close
// end held connections at once and leave no goroutine behind.
func TestBlackHoleCloseAndCloseConns(t *testing.T) {
	defer goleak.VerifyNone(t)
	echo := startEcho(t)
	defer echo.stop()
	p := newProxy(t, echo.Addr(), WithLatency(time.Millisecond))
	defer p.Close()
	c := dial(t, p.Addr())
	defer c.Close()
	roundTrips(t, c, 1, 16)
	p.SetBlackHole(true)

	// The client goes away: the upstream does not learn of it.
	c.Close()
	waitFor(t, 5*time.Second, "the client's close to be held", func() bool { return p.Held() >= 1 })
	time.Sleep(100 * time.Millisecond)
	if echo.Active() != 1 {
		t.Fatalf("upstream connections %d: a close passed the black hole", echo.Active())
	}

	// CloseConns ends it while the hole is still on.
	c2 := dial(t, p.Addr())
	defer c2.Close()
	if _, err := c2.Write([]byte("x")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "both connections held", func() bool { return p.Accepted() == 2 && p.Held() >= 2 })
	start := time.Now()
	p.CloseConns()
	_ = c2.SetReadDeadline(time.Now().Add(5 * time.Second))
	var ne net.Error
	if _, err := c2.Read(make([]byte, 8)); err == nil || (errors.As(err, &ne) && ne.Timeout()) {
		t.Errorf("read after CloseConns: %v, want the connection closed", err)
	}
	waitFor(t, 5*time.Second, "upstream connections to close", func() bool { return echo.Active() == 0 })
	waitFor(t, 5*time.Second, "nothing held", func() bool { return p.Held() == 0 })
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("CloseConns took %v to end held connections", d)
	}

	// Close with a connection held, the hole still on.
	c3 := dial(t, p.Addr())
	defer c3.Close()
	if _, err := c3.Write([]byte("y")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "c3 held", func() bool { return p.Held() >= 1 })
	start = time.Now()
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("Close took %v with a held connection", d)
	}
}
