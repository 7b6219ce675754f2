package main

import (
	"errors"
	"net/url"
	"regexp"
	"strings"
)

// redacted stands where a password was.
const redacted = "xxxxx"

// dsn is a DSN taken apart just far enough to read and set its keys and to
// print it without its password, in the form it came in: a URL
// (postgres://, postgresql://, warmpg://) or libpq key=value pairs. The
// DSN has passed warmpg's own parser before; this one keeps the text of
// everything it does not change.
type dsn struct {
	u     *url.URL // URL form; nil for key=value
	query []kv     // the URL's query, in order, still escaped
	pairs []kv     // key=value form: keys and values as written (values quoted as libpq quotes them)
}

type kv struct{ key, value string }

// kvPair matches one libpq key=value pair: the value bare (backslash
// escapes allowed; a quote is special only first) or in single quotes.
var kvPair = regexp.MustCompile(`^\s*([^\s=]+)\s*=\s*('(?:[^'\\]|\\.)*'|(?:(?:[^\s'\\]|\\.)(?:[^\s\\]|\\.)*)?)`)

// kvEscape is a backslash escape in a key=value value.
var kvEscape = regexp.MustCompile(`\\(.)`)

func parseDSN(s string) (*dsn, error) {
	s = strings.TrimSpace(s) // as warmpg and libpq do
	scheme, rest, isURL := strings.Cut(s, "://")
	switch strings.ToLower(scheme) {
	case "postgres", "postgresql", "warmpg":
	default:
		isURL = false
	}
	if isURL {
		// pgx and libpq end user:password at the first '@' before any '/';
		// Go's net/url, which reads it here, at a '?' or '#' before that.
		if i := strings.IndexAny(rest, "@/"); i >= 0 && rest[i] == '@' && strings.ContainsAny(rest[:i], "?#") {
			return nil, errors.New(`the URL's user:password holds a raw "?" or "#": percent-encode them (%3F, %23)`)
		}
		u, err := url.Parse(s)
		if err != nil {
			// Not even net/url's reason: it may quote part of the password
			// (an invalid port, an invalid escape).
			return nil, errors.New("malformed URL (percent-encode special characters in the user and password)")
		}
		d := &dsn{u: u}
		for _, piece := range strings.Split(u.RawQuery, "&") {
			if piece != "" {
				k, v, _ := strings.Cut(piece, "=")
				d.query = append(d.query, kv{k, v})
			}
		}
		return d, nil
	}
	d := &dsn{}
	rest = s
	for strings.TrimSpace(rest) != "" {
		m := kvPair.FindStringSubmatch(rest)
		if m == nil {
			return nil, errors.New(`want key=value pairs separated by spaces, or a postgres:// URL`)
		}
		d.pairs = append(d.pairs, kv{m[1], m[2]})
		rest = rest[len(m[0]):]
	}
	return d, nil
}

// get returns a key's value, unescaped.
func (d *dsn) get(key string) (string, bool) {
	if d.u != nil {
		for _, p := range d.query {
			if k, _ := url.QueryUnescape(p.key); k == key {
				v, err := url.QueryUnescape(p.value)
				return v, err == nil
			}
		}
		return "", false
	}
	for _, p := range d.pairs {
		if p.key == key {
			v := p.value
			if strings.HasPrefix(v, "'") {
				v = v[1 : len(v)-1]
			}
			return kvEscape.ReplaceAllString(v, "$1"), true
		}
	}
	return "", false
}

// set sets a key (values set here need no quoting or escaping), in place
// when it is there, else at the end.
func (d *dsn) set(key, value string) {
	list := &d.pairs
	if d.u != nil {
		list = &d.query
		key, value = url.QueryEscape(key), url.QueryEscape(value)
	}
	for i := range *list {
		if (*list)[i].key == key {
			(*list)[i].value = value
			return
		}
	}
	*list = append(*list, kv{key, value})
}

// String is the DSN with every password replaced by xxxxx.
func (d *dsn) String() string {
	secret := func(k string) bool { return k == "password" || k == "sslpassword" }
	if d.u != nil {
		u := *d.u
		var q []string
		for _, p := range d.query {
			v := p.value
			if k, _ := url.QueryUnescape(p.key); secret(k) {
				v = redacted
			}
			q = append(q, p.key+"="+v)
		}
		u.RawQuery = strings.Join(q, "&")
		return u.Redacted()
	}
	var out []string
	for _, p := range d.pairs {
		v := p.value
		if secret(p.key) {
			v = redacted
		}
		out = append(out, p.key+"="+v)
	}
	return strings.Join(out, " ")
}
