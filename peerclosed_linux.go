//go:build linux

package warmpg

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpEstablished is Linux's TCP_ESTABLISHED (include/net/tcp_states.h).
const tcpEstablished = 1

// peerClosed reports, without reading and without blocking, whether the
// server has closed a connection's socket: the kernel's TCP state is past
// ESTABLISHED (CLOSE_WAIT once the server's FIN arrived, or any closing
// state), or, on a socket that is not TCP (a Unix socket), a peek finds it
// closed. A server that terminates a session sends a FATAL before its FIN,
// so a peek alone sees data, not the close; the TCP state sees the close
// under TLS too. One getsockopt, under RawConn.Control (no lock: see
// peekSocket), safe on a connection in use.
func peerClosed(rc syscall.RawConn) bool {
	var state uint8
	var gerr error
	if err := rc.Control(func(fd uintptr) {
		var info *unix.TCPInfo
		info, gerr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if gerr == nil {
			state = info.State
		}
	}); err != nil {
		return true // the socket is closed
	}
	if gerr != nil {
		return peekSocket(rc) == peekClosed
	}
	return state != tcpEstablished
}
