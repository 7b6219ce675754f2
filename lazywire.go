package warmpg

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

// The wire half of pool_lazy_begin (lazybegin.go holds the transaction).
//
// beginConn sits between pgx and the connection's socket (above TLS: pgx's
// AfterNetConnect). While a lazy transaction's BEGIN is pending, the next
// write pgx makes carries it:
//
//   - an extended-protocol write (Parse, Bind, Describe, Close, Execute,
//     Flush or Sync first: every query with arguments, every prepared
//     statement, every batch) gets the BEGIN in front of it, with no Sync in
//     between: Close, Parse, Bind, Execute and Close again of warmpg's own
//     statement warmpg_begin (appendBegin), so that the unnamed statement,
//     which pgx may have prepared before, survives it. Should the BEGIN
//     fail, the server skips everything up to pgx's own Sync: the statement
//     does not run outside the transaction it was meant for.
//   - a simple Query (a statement without arguments, pgx's simple protocol)
//     has "begin …;" put before its text: the server runs a query string's
//     statements in order and stops at the first error, and rejects the whole
//     string, BEGIN included, if any of it does not parse.
//
// The server's replies to the BEGIN (CloseComplete, ParseComplete,
// BindComplete, CommandComplete and CloseComplete; CommandComplete alone for
// a simple Query) are taken out of what pgx reads, so pgx sees exactly the
// replies to what it sent. An ErrorResponse in their place means the
// transaction did not begin; it is passed on, as the reply to pgx's
// statement. Notices, parameter statuses and notifications pass at any time.
//
// The server skips only up to the first Sync (or the end of a simple
// Query) after a failed BEGIN. A statement written after one, before the
// BEGIN's replies were read — a pgx pipeline's second segment, through Raw —
// would run outside the transaction should the BEGIN have failed: Write
// holds it back until the reply filter knows (await), then sends it, or
// refuses it as it refuses every statement after a failed BEGIN. It reads
// nothing itself: pgx starts its background reader when a write blocks
// (15 ms), and that reader's reads through Read resolve the outcome.
type beginConn struct {
	net.Conn

	// armed is set while a BEGIN waits for the next write, filtering while
	// replies to one are still to be taken out: the fast paths read only
	// these. Both change under mu, with the state below.
	armed, filtering atomic.Bool
	// writes counts pgx's writes but those that only deallocate
	// (onlyCloses); beginAt is the count of the one that carried the last
	// BEGIN, or of the next one when that was a deallocation (under mu). Together they tell that a
	// transaction ran nothing but its first statement (restartTx).
	writes  atomic.Uint64
	beginAt uint64

	mu    sync.Mutex
	begin string // the pending BEGIN's text, while armed
	// The reply filter: strip replies still to take out; hdr/nhdr a
	// message header being read; drop and pass the bytes left of the
	// message being taken out or passed on; out what was filtered and not
	// yet read.
	strip      int
	hdr        [5]byte
	nhdr       int
	drop, pass int
	out        []byte
	scratch    []byte
	outcome    beginOutcome
	simple     bool // the BEGIN went in a simple Query's text
	// guard: what is armed is statement warming's guard (armGuard), not
	// a BEGIN: it goes only in front of an extended-protocol write, and
	// returns one row.
	guard bool
	// txOpen: a lazy transaction is open (from arm to end). While its
	// BEGIN has failed, gate has gateFailed: a statement written then
	// would run outside the transaction, and is refused (Write). While
	// its BEGIN is sent and its outcome unknown, gate has gateWatch:
	// writes are looked at for a statement after a Sync (writeWatched).
	txOpen bool
	gate   atomic.Uint32

	// While gateWatch is set (all under mu): synced, a Sync or a simple
	// Query went since the BEGIN, in the write that carried it or
	// after; reading, Reads in progress on the filtering path, and
	// reads, how many ended; readErr, what one returned while the
	// outcome was unknown; closed, Close was called; wake, closed (and
	// set to nil) to wake a write waiting in await.
	synced  bool
	reading int
	reads   uint64
	readErr error
	closed  bool
	wake    chan struct{}
}

