package pgproxy

import "encoding/binary"

// Keys used in Counts and Message.Type for the untyped packets a client may
// send before (or instead of) the StartupMessage. They are not valid frontend
// message type bytes, so they never collide with a real message type.
const (
	// KeyStartup counts StartupMessages (protocol version 3.x).
	KeyStartup byte = 0
	// KeySSLRequest counts SSLRequest packets (code 80877103).
	KeySSLRequest byte = 1
	// KeyGSSENCRequest counts GSSENCRequest packets (code 80877104).
	KeyGSSENCRequest byte = 2
	// KeyCancelRequest counts CancelRequest packets (code 80877102).
	KeyCancelRequest byte = 3
)

// Request codes of the untyped startup-phase packets.
const (
	codeCancelRequest = 80877102
	codeSSLRequest    = 80877103
	codeGSSENCRequest = 80877104
)

// DefaultTextLimit is the default maximum number of bytes of SQL text kept in
// Message.Text (see WithTextLimit).
const DefaultTextLimit = 4096

// maxLength is the largest message length the parser accepts. PostgreSQL
// itself limits messages to 1 GiB; anything larger means the stream is not
// the frontend protocol and parsing stops.
const maxLength = 1<<30 + 1<<20

// parser states.
const (
	stStartup = iota // expecting an untyped startup-phase packet
	stTyped          // expecting type byte + int32 length + payload
	stDone           // not parsing any more (TLS, cancel request, garbage)
)

// frontendParser incrementally splits a client→server byte stream into
// frontend protocol messages. It accepts the stream in arbitrary chunks.
// It is not safe for concurrent use; each connection has its own.
type frontendParser struct {
	conn      int // connection sequence number copied into Message.Conn
	textLimit int

	state  int
	inBody bool    // header complete, consuming payload
	hdr    [8]byte // partial header: 8 bytes (startup) or 5 bytes (typed)
	hdrN   int
	typ    byte   // typed message type byte, or Key* for startup packets
	code   uint32 // startup packet code
	length int    // value of the length field
	remain int    // payload bytes still to consume

	capLimit int    // payload bytes to keep for Text extraction (0 = none)
	capBuf   []byte // kept payload bytes

	out []Message // completed messages, appended by feed
}

func newFrontendParser(conn, textLimit int) *frontendParser {
	return &frontendParser{conn: conn, textLimit: textLimit}
}

// done reports whether the parser has stopped looking at the stream.
func (p *frontendParser) done() bool { return p.state == stDone }

// feed consumes b and appends every message completed by it to p.out.
func (p *frontendParser) feed(b []byte) {
	for len(b) > 0 && p.state != stDone {
		if !p.inBody {
			b = p.feedHeader(b)
			continue
		}
		n := min(p.remain, len(b))
		if c := p.capLimit - len(p.capBuf); c > 0 {
			p.capBuf = append(p.capBuf, b[:min(c, n)]...)
		}
		p.remain -= n
		b = b[n:]
		if p.remain == 0 {
			p.finish()
		}
	}
}

// feedHeader accumulates header bytes from b and returns the rest of b.
func (p *frontendParser) feedHeader(b []byte) []byte {
	need := 5
	if p.state == stStartup {
		need = 8
		// A TLS handshake record (after an accepted SSLRequest, or with
		// direct SSL negotiation) starts with content type 22; a real
		// startup packet's length never has 0x16 as its top byte.
		if p.hdrN == 0 && b[0] == 0x16 {
			p.state = stDone
			return nil
		}
	}
	n := copy(p.hdr[p.hdrN:need], b)
	p.hdrN += n
	b = b[n:]
	if p.hdrN < need {
		return b
	}
	p.hdrN = 0
	p.capBuf = p.capBuf[:0]
	p.capLimit = 0
	if p.state == stStartup {
		p.length = int(binary.BigEndian.Uint32(p.hdr[0:4]))
		p.code = binary.BigEndian.Uint32(p.hdr[4:8])
		if p.length < 8 || p.length > maxLength {
			p.state = stDone
			return nil
		}
		switch {
		case p.code == codeSSLRequest:
			p.typ = KeySSLRequest
		case p.code == codeGSSENCRequest:
			p.typ = KeyGSSENCRequest
		case p.code == codeCancelRequest:
			p.typ = KeyCancelRequest
		case p.code>>16 == 3:
			p.typ = KeyStartup
		default:
			// Not a protocol we understand (e.g. a GSS-encrypted
			// stream): stop counting, keep forwarding.
			p.state = stDone
			return nil
		}
		p.remain = p.length - 8
	} else {
		p.typ = p.hdr[0]
		p.code = 0
		p.length = int(binary.BigEndian.Uint32(p.hdr[1:5]))
		if p.length < 4 || p.length > maxLength {
			p.state = stDone
			return nil
		}
		p.remain = p.length - 4
		switch p.typ {
		case 'Q':
			p.capLimit = p.textLimit
		case 'P':
			// statement name (normally at most 63 bytes) + text
			p.capLimit = p.textLimit + 256
		}
	}
	p.inBody = true
	if p.remain == 0 {
		p.finish()
	}
	return b
}

// finish emits the current message and moves to the next state.
func (p *frontendParser) finish() {
	p.inBody = false
	m := Message{Conn: p.conn, Type: p.typ, Len: p.length, Code: p.code}
	if p.state == stStartup {
		switch p.typ {
		case KeyStartup:
			p.state = stTyped
		case KeyCancelRequest:
			p.state = stDone
		}
		// SSLRequest / GSSENCRequest: another startup packet follows.
	} else {
		switch p.typ {
		case 'Q':
			m.Text = cString(p.capBuf, p.textLimit)
		case 'P':
			if i := indexZero(p.capBuf); i >= 0 {
				m.Text = cString(p.capBuf[i+1:], p.textLimit)
			}
		}
	}
	p.out = append(p.out, m)
}

// cString returns b up to its first NUL byte (or all of b), at most limit bytes.
func cString(b []byte, limit int) string {
	if i := indexZero(b); i >= 0 {
		b = b[:i]
	}
	if len(b) > limit {
		b = b[:limit]
	}
	return string(b)
}

func indexZero(b []byte) int {
	for i, c := range b {
		if c == 0 {
			return i
		}
	}
	return -1
}
