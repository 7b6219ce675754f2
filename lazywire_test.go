package warmpg

import (
	"bytes"
	"errors"
	"io"
	"net"
	"reflect"
	"testing"

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

// An extended-protocol write carries Parse/Bind/Execute of the BEGIN before
// its own messages and no Sync between them; a simple Query carries it in
// its text; anything else waits.
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
		&pgproto3.Parse{Query: begin}, &pgproto3.Bind{}, &pgproto3.Execute{},
		&pgproto3.Bind{PreparedStatement: "stmt_1", ParameterFormatCodes: []int16{1}, Parameters: [][]byte{{0, 0, 0, 7}}},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{},
	}
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
	// Sent once: the next write is pgx's alone.
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
			append(encode(t, &pgproto3.ParseComplete{}, notice, &pgproto3.BindComplete{}, param, beginTag), pgxReplies...),
			append(encode(t, notice, param), pgxReplies...), beginDone},
		{"simple", true,
			append(encode(t, beginTag), pgxReplies...), pgxReplies, beginDone},
		{"error", false,
			encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			encode(t, &pgproto3.ErrorResponse{Severity: "FATAL", Code: "57P01", Message: "terminating"}, &pgproto3.ReadyForQuery{TxStatus: 'I'}),
			beginFailed},
		{"error-after-parse", false,
			append(encode(t, &pgproto3.ParseComplete{}, &pgproto3.ErrorResponse{Severity: "ERROR", Code: "57014", Message: "canceled"}), pgxReplies...),
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
