package sqltext

import (
	"strings"
	"unicode/utf8"
)

// The escapes PostgreSQL decodes in the text of a statement: U&"…"
// identifiers and U&'…' strings (\XXXX, \+XXXXXX, a doubled escape
// character, another escape character given by UESCAPE 'c'), and E'…'
// strings (\n, \ooo, \xhh, \uXXXX, \UXXXXXXXX, \c). A name spelled with
// them, U&"\0073et_config" or set_config(U&'\0072ole', …), is the name
// itself to the server, and so to Scan. A U& escape the server would refuse
// sets the lexer's bad flag, and makes the statement unsure; an E'…' one
// makes the token bad, and its value unknown to set_config.

// unicode reads a U&'…' string or U&"…" identifier whose opening quote is
// at l.i, with the UESCAPE clause that may follow it, and decodes it.
func (l *lexer) unicode() token {
	kind, pair := tString, "''"
	if l.s[l.i] == '"' {
		kind, pair = tQuoted, `""`
	}
	raw := undouble(l.body(l.s[l.i], false), pair)
	esc, ok := l.uescape()
	text, decoded := decodeUnicode(raw, esc)
	if !ok || !decoded || (kind == tQuoted && text == "") {
		l.bad = true
		text = raw
	}
	return token{kind: kind, text: text}
}

// uescape reads, after a U& string or identifier, the UESCAPE 'c' clause
// that may follow it (past white space and comments), and returns its
// escape character, '\' without one. ok is false when the clause is there
// but is not one the server accepts: UESCAPE followed by no string constant
// ('…', E'…' or $$…$$), by one that is not a single byte, or by a byte that
// cannot escape (a hex digit, '+', a quote, white space). Anything after
// the word UESCAPE that is not a string constant is left for next.
func (l *lexer) uescape() (esc byte, ok bool) {
	j := skipSpace(l.s, l.i)
	if j < 0 || !hasWordAt(l.s, j, "uescape") {
		return '\\', true
	}
	l.i = j + len("uescape")
	k := skipSpace(l.s, l.i)
	if k < 0 || k == len(l.s) {
		return '\\', false
	}
	s := l.s
	var text string
	switch {
	case s[k] == '\'':
		l.i = k
		text = undouble(l.body('\'', false), "''")
	case (s[k] == 'e' || s[k] == 'E') && k+1 < len(s) && s[k+1] == '\'':
		l.i = k + 1
		var decoded bool
		if text, decoded = decodeEscapeString(l.body('\'', true)); !decoded {
			return '\\', false
		}
	case s[k] == '$':
		at := l.i
		l.i = k
		t, found := l.dollar()
		if !found || t.kind != tString {
			l.i = at
			return '\\', false
		}
		text = t.text
	default:
		return '\\', false
	}
	if len(text) != 1 || !validEscapeChar(text[0]) {
		return '\\', false
	}
	return text[0], true
}

// validEscapeChar reports whether the server accepts c as a UESCAPE
// character.
func validEscapeChar(c byte) bool {
	return !isHex(c) && c != '+' && c != '\'' && c != '"' && !isSpace(c)
}

func isSpace(c byte) bool {
	return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v'
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c|0x20 >= 'a' && c|0x20 <= 'f'
}

// hexAt parses the n hex digits of s at i; ok is false if there are not n.
func hexAt(s string, i, n int) (r rune, ok bool) {
	if i+n > len(s) {
		return 0, false
	}
	for _, c := range []byte(s[i : i+n]) {
		if !isHex(c) {
			return 0, false
		}
		d := rune(c - '0')
		if c > '9' {
			d = rune(c|0x20-'a') + 10
		}
		r = r<<4 | d
	}
	return r, true
}

// hasWordAt reports whether the word w (lower case) is at s[i:], in any
// case, and ends there.
func hasWordAt(s string, i int, w string) bool {
	return hasPrefixFold(s[i:], w) && (i+len(w) == len(s) || !isIdentChar(s[i+len(w)]))
}

// skipSpace returns the index of the first byte of s at or after i that is
// not white space or a comment, or -1 if a block comment does not end.
func skipSpace(s string, i int) int { return skip(s, i, false) }

// skip returns the index of the first byte of s from i on that is not
// white space, a comment or (with parens) a '(', or -1 if a block comment
// does not end.
func skip(s string, i int, parens bool) int {
	for i < len(s) {
		switch c := s[i]; {
		case isSpace(c) || (parens && c == '('):
			i++
		case c == '-' && i+1 < len(s) && s[i+1] == '-':
			nl := strings.IndexByte(s[i:], '\n')
			if nl < 0 {
				return len(s)
			}
			i += nl + 1
		case c == '/' && i+1 < len(s) && s[i+1] == '*':
			l := lexer{s: s, i: i}
			l.skipBlockComment()
			if l.open {
				return -1
			}
			i = l.i
		default:
			return i
		}
	}
	return i
}