// gate's bits.
const (
	gateFailed = 1 << iota // the open lazy transaction's BEGIN failed
	gateWatch              // its BEGIN is sent; its outcome is unknown
)

// awaitNoRead is how long a write waiting for the BEGIN's outcome waits
// with no read in progress before it gives up (errLazyNoReader).
var awaitNoRead = time.Second

// errLazyNoReader is what Write returns for a statement that had to wait
// for the BEGIN's outcome when nothing reads the connection.
var errLazyNoReader = errors.New("warmpg: pool_lazy_begin: a statement written after a Sync must wait for the reply to its transaction's BEGIN (should the BEGIN have failed, it would run outside the transaction), and nothing read the connection; it was not sent")

// errLazyTxNotBegun is what Write returns for a statement written, under
// warmpg's own statement path (through Raw), in a pool_lazy_begin
// transaction whose BEGIN failed: it would run outside the transaction.
// pgx closes the connection on a write error; the transaction is gone.
var errLazyTxNotBegun = errors.New("warmpg: pool_lazy_begin: this transaction's BEGIN failed; a statement sent now would run outside it, so it was not sent")

// beginOutcome is what became of a lazy transaction's BEGIN.
type beginOutcome int

const (
	beginPending beginOutcome = iota // not sent yet
	beginSent                        // sent; its replies are still to come
	beginDone                        // the server began the transaction
	beginFailed                      // an error came in place of its replies
)

// beginNetConn is pgx's AfterNetConnect for pool_lazy_begin, after next's
// (a registered config's own), if any.
func beginNetConn(next func(context.Context, *pgconn.Config, net.Conn) (net.Conn, error)) func(context.Context, *pgconn.Config, net.Conn) (net.Conn, error) {
	return func(ctx context.Context, cfg *pgconn.Config, nc net.Conn) (net.Conn, error) {
		if next != nil {
			var err error
			if nc, err = next(ctx, cfg, nc); err != nil {
				return nil, err
			}
		}
		return &beginConn{Conn: nc}, nil
	}
}

// NetConn returns the connection beginConn wraps (as tls.Conn's does), for
// check mode's look at the socket.
func (b *beginConn) NetConn() net.Conn { return b.Conn }

// SyscallConn reaches the socket under beginConn, for code that sets socket
// options through pgx's PgConn().Conn() (as it would without
// pool_lazy_begin, when the connection is not TLS).
func (b *beginConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := b.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, fmt.Errorf("warmpg: %T under pool_lazy_begin's layer has no SyscallConn", b.Conn)
}

// arm makes the next write carry begin, the BEGIN of a lazy transaction,
// open until end.
func (b *beginConn) arm(begin string) {
	b.mu.Lock()
	b.begin, b.outcome, b.guard, b.txOpen = begin, beginPending, false, true
	b.gate.Store(0)
	b.armed.Store(true)
	b.mu.Unlock()
}

// end records that the lazy transaction ended (committed, rolled back, or
// dropped at a reset), forgets a BEGIN not sent yet, and reports what
// became of the last one armed.
func (b *beginConn) end() beginOutcome {
	b.mu.Lock()
	b.txOpen = false
	b.gate.Store(0)
	b.signal()
	b.mu.Unlock()
	return b.disarm()
}

// armGuard makes the next extended-protocol write carry sql, a SELECT
// that returns one row, run on the unnamed statement (appendUnnamed; at
// connect, where pgx has prepared nothing yet) ahead of that
// write's messages in the same implicit transaction (statement warming's
// timeouts, statements.go). A simple Query disarms it and goes as it is.
func (b *beginConn) armGuard(sql string) {
	b.mu.Lock()
	b.begin, b.outcome, b.guard = sql, beginPending, true
	b.armed.Store(true)
	b.mu.Unlock()
}

