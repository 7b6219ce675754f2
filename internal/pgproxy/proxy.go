// Package pgproxy is a TCP proxy for warmpg's tests and benchmarks. It sits
// between a PostgreSQL client and server on 127.0.0.1 and does two things:
//
//   - Round-trip accounting: it parses the frontend (client→server) side of
//     the PostgreSQL wire protocol and counts the messages it forwards by
//     type byte ('Q', 'P', 'B', 'E', 'S', 'X', ...), and keeps a bounded log
//     of them with the SQL text of Query and Parse messages. Tests use this
//     to assert how many round trips and statements the driver issued.
//
//   - Latency injection: it delays each direction by half of a configurable
//     round-trip time, so benchmarks on a loopback server behave like a
//     client talking to a server over a network. Delays are accurate to a
//     few tens of microseconds (nanosleep(2) plus a short spin, not Go
//     timers, counted from the kernel's receive timestamp) and pipelined:
//     data sent while earlier data is in flight is not held back by it.
//
// What the proxy controls is the time bytes spend between the client's and
// the server's sockets. A client or server that sits idle for a whole round
// trip also takes longer to wake up when the reply arrives; on this
// project's 2-core VMs a pgx query through the proxy took about 40 µs more
// than rtt at 1 ms and 150 µs more at 5 ms (median; a direct query after 5 ms
// of idling costs about 100 µs more than a back-to-back one). That cost comes
// on top of the injected latency, as it would with a real network.
//
// A Proxy forwards every accepted connection to one upstream address. The
// backend (server→client) side is forwarded untouched and not parsed.
// Parsing of a connection stops (forwarding continues) once it switches to
// TLS or GSS encryption, after a CancelRequest, or if the stream does not look
// like the frontend protocol.
package pgproxy

