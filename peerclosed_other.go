//go:build !linux

package warmpg

import "syscall"

// peerClosed reports whether a peek finds the connection's socket closed
// (on Linux the TCP state says so even with a FATAL pending before the
// close; see peerclosed_linux.go). On platforms that cannot peek it
// reports false.
func peerClosed(rc syscall.RawConn) bool { return peekSocket(rc) == peekClosed }