// disarm forgets a BEGIN not sent yet and reports what became of the last
// one armed.
func (b *beginConn) disarm() beginOutcome {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.begin = ""
	b.armed.Store(false)
	return b.outcome
}

// begun reports what became of the last BEGIN armed, and the count of the
// write that carried it.
func (b *beginConn) begun() (beginOutcome, uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.outcome, b.beginAt
}

// begunNow records that the transaction was begun by other means than the
// BEGIN armed (lazySyntax sent it alone).
func (b *beginConn) begunNow() {
	b.mu.Lock()
	b.begin, b.outcome = "", beginDone
	b.armed.Store(false)
	b.gate.Store(0)
	b.signal()
	b.mu.Unlock()
}

// allow lets statements through again after a failed BEGIN: warmpg sends
// the BEGIN itself (lazySyntax).
func (b *beginConn) allow() { b.gate.And(^uint32(gateFailed)) }

// state reports what became of the last BEGIN armed, and whether it went in
// a simple Query's text.
func (b *beginConn) state() (beginOutcome, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.outcome, b.simple
}

func (b *beginConn) Write(p []byte) (int, error) {
	g := b.gate.Load()
	if g&gateFailed != 0 {
		if at, _ := statementAfterSync(p, true); at >= 0 {
			return 0, errLazyTxNotBegun
		}
	}
	closes := len(p) > 0 && p[0] == 'C' && onlyCloses(p)
	if !closes {
		b.writes.Add(1)
	}
	if !b.armed.Load() || len(p) < 5 {
		if g&gateWatch != 0 {
			return b.writeWatched(p)
		}
		return b.Conn.Write(p)
	}
	b.mu.Lock()
	var buf []byte
	switch p[0] {
	case 'P', 'B', 'D', 'C', 'E', 'H', 'S':
		if b.guard {
			buf = appendUnnamed(make([]byte, 0, len(b.begin)+32+len(p)), b.begin)
			b.strip = 4 // ParseComplete, BindComplete, DataRow, CommandComplete
		} else {
			buf = appendBegin(make([]byte, 0, len(b.begin)+96+len(p)), b.begin)
			b.strip = 5 // CloseComplete, ParseComplete, BindComplete, CommandComplete, CloseComplete
		}
		buf = append(buf, p...)
		b.simple = false
	case 'Q':
		if b.guard {
			b.begin = ""
			b.armed.Store(false)
			b.mu.Unlock()
			return b.Conn.Write(p)
		}
		if n := int(binary.BigEndian.Uint32(p[1:5])) + 1; n <= len(p) {
			buf = appendSimpleBegin(make([]byte, 0, len(p)+len(b.begin)+8), b.begin, p[5:n])
			buf = append(buf, p[n:]...)
			b.strip, b.simple = 1, true
		}
	}
	if buf == nil {
		// Something that is no statement (a Terminate, a copy's data):
		// the BEGIN waits for the next write.
		b.mu.Unlock()
		return b.Conn.Write(p)
	}
	b.begin = ""
	b.armed.Store(false)
	b.outcome = beginSent
	b.beginAt = b.writes.Load()
	if closes {
		// pgx deallocating statements carried the BEGIN: the statement
		// that follows is the transaction's first.
		b.beginAt++
	}
	b.nhdr, b.drop, b.pass = 0, 0, 0
	at := -1
	if b.txOpen && !b.guard {
		// The messages of p sit after the BEGIN's in buf, shifted by
		// what it adds (in front, or in the first Query's text).
		at, b.synced = statementAfterSync(p, false)
		b.readErr = nil
		b.gate.Or(gateWatch)
	}
	b.filtering.Store(true)
	b.mu.Unlock()
	return b.send(buf, len(buf)-len(p), at)
}

