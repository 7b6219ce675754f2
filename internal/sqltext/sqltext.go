// Package sqltext reads the text of SQL sent to PostgreSQL and says what it
// may do beyond returning rows: open or end a transaction, change the
// session (settings, role, temporary objects, locks, listeners, cursors,
// prepared statements), or write.
//
// It is a lexer, not a parser. It understands what decides where a
// statement starts and what its words are: -- comments and nested /* */
// comments, 'strings' (a quote inside doubled), E'strings' (with backslash
// escapes), "quoted identifiers", U&"identifiers" and U&'strings' (with
// \XXXX and \+XXXXXX escapes, and UESCAPE 'c'), $tag$dollar quotes$tag$,
// $1 parameters, parentheses, and ';' between statements. Names and
// strings are read decoded, as the server reads them: U&"\0073et_config"
// is set_config, and E'\162ole' is 'role'. Standard_conforming_strings is
// taken to be on (PostgreSQL's default since 9.1): in a plain 'string' a
// backslash is an ordinary character.
//
// The classification is conservative in one direction only: a statement it
// does not recognise as a plain read counts as a write, a set_config
// whose arguments it cannot read counts as changing the session and the
// role (also when it cannot decode an E'…' argument's escapes), and a
// statement holding a U& escape it cannot decode (which the server
// refuses) counts as doing whatever a name or a string can make it do:
// change settings and the role, take locks, create a temporary object,
// write. What happens inside a function, a procedure or a DO block is not in
// the text and is not seen: SELECT my_function() is a plain read here.
package sqltext

import "strings"

// Effect is a set of things a statement may do.
type Effect uint32

const (
	// Begin: BEGIN or START TRANSACTION; a transaction block may be open
	// after it.
	Begin Effect = 1 << iota
	// End: COMMIT, END, ROLLBACK (not TO SAVEPOINT), ABORT, PREPARE
	// TRANSACTION.
	End
	// Savepoint: SAVEPOINT, RELEASE, ROLLBACK TO.
	Savepoint
	// Setting: a session-level setting changed: SET or RESET (not LOCAL),
	// SET SESSION CHARACTERISTICS, set_config(…, false), DISCARD.
	Setting
	// LocalSetting: a setting changed until the transaction ends: SET
	// LOCAL, SET TRANSACTION, SET CONSTRAINTS, set_config(…, true).
	LocalSetting
	// Role: who the session is changed, for the session: SET ROLE, SET
	// SESSION AUTHORIZATION, RESET ROLE, RESET SESSION AUTHORIZATION,
	// DISCARD ALL, set_config('role' or 'session_authorization', …, false).
	Role
	// TempObject: CREATE TEMP/TEMPORARY …, or a CREATE naming pg_temp.
	TempObject
	// AdvisoryLock: a session-level advisory lock function
	// (pg_advisory_lock, pg_try_advisory_lock_shared, …, and the unlocks).
	AdvisoryLock
	// Listen: LISTEN or UNLISTEN.
	Listen
	// HoldCursor: DECLARE … WITH HOLD, a cursor that outlives its
	// transaction.
	HoldCursor
	// Prepare: PREPARE, DEALLOCATE, DISCARD ALL: SQL-level prepared
	// statements.
	Prepare
	// Lock: row or table locks that last until the transaction ends: FOR
	// UPDATE / NO KEY UPDATE / SHARE / KEY SHARE, LOCK, the
	// transaction-level advisory lock functions.
	Lock
	// Write: anything that is not a plain read: INSERT, UPDATE, DELETE,
	// MERGE, COPY, DDL, CALL, DO, SELECT INTO, nextval/setval, EXPLAIN
	// ANALYZE of a write, DECLARE (a cursor needs a transaction block), and
	// every statement this package does not know.
	Write
)

// SessionState is every effect that outlives the transaction it ran in.
const SessionState = Setting | Role | TempObject | AdvisoryLock | Listen | HoldCursor | Prepare

// unsure is what a statement with an escape the lexer cannot decode may
// do: everything a name or a string can decide (set_config and its
// arguments, SET of a quoted name, the advisory lock and sequence
// functions, pg_temp). The server refuses such a statement, unless the
// lexer is wrong about the escape.
const unsure = Setting | LocalSetting | Role | TempObject | AdvisoryLock | Lock | Write

