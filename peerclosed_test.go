package warmpg

import (
	"net"
	"runtime"
	"syscall"
	"testing"
	"time"
)

// tcpPair returns both ends of a loopback TCP connection.
func tcpPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	server, err = ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { server.Close() })
	return client, server
}

func rawOf(t *testing.T, c net.Conn) syscall.RawConn {
	t.Helper()
	rc, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

// A server that ends a session sends a FATAL, then closes: a peek sees the
// FATAL's bytes, not the close; peerClosed sees the close (Linux: the TCP
// state). A healthy connection, idle or with data pending, is not closed.
func TestPeerClosed(t *testing.T) {
	client, server := tcpPair(t)
	rc := rawOf(t, client)
	if peerClosed(rc) {
		t.Fatal("an idle, open connection reported closed")
	}
	if _, err := server.Write([]byte("E\x00\x00\x00\x04")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the data to arrive", func() bool { return peekSocket(rc) == peekPending })
	if peerClosed(rc) {
		t.Fatal("an open connection with data pending reported closed")
	}
	server.Close()
	if runtime.GOOS != "linux" {
		// Only the TCP state shows a close behind pending data.
		return
	}
	waitFor(t, 5*time.Second, "the close to be seen", func() bool { return peerClosed(rc) })
	if got := peekSocket(rc); got != peekPending {
		t.Errorf("peek after the close = %v, want pending (the FATAL's bytes hide the close)", got)
	}
	client.Close()
	if !peerClosed(rc) {
		t.Error("a closed socket not reported closed")
	}
}

// The peek check mode makes at every reuse allocates nothing (issue 24:
// it was four of the clean path's allocations over plain pgx), and answers
// as peekSocket does: empty on an idle connection, pending once the peer
// wrote, closed once it closed.
func TestPeekerAllocatesNothing(t *testing.T) {
	client, server := tcpPair(t)
	rc := rawOf(t, client)
	p := newPeeker(rc)
	if got := p.peek(); got != peekEmpty {
		t.Fatalf("idle: %v, want empty", got)
	}
	if runtime.GOOS == "linux" {
		if n := testing.AllocsPerRun(1000, func() { p.peek() }); n != 0 {
			t.Errorf("a peek allocates %v times, want 0", n)
		}
	}
	if _, err := server.Write([]byte("N")); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the byte to arrive", func() bool { return p.peek() == peekPending })
	if got := peekSocket(rc); got != peekPending {
		t.Fatalf("peekSocket: %v, peeker: pending", got)
	}
	server.Close()
	buf := make([]byte, 1)
	if _, err := client.Read(buf); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "the close to arrive", func() bool { return p.peek() == peekClosed })
	if got := peekSocket(rc); got != peekClosed {
		t.Fatalf("peekSocket: %v, peeker: closed", got)
	}
}
