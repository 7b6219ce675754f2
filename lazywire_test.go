package warmpg

import (
	"bytes"
	"errors"
	"io"
	"net"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgproto3"
)

// scriptConn is a net.Conn whose reads return the given chunks in order and
// whose writes are recorded.
type scriptConn struct {
	net.Conn
	chunks [][]byte
	wrote  bytes.Buffer
}

func (s *scriptConn) Read(p []byte) (int, error) {
	if len(s.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, s.chunks[0])
	if s.chunks[0] = s.chunks[0][n:]; len(s.chunks[0]) == 0 {
		s.chunks = s.chunks[1:]
	}
	return n, nil
}

func (s *scriptConn) Write(p []byte) (int, error) { return s.wrote.Write(p) }

func encode(t *testing.T, msgs ...interface{ Encode([]byte) ([]byte, error) }) []byte {
	t.Helper()
	var b []byte
	for _, m := range msgs {
		var err error
		if b, err = m.Encode(b); err != nil {
			t.Fatal(err)
		}
	}
	return b
}

// frontendMessages decodes what a client wrote.
func frontendMessages(t *testing.T, b []byte) []pgproto3.FrontendMessage {
	t.Helper()
	be := pgproto3.NewBackend(bytes.NewReader(b), io.Discard)
	var out []pgproto3.FrontendMessage
	for {
		m, err := be.Receive()
		if errors.Is(err, io.ErrUnexpectedEOF) || errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		// Receive reuses its messages: keep a copy of each.
		v := reflect.New(reflect.TypeOf(m).Elem())
		v.Elem().Set(reflect.ValueOf(m).Elem())
		out = append(out, v.Interface().(pgproto3.FrontendMessage))
	}
}

// An extended-protocol write carries the BEGIN before its own messages, on
// warmpg's own statement (Close, Parse, Bind, Execute, Close: the unnamed
// statement survives), and no Sync between them; a simple Query carries it
// in its text; anything else waits. Statement warming's guard goes on the
// unnamed statement.
func TestBeginConnWrite(t *testing.T) {
	const begin = "begin isolation level serializable read only"
	stmt := encode(t, &pgproto3.Bind{PreparedStatement: "stmt_1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 7}}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})

	sc := &scriptConn{}
	b := &beginConn{Conn: sc}
	if n, err := b.Write(encode(t, &pgproto3.Terminate{})); err != nil || n != 5 {
		t.Fatalf("unarmed write: %d %v", n, err)
	}
	b.arm(begin)
	term := encode(t, &pgproto3.Terminate{})
	if n, err := b.Write(term); err != nil || n != len(term) {
		t.Fatalf("Terminate: %d %v", n, err)
	}
	if out, _ := b.state(); out != beginPending {
		t.Fatalf("a Terminate took the BEGIN: %v", out)
	}
	sc.wrote.Reset()
	if n, err := b.Write(stmt); err != nil || n != len(stmt) {
		t.Fatalf("write: %d %v, want %d", n, err, len(stmt))
	}
	got := frontendMessages(t, sc.wrote.Bytes())
	want := []pgproto3.FrontendMessage{
		&pgproto3.Close{ObjectType: 'S', Name: "warmpg_begin"},
		&pgproto3.Parse{Name: "warmpg_begin", Query: begin},
		&pgproto3.Bind{PreparedStatement: "warmpg_begin"}, &pgproto3.Execute{},
		&pgproto3.Close{ObjectType: 'S', Name: "warmpg_begin"},
		&pgproto3.Bind{PreparedStatement: "stmt_1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 7}}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
	}
	if len(got) != len(want) {
		t.Fatalf("wrote %d messages %#v, want %d", len(got), got, len(want))
	}
	sameMessages(t, got, want)
	// Sent once: the next write is pgx's alone (once the BEGIN's replies
	// are read: until then a statement after a Sync waits for them).
	sc.chunks = [][]byte{encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.CloseComplete{})}
	if n, err := b.Read(make([]byte, 64)); n != 0 || err != io.EOF {
		t.Fatalf("reading the BEGIN's replies: %d %v", n, err)
	}
	if out, _ := b.state(); out != beginDone {
		t.Fatalf("outcome %v after the BEGIN's replies", out)
	}
	sc.wrote.Reset()
	b.Write(stmt)
	if !bytes.Equal(sc.wrote.Bytes(), stmt) {
		t.Error("the BEGIN went twice")
	}

	b.arm("begin")
	sc.wrote.Reset()
	q := encode(t, &pgproto3.Query{String: "insert into t values (1)"})
	if n, err := b.Write(q); err != nil || n != len(q) {
		t.Fatalf("write: %d %v", n, err)
	}
	got = frontendMessages(t, sc.wrote.Bytes())
	if len(got) != 1 || got[0].(*pgproto3.Query).String != "begin;\ninsert into t values (1)" {
		t.Errorf("simple Query: wrote %#v", got)
	}
	if _, simple := b.state(); !simple {
		t.Error("state does not say the BEGIN went in a simple Query")
	}

	const guard = "select set_config('lock_timeout', '1s', true)"
	b = &beginConn{Conn: sc}
	b.armGuard(guard)
	sc.wrote.Reset()
	if n, err := b.Write(stmt); err != nil || n != len(stmt) {
		t.Fatalf("guarded write: %d %v", n, err)
	}
	sameMessages(t, frontendMessages(t, sc.wrote.Bytes()), []pgproto3.FrontendMessage{
		&pgproto3.Parse{Query: guard}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "stmt_1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 7}}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
	})
}

// sameMessages compares decoded frontend messages by their encoding.
func sameMessages(t *testing.T, got, want []pgproto3.FrontendMessage) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("wrote %d messages %#v, want %d", len(got), got, len(want))
	}
	for i := range want {
		g, _ := got[i].Encode(nil)
		w, _ := want[i].Encode(nil)
		if !bytes.Equal(g, w) {
			t.Errorf("message %d: %#v, want %#v", i, got[i], want[i])
		}
	}
}

