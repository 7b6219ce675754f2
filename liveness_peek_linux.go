//go:build linux

package warmpg

import (
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// peeker is a connection's peekSocket without an allocation: check mode
// peeks at every reuse, and a closure handed to RawConn.Control, with the
// results it writes, escapes to the heap, as does unix.Recvfrom's address
// (four allocations a checkout, issue 24). The closure is made once per
// connection, its results live in the peeker, and recvfrom is called
// without asking for the address. mu keeps two peeks of the same
// connection (a checkout, keep-warm's tick) from sharing the results.
type peeker struct {
	mu    sync.Mutex
	rc    syscall.RawConn
	buf   [1]byte
	n     uintptr
	errno syscall.Errno
	fn    func(fd uintptr)
}

func newPeeker(rc syscall.RawConn) *peeker {
	p := &peeker{rc: rc}
	p.fn = p.recv
	return p
}

func (p *peeker) recv(fd uintptr) {
	p.n, _, p.errno = unix.Syscall6(unix.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&p.buf[0])), 1,
		unix.MSG_PEEK|unix.MSG_DONTWAIT, 0, 0)
}

// peek is peekSocket for p's socket.
func (p *peeker) peek() peekState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if err := p.rc.Control(p.fn); err != nil {
		return peekClosed
	}
	switch {
	case p.errno == unix.EAGAIN || p.errno == unix.EINTR:
		return peekEmpty
	case p.errno != 0, p.n == 0:
		return peekClosed
	}
	return peekPending
}