// Info is what Scan found in a text.
type Info struct {
	// Effects is the union of every statement's effects.
	Effects Effect
	// Statements is how many statements the text holds (empty ones, such as
	// a lone ';' or a comment, not counted).
	Statements int
	// Last is Begin or End, whichever of the two the text does last, or 0
	// if it does neither: "begin; …; commit" leaves no transaction open,
	// "commit; begin" may.
	Last Effect
}

// Has reports whether the text may do any of e.
func (i Info) Has(e Effect) bool { return i.Effects&e != 0 }

// PlainRead reports whether every statement is a plain read: SELECT,
// WITH, VALUES, TABLE, SHOW, EXPLAIN (without ANALYZE of a write), FETCH,
// MOVE or CLOSE, taking no locks and changing no setting that the text
// shows.
func (i Info) PlainRead() bool { return i.Effects == 0 }

// Scan reads sql, which may hold several statements separated by ';'.
func Scan(sql string) Info {
	var info Info
	var l lexer
	l.s = sql
	var stmt []token
	for {
		t := l.next()
		if t.kind == tEOF || (t.kind == tSemicolon && l.depth == 0) {
			if len(stmt) > 0 {
				info.Statements++
				e := classify(stmt)
				if l.bad {
					e |= unsure
					l.bad = false
				}
				info.Effects |= e
				switch {
				case e&Begin != 0:
					info.Last = Begin
				case e&End != 0:
					info.Last = End
				}
				stmt = stmt[:0]
			}
			if t.kind == tEOF {
				return info
			}
			continue
		}
		stmt = append(stmt, t)
	}
}

type kind uint8

const (
	tEOF       kind = iota
	tWord           // a keyword or unquoted identifier, in lower case
	tQuoted         // a "quoted identifier" or U&"…", its name (quotes and escapes decoded)
	tString         // a string constant ('…', E'…', U&'…', $$…$$), its value (quotes and escapes decoded)
	tParam          // $1
	tNumber         // 42, 1.5e3
	tOpen           // (
	tClose          // )
	tComma          // ,
	tSemicolon      // ;
	tOther          // any other operator or punctuation
)

type token struct {
	kind kind
	// bad: an E'…' string with an escape the server refuses; its value
	// (text) is not known.
	bad  bool
	text string
}

type lexer struct {
	s     string
	i     int
	depth int // parentheses open
	// open: the text ended inside a string, quoted identifier, dollar
	// quote or block comment.
	open bool
	// bad: a U& token since the flag was last cleared holds an escape
	// the server would refuse (see escape.go): what it names is not known.
	// (MayHave sends every text with U& to Scan.)
	bad bool
}

func isIdentStart(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c >= 0x80
}

