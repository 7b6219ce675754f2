//go:build unix

package warmpg

import (
	"errors"
	"syscall"

	"golang.org/x/sys/unix"
)

// peekSocket looks at a socket without reading from it and without
// blocking: recv(MSG_PEEK|MSG_DONTWAIT) of one byte. EAGAIN means nothing is
// pending (healthy and idle); 0 bytes means the server closed it; an error
// (ECONNRESET, ...) means it is gone; a byte means the server sent something
// nobody asked for. About a microsecond on this project's VMs.
//
// It runs under RawConn.Control, not RawConn.Read: Read takes the socket's
// read lock, which pgx's background reader can hold on an idle connection
// (it starts when a write blocks for 15 ms and may be left waiting in a
// read after pgx stops it); Read would then wait for the server forever.
// MSG_PEEK|MSG_DONTWAIT needs no lock: it never consumes or waits.
func peekSocket(rc syscall.RawConn) peekState {
	var (
		buf  [1]byte
		n    int
		rerr error
	)
	err := rc.Control(func(fd uintptr) {
		n, _, rerr = unix.Recvfrom(int(fd), buf[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
	})
	switch {
	case err != nil:
		return peekClosed
	case errors.Is(rerr, unix.EAGAIN), errors.Is(rerr, unix.EWOULDBLOCK), errors.Is(rerr, unix.EINTR):
		return peekEmpty
	case rerr != nil:
		return peekClosed
	case n == 0:
		return peekClosed
	}
	return peekPending
}