// The BEGIN's replies are taken out of what pgx reads, however the bytes
// arrive; notices between them pass; an error in their place passes with
// everything after it.
func TestBeginConnReplies(t *testing.T) {
	notice := &pgproto3.NoticeResponse{Severity: "WARNING", Code: "01000", Message: "hello"}
	param := &pgproto3.ParameterStatus{Name: "TimeZone", Value: "UTC"}
	pgxReplies := encode(t, &pgproto3.BindComplete{},
		&pgproto3.RowDescription{Fields: []pgproto3.FieldDescription{{Name: []byte("n"), DataTypeOID: 23, DataTypeSize: 4, TypeModifier: -1}}},
		&pgproto3.DataRow{Values: [][]byte{[]byte("7")}}, &pgproto3.CommandComplete{CommandTag: []byte("SELECT 1")},
		&pgproto3.ReadyForQuery{TxStatus: 'T'})
	beginTag := &pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}
	cases := []struct {
		name    string
		simple  bool
		stream  []byte
		want    []byte
		outcome beginOutcome
	}{
		{"extended", false,
			append(encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, notice, &pgproto3.BindComplete{}, param, beginTag, notice, &pgproto3.CloseComplete{}), pgxReplies...),
			append(encode(t, notice, param, notice), pgxReplies...), beginDone},
		{"simple", true,
			append(encode(t, beginTag), pgxReplies...), pgxReplies, beginDone},
		{"error", false,
			encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			beginFailed},
		{"error-after-bind", false,
			append(encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{}, notice, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "25006", Message: "cannot use serializable mode in a hot standby"}), pgxReplies...),
			append(encode(t, notice, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "25006", Message: "cannot use serializable mode in a hot standby"}), pgxReplies...),
			beginFailed},
		{"error-after-parse", false,
			append(encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "57014", Message: "canceled"}), pgxReplies...),
			append(encode(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "57014", Message: "canceled"}), pgxReplies...),
			beginFailed},
	}
	for _, c := range cases {
		// Every way of cutting the stream in three, and one byte at a time.
		var splits [][][]byte
		for i := 0; i <= len(c.stream); i++ {
			for j := i; j <= len(c.stream); j++ {
				splits = append(splits, [][]byte{c.stream[:i], c.stream[i:j], c.stream[j:]})
			}
		}
		var bytewise [][]byte
		for i := range c.stream {
			bytewise = append(bytewise, c.stream[i:i+1])
		}
		splits = append(splits, bytewise)
		for _, chunks := range splits {
			var cp [][]byte
			for _, ch := range chunks {
				if len(ch) > 0 {
					cp = append(cp, append([]byte(nil), ch...))
				}
			}
			sc := &scriptConn{chunks: cp}
			b := &beginConn{Conn: sc}
			b.arm("begin")
			w := encode(t, &pgproto3.Sync{})
			if c.simple {
				w = encode(t, &pgproto3.Query{String: "select 7"})
			}
			if _, err := b.Write(w); err != nil {
				t.Fatal(err)
			}
			if n, err := b.Read(nil); n != 0 || err != nil {
				t.Fatalf("an empty read: %d %v", n, err)
			}
			var got []byte
			buf := make([]byte, 7) // small reads, as a worst case
			for {
				n, err := b.Read(buf)
				got = append(got, buf[:n]...)
				if err != nil {
					break
				}
			}
			if !bytes.Equal(got, c.want) {
				t.Fatalf("%s, chunks %v: read %v, want %v", c.name, chunks, got, c.want)
			}
			if out, _ := b.state(); out != c.outcome {
				t.Fatalf("%s: outcome %v, want %v", c.name, out, c.outcome)
			}
			if b.filtering.Load() {
				t.Fatalf("%s: still filtering after the replies", c.name)
			}
		}
	}
}