import (
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// DefaultMaxMessages is the default bound of the message log (see
// WithMaxMessages).
const DefaultMaxMessages = 100000

// dialTimeout bounds connecting to the upstream server.
const dialTimeout = 10 * time.Second

// Message describes one frontend message forwarded by the proxy.
type Message struct {
	// Conn is the sequence number of the proxied connection the message
	// was sent on (1 for the first connection the proxy accepted).
	Conn int
	// Type is the message type byte ('Q', 'P', ...), or for the untyped
	// startup-phase packets one of KeyStartup, KeySSLRequest,
	// KeyGSSENCRequest or KeyCancelRequest.
	Type byte
	// Len is the value of the message's length field: the length of the
	// message including the length field itself but not the type byte.
	Len int
	// Code is the request code or protocol version of an untyped
	// startup-phase packet (196608 for a protocol 3.0 StartupMessage);
	// zero for typed messages.
	Code uint32
	// Text is the SQL text of a Query ('Q') message, or the statement text
	// (after the statement name) of a Parse ('P') message, truncated to the
	// text limit (DefaultTextLimit bytes unless set with WithTextLimit).
	// It is empty for other messages.
	Text string
}

// Option configures a Proxy.
type Option func(*config)

type config struct {
	rtt         time.Duration
	spin        time.Duration
	maxMessages int
	textLimit   int
}

// WithLatency sets the total injected round-trip time; each direction is
// delayed by rtt/2. Zero (the default) forwards without delay.
func WithLatency(rtt time.Duration) Option {
	return func(c *config) { c.rtt = rtt }
}

// WithMaxMessages bounds the message log returned by Messages to the n most
// recent messages (default DefaultMaxMessages). Older messages are dropped;
// the counters are not affected. n <= 0 disables the log.
func WithMaxMessages(n int) Option {
	return func(c *config) { c.maxMessages = n }
}

// WithTextLimit sets how many bytes of SQL text are kept in Message.Text
// (default DefaultTextLimit).
func WithTextLimit(n int) Option {
	return func(c *config) { c.textLimit = max(n, 0) }
}

// WithSpin sets how long before a delayed chunk is due the writer stops
// sleeping and busy-waits instead (default DefaultSpin). Spinning hides the
// occasional late wake-up of an idle CPU but costs up to that much CPU time
// per chunk forwarded with a delay; benchmarks running many connections in
// parallel on few cores may want less. Zero disables spinning.
func WithSpin(d time.Duration) Option {
	return func(c *config) { c.spin = max(d, 0) }
}

// Proxy is a latency-injecting, message-counting TCP proxy. Its methods are
// safe for concurrent use.
type Proxy struct {
	upstream  string
	ln        net.Listener
	host      string
	port      int
	textLimit int
	spin      time.Duration
	oneWay    atomic.Int64 // one-way delay in nanoseconds
	hole      blackHole    // see blackhole.go

	ctx    context.Context // cancelled by Close; parent of upstream dials
	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu       sync.Mutex
	closed   bool
	conns    map[*conn]struct{}
	accepted int

	statsMu     sync.Mutex
	counts      [256]int
	log         []Message // the last maxMessages entries are the log
	maxMessages int

	closeOnce sync.Once
	closeErr  error
}

// New starts a proxy listening on 127.0.0.1:0 that forwards every accepted
// connection to upstream ("host:port").
func New(upstream string, opts ...Option) (*Proxy, error) {
	cfg := config{spin: DefaultSpin, maxMessages: DefaultMaxMessages, textLimit: DefaultTextLimit}
	for _, o := range opts {
		o(&cfg)
	}
	if _, _, err := net.SplitHostPort(upstream); err != nil {
		return nil, err
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	tcpAddr := ln.Addr().(*net.TCPAddr)
	ctx, cancel := context.WithCancel(context.Background())
	p := &Proxy{
		upstream:    upstream,
		ln:          ln,
		host:        tcpAddr.IP.String(),
		port:        tcpAddr.Port,
		textLimit:   cfg.textLimit,
		spin:        cfg.spin,
		ctx:         ctx,
		cancel:      cancel,
		conns:       make(map[*conn]struct{}),
		maxMessages: max(cfg.maxMessages, 0),
	}
	p.SetLatency(cfg.rtt)
	p.wg.Add(1)
	go p.acceptLoop()
	return p, nil
}

// Addr returns the proxy's listening address, "127.0.0.1:port".
func (p *Proxy) Addr() string { return net.JoinHostPort(p.host, strconv.Itoa(p.port)) }

// Host returns the proxy's listening host, "127.0.0.1".
func (p *Proxy) Host() string { return p.host }

// Port returns the proxy's listening port.
func (p *Proxy) Port() int { return p.port }

// Upstream returns the address the proxy forwards to.
func (p *Proxy) Upstream() string { return p.upstream }

// SetLatency changes the injected round-trip time at run time. It applies to
// data the proxy reads after the call; data already in flight keeps its
// delivery time (and later data is never delivered before earlier data).
// Negative values are treated as zero.
func (p *Proxy) SetLatency(rtt time.Duration) {
	p.oneWay.Store(int64(max(rtt, 0) / 2))
}

// Latency returns the injected round-trip time (twice the one-way delay).
func (p *Proxy) Latency() time.Duration { return time.Duration(p.oneWay.Load()) * 2 }

// Counts returns the number of frontend messages forwarded since the proxy
// started or Reset was last called, by message type byte. StartupMessages are
// counted under KeyStartup (0); SSLRequest, GSSENCRequest and CancelRequest
// packets under KeySSLRequest, KeyGSSENCRequest and KeyCancelRequest. Types
// with a zero count are omitted.
//
// A message is counted as soon as the proxy has read all of it from the
// client, before the injected delay; so once the client has its reply, the
// request is counted. A message the client sends without waiting for a reply
// (such as Terminate, 'X', when it closes) may not be counted yet right
// after the client returns: poll for it if a test needs it.
func (p *Proxy) Counts() map[byte]int {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	m := make(map[byte]int)
	for i, n := range p.counts {
		if n != 0 {
			m[byte(i)] = n
		}
	}
	return m
}

// Count returns the number of frontend messages of type typ forwarded since
// the proxy started or Reset was last called (see Counts).
func (p *Proxy) Count(typ byte) int {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	return p.counts[typ]
}

// Messages returns a copy of the log of frontend messages forwarded since the
// proxy started or Reset was last called, oldest first. The log keeps only
// the most recent DefaultMaxMessages messages (or the WithMaxMessages
// bound); older ones are dropped.
func (p *Proxy) Messages() []Message {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	l := p.log
	if len(l) > p.maxMessages {
		l = l[len(l)-p.maxMessages:]
	}
	return append([]Message(nil), l...)
}

// Reset zeroes the message counters and empties the message log. Connection
// sequence numbers and Accepted are not reset.
func (p *Proxy) Reset() {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	p.counts = [256]int{}
	p.log = nil
}

// record adds parsed messages to the counters and the log.
func (p *Proxy) record(msgs []Message) {
	p.statsMu.Lock()
	defer p.statsMu.Unlock()
	for _, m := range msgs {
		p.counts[m.Type]++
	}
	if p.maxMessages == 0 {
		return
	}
	p.log = append(p.log, msgs...)
	// Keep between maxMessages and 2*maxMessages entries; Messages returns
	// the last maxMessages. Amortised O(1) per message.
	if len(p.log) >= 2*p.maxMessages {
		n := copy(p.log, p.log[len(p.log)-p.maxMessages:])
		clear(p.log[n:])
		p.log = p.log[:n]
	}
}

// Accepted returns the number of client connections accepted so far.
func (p *Proxy) Accepted() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.accepted
}

// Active returns the number of proxied client connections currently open. A
// connection stops being active when the proxy closes it, which happens when
// either side closes or fails, or on CloseConns or Close.
func (p *Proxy) Active() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.conns)
}

