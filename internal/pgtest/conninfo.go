package pgtest

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"strconv"
	"strings"
)

// param is one connection parameter, kept in order.
type param struct{ key, value string }

// splitParam splits a raw "key=value" string. A string without "=" is a key
// with an empty value.
func splitParam(p string) param {
	k, v, _ := strings.Cut(p, "=")
	return param{key: strings.TrimSpace(k), value: v}
}

// mergeParams returns base with extra applied: an extra parameter whose key
// is already present replaces that value in place (drivers disagree on
// whether the first or the last duplicate wins, so duplicates are never
// produced); new keys are appended in order.
func mergeParams(base []param, extra []string) []param {
	out := make([]param, len(base), len(base)+len(extra))
	copy(out, base)
next:
	for _, raw := range extra {
		p := splitParam(raw)
		if p.key == "" {
			continue
		}
		for i := range out {
			if out[i].key == p.key {
				out[i].value = p.value
				continue next
			}
		}
		out = append(out, p)
	}
	return out
}

// URL returns the server's address in URL form,
// "postgres://user[:password]@host:port/dbname?sslmode=disable", with params
// appended. Each param is an unescaped "key=value" string; URL escapes it.
// A param whose key is already present (for example sslmode) replaces that
// value instead of being added twice.
func (s *Server) URL(params ...string) string {
	u := url.URL{
		Scheme: "postgres",
		Host:   s.Addr(),
		Path:   "/" + s.Database,
	}
	switch {
	case s.User != "" && s.Password != "":
		u.User = url.UserPassword(s.User, s.Password)
	case s.User != "":
		u.User = url.User(s.User)
	}
	var q strings.Builder
	for i, p := range mergeParams(s.baseParams(), params) {
		if i > 0 {
			q.WriteByte('&')
		}
		q.WriteString(queryEscape(p.key))
		q.WriteByte('=')
		q.WriteString(queryEscape(p.value))
	}
	u.RawQuery = q.String()
	return u.String()
}

// KeyValue returns the server's address in libpq key=value form,
// "host=127.0.0.1 port=N user=U [password=P] dbname=D sslmode=disable",
// with params appended. Each param is an unescaped "key=value" string;
// values are quoted as libpq requires. A param whose key is already present
// replaces that value.
func (s *Server) KeyValue(params ...string) string {
	base := []param{
		{"host", s.Host},
		{"port", strconv.Itoa(s.Port)},
	}
	if s.User != "" {
		base = append(base, param{"user", s.User})
	}
	if s.Password != "" {
		base = append(base, param{"password", s.Password})
	}
	if s.Database != "" {
		base = append(base, param{"dbname", s.Database})
	}
	base = append(base, s.baseParams()...)
	var b strings.Builder
	for i, p := range mergeParams(base, params) {
		if i > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(p.key)
		b.WriteByte('=')
		b.WriteString(quoteKV(p.value))
	}
	return b.String()
}

// queryEscape escapes a URL query key or value, spaces as %20: some
// parsers (pgx) do not read "+" as a space.
func queryEscape(v string) string {
	return strings.ReplaceAll(url.QueryEscape(v), "+", "%20")
}

// quoteKV quotes a libpq keyword value when it is empty or contains
// whitespace, a quote or a backslash.
func quoteKV(v string) string {
	if v != "" && !strings.ContainsAny(v, " \t\n\r\v\f'\\") {
		return v
	}
	r := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	return "'" + r.Replace(v) + "'"
}

// Addr returns "host:port" (IPv6 hosts in brackets).
func (s *Server) Addr() string {
	return net.JoinHostPort(s.Host, strconv.Itoa(s.Port))
}

// baseParams returns the parameters every connection string carries: those
// of the URL the server came from (Kind "env"), else sslmode=disable.
func (s *Server) baseParams() []param {
	if s.params != nil {
		return s.params
	}
	return []param{{"sslmode", "disable"}}
}

// parseURL turns a postgres:// or postgresql:// URL into a Server of the
// given kind. Missing parts get libpq-like defaults (host 127.0.0.1, port
// 5432, user postgres, database = user); query parameters are kept, and
// sslmode=disable is added when the URL names no sslmode.
func parseURL(raw, kind string) (*Server, error) {
	u, err := url.Parse(raw)
	if err != nil {
		// Do not echo the URL: it may hold a password.
		return nil, fmt.Errorf("pgtest: cannot parse database URL: %v", redactErr(err))
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return nil, fmt.Errorf("pgtest: database URL must start with postgres:// or postgresql://, got scheme %q", u.Scheme)
	}
	s := &Server{Kind: kind, Host: u.Hostname(), User: u.User.Username()}
	s.Password, _ = u.User.Password()
	if s.Host == "" {
		s.Host = "127.0.0.1"
	}
	s.Port = 5432
	if p := u.Port(); p != "" {
		if s.Port, err = strconv.Atoi(p); err != nil {
			return nil, fmt.Errorf("pgtest: bad port %q in database URL", p)
		}
	}
	if s.User == "" {
		s.User = "postgres"
	}
	s.Database = strings.TrimPrefix(u.Path, "/")
	if s.Database == "" {
		s.Database = s.User
	}
	s.params = []param{}
	hasSSL := false
	for _, kv := range strings.Split(u.RawQuery, "&") {
		if kv == "" {
			continue
		}
		k, v, _ := strings.Cut(kv, "=")
		if k, err = url.QueryUnescape(k); err != nil {
			return nil, fmt.Errorf("pgtest: bad query in database URL: %v", err)
		}
		if v, err = url.QueryUnescape(v); err != nil {
			return nil, fmt.Errorf("pgtest: bad query in database URL: %v", err)
		}
		hasSSL = hasSSL || k == "sslmode"
		s.params = mergeParams(s.params, []string{k + "=" + v})
	}
	if !hasSSL {
		s.params = append(s.params, param{"sslmode", "disable"})
	}
	return s, nil
}

// redactErr returns the reason url.Parse gave, without the URL itself
// (which may hold a password).
func redactErr(err error) string {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err.Error()
	}
	return "malformed URL"
}

// FromURL describes an existing server from its postgres:// URL, as
// WARMPG_TEST_DATABASE_URL does (Kind "env": not managed, never stopped).
// It does not connect.
func FromURL(raw string) (*Server, error) { return parseURL(raw, KindEnv) }