// A write that fails part way reports some but not all of pgx's bytes, so
// pgx does not take it as safe to send again; one that sent nothing reports
// none.
func TestBeginConnPartialWrite(t *testing.T) {
	stmt := []byte{'S', 0, 0, 0, 4}
	extra := len(appendBegin(nil, "begin"))
	for _, c := range []struct {
		wrote int
		want  int
	}{{0, 0}, {3, 1}, {extra + 2, 2}, {extra + 4, 4}} {
		b := &beginConn{Conn: &shortConn{n: c.wrote}}
		b.arm("begin")
		n, err := b.Write(stmt)
		if err == nil || n != c.want {
			t.Errorf("underlying write of %d bytes: reported %d, %v; want %d and the error", c.wrote, n, err, c.want)
		}
	}
}

type shortConn struct {
	net.Conn
	n int
}

func (s *shortConn) Write(p []byte) (int, error) {
	return min(s.n, len(p)), errors.New("broken pipe")
}

// pipeConn is a net.Conn whose reads block until a chunk is fed to them
// (or it is closed), and whose writes are recorded.
type pipeConn struct {
	net.Conn
	feed   chan []byte
	left   []byte // of the last chunk fed
	mu     sync.Mutex
	wrote  bytes.Buffer
	closed chan struct{}
}

func newPipeConn() *pipeConn {
	return &pipeConn{feed: make(chan []byte, 16), closed: make(chan struct{})}
}

func (c *pipeConn) Read(p []byte) (int, error) {
	if len(c.left) == 0 {
		select {
		case c.left = <-c.feed:
		case <-c.closed:
			return 0, net.ErrClosed
		}
	}
	n := copy(p, c.left)
	c.left = c.left[n:]
	return n, nil
}

func (c *pipeConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.wrote.Write(p)
}

func (c *pipeConn) Close() error { close(c.closed); return nil }

func (c *pipeConn) written(t *testing.T) []pgproto3.FrontendMessage {
	c.mu.Lock()
	defer c.mu.Unlock()
	return frontendMessages(t, c.wrote.Bytes())
}

