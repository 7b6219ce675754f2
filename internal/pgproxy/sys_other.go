//go:build !linux

package pgproxy

import (
	"net"
	"syscall"
	"time"
)

// stampedReader reads from a connection and reports when the data arrived.
// Outside Linux it has no kernel receive timestamps and uses the time Read
// returned.
type stampedReader struct {
	conn net.Conn
	rc   syscall.RawConn // always nil here
}

func newStampedReader(c net.Conn) *stampedReader { return &stampedReader{conn: c} }

// read reads into b and returns the number of bytes, their arrival time
// (mono clock) and an error, like io.Reader.
func (r *stampedReader) read(b []byte) (int, int64, error) {
	n, err := r.conn.Read(b)
	return n, mono(), err
}

// sleeper falls back to time.Sleep outside Linux (about 1 ms granularity on
// many systems; the spin makes up for some of it).
type sleeper struct{}

func (*sleeper) sleep(ns int64) { time.Sleep(time.Duration(ns)) }

func (*sleeper) close() {}
