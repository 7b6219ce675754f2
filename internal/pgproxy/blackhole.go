package pgproxy

import (
	"sync"
	"sync/atomic"
)

// Black hole
//
// SetBlackHole(true) makes the proxy stop forwarding, in both directions and
// on every connection (those open and those accepted later), without closing
// any socket: to the client, a server that hangs, or a network path that
// silently stops delivering. Nothing passes, not even a close: a side that
// closes while the hole is on is not seen by the other side until it lifts.
//
// What was read while the hole was on is held, not dropped, and delivered in
// order when it lifts (SetBlackHole(false)), like the segments TCP keeps
// retransmitting across a partition that heals before it gives up. Data the
// proxy had already read and queued before the hole opened (at most rtt/2 of
// it, with latency injection) is still delivered. CloseConns and Close end
// held connections at once, discarding what they held.
//
// The proxy's own sockets keep answering at the TCP level (ACKs, keepalive
// probes), so a client's TCP keepalive or TCP_USER_TIMEOUT never fires
// because of the hole: it models a peer that hangs, not a lost network
// path. The listener keeps accepting, since the kernel completes TCP
// handshakes on its own; a connection accepted while the hole is on is
// dialled upstream, and the client's startup packet is held.

// blackHole is the Proxy's black-hole switch.
type blackHole struct {
	mu sync.Mutex // serialises SetBlackHole
	// gate is nil while data flows. While the hole is on it points to a
	// channel that is closed when the hole lifts.
	gate atomic.Pointer[chan struct{}]
	held atomic.Int64 // reads waiting at the hole
}

// SetBlackHole turns the black hole on or off (see the package's Black hole
// notes in blackhole.go). Turning it on when it is on, or off when it is off,
// does nothing.
func (p *Proxy) SetBlackHole(on bool) {
	h := &p.hole
	h.mu.Lock()
	defer h.mu.Unlock()
	cur := h.gate.Load()
	switch {
	case on && cur == nil:
		ch := make(chan struct{})
		h.gate.Store(&ch)
	case !on && cur != nil:
		h.gate.Store(nil)
		close(*cur)
	}
}

// BlackHoled reports whether the black hole is on.
func (p *Proxy) BlackHoled() bool { return p.hole.gate.Load() != nil }

// Held returns how many reads (one per connection and direction at most)
// are waiting at the black hole: data, or an end of stream, that the proxy
// has read and not forwarded.
func (p *Proxy) Held() int { return int(p.hole.held.Load()) }

// pass returns at once while the hole is off. While it is on it waits until
// the hole lifts (true) or done is closed (false); waited says whether it
// had to wait.
func (h *blackHole) pass(done <-chan struct{}) (ok, waited bool) {
	g := h.gate.Load()
	if g == nil {
		return true, false
	}
	h.held.Add(1)
	defer h.held.Add(-1)
	for g != nil {
		select {
		case <-*g:
		case <-done:
			return false, true
		}
		g = h.gate.Load() // it may have been turned on again
	}
	return true, true
}
