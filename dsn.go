package warmpg

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
	"unicode"
)

// dsnParam is one pool_* key found in a DSN.
type dsnParam struct{ key, value string }

// maskToken stands where a password was in parsedDSN.masked.
const maskToken = "xxxxx"

// parsedDSN is a DSN as warmpg reads it.
type parsedDSN struct {
	// inner is the DSN for the inner driver: without the white space around
	// it and without its pool_* keys, a URL's scheme in lower case (warmpg://
	// becomes postgres://), every other byte as given.
	inner string
	// masked is inner with each password token — the bytes the parser read
	// as a password (sslpassword too) — replaced by maskToken. It is built
	// from the tokens' positions while parsing, never by searching for a
	// password's text, so it holds no password whatever its characters.
	masked string
	pool   []dsnParam
	// secret reports whether inner holds a password token.
	secret bool
	// userinfoQF: a URL whose user:password part holds a raw '?' or '#',
	// which pgx and libpq read as part of the password and Go's net/url
	// (lib/pq) as the start of the query or fragment.
	userinfoQF bool
	// unquotedUnicodeSpace: a key=value password, unquoted, holds a
	// non-ASCII space, where lib/pq (unicode.IsSpace) ends the value and
	// pgx and libpq do not.
	unquotedUnicodeSpace bool
}

// splitDSN removes warmpg's pool_* keys from a DSN and returns what the
// inner driver gets, the same with its passwords masked, and the pool_*
// keys in order.
//
// Both forms libpq accepts are understood: a URL (postgres://,
// postgresql://, warmpg://; the scheme in any case) and key=value pairs
// separated by spaces, values optionally in single quotes with backslash
// escapes. A URL is read as pgx and libpq read it: the user:password part
// ends at the first '@' before any '/', the query starts at the first '?'
// after it.
func splitDSN(dsn string) (parsedDSN, error) {
	// libpq skips white space around a DSN; a URL with a space before it
	// would otherwise be read as a key=value DSN.
	s := strings.Trim(dsn, asciiSpace)
	if scheme, rest, ok := strings.Cut(s, "://"); ok && isURLScheme(scheme) {
		return splitURL(strings.ToLower(scheme), rest)
	}
	return splitKeyValue(s)
}

const asciiSpace = " \t\n\r\f\v"

func isASCIISpace(b byte) bool { return strings.IndexByte(asciiSpace, b) >= 0 }

func isURLScheme(s string) bool {
	switch strings.ToLower(s) {
	case "postgres", "postgresql", "warmpg":
		return true
	}
	return false
}

// isPoolKey reports whether a DSN key is warmpg's: it starts with pool_, in
// any case (a POOL_MAX_CONNS passed on would reach the server as a setting).
func isPoolKey(key string) bool {
	return len(key) >= 5 && strings.EqualFold(key[:5], "pool_")
}

// maskBuilder builds inner and masked side by side.
type maskBuilder struct {
	in, mk strings.Builder
	secret bool
}

func (b *maskBuilder) plain(s string) { b.in.WriteString(s); b.mk.WriteString(s) }

func (b *maskBuilder) password(s string) {
	if s == "" {
		return
	}
	b.in.WriteString(s)
	b.mk.WriteString(maskToken)
	b.secret = true
}

func splitURL(scheme, rest string) (parsedDSN, error) {
	if scheme == "warmpg" {
		scheme = "postgres"
	}
	// The user:password part ends at the first '@' before any '/' (pgx's and
	// libpq's lookahead; a '?' or '#' does not end it).
	userEnd := -1
	if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' {
		userEnd = i
	}
	// Any other raw '@' with a ':' before it leaves where a password ends
	// ambiguous — postgres://u:pa/ss@h, postgres://u:p@ss@h — and each parser
	// would read a different host, port or database out of the password, to
	// show it in an error or connect to it.
	if j := strings.LastIndexByte(rest, '@'); j > userEnd && strings.IndexByte(rest[:j], ':') >= 0 {
		return parsedDSN{}, errors.New(`warmpg: malformed DSN: the URL has a raw "@" outside its user:password@ part, which makes where a password ends ambiguous (percent-encode "@" as %40, and "/" in a password as %2F)`)
	}
	var b maskBuilder
	b.plain(scheme + "://")
	d := parsedDSN{}
	post := rest
	if userEnd >= 0 {
		userinfo := rest[:userEnd]
		d.userinfoQF = strings.ContainsAny(userinfo, "?#")
		if c := strings.IndexByte(userinfo, ':'); c >= 0 {
			b.plain(userinfo[:c+1])
			b.password(userinfo[c+1:])
		} else {
			b.plain(userinfo)
		}
		b.plain("@")
		post = rest[userEnd+1:]
	}
	base, query, hasQuery := strings.Cut(post, "?")
	b.plain(base)
	if hasQuery {
		sep := "?"
		for n, piece := range strings.Split(query, "&") {
			if piece == "" {
				continue
			}
			rawKey, rawValue, hasValue := strings.Cut(piece, "=")
			if !hasValue {
				// Not named: it may be the tail of a password that held a
				// raw '&'.
				return parsedDSN{}, fmt.Errorf(`warmpg: malformed DSN: query parameter %d has no "=value" (want key=value pairs separated by "&"; percent-encode "&" in a value as %%26)`, n+1)
			}
			key, err1 := url.PathUnescape(rawKey)
			key = strings.Trim(key, " ")
			if err1 != nil {
				return parsedDSN{}, errors.New("warmpg: malformed DSN: bad percent-encoding in a query key")
			}
			if isPoolKey(key) {
				value, err := url.QueryUnescape(rawValue)
				if err != nil {
					return parsedDSN{}, fmt.Errorf("warmpg: malformed DSN: bad percent-encoding in the value of query key %q", key)
				}
				d.pool = append(d.pool, dsnParam{key, value})
				continue
			}
			b.plain(sep)
			sep = "&"
			if isSecretKey(key) {
				b.plain(rawKey + "=")
				b.password(rawValue)
				continue
			}
			b.plain(piece)
		}
	}
	// Removing pool_* keys may leave white space at the end (a value ending
	// in a space before them), which a second reading would trim: trim it
	// now (pgx and libpq drop it from a value anyway).
	d.inner = strings.TrimRight(b.in.String(), asciiSpace)
	d.masked = strings.TrimRight(b.mk.String(), asciiSpace)
	d.secret = b.secret
	return d, nil
}