func isIdentChar(c byte) bool {
	return isIdentStart(c) || c >= '0' && c <= '9' || c == '$'
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

func (l *lexer) next() token {
	s := l.s
	for l.i < len(s) {
		c := s[l.i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v':
			l.i++
		case c == '-' && l.i+1 < len(s) && s[l.i+1] == '-':
			if nl := strings.IndexByte(s[l.i:], '\n'); nl >= 0 {
				l.i += nl + 1
			} else {
				l.i = len(s)
			}
		case c == '/' && l.i+1 < len(s) && s[l.i+1] == '*':
			l.skipBlockComment()
		case c == '\'':
			return token{kind: tString, text: undouble(l.body('\'', false), "''")}
		case (c == 'e' || c == 'E') && l.i+1 < len(s) && s[l.i+1] == '\'':
			l.i++
			text, ok := decodeEscapeString(l.body('\'', true))
			return token{kind: tString, text: text, bad: !ok}
		case (c == 'u' || c == 'U') && l.i+2 < len(s) && s[l.i+1] == '&' && (s[l.i+2] == '\'' || s[l.i+2] == '"'):
			l.i += 2
			return l.unicode()
		case (c == 'n' || c == 'N') && l.i+1 < len(s) && s[l.i+1] == '\'':
			l.i++ // N'…': a plain string, typed national character
			return token{kind: tString, text: undouble(l.body('\'', false), "''")}
		case (c == 'b' || c == 'B' || c == 'x' || c == 'X') && l.i+1 < len(s) && s[l.i+1] == '\'':
			l.i++ // B'…', X'…': bits, no text
			return token{kind: tString, text: l.body('\'', false)}
		case c == '"':
			return token{kind: tQuoted, text: undouble(l.body('"', false), `""`)}
		case c == '$':
			if t, ok := l.dollar(); ok {
				return t
			}
			l.i++
			return token{kind: tOther, text: "$"}
		case isIdentStart(c):
			start := l.i
			for l.i < len(s) && isIdentChar(s[l.i]) {
				l.i++
			}
			return token{kind: tWord, text: strings.ToLower(s[start:l.i])}
		case isDigit(c) || c == '.' && l.i+1 < len(s) && isDigit(s[l.i+1]):
			start := l.i
			for l.i < len(s) && (isIdentChar(s[l.i]) || s[l.i] == '.') {
				l.i++
			}
			return token{kind: tNumber, text: s[start:l.i]}
		case c == '(':
			l.i++
			l.depth++
			return token{kind: tOpen, text: "("}
		case c == ')':
			l.i++
			if l.depth > 0 {
				l.depth--
			}
			return token{kind: tClose, text: ")"}
		case c == ',':
			l.i++
			return token{kind: tComma, text: ","}
		case c == ';':
			l.i++
			return token{kind: tSemicolon, text: ";"}
		default:
			l.i++
			return token{kind: tOther, text: s[l.i-1 : l.i]}
		}
	}
	return token{kind: tEOF}
}

// skipBlockComment skips a /* */ comment, which nests.
func (l *lexer) skipBlockComment() {
	s := l.s
	depth := 0
	for l.i < len(s) {
		switch {
		case strings.HasPrefix(s[l.i:], "/*"):
			depth++
			l.i += 2
		case strings.HasPrefix(s[l.i:], "*/"):
			depth--
			l.i += 2
			if depth == 0 {
				return
			}
		default:
			l.i++
		}
	}
	l.open = true
}

// body reads a string or quoted identifier starting at the quote q at
// l.i and returns the text between the quotes as written; a doubled q
// stands for itself, and with backslash a backslash escapes the next byte.
// An unterminated one runs to the end of the text.
func (l *lexer) body(q byte, backslash bool) string {
	s := l.s
	l.i++
	start := l.i
	for l.i < len(s) {
		c := s[l.i]
		switch {
		case backslash && c == '\\' && l.i+1 < len(s):
			l.i += 2
		case c == q && l.i+1 < len(s) && s[l.i+1] == q:
			l.i += 2
		case c == q:
			l.i++
			return s[start : l.i-1]
		default:
			l.i++
		}
	}
	l.open = true
	return s[start:]
}

// undouble returns s with each doubled quote pair made one quote.
func undouble(s, pair string) string {
	if !strings.Contains(s, pair) {
		return s
	}
	return strings.ReplaceAll(s, pair, pair[:1])
}

// dollar reads, at a '$', a parameter ($1) or a dollar-quoted string
// ($$…$$, $tag$…$tag$). ok is false for a lone '$'.
func (l *lexer) dollar() (token, bool) {
	s := l.s
	j := l.i + 1
	if j < len(s) && isDigit(s[j]) {
		for j < len(s) && isDigit(s[j]) {
			j++
		}
		t := token{kind: tParam, text: s[l.i:j]}
		l.i = j
		return t, true
	}
	// A tag is an identifier without '$'.
	for j < len(s) && isIdentChar(s[j]) && s[j] != '$' {
		j++
	}
	if j >= len(s) || s[j] != '$' {
		return token{}, false
	}
	if j > l.i+1 && isDigit(s[l.i+1]) {
		return token{}, false
	}
	tag := s[l.i : j+1]
	body := j + 1
	end := strings.Index(s[body:], tag)
	if end < 0 {
		l.i = len(s)
		l.open = true
		return token{kind: tString, text: s[body:]}, true
	}
	l.i = body + end + len(tag)
	return token{kind: tString, text: s[body : body+end]}, true
}

// reads are the statements that only read, unless their words say more.
var reads = map[string]bool{
	"select": true, "with": true, "values": true, "table": true, "show": true,
	"explain": true, "fetch": true, "move": true, "close": true,
}

// writeWords in a read statement make it a write: a data-modifying WITH,
// SELECT INTO (which creates a table), EXPLAIN ANALYZE of a write, or
// sequence functions.
var writeWords = map[string]bool{
	"insert": true, "update": true, "delete": true, "merge": true, "into": true,
	"nextval": true, "setval": true, "copy": true, "truncate": true,
}

// classify returns the effects of one statement's tokens.
func classify(t []token) Effect {
	w := func(i int) string {
		if i < len(t) && t[i].kind == tWord {
			return t[i].text
		}
		return ""
	}
	var e Effect
	// A parenthesised query starts with '(': its first word is inside.
	for len(t) > 0 && t[0].kind == tOpen {
		t = t[1:]
	}
	first := w(0)
	switch first {
	case "begin", "start":
		e |= Begin
	case "commit", "end", "abort":
		if w(1) == "prepared" {
			break // COMMIT PREPARED 'id': another, prepared transaction
		}
		e |= End
	case "rollback":
		switch {
		case w(1) == "prepared":
		case hasWord(t[1:], "to"):
			e |= Savepoint
		default:
			e |= End
		}
	case "prepare":
		if w(1) == "transaction" {
			e |= End
		} else {
			e |= Prepare
		}
	case "savepoint", "release":
		e |= Savepoint
	case "deallocate":
		e |= Prepare
	case "set":
		e |= classifySet(t, w)
	case "reset":
		e |= Setting
		switch w(1) {
		case "role":
			e |= Role
		case "session":
			if w(2) == "authorization" {
				e |= Role
			}
		}
		if quotedRole(t, 1) {
			e |= Role
		}
	case "discard":
		e |= Setting
		switch w(1) {
		case "all":
			e |= Role | Prepare | TempObject | AdvisoryLock | Listen | HoldCursor
		case "temp", "temporary":
			e |= TempObject
		}
	case "listen", "unlisten":
		e |= Listen
	case "declare":
		// A cursor needs a transaction block (WITH HOLD: it outlives it).
		e |= Write
		if hasPair(t, "with", "hold") {
			e |= HoldCursor
		}
	case "lock":
		e |= Lock
	case "create":
		e |= Write
		for i := 1; i < len(t) && i < 4; i++ {
			switch w(i) {
			case "temp", "temporary":
				e |= TempObject
			}
		}
		if hasName(t, "pg_temp") {
			e |= TempObject
		}
	default:
		if !reads[first] {
			e |= Write
		}
	}
	if reads[first] {
		for i, tk := range t[1:] {
			if tk.kind == tWord && writeWords[tk.text] {
				e |= Write
				if tk.text == "into" && selectIntoTemp(t[i+2:]) {
					e |= TempObject // SELECT … INTO TEMP t: CREATE TEMP TABLE AS
				}
				break
			}
		}
	}
	if locksRows(t) {
		e |= Lock
	}
	e |= functionEffects(t)
	return e
}

// selectIntoTemp reports whether the words after a SELECT's INTO make the
// new table temporary: INTO TEMP, INTO LOCAL TEMPORARY, INTO pg_temp.t.
func selectIntoTemp(t []token) bool {
	for i := 0; i < len(t) && i < 3; i++ {
		if t[i].kind == tQuoted {
			return t[i].text == "pg_temp"
		}
		if t[i].kind != tWord {
			return false
		}
		switch t[i].text {
		case "temp", "temporary", "pg_temp":
			return true
		case "local", "global":
			continue
		}
		return false
	}
	return false
}

// classifySet classifies SET …, whose tokens are t; w(i) is the
// statement's i-th word.
func classifySet(t []token, w func(int) string) Effect {
	if quotedRole(t, 1) || w(1) == "session" && quotedRole(t, 2) {
		return Setting | Role // SET "role" = …, SET SESSION U&"\0072ole" TO …
	}
	switch w(1) {
	case "local", "transaction", "constraints":
		return LocalSetting
	case "role":
		return Setting | Role
	case "session":
		switch w(2) {
		case "authorization", "role":
			return Setting | Role
		case "characteristics":
			return Setting
		}
		// SET SESSION name = …: the same as SET name.
		if w(2) == "session_authorization" {
			return Setting | Role
		}
		return Setting
	case "session_authorization":
		return Setting | Role
	}
	return Setting
}

// quotedRole reports whether t[i] is a quoted name of the settings that
// say who the session is: role, session_authorization (setting names are
// not case sensitive).
func quotedRole(t []token, i int) bool {
	if i >= len(t) || t[i].kind != tQuoted {
		return false
	}
	switch strings.ToLower(t[i].text) {
	case "role", "session_authorization":
		return true
	}
	return false
}

// locksRows reports FOR UPDATE, FOR NO KEY UPDATE, FOR SHARE, FOR KEY SHARE.
// FOR followed by a column named key or no (substring(s for key)) is not a
// lock.
func locksRows(t []token) bool {
	word := func(i int, w string) bool { return i < len(t) && t[i].kind == tWord && t[i].text == w }
	for i := 0; i+1 < len(t); i++ {
		if !word(i, "for") {
			continue
		}
		switch {
		case word(i+1, "update"), word(i+1, "share"),
			word(i+1, "no") && word(i+2, "key") && word(i+3, "update"),
			word(i+1, "key") && word(i+2, "share"):
			return true
		}
	}
	return false
}

// functionEffects finds calls of the functions whose effects the text can
// tell: set_config and the advisory lock functions.
func functionEffects(t []token) Effect {
	var e Effect
	for i := 0; i+1 < len(t); i++ {
		if t[i+1].kind != tOpen || (t[i].kind != tWord && t[i].kind != tQuoted) {
			continue
		}
		name := t[i].text
		if t[i].kind == tQuoted {
			name = strings.ToLower(name)
		}
		switch {
		case name == "set_config":
			e |= setConfigEffects(args(t[i+2:]))
		case name == "nextval" || name == "setval":
			e |= Write
		case strings.HasPrefix(name, "pg_advisory_") || strings.HasPrefix(name, "pg_try_advisory_"):
			if strings.Contains(name, "_xact_") {
				e |= Lock
			} else {
				e |= AdvisoryLock
			}
		}
	}
	return e
}

// setConfigEffects classifies set_config(name, value, is_local) from its
// argument tokens.
func setConfigEffects(a [][]token) Effect {
	local, known := false, false
	if len(a) == 3 && len(a[2]) == 1 && !a[2][0].bad {
		switch tk := a[2][0]; {
		case tk.kind == tWord && tk.text == "true":
			local, known = true, true
		case tk.kind == tWord && tk.text == "false":
			known = true
		case tk.kind == tString:
			switch strings.ToLower(tk.text) {
			case "t", "true", "on", "yes", "y", "1":
				local, known = true, true
			case "f", "false", "off", "no", "n", "0":
				known = true
			}
		}
	}
	if known && local {
		return LocalSetting
	}
	e := Setting
	if !known {
		e |= LocalSetting
	}
	if len(a) == 0 || len(a[0]) != 1 || a[0][0].kind != tString || a[0][0].bad {
		return e | Role // the name is not in the text: it may be role
	}
	switch strings.ToLower(a[0][0].text) {
	case "role", "session_authorization":
		e |= Role
	}
	return e
}

// args splits the tokens after a function's '(' into its arguments, up to
// the matching ')'.
func args(t []token) [][]token {
	var out [][]token
	var cur []token
	depth := 0
	for _, tk := range t {
		switch tk.kind {
		case tOpen:
			depth++
		case tClose:
			if depth == 0 {
				if len(cur) > 0 || len(out) > 0 {
					out = append(out, cur)
				}
				return out
			}
			depth--
		case tComma:
			if depth == 0 {
				out = append(out, cur)
				cur = nil
				continue
			}
		}
		cur = append(cur, tk)
	}
	return append(out, cur)
}

func hasWord(t []token, word string) bool {
	for _, tk := range t {
		if tk.kind == tWord && tk.text == word {
			return true
		}
	}
	return false
}

// hasName reports whether t names name, as a word or quoted ("pg_temp",
// U&"pg\005ftemp").
func hasName(t []token, name string) bool {
	for _, tk := range t {
		if (tk.kind == tWord || tk.kind == tQuoted) && tk.text == name {
			return true
		}
	}
	return false
}

func hasPair(t []token, a, b string) bool {
	for i := 0; i+1 < len(t); i++ {
		if t[i].kind == tWord && t[i].text == a && t[i+1].kind == tWord && t[i+1].text == b {
			return true
		}
	}
	return false
}

// String names the effects, "|"-separated; "read" for none.
func (e Effect) String() string {
	if e == 0 {
		return "read"
	}
	var out []string
	for i, n := range effectNames {
		if e&(1<<i) != 0 {
			out = append(out, n)
		}
	}
	return strings.Join(out, "|")
}

var effectNames = []string{"Begin", "End", "Savepoint", "Setting", "LocalSetting", "Role", "TempObject",
	"AdvisoryLock", "Listen", "HoldCursor", "Prepare", "Lock", "Write"}

// Keyword returns the first word of sql's first statement in lower case,
// past white space, comments and opening parentheses; "" when it starts
// with anything else.
func Keyword(sql string) string {
	l := lexer{s: sql}
	for {
		switch t := l.next(); t.kind {
		case tOpen:
			continue
		case tWord:
			return t.text
		default:
			return ""
		}
	}
}