// CloseConns abruptly closes every proxied connection, both the client and
// the server side, discarding data in flight. The proxy keeps listening for
// new connections. It does not wait for the connections' goroutines to exit.
func (p *Proxy) CloseConns() {
	for _, c := range p.snapshot() {
		c.close()
	}
}

// Close stops listening, closes every proxied connection and waits until all
// of the proxy's goroutines have exited. Calling it again returns the first
// call's result.
func (p *Proxy) Close() error {
	p.closeOnce.Do(func() {
		p.mu.Lock()
		p.closed = true
		p.mu.Unlock()
		p.closeErr = p.ln.Close()
		p.cancel()
		p.CloseConns()
		p.wg.Wait()
	})
	return p.closeErr
}

func (p *Proxy) snapshot() []*conn {
	p.mu.Lock()
	defer p.mu.Unlock()
	cs := make([]*conn, 0, len(p.conns))
	for c := range p.conns {
		cs = append(cs, c)
	}
	return cs
}

func (p *Proxy) acceptLoop() {
	defer p.wg.Done()
	var backoff time.Duration
	for {
		cc, err := p.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) || p.ctx.Err() != nil {
				return
			}
			// Transient failure (e.g. out of file descriptors): back
			// off a little, bounded, until Close.
			backoff = min(max(2*backoff, time.Millisecond), 100*time.Millisecond)
			t := time.NewTimer(backoff)
			select {
			case <-t.C:
			case <-p.ctx.Done():
				t.Stop()
				return
			}
			continue
		}
		backoff = 0
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			cc.Close()
			return
		}
		p.accepted++
		c := newConn(p, p.accepted, cc)
		p.conns[c] = struct{}{}
		p.wg.Add(1)
		p.mu.Unlock()
		go c.run()
	}
}

// conn is one proxied connection.
type conn struct {
	p      *Proxy
	id     int
	client net.Conn
	ctx    context.Context // cancelled by close; aborts the upstream dial
	cancel context.CancelFunc
	done   chan struct{} // closed by close

	mu     sync.Mutex
	closed bool
	server net.Conn
}

func newConn(p *Proxy, id int, client net.Conn) *conn {
	ctx, cancel := context.WithCancel(p.ctx)
	return &conn{p: p, id: id, client: client, ctx: ctx, cancel: cancel, done: make(chan struct{})}
}

// run dials the upstream and forwards in both directions. It is counted in
// p.wg and adds the goroutines it starts to it.
func (c *conn) run() {
	defer c.p.wg.Done()
	d := net.Dialer{Timeout: dialTimeout}
	sc, err := d.DialContext(c.ctx, "tcp", c.p.upstream)
	if err != nil {
		c.close()
		return
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		sc.Close()
		return
	}
	c.server = sc
	c.mu.Unlock()
	up := newPipe(c.p, c, c.client, sc, newFrontendParser(c.id, c.p.textLimit))
	down := newPipe(c.p, c, sc, c.client, nil)
	c.p.wg.Add(3)
	go func() { defer c.p.wg.Done(); up.write() }()
	go func() { defer c.p.wg.Done(); down.write() }()
	go func() { defer c.p.wg.Done(); down.read() }()
	up.read()
}

// close closes both sides of the connection and removes it from the proxy.
// It is idempotent.
func (c *conn) close() {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return
	}
	c.closed = true
	sc := c.server
	c.mu.Unlock()
	close(c.done)
	c.cancel()
	c.client.Close()
	if sc != nil {
		sc.Close()
	}
	c.p.mu.Lock()
	delete(c.p.conns, c)
	c.p.mu.Unlock()
}