// writeWatched writes p while the open lazy transaction's BEGIN is sent
// and its outcome unknown (gateWatch): a statement in p that follows a
// Sync since the BEGIN waits for the outcome (send).
func (b *beginConn) writeWatched(p []byte) (int, error) {
	b.mu.Lock()
	watched := b.txOpen && !b.guard
	switch {
	case watched && b.outcome == beginFailed:
		// Failed since Write looked at gate.
		b.mu.Unlock()
		if at, _ := statementAfterSync(p, true); at >= 0 {
			return 0, errLazyTxNotBegun
		}
		return b.Conn.Write(p)
	case !watched || b.outcome != beginSent:
		b.gate.And(^uint32(gateWatch))
		b.mu.Unlock()
		return b.Conn.Write(p)
	}
	at, synced := statementAfterSync(p, b.synced)
	b.synced = synced
	b.mu.Unlock()
	if at < 0 {
		return b.Conn.Write(p)
	}
	return b.send(p, 0, at)
}

// send writes buf, extra bytes of warmpg's followed by (or spread into the
// first message of) pgx's p, and reports how much of p went. When at >= 0,
// p's message at offset at is a statement after a Sync since the BEGIN: the
// part before it goes first, and the rest once the BEGIN is known to have
// begun the transaction (await); if it did not, the rest is refused.
func (b *beginConn) send(buf []byte, extra, at int) (int, error) {
	np := len(buf) - extra
	cut := len(buf)
	if at >= 0 {
		cut = extra + at
	}
	var n int
	var err error
	if cut > 0 {
		n, err = b.Conn.Write(buf[:cut])
	}
	if err == nil && n == cut && cut < len(buf) {
		if err = b.await(); err != nil {
			return at, err // at < np: pgx sees a short write
		}
		var m int
		m, err = b.Conn.Write(buf[cut:])
		n += m
	}
	switch {
	case n == len(buf):
		return np, err
	case n == 0:
		return 0, err
	default:
		// Part of it went: not safe to send again (pgx's safeToRetry
		// is n == 0), and not all of p.
		return min(max(n-extra, 1), np-1), err
	}
}

// await waits until the reply filter knows what became of the BEGIN sent:
// nil when it began the transaction, errLazyTxNotBegun when it failed. It
// reads nothing: it waits for reads (pgx's background reader) to resolve
// it, and gives up when no read is in progress for awaitNoRead, when a read
// failed, or when the connection is closed.
func (b *beginConn) await() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	reads, active := b.reads, time.Now()
	for b.outcome == beginSent && b.txOpen && !b.guard {
		switch {
		case b.readErr != nil:
			return fmt.Errorf("warmpg: pool_lazy_begin: reading the reply to the transaction's BEGIN, which a statement written after a Sync waits for: %w", b.readErr)
		case b.closed:
			return net.ErrClosed
		}
		if b.reading > 0 || b.reads != reads {
			reads, active = b.reads, time.Now()
		}
		left := awaitNoRead - time.Since(active)
		if left <= 0 {
			return errLazyNoReader
		}
		if b.wake == nil {
			b.wake = make(chan struct{})
		}
		wake := b.wake
		b.mu.Unlock()
		t := time.NewTimer(left)
		select {
		case <-wake:
		case <-t.C:
		}
		t.Stop()
		b.mu.Lock()
	}
	if b.outcome == beginFailed && b.txOpen && !b.guard {
		return errLazyTxNotBegun
	}
	return nil
}

// signal wakes a write waiting in await (under mu).
func (b *beginConn) signal() {
	if b.wake != nil {
		close(b.wake)
		b.wake = nil
	}
}

// Close closes the connection, and wakes a write waiting in await.
func (b *beginConn) Close() error {
	b.mu.Lock()
	b.closed = true
	b.signal()
	b.mu.Unlock()
	return b.Conn.Close()
}

