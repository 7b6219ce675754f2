package sqltext

import "strings"

// quickEffects are the effects MayHave can rule out without a Scan.
const quickEffects = Begin | End | Savepoint | SessionState | LocalSetting

// MayHave reports whether sql may do any of e. It is false only when a
// Scan would certainly find none of e, and costs a fraction of one: it
// reads the first word and looks for a ';' and for the few names through
// which a single SELECT, INSERT, UPDATE, DELETE, MERGE, WITH, VALUES or
// TABLE statement can change a session (set_config, the advisory lock
// functions, TEMP), and for U&' and U&", which can spell any name without
// its letters (U&"\0073et_config"). Any other first word, or any e outside Begin, End,
// Savepoint, LocalSetting and SessionState (Write, Lock), makes it true:
// call Scan.
//
// It is meant for a hot path that scans every statement a program runs,
// where almost all of them are single queries that change no session.
func MayHave(sql string, e Effect) bool {
	if e&^quickEffects != 0 {
		return true
	}
	i := skipSpaceAndComments(sql)
	if i < 0 {
		return true
	}
	start := i
	for i < len(sql) && (sql[i]|0x20 >= 'a' && sql[i]|0x20 <= 'z') {
		i++
	}
	if !quietFirstWord(sql[start:i]) {
		return true
	}
	// The rest: any ';' may start another statement; set_config,
	// pg_advisory_… and TEMP (SELECT … INTO TEMP) are the words that can
	// give one of these statements a session effect, and U& can spell
	// them. A byte matching one of these only in a string or a comment is
	// a false alarm: Scan decides.
	for ; i+1 < len(sql); i++ {
		if !quickStart[sql[i]] {
			continue
		}
		switch sql[i] | 0x20 {
		case ';':
			return true
		case 's':
			if sql[i+1]|0x20 == 'e' && hasPrefixFold(sql[i:], "set_config") {
				return true
			}
		case 'a':
			if sql[i+1]|0x20 == 'd' && hasPrefixFold(sql[i:], "advisory") {
				return true
			}
		case 't':
			if sql[i+1]|0x20 == 'e' && hasPrefixFold(sql[i:], "temp") {
				return true
			}
		case '&':
			if i > 0 && sql[i-1]|0x20 == 'u' && (sql[i+1] == '\'' || sql[i+1] == '"') {
				return true
			}
		}
	}
	return i < len(sql) && sql[i] == ';'
}

// quickStart marks the bytes MayHave looks at twice: ';', the first
// letters of its names, and the '&' of U&.
var quickStart = [256]bool{';': true, 's': true, 'S': true, 'a': true, 'A': true, 't': true, 'T': true, '&': true}

// quietFirstWord reports whether a statement starting with word can have
// a session or transaction effect only through what MayHave looks for.
func quietFirstWord(w string) bool {
	switch len(w) {
	case 4:
		return strings.EqualFold(w, "with")
	case 5:
		return strings.EqualFold(w, "table") || strings.EqualFold(w, "merge")
	case 6:
		return strings.EqualFold(w, "select") || strings.EqualFold(w, "insert") ||
			strings.EqualFold(w, "update") || strings.EqualFold(w, "delete") ||
			strings.EqualFold(w, "values")
	}
	return false
}

// skipSpaceAndComments returns the index of the first byte of sql that is
// not white space, a comment or a '(' — or -1 if a block comment does not
// end.
func skipSpaceAndComments(sql string) int { return skip(sql, 0, true) }

// hasPrefixFold reports whether s starts with the lower-case ASCII prefix,
// in any case.
func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}