// surrogates pairs UTF-16 surrogates given as two escapes, as the server
// does: a first half must be followed at once by a second.
type surrogates struct{ first rune }

// add takes the code point of one escape and returns the character to
// write (0 for none yet); ok is false for a code point the server refuses
// (0, beyond U+10FFFF) and for a half of a pair without the other.
func (p *surrogates) add(r rune) (out rune, ok bool) {
	switch {
	case r <= 0 || r > utf8.MaxRune:
		return 0, false
	case r >= 0xD800 && r <= 0xDBFF:
		if p.first != 0 {
			return 0, false
		}
		p.first = r
		return 0, true
	case r >= 0xDC00 && r <= 0xDFFF:
		if p.first == 0 {
			return 0, false
		}
		out = (p.first-0xD800)<<10 + (r - 0xDC00) + 0x10000
		p.first = 0
		return out, true
	case p.first != 0:
		return 0, false
	}
	return r, true
}

// decodeUnicode decodes the escapes of a U& text whose doubled quotes are
// already single: esc followed by four hex digits, or by '+' and six, is
// that code point; esc doubled is esc. ok is false for anything else after
// esc, and for the code points the server refuses.
func decodeUnicode(s string, esc byte) (string, bool) {
	if strings.IndexByte(s, esc) < 0 {
		return s, true
	}
	var b strings.Builder
	var pair surrogates
	for i := 0; i < len(s); {
		if s[i] != esc {
			if pair.first != 0 {
				return "", false
			}
			b.WriteByte(s[i])
			i++
			continue
		}
		if i+1 < len(s) && s[i+1] == esc {
			if pair.first != 0 {
				return "", false
			}
			b.WriteByte(esc)
			i += 2
			continue
		}
		r, ok := hexAt(s, i+1, 4)
		n := 5
		if !ok && i+1 < len(s) && s[i+1] == '+' {
			r, ok = hexAt(s, i+2, 6)
			n = 8
		}
		if !ok {
			return "", false
		}
		out, ok := pair.add(r)
		if !ok {
			return "", false
		}
		if out != 0 {
			b.WriteRune(out)
		}
		i += n
	}
	if pair.first != 0 {
		return "", false
	}
	return b.String(), true
}

// decodeEscapeString decodes the body of an E'…' string as written: a
// doubled quote, \b \f \n \r \t, \ooo (octal), \xh or \xhh (hex), \uXXXX,
// \UXXXXXXXX, and \ before any other byte, which stands for that byte. ok
// is false for \u or \U without their digits, for the code points the
// server refuses, and for bytes that make no valid UTF-8 or a NUL.
func decodeEscapeString(s string) (string, bool) {
	if strings.IndexByte(s, '\\') < 0 {
		return undouble(s, "''"), true
	}
	var b strings.Builder
	var pair surrogates
	for i := 0; i < len(s); {
		c := s[i]
		unicode := c == '\\' && i+1 < len(s) && (s[i+1] == 'u' || s[i+1] == 'U')
		if pair.first != 0 && !unicode {
			return "", false
		}
		switch {
		case c == '\'': // a doubled quote: body leaves no other
			b.WriteByte('\'')
			i += 2
		case c != '\\' || i+1 == len(s):
			b.WriteByte(c)
			i++
		case unicode:
			n := 4
			if s[i+1] == 'U' {
				n = 8
			}
			r, ok := hexAt(s, i+2, n)
			if !ok {
				return "", false
			}
			out, ok := pair.add(r)
			if !ok {
				return "", false
			}
			if out != 0 {
				b.WriteRune(out)
			}
			i += 2 + n
		case s[i+1] >= '0' && s[i+1] <= '7':
			v, j := 0, i+1
			for ; j < len(s) && j < i+4 && s[j] >= '0' && s[j] <= '7'; j++ {
				v = v<<3 | int(s[j]-'0')
			}
			if byte(v) == 0 {
				return "", false
			}
			b.WriteByte(byte(v))
			i = j
		case s[i+1] == 'x' && i+2 < len(s) && isHex(s[i+2]):
			n := 1
			if i+3 < len(s) && isHex(s[i+3]) {
				n = 2
			}
			r, _ := hexAt(s, i+2, n)
			if r == 0 {
				return "", false
			}
			b.WriteByte(byte(r))
			i += 2 + n
		default:
			switch d := s[i+1]; d {
			case 'b':
				b.WriteByte('\b')
			case 'f':
				b.WriteByte('\f')
			case 'n':
				b.WriteByte('\n')
			case 'r':
				b.WriteByte('\r')
			case 't':
				b.WriteByte('\t')
			default:
				b.WriteByte(d)
			}
			i += 2
		}
	}
	if pair.first != 0 || !utf8.ValidString(b.String()) {
		return "", false
	}
	return b.String(), true
}