// statementAfterSync returns the offset in p of the first message that
// runs a statement (Parse, Bind, Execute, a simple Query) after a Sync or
// a simple Query — one in p, or one before p if synced — or -1; and
// whether a Sync or a simple Query went by the end of p. pgx writes whole
// messages; should p not parse as such, the rest of it is not looked at.
func statementAfterSync(p []byte, synced bool) (int, bool) {
	for off := 0; off+5 <= len(p); {
		typ := p[off]
		n := int(binary.BigEndian.Uint32(p[off+1:off+5])) + 1
		if n < 5 || n > len(p)-off {
			break
		}
		switch typ {
		case 'P', 'B', 'E', 'Q':
			if synced {
				return off, true
			}
		}
		if typ == 'S' || typ == 'Q' {
			synced = true
		}
		off += n
	}
	return -1, synced
}

// onlyCloses reports whether p holds nothing but Close, Flush and Sync
// messages (pgx deallocating the statements it dropped from its cache):
// a write that runs nothing, which restartTx need not count.
func onlyCloses(p []byte) bool {
	for len(p) > 0 {
		if len(p) < 5 {
			return false
		}
		switch p[0] {
		case 'C', 'H', 'S':
		default:
			return false
		}
		n := int(binary.BigEndian.Uint32(p[1:5])) + 1
		if n < 5 || n > len(p) {
			return false
		}
		p = p[n:]
	}
	return true
}

// beginStmt is the name of the statement appendBegin runs the BEGIN on.
const beginStmt = "warmpg_begin"

// appendBegin appends the extended-protocol messages that run begin on
// warmpg's own statement beginStmt and the unnamed portal, without a Sync:
// Close of the statement, Parse, Bind, Execute, and Close again. Not the
// unnamed statement: pgx (through Raw) may have prepared it before the
// transaction, to run after the BEGIN. The leading Close is for a BEGIN
// that failed before: the server then skipped its trailing Close, and
// beginStmt is still there. Closing a statement that does not exist is no
// error. The server replies CloseComplete, ParseComplete, BindComplete,
// CommandComplete and CloseComplete.
func appendBegin(dst []byte, begin string) []byte {
	dst = appendCloseStmt(dst, beginStmt)
	// Parse: name, query, no parameter types.
	dst = append(dst, 'P')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+len(beginStmt)+1+len(begin)+1+2))
	dst = append(dst, beginStmt...)
	dst = append(dst, 0)
	dst = append(dst, begin...)
	dst = append(dst, 0, 0, 0)
	// Bind: portal "", the statement, no parameter formats, no
	// parameters, no result formats.
	dst = append(dst, 'B')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(beginStmt)+1+2+2+2))
	dst = append(dst, 0)
	dst = append(dst, beginStmt...)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0)
	dst = appendExecute(dst)
	return appendCloseStmt(dst, beginStmt)
}

// appendUnnamed appends the extended-protocol messages that run sql on the
// unnamed statement and portal, without a Sync: Parse, Bind, Execute
// (statement warming's guard, at connect).
func appendUnnamed(dst []byte, sql string) []byte {
	// Parse: name "", query, no parameter types.
	dst = append(dst, 'P')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(sql)+1+2))
	dst = append(dst, 0)
	dst = append(dst, sql...)
	dst = append(dst, 0, 0, 0)
	// Bind: portal "", statement "", no parameter formats, no
	// parameters, no result formats.
	dst = append(dst, 'B')
	dst = binary.BigEndian.AppendUint32(dst, 4+1+1+2+2+2)
	dst = append(dst, 0, 0, 0, 0, 0, 0, 0, 0)
	return appendExecute(dst)
}

// appendExecute appends an Execute of the unnamed portal, no row limit.
func appendExecute(dst []byte) []byte {
	dst = append(dst, 'E')
	dst = binary.BigEndian.AppendUint32(dst, 4+1+4)
	return append(dst, 0, 0, 0, 0, 0)
}