// plainKeywords are libpq connection keywords whose values are no secret,
// so an error may name them.
var plainKeywords = map[string]bool{
	"host": true, "hostaddr": true, "port": true, "dbname": true, "user": true, "sslmode": true,
	"application_name": true, "connect_timeout": true, "options": true, "sslrootcert": true,
	"sslcert": true, "sslkey": true, "target_session_attrs": true, "client_encoding": true,
	"passfile": true, "service": true, "password": true, "sslpassword": true,
}

func isSecretKey(key string) bool { return key == "password" || key == "sslpassword" }

// splitKeyValue handles libpq's key=value form. It keeps the exact text of
// every pair it does not remove.
func splitKeyValue(s string) (parsedDSN, error) {
	var b maskBuilder
	var pool []dsnParam
	unicodeSpace := false
	words := 0 // pairs read so far
	sep := ""
	i := 0
	for {
		for i < len(s) && isASCIISpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		words++
		start := i
		for i < len(s) && s[i] != '=' && !isASCIISpace(s[i]) {
			i++
		}
		key := s[start:i]
		// A stray word may be a password that lost its key: name it only
		// when it is a keyword that can hold no secret.
		what := fmt.Sprintf("word %d", words)
		if isPoolKey(key) || plainKeywords[key] {
			what = fmt.Sprintf("key %q", key)
		}
		for i < len(s) && isASCIISpace(s[i]) {
			i++
		}
		if i == len(s) || s[i] != '=' {
			return parsedDSN{}, fmt.Errorf("warmpg: malformed DSN: %s has no \"=value\" (want key=value pairs separated by spaces, or a postgres:// URL)", what)
		}
		if key == "" {
			return parsedDSN{}, errors.New("warmpg: malformed DSN: \"=\" with no key before it")
		}
		if strings.Contains(key, "://") {
			// No libpq keyword or server setting looks like this; passed
			// on, it would make the inner DSN read as a URL.
			return parsedDSN{}, fmt.Errorf("warmpg: malformed DSN: %s is no connection keyword (a URL must come first, alone)", what)
		}
		i++ // '='
		for i < len(s) && isASCIISpace(s[i]) {
			i++
		}
		valueStart := i
		var value strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) && !closed {
				switch c := s[i]; {
				case c == '\\' && i+1 < len(s):
					value.WriteByte(s[i+1])
					i += 2
				case c == '\'':
					i++
					closed = true
				default:
					value.WriteByte(c)
					i++
				}
			}
			if !closed {
				return parsedDSN{}, fmt.Errorf("warmpg: malformed DSN: unterminated quoted value for %s", what)
			}
		} else {
			for i < len(s) && !isASCIISpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				value.WriteByte(s[i])
				i++
			}
		}
		if isPoolKey(key) {
			pool = append(pool, dsnParam{key, value.String()})
			continue
		}
		b.plain(sep)
		sep = " "
		if isSecretKey(key) {
			b.plain(s[start:valueStart])
			b.password(s[valueStart:i])
			if valueStart < i && s[valueStart] != '\'' && strings.IndexFunc(s[valueStart:i], func(r rune) bool { return r > 0x7f && unicode.IsSpace(r) }) >= 0 {
				unicodeSpace = true
			}
			continue
		}
		b.plain(s[start:i])
	}
	return parsedDSN{inner: b.in.String(), masked: b.mk.String(), pool: pool, secret: b.secret, unquotedUnicodeSpace: unicodeSpace}, nil
}

// Errors after parsing need no masking: pgx and lib/pq build connect errors
// from the host, port, user and database they parsed, and splitDSN (with
// openConnector for lib/pq) refuses the URLs in which a parser could read
// part of a password as one of those. warmpg's own messages name pool_*
// values only, which are never secrets.

// backendError is the error for an inner driver's refusal of d.inner. When
// d holds a password, the error reported is the one the same parse gives
// for d.masked, which cannot show it; if d.masked parses, the password
// alone was refused and no parser message is shown.
func (d *parsedDSN) backendError(backend Backend, err error, parse func(string) error) error {
	if errors.As(err, new(libpqKeyError)) {
		return err // warmpg's own, and no password in it
	}
	if d.secret {
		masked := parse(d.masked)
		if masked == nil {
			return fmt.Errorf("warmpg: the %s backend rejected the DSN's password (not shown); in a URL percent-encode it (url.UserPassword), in key=value form quote it with backslash escapes", backend)
		}
		err = masked
	}
	return fmt.Errorf("warmpg: %s backend rejected the DSN: %w", backend, err)
}
