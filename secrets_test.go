package warmpg

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// secretForm writes a DSN in one form, with a password, and extra keys in
// that form's syntax.
type secretForm struct {
	name  string
	build func(addr secretAddr, pw string, extra [][2]string) string
}

type secretAddr struct {
	host       string
	port       int
	user, db   string
	sslDisable bool
}

func (a secretAddr) hostPort() string { return net.JoinHostPort(a.host, strconv.Itoa(a.port)) }

func urlQuery(extra [][2]string, lead string) string {
	var b strings.Builder
	for _, kv := range extra {
		b.WriteString(lead)
		lead = "&"
		b.WriteString(url.QueryEscape(kv[0]) + "=" + strings.ReplaceAll(url.QueryEscape(kv[1]), "+", "%20"))
	}
	return b.String()
}

func kvPairs(extra [][2]string) string {
	var b strings.Builder
	for _, kv := range extra {
		b.WriteString(" " + kv[0] + "='" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(kv[1]) + "'")
	}
	return b.String()
}

// secretForms are the ways a password reaches warmpg: the way a careful
// user writes it (percent-encoded in a URL, quoted in key=value form), and
// raw, as people paste it.
var secretForms = []secretForm{
	{"url", func(a secretAddr, pw string, extra [][2]string) string {
		return "postgres://" + url.UserPassword(a.user, pw).String() + "@" + a.hostPort() + "/" + a.db + urlQuery(extra, "?")
	}},
	{"url-raw", func(a secretAddr, pw string, extra [][2]string) string {
		return "postgres://" + a.user + ":" + pw + "@" + a.hostPort() + "/" + a.db + urlQuery(extra, "?")
	}},
	{"warmpg-url", func(a secretAddr, pw string, extra [][2]string) string {
		return "warmpg://" + url.UserPassword(a.user, pw).String() + "@" + a.hostPort() + "/" + a.db + urlQuery(extra, "?")
	}},
	{"URL-capitals", func(a secretAddr, pw string, extra [][2]string) string {
		return "POSTGRES://" + url.UserPassword(a.user, pw).String() + "@" + a.hostPort() + "/" + a.db + urlQuery(extra, "?")
	}},
	{"url-query", func(a secretAddr, pw string, extra [][2]string) string {
		return "postgres://" + a.user + "@" + a.hostPort() + "/" + a.db + urlQuery(append([][2]string{{"password", pw}}, extra...), "?")
	}},
	{"url-query-raw", func(a secretAddr, pw string, extra [][2]string) string {
		return "postgres://" + a.user + "@" + a.hostPort() + "/" + a.db + "?password=" + pw + urlQuery(extra, "&")
	}},
	{"kv-quoted", func(a secretAddr, pw string, extra [][2]string) string {
		return fmt.Sprintf("host=%s port=%d user=%s password='%s' dbname=%s", a.host, a.port, a.user,
			strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(pw), a.db) + kvPairs(extra)
	}},
	{"kv-escaped", func(a secretAddr, pw string, extra [][2]string) string {
		return fmt.Sprintf("host=%s port=%d user=%s password=%s dbname=%s", a.host, a.port, a.user,
			strings.NewReplacer(`\`, `\\`, `'`, `\'`, ` `, `\ `).Replace(pw), a.db) + kvPairs(extra)
	}},
}

// secretPair is two passwords of the same shape: the same special
// character, different letters. Whatever warmpg reports for one it must
// report, byte for byte, for the other — so its reports cannot depend on the
// password — and it must show neither half of either.
type secretPair struct {
	name   string
	a, b   string
	halves []string // of a and b, that must never show
}

func secretPairs() []secretPair {
	var out []secretPair
	for _, ch := range ` '"\/?#&=+%@:` {
		out = append(out, secretPair{
			name:   fmt.Sprintf("%q", ch),
			a:      "S3crA" + string(ch) + "tZ9qB",
			b:      "Q7kwD" + string(ch) + "mY4vX",
			halves: []string{"S3crA", "tZ9qB", "Q7kwD", "mY4vX"},
		})
	}
	// One character: nothing to search for, so the reports must simply be
	// the same, and unmangled.
	out = append(out, secretPair{name: "one-char", a: "e", b: "q"})
	return out
}

// closedPort returns a port on 127.0.0.1 nothing listens on.
func closedPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	return port
}

// secretPath is one way an error (or log event) reaches the application.
type secretPath struct {
	name   string
	server string // "": no server; "trust": a trusted role, no such database; "password": the password role
	extra  [][2]string
	// chars, if set, limits the password pairs to these special
	// characters (and the one-character pair): each connect costs the
	// server a backend (40 ms on the test machines), a password check a
	// SCRAM exchange on top (0.1 s). Every character goes through the
	// refused-connect paths.
	chars string
	// run returns what the application sees: error texts and log events.
	// opts go to warmpg with the DSN.
	run func(t *testing.T, dsn string, opts ...Option) string
}

func errText(err error) string {
	if err == nil {
		return "<nil>"
	}
	return err.Error()
}

var secretPaths = []secretPath{
	{name: "open-bad-pool-key", extra: [][2]string{{"pool_reset", "sometimes"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			if len(opts) > 0 { // sql.Open takes none
				c, err := OpenConnector(dsn, opts...)
				if err == nil {
					c.Close()
				}
				return errText(err)
			}
			db, err := sql.Open("warmpg", dsn)
			if err == nil {
				db.Close()
			}
			return errText(err)
		}},
	{name: "open-backend-refuses", extra: [][2]string{{"sslmode", "bogus"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			c, err := OpenConnector(dsn, opts...)
			if err == nil {
				c.Close()
			}
			return errText(err)
		}},
	{name: "ping-refused", extra: [][2]string{{"sslmode", "disable"}, {"pool_connect_retry_timeout", "0"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			return pingOutput(t, dsn, opts...)
		}},
	{name: "ping-server-refuses", server: "trust", chars: `@/?#\ `, extra: [][2]string{{"sslmode", "disable"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			return pingOutput(t, dsn, opts...)
		}},
	{name: "ping-auth-failed", server: "password", chars: `@\`, extra: [][2]string{{"sslmode", "disable"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			return pingOutput(t, dsn, opts...)
		}},
	{name: "warmdb", extra: [][2]string{{"sslmode", "disable"}, {"pool_connect_retry_timeout", "0"}, {"pool_max_conns", "2"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			c, err := OpenConnector(dsn, opts...)
			if err != nil {
				return errText(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			rep, err := WarmDB(ctx, db)
			return errText(err) + " | " + fmt.Sprint(rep.Requested, rep.Warmed, rep.Failed)
		}},
	{name: "prewarm-background", extra: [][2]string{{"sslmode", "disable"}, {"pool_prewarm", "true"}, {"pool_max_conns", "1"}},
		run: func(t *testing.T, dsn string, opts ...Option) string {
			rec := &recorder{level: slog.LevelDebug}
			c, err := OpenConnector(dsn, append([]Option{WithLogger(slog.New(rec)), WithLogLevel(slog.LevelDebug)}, opts...)...)
			if err != nil {
				return errText(err)
			}
			defer c.Close()
			deadline := time.Now().Add(10 * time.Second)
			for len(rec.find("warmpg: background connect failed")) == 0 {
				if time.Now().After(deadline) {
					t.Fatalf("no background connect failure logged for %q", dsn)
				}
				time.Sleep(5 * time.Millisecond)
			}
			recs := rec.find("warmpg: background connect failed")
			st := c.Stats()
			return recs[0].msg + " error=" + recs[0].attrs["error"] + " | stats connect errors > 0: " + strconv.FormatBool(st.ConnectErrors > 0)
		}},
}

func pingOutput(t *testing.T, dsn string, opts ...Option) string {
	rec := &recorder{level: slog.LevelDebug}
	c, err := OpenConnector(dsn, append([]Option{WithLogger(slog.New(rec)), WithLogLevel(slog.LevelDebug)}, opts...)...)
	if err != nil {
		return errText(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out := errText(db.PingContext(ctx))
	for _, r := range rec.find("warmpg:") {
		out += " | log " + r.msg + " error=" + r.attrs["error"]
	}
	return out
}

// TestNoPasswordInAnyReport: no error, log event or report shows a password,
// whatever its characters, DSN form and backend, on every error path: the
// reports for two passwords of the same shape are identical and hold no
// part of either.
func TestNoPasswordInAnyReport(t *testing.T) {
	withEnv(t)
	refused := secretAddr{host: "127.0.0.1", port: closedPort(t), user: pgtest.PasswordUser, db: "postgres"}
	for _, path := range secretPaths {
		t.Run(path.name, func(t *testing.T) {
			addr := refused
			switch path.server {
			case "trust":
				srv := pgtest.Get(t)
				addr = secretAddr{host: srv.Host, port: srv.Port, user: srv.User, db: "no_such_db_warmpg"}
			case "password":
				srv := pgtest.Get(t).WithPasswordUser(t)
				addr = secretAddr{host: srv.Host, port: srv.Port, user: pgtest.PasswordUser, db: srv.Database}
			}
			for _, backend := range []string{"pgx", "pq"} {
				for _, form := range secretForms {
					for _, pw := range secretPairs() {
						if path.chars != "" && pw.name != "one-char" && !strings.Contains(path.chars, pw.name[1:len(pw.name)-1]) {
							continue
						}
						extra := append([][2]string{{"pool_backend", backend}}, path.extra...)
						dsnA := form.build(addr, pw.a, extra)
						dsnB := form.build(addr, pw.b, extra)
						outA := path.run(t, dsnA)
						outB := path.run(t, dsnB)
						where := fmt.Sprintf("%s/%s/%s password %s", path.name, backend, form.name, pw.name)
						if outA != outB {
							t.Errorf("%s: the report depends on the password:\n  %s\n  %s", where, outA, outB)
						}
						for _, h := range pw.halves {
							if strings.Contains(outA, h) || strings.Contains(outB, h) {
								t.Errorf("%s: the report shows the password (%q):\n  %s\n  %s", where, h, outA, outB)
							}
						}
					}
				}
			}
		})
	}
	// The password from a source instead of the DSN: WithPasswordFunc, and
	// pool_password_file (the same path for both passwords of a pair).
	for _, source := range []string{"func", "file"} {
		for _, path := range secretPaths {
			t.Run(source+"/"+path.name, func(t *testing.T) {
				addr := refused
				switch path.server {
				case "trust":
					srv := pgtest.Get(t)
					addr = secretAddr{host: srv.Host, port: srv.Port, user: srv.User, db: "no_such_db_warmpg"}
				case "password":
					srv := pgtest.Get(t).WithPasswordUser(t)
					addr = secretAddr{host: srv.Host, port: srv.Port, user: pgtest.PasswordUser, db: srv.Database}
				}
				file := filepath.Join(t.TempDir(), "password")
				for _, backend := range []string{"pgx", "pq"} {
					for _, pw := range secretPairs() {
						if path.chars != "" && pw.name != "one-char" && !strings.Contains(path.chars, pw.name[1:len(pw.name)-1]) {
							continue
						}
						extra := append([][2]string{{"pool_backend", backend}}, path.extra...)
						if source == "file" {
							extra = append(extra, [2]string{"pool_password_file", file})
						}
						dsn := "postgres://" + addr.user + "@" + addr.hostPort() + "/" + addr.db + urlQuery(extra, "?")
						report := func(secret string) string {
							if source == "file" {
								if err := os.WriteFile(file, []byte(secret+"\n"), 0o600); err != nil {
									t.Fatal(err)
								}
								return path.run(t, dsn)
							}
							return path.run(t, dsn, WithPasswordFunc(func(context.Context) (string, error) { return secret, nil }))
						}
						outA, outB := report(pw.a), report(pw.b)
						where := fmt.Sprintf("%s/%s/%s password %s", source, path.name, backend, pw.name)
						if outA != outB {
							t.Errorf("%s: the report depends on the password:\n  %s\n  %s", where, outA, outB)
						}
						for _, h := range pw.halves {
							if strings.Contains(outA, h) || strings.Contains(outB, h) {
								t.Errorf("%s: the report shows the password (%q):\n  %s\n  %s", where, h, outA, outB)
							}
						}
					}
				}
			})
		}
	}
}

// TestOneCharPasswordMessageIntact: a one-letter password does not mangle
// messages (the old search-and-replace masking turned pool_reset into
// pool_rxxxxxsxxxxxt and so revealed the password).
func TestOneCharPasswordMessageIntact(t *testing.T) {
	withEnv(t)
	const want = `warmpg: invalid DSN pool_reset="sometimes": want none, check, ping, rollback or discard`
	for _, dsn := range []string{
		"postgres://u:e@h/db?pool_reset=sometimes",
		"host=h user=u password=e pool_reset=sometimes",
		"postgres://u@h/db?password=e&pool_reset=sometimes",
	} {
		_, err := OpenConnector(dsn)
		if err == nil || err.Error() != want {
			t.Errorf("%q: got %v, want %s", dsn, err, want)
		}
	}
}

// TestIssueSecretCases are the cases the issue reported, each with the
// secret S3cr3tZ.
func TestIssueSecretCases(t *testing.T) {
	withEnv(t)
	for _, dsn := range []string{
		"postgres://pwuser:S3cr3tZ/pw@host:5432/db?pool_backend=pq",
		"postgres://pwuser:S3cr3tZ?pw@host:5432/db?pool_backend=pq",
		"postgres://pwuser:S3cr3tZ/pw@host:5432/db",
		"postgres://pwuser@host:5432/db?pool_backend=pq&password=S3cr+tZ&sslmode=bogus",
		"postgres://pwuser@host:5432/db?pool_backend=pq&password=S3cr%2BtZ&sslmode=bogus",
		"postgres://pwuser@host:5432/db?password=S3cr%2BtZ&sslmode=bogus",
		`host=h password='it\'s S3cr3tZ' sslmode=bogus`,
		`host=h password=ab\ S3cr3tZ sslmode=bogus`,
		`host=h password='it\'s S3cr3tZ' sslmode=bogus pool_backend=pq`,
		`host=h password=ab\ S3cr3tZ sslmode=bogus pool_backend=pq`,
		"postgres://pwuser:S3cr3tZ@host:5432/db?pool_backend=pq&sslmode=bogus",
		"postgres://pwuser:S3cr%tZ@host:5432/db",
		"postgres://pwuser:S3cr%tZ@host:5432/db?pool_backend=pq",
	} {
		_, err := OpenConnector(dsn)
		if err == nil {
			t.Errorf("%q: accepted", dsn)
			continue
		}
		for _, part := range []string{"S3cr", "tZ"} {
			if strings.Contains(err.Error(), part) {
				t.Errorf("%q: error shows the password: %v", dsn, err)
			}
		}
	}
}