// appendCloseStmt appends a Close of the statement name.
func appendCloseStmt(dst []byte, name string) []byte {
	dst = append(dst, 'C')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+1+len(name)+1))
	dst = append(dst, 'S')
	dst = append(dst, name...)
	return append(dst, 0)
}

// appendSimpleBegin appends a simple Query message whose text is begin
// followed by the text of the Query body q (NUL-terminated).
func appendSimpleBegin(dst []byte, begin string, q []byte) []byte {
	dst = append(dst, 'Q')
	dst = binary.BigEndian.AppendUint32(dst, uint32(4+len(begin)+2+len(q)))
	dst = append(dst, begin...)
	dst = append(dst, ';', '\n')
	return append(dst, q...)
}

func (b *beginConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return b.Conn.Read(p)
	}
	for {
		if !b.filtering.Load() {
			return b.Conn.Read(p)
		}
		b.mu.Lock()
		if len(b.out) > 0 {
			n := copy(p, b.out)
			b.out = b.out[n:]
			b.endFilter()
			b.mu.Unlock()
			return n, nil
		}
		if cap(b.scratch) < len(p) {
			b.scratch = make([]byte, len(p))
		}
		scratch := b.scratch[:len(p)]
		b.reading++
		b.mu.Unlock()

		// Reads are serialised (pgx's background reader or the frontend,
		// never both), so scratch is this call's.
		n, err := b.Conn.Read(scratch)
		b.mu.Lock()
		b.reading--
		b.reads++
		b.filter(scratch[:n])
		if err != nil && b.outcome == beginSent {
			b.readErr = err
		}
		b.signal()
		m := copy(p, b.out)
		b.out = b.out[m:]
		b.endFilter()
		b.mu.Unlock()
		if m > 0 || err != nil {
			return m, err
		}
	}
}

// endFilter stops filtering once the BEGIN's replies are out and everything
// filtered has been read.
func (b *beginConn) endFilter() {
	if b.strip == 0 && b.drop == 0 && b.pass == 0 && b.nhdr == 0 && len(b.out) == 0 {
		b.filtering.Store(false)
		b.out = nil
	}
}

// filter takes the BEGIN's replies out of p, appending the rest to b.out.
func (b *beginConn) filter(p []byte) {
	for len(p) > 0 {
		switch {
		case b.drop > 0:
			k := min(b.drop, len(p))
			b.drop -= k
			p = p[k:]
		case b.pass > 0:
			k := min(b.pass, len(p))
			b.out = append(b.out, p[:k]...)
			b.pass -= k
			p = p[k:]
		case b.strip == 0 && b.nhdr == 0:
			b.out = append(b.out, p...)
			return
		default:
			k := copy(b.hdr[b.nhdr:], p)
			b.nhdr += k
			p = p[k:]
			if b.nhdr < len(b.hdr) {
				return
			}
			b.nhdr = 0
			body := int(binary.BigEndian.Uint32(b.hdr[1:])) - 4
			switch typ := b.hdr[0]; {
			case typ == 'N' || typ == 'S' || typ == 'A':
				// Notice, ParameterStatus, NotificationResponse: at any time.
				b.out = append(b.out, b.hdr[:]...)
				b.pass = body
			case b.strip > 0 && (typ == '1' || typ == '2' || typ == 'C' || (typ == '3' && !b.guard && !b.simple) || (typ == 'D' && b.guard)):
				b.drop = body
				if b.strip--; b.strip == 0 {
					b.outcome = beginDone
					b.gate.And(^uint32(gateWatch))
				}
			default:
				// An ErrorResponse, or anything else, in place of the
				// BEGIN's replies: it did not begin. The rest is pgx's.
				b.out = append(b.out, b.hdr[:]...)
				b.pass = body
				b.strip = 0
				b.outcome = beginFailed
				if b.txOpen && !b.guard {
					b.gate.Store(gateFailed)
				}
			}
		}
	}
}
