package warmpg

import (
	"errors"
	"fmt"
	"net/url"
	"strings"
)

// dsnParam is one pool_* key found in a DSN.
type dsnParam struct{ key, value string }

// splitDSN removes warmpg's pool_* keys from a DSN and returns the rest for the
// inner driver, byte for byte as given (a warmpg:// scheme becomes postgres://),
// the pool_* keys in order, and the secrets (passwords) the DSN holds so that
// no error warmpg returns can show them.
//
// Both forms libpq accepts are understood: a URL (postgres://, postgresql://,
// warmpg://) and key=value pairs separated by spaces, values optionally in
// single quotes with backslash escapes.
func splitDSN(dsn string) (inner string, pool []dsnParam, secrets []string, err error) {
	if scheme, rest, ok := strings.Cut(dsn, "://"); ok && isURLScheme(scheme) {
		return splitURL(scheme, rest)
	}
	return splitKeyValue(dsn)
}

func isURLScheme(s string) bool {
	switch strings.ToLower(s) {
	case "postgres", "postgresql", "warmpg":
		return true
	}
	return false
}

func splitURL(scheme, rest string) (string, []dsnParam, []string, error) {
	if strings.EqualFold(scheme, "warmpg") {
		scheme = "postgres"
	}
	var secrets []string
	// The password is what follows the first ':' in the userinfo, which ends
	// at the last '@' before the path (pgx finds it the same way).
	authority := rest
	if i := strings.IndexAny(authority, "/?#"); i >= 0 {
		authority = authority[:i]
	}
	if at := strings.LastIndexByte(authority, '@'); at >= 0 {
		if _, pw, ok := strings.Cut(authority[:at], ":"); ok && pw != "" {
			secrets = appendSecret(secrets, pw)
		}
	}
	body, fragment, hasFragment := strings.Cut(rest, "#")
	base, query, hasQuery := strings.Cut(body, "?")
	if !hasQuery {
		return scheme + "://" + rest, nil, secrets, nil
	}
	var kept []string
	var pool []dsnParam
	for _, piece := range strings.Split(query, "&") {
		if piece == "" {
			continue
		}
		rawKey, rawValue, _ := strings.Cut(piece, "=")
		key, err1 := url.QueryUnescape(rawKey)
		value, err2 := url.QueryUnescape(rawValue)
		if err := errors.Join(err1, err2); err != nil {
			// Name the key only when it decoded: the value may be a password.
			if err1 == nil {
				return "", nil, secrets, fmt.Errorf("warmpg: malformed DSN: bad percent-encoding in the value of query key %q", key)
			}
			return "", nil, secrets, errors.New("warmpg: malformed DSN: bad percent-encoding in a query key")
		}
		if isSecretKey(key) {
			secrets = appendSecret(secrets, value)
		}
		if strings.HasPrefix(key, "pool_") {
			pool = append(pool, dsnParam{key, value})
			continue
		}
		kept = append(kept, piece)
	}
	inner := scheme + "://" + base
	if len(kept) > 0 {
		inner += "?" + strings.Join(kept, "&")
	}
	if hasFragment {
		inner += "#" + fragment
	}
	return inner, pool, secrets, nil
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

func appendSecret(secrets []string, s string) []string {
	if s == "" {
		return secrets
	}
	secrets = append(secrets, s)
	if u, err := url.PathUnescape(s); err == nil && u != s {
		secrets = append(secrets, u)
	}
	return secrets
}

// splitKeyValue handles libpq's key=value form. It keeps the exact text of
// every pair it does not remove.
func splitKeyValue(dsn string) (string, []dsnParam, []string, error) {
	var kept []string
	var pool []dsnParam
	var secrets []string
	s := dsn
	isSpace := func(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' || b == '\f' || b == '\v' }
	i := 0
	for {
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) {
			break
		}
		start := i
		for i < len(s) && s[i] != '=' && !isSpace(s[i]) {
			i++
		}
		key := s[start:i]
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		if i == len(s) || s[i] != '=' {
			// A stray word may be a password that lost its key: name it
			// only when it is a keyword that can hold no secret.
			what := fmt.Sprintf("word %d", len(kept)+len(pool)+1)
			if strings.HasPrefix(key, "pool_") || plainKeywords[key] {
				what = fmt.Sprintf("key %q", key)
			}
			return "", nil, secrets, fmt.Errorf("warmpg: malformed DSN: %s has no \"=value\" (want key=value pairs separated by spaces, or a postgres:// URL)", what)
		}
		if key == "" {
			return "", nil, secrets, errors.New("warmpg: malformed DSN: \"=\" with no key before it")
		}
		i++ // '='
		for i < len(s) && isSpace(s[i]) {
			i++
		}
		var value strings.Builder
		if i < len(s) && s[i] == '\'' {
			i++
			closed := false
			for i < len(s) {
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
				if closed {
					break
				}
			}
			if !closed {
				return "", nil, secrets, fmt.Errorf("warmpg: malformed DSN: unterminated quoted value for key %q", key)
			}
		} else {
			for i < len(s) && !isSpace(s[i]) {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				value.WriteByte(s[i])
				i++
			}
		}
		if isSecretKey(key) {
			secrets = appendSecret(secrets, value.String())
		}
		if strings.HasPrefix(key, "pool_") {
			pool = append(pool, dsnParam{key, value.String()})
			continue
		}
		kept = append(kept, s[start:i])
	}
	return strings.Join(kept, " "), pool, secrets, nil
}

// redactedError hides secrets in an error's text while keeping the error
// itself reachable through errors.Is and errors.As.
type redactedError struct {
	err     error
	secrets []string
}

func (e *redactedError) Error() string {
	msg := e.err.Error()
	for _, s := range e.secrets {
		msg = strings.ReplaceAll(msg, s, "xxxxx")
	}
	return msg
}

func (e *redactedError) Unwrap() error { return e.err }

// redact wraps err so that its text shows none of secrets. It returns err
// unchanged when there is nothing to hide.
func redact(err error, secrets []string) error {
	if err == nil {
		return nil
	}
	msg := err.Error()
	for _, s := range secrets {
		if strings.Contains(msg, s) {
			return &redactedError{err: err, secrets: secrets}
		}
	}
	return err
}
