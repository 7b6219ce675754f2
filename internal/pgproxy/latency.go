package pgproxy

import (
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// Latency model
//
// Each direction of a proxied connection is a pipe with a constant one-way
// delay d (rtt/2). The reader goroutine reads a chunk from the source,
// stamps it with its arrival time and queues it; the writer goroutine writes
// each chunk to the destination at arrival+d. Chunks are FIFO, so due times
// are monotonic, and a chunk never waits for the previous one beyond its own
// due time: the delay is latency, not serialisation.
//
// Go timers (time.Sleep, time.Timer) have roughly 1 ms granularity here, so
// on Linux the writer sleeps on a high-resolution kernel timer (a timerfd
// read through the network poller, see sleeper; nanosleep(2) as a fallback).
// It wakes a little early (DefaultSpin, see WithSpin) and spins on the
// monotonic clock for the rest, which hides most of the occasional late
// wake-ups of an idle CPU.
//
// The arrival time is the kernel's receive timestamp where available (see
// stampedReader), so the time the reader goroutine takes to wake up is not
// added to the delay either.

// DefaultSpin is the default for WithSpin.
const DefaultSpin = 50 * time.Microsecond

// maxSleepSlice bounds one sleep so that a closed connection is noticed
// promptly even with a very large latency.
const maxSleepSlice = 5 * time.Millisecond

// queueLen is the capacity of a pipe's chunk queue. A full queue blocks the
// reader, which pushes back on the sender through TCP flow control.
const queueLen = 64

// bufSize is the size of the buffers chunks are read into.
const bufSize = 32 << 10

var bufPool = sync.Pool{New: func() any { b := make([]byte, bufSize); return &b }}

// epoch is the origin of mono.
var epoch = time.Now()

// mono returns monotonic nanoseconds since epoch.
func mono() int64 { return int64(time.Since(epoch)) }

type chunk struct {
	buf *[]byte // nil marks end of stream
	n   int
	due int64 // mono() time at which to write
}

// pipe forwards one direction of a proxied connection.
type pipe struct {
	p      *Proxy
	c      *conn
	src    *stampedReader
	dst    net.Conn
	parser *frontendParser // nil for server→client

	q        chan chunk
	inflight atomic.Int64 // chunks queued or being written by the writer
	sleeper  sleeper      // used by the writer only
}

func newPipe(p *Proxy, c *conn, src, dst net.Conn, parser *frontendParser) *pipe {
	return &pipe{p: p, c: c, src: newStampedReader(src), dst: dst, parser: parser, q: make(chan chunk, queueLen)}
}

// read is the reader goroutine. It returns when the source fails or the
// connection is closed.
func (pp *pipe) read() {
	var lastDue int64
	for {
		bp := bufPool.Get().(*[]byte)
		n, now, err := pp.src.read(*bp)
		if ok, waited := pp.p.hole.pass(pp.c.done); !ok {
			bufPool.Put(bp) // closed while black-holed (blackhole.go)
			return
		} else if waited {
			now = mono() // the injected delay counts from release
		}
		if n > 0 && pp.parser != nil && !pp.parser.done() {
			pp.parser.feed((*bp)[:n])
			if len(pp.parser.out) > 0 {
				pp.p.record(pp.parser.out)
				clear(pp.parser.out)
				pp.parser.out = pp.parser.out[:0]
			}
		}
		d := pp.p.oneWay.Load()
		if d == 0 && pp.inflight.Load() == 0 {
			// No latency and nothing queued: forward directly.
			if n > 0 {
				if _, werr := pp.dst.Write((*bp)[:n]); werr != nil {
					bufPool.Put(bp)
					pp.c.close()
					return
				}
			}
			bufPool.Put(bp)
			if err != nil {
				pp.c.close()
				return
			}
			continue
		}
		due := max(now+d, lastDue)
		lastDue = due
		if n > 0 {
			if !pp.enqueue(chunk{buf: bp, n: n, due: due}) {
				bufPool.Put(bp)
				return
			}
		} else {
			bufPool.Put(bp)
		}
		if err != nil {
			// Deliver the end of stream after the data before it; the
			// writer then closes the whole connection.
			pp.enqueue(chunk{due: due})
			return
		}
	}
}

func (pp *pipe) enqueue(ch chunk) bool {
	pp.inflight.Add(1)
	select {
	case pp.q <- ch:
		return true
	case <-pp.c.done:
		pp.inflight.Add(-1)
		return false
	}
}

// write is the writer goroutine. It returns when the connection is closed.
func (pp *pipe) write() {
	defer pp.sleeper.close()
	for {
		var ch chunk
		select {
		case ch = <-pp.q:
		case <-pp.c.done:
			pp.drain()
			return
		}
		if !sleepUntil(ch.due, pp.p.spin, pp.c.done, &pp.sleeper) {
			if ch.buf != nil {
				bufPool.Put(ch.buf)
			}
			pp.drain()
			return
		}
		if ch.buf == nil {
			pp.c.close()
			pp.drain()
			return
		}
		_, err := pp.dst.Write((*ch.buf)[:ch.n])
		bufPool.Put(ch.buf)
		pp.inflight.Add(-1)
		if err != nil {
			pp.c.close()
			pp.drain()
			return
		}
	}
}

// drain returns the buffers of queued chunks to the pool. It is called by the
// writer after the connection is closed, when the reader can no longer
// enqueue (enqueue gives up once c.done is closed, but may still have won the
// race for the last slot, which is fine: the buffer is simply not reused).
func (pp *pipe) drain() {
	for {
		select {
		case ch := <-pp.q:
			if ch.buf != nil {
				bufPool.Put(ch.buf)
			}
		default:
			return
		}
	}
}

// sleepUntil waits until mono() >= due: it sleeps with s until spin before
// due, then spins. It returns false if done is closed first (checked between
// sleeps, so within maxSleepSlice). A nil done never fires.
func sleepUntil(due int64, spin time.Duration, done <-chan struct{}, s *sleeper) bool {
	for {
		rem := due - mono() - int64(spin)
		if rem <= 0 {
			break
		}
		select {
		case <-done:
			return false
		default:
		}
		s.sleep(min(rem, int64(maxSleepSlice)))
	}
	// Spin for the rest; bounded by spin plus one late wake-up.
	for mono() < due {
	}
	return true
}