// A pipeline's statement written after a Sync since the BEGIN, before the
// BEGIN's replies were read, waits for them: it goes once they say the
// transaction began, and is refused once they say it did not (it would run
// outside the transaction). The wait reads nothing itself: another
// goroutine's Read (pgx's background reader) resolves it. With no reader
// it gives up; with no Sync since the BEGIN nothing waits.
func TestBeginConnAwait(t *testing.T) {
	seg := func(n int) []byte {
		return encode(t, &pgproto3.Parse{Query: "select " + strconv.Itoa(n)}, &pgproto3.Bind{},
			&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	}
	began := encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.CommandComplete{CommandTag: []byte("BEGIN")}, &pgproto3.CloseComplete{})
	failed := encode(t, &pgproto3.CloseComplete{}, &pgproto3.ParseComplete{}, &pgproto3.BindComplete{},
		&pgproto3.ErrorResponse{Severity: "ERROR", Code: "25006", Message: "cannot use serializable mode in a hot standby"},
		&pgproto3.ReadyForQuery{TxStatus: 'I'})
	// count counts the Parse messages of pgx's segments written.
	count := func(msgs []pgproto3.FrontendMessage) int {
		n := 0
		for _, m := range msgs {
			if p, ok := m.(*pgproto3.Parse); ok && strings.HasPrefix(p.Query, "select ") {
				n++
			}
		}
		return n
	}
	// reader reads b until it fails, as pgx's background reader would:
	// from when a write carried the BEGIN.
	reader := func(b *beginConn) chan []byte {
		got := make(chan []byte, 1)
		go func() {
			for !b.filtering.Load() {
				time.Sleep(time.Millisecond)
			}
			var all []byte
			buf := make([]byte, 64)
			for {
				n, err := b.Read(buf)
				all = append(all, buf[:n]...)
				if err != nil {
					got <- all
					return
				}
			}
		}()
		return got
	}

	for _, c := range []struct {
		name   string
		writes [][]byte // pgx's writes: the first carries the BEGIN
		reply  []byte
		want   []int // segments written after each write
		errAt  int   // the write refused, -1 for none
		n      int   // what the refused write reports
	}{
		{"two writes, began", [][]byte{seg(1), seg(2)}, began, []int{1, 2}, -1, 0},
		{"two writes, failed", [][]byte{seg(1), seg(2)}, failed, []int{1, 1}, 1, 0},
		{"three writes, failed", [][]byte{seg(1), seg(2), seg(3)}, failed, []int{1, 1, 1}, 1, 0},
		{"one write, began", [][]byte{append(seg(1), seg(2)...)}, began, []int{2}, -1, 0},
		{"one write, failed", [][]byte{append(seg(1), seg(2)...)}, failed, []int{1}, 0, len(seg(1))},
		{"after a simple Query, failed", [][]byte{encode(t, &pgproto3.Query{String: "select 1"}), seg(2)},
			encode(t, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "25006", Message: "no"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			[]int{0, 0}, 1, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			pc := newPipeConn()
			b := &beginConn{Conn: pc}
			b.arm("begin isolation level serializable")
			got := reader(b)
			for i, w := range c.writes {
				if i == 1 || (len(c.writes) == 1 && i == 0) {
					// The reply comes while the write waits.
					go func() { time.Sleep(20 * time.Millisecond); pc.feed <- c.reply }()
				}
				n, err := b.Write(w)
				if c.errAt >= 0 && i >= c.errAt {
					// (pgx closes the connection at the first.)
					want := 0
					if i == c.errAt {
						want = c.n
					}
					if !errors.Is(err, errLazyTxNotBegun) || n != want {
						t.Fatalf("write %d: %d, %v; want %d and errLazyTxNotBegun", i, n, err, want)
					}
				} else if err != nil || n != len(w) {
					t.Fatalf("write %d: %d, %v", i, n, err)
				}
				if k := count(pc.written(t)); k != c.want[i] {
					t.Fatalf("after write %d: %d segments written, want %d", i, k, c.want[i])
				}
			}
			pc.Close()
			replies := <-got
			if c.errAt < 0 && len(replies) != 0 {
				t.Fatalf("pgx read %v, want the BEGIN's replies taken out", replies)
			}
			if c.errAt >= 0 && !bytes.Equal(replies, c.reply[bytes.IndexByte(c.reply, 'E'):]) {
				t.Fatalf("pgx read %v, want the error and what follows", replies)
			}
		})
	}

	t.Run("no Sync since the BEGIN", func(t *testing.T) {
		pc := newPipeConn()
		b := &beginConn{Conn: pc}
		b.arm("begin")
		// A pipeline's queries flushed without a Sync, then its Sync:
		// the server skips all of it should the BEGIN fail.
		part := encode(t, &pgproto3.Parse{Query: "select 1"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Flush{})
		start := time.Now()
		for _, w := range [][]byte{part, part, encode(t, &pgproto3.Sync{})} {
			if n, err := b.Write(w); err != nil || n != len(w) {
				t.Fatalf("write: %d %v", n, err)
			}
		}
		// A wait for the BEGIN's outcome would last its bound, 1 s.
		if d := time.Since(start); d > 600*time.Millisecond {
			t.Errorf("writes with no Sync since the BEGIN took %v", d)
		}
	})

	t.Run("no reader", func(t *testing.T) {
		defer func(d time.Duration) { awaitNoRead = d }(awaitNoRead)
		awaitNoRead = 50 * time.Millisecond
		pc := newPipeConn()
		b := &beginConn{Conn: pc}
		b.arm("begin")
		b.Write(seg(1))
		done := make(chan error, 1)
		go func() { _, err := b.Write(seg(2)); done <- err }()
		select {
		case err := <-done:
			if !errors.Is(err, errLazyNoReader) || !strings.Contains(err.Error(), "pool_lazy_begin") {
				t.Fatalf("with nothing reading: %v, want errLazyNoReader", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a write waiting for the BEGIN's outcome with nothing reading hangs")
		}
		if k := count(pc.written(t)); k != 1 {
			t.Fatalf("%d segments written, want 1", k)
		}
	})

	t.Run("closed", func(t *testing.T) {
		pc := newPipeConn()
		b := &beginConn{Conn: pc}
		b.arm("begin")
		got := reader(b)
		b.Write(seg(1))
		go func() { time.Sleep(20 * time.Millisecond); b.Close() }()
		if _, err := b.Write(seg(2)); err == nil {
			t.Fatal("a write waiting for the BEGIN's outcome on a closed connection went")
		}
		<-got
	})
}
