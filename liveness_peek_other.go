//go:build !linux

package warmpg

import "syscall"

// peeker is peekSocket for one connection's socket (liveness_peek_linux.go
// has the version without allocations).
type peeker struct{ rc syscall.RawConn }

func newPeeker(rc syscall.RawConn) *peeker { return &peeker{rc: rc} }

func (p *peeker) peek() peekState { return peekSocket(p.rc) }
