package warmpg

import (
	"strconv"
	"strings"
	"testing"
	"time"
)

// fuzzSecret is a password no parser could invent; it must never appear in
// an error.
const fuzzSecret = "Zq9-fuzz-S3CRET-xy"

// FuzzParseDSN feeds DSNs and option-like values through the whole parse:
// splitDSN, the pool_* keys, validation and the backends' own parsers. It
// checks that nothing panics, that a rejection names a pool_* key it
// rejects, that no error shows the password, and that an accepted DSN
// reaches the inner driver without any pool_* key.
//
//	go test -run '^$' -fuzz FuzzParseDSN -fuzztime 30s .
func FuzzParseDSN(f *testing.F) {
	for _, seed := range []string{
		"postgres://app:" + fuzzSecret + "@db:5432/app?sslmode=require&pool_max_conns=60&pool_max_idle_conns=50",
		"postgresql://h1,h2/db?pool_reset=ping&pool_prewarm=true",
		"warmpg://u@h/d?pool_backend=pq&pool_warm_timeout=2s",
		"host=h port=5432 password='" + fuzzSecret + "' pool_max_conns=8 pool_reset = 'check'",
		"host=h password=" + fuzzSecret + " pool_max_conn_lifetime=1h pool_max_conn_lifetime_jitter=5m",
		"postgres://h/db?pool_max_conns=1e9",
		"postgres://h/db?pool_max_conns=-1&pool_reset=sometimes",
		"host=h pool_min_idle_conns=3 pool_max_conns=2",
		"postgres://h/db?pool_%zz=1",
		"postgres://u:" + fuzzSecret + "@h/db?password=" + fuzzSecret + "&pool_x=1",
		"host='unterminated pool_max_conns=1",
		"",
		"=",
		"pool_read_only=on pool_autocommit=yes",
		" wArmpg://=",
		"POSTGRES://u:" + fuzzSecret + "@h/db?POOL_MAX_CONNS=3&pool_reset=none&pool_reset=ping",
		"postgres://u:" + fuzzSecret + "/x@h/db",
		"postgres://u:p?w#" + fuzzSecret + "@h/db?pool_backend=pq",
		"postgres://u@h:1/db?password=" + fuzzSecret + "&x&user=a@b",
		"  host=h password=ab\\ " + fuzzSecret + " sslmode=bogus ",
		"registeredConnConfig7",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, dsn string) {
		old := environ
		environ = func() []string { return nil }
		defer func() { environ = old }()

		d, splitErr := splitDSN(dsn)
		c, err := OpenConnector(dsn, WithWarmTimeout(time.Second))
		if isRegisteredName(dsn) {
			// A pgx registered-config name: resolved at first connect.
			if err != nil {
				t.Fatalf("registered name %q refused: %v", dsn, err)
			}
			c.Close()
			return
		}
		if err != nil {
			msg := err.Error()
			// The secret must not show where it is a password, nor in
			// warmpg's own complaints about a malformed DSN (a stray word
			// may be a password that lost its key). Elsewhere — a host
			// name, say — it is no secret.
			hidden := (splitErr == nil && strings.Contains(d.inner, fuzzSecret) && !strings.Contains(d.masked, fuzzSecret)) ||
				strings.HasPrefix(msg, "warmpg: malformed DSN")
			if hidden && strings.Contains(msg, fuzzSecret) {
				t.Fatalf("error shows the password: %v", err)
			}
			if splitErr == nil {
				// A pool_* rejection names the key.
				for _, p := range d.pool {
					if strings.Contains(msg, "invalid DSN "+p.key+"=") || strings.Contains(msg, "unknown DSN key "+strconv.Quote(p.key)) ||
						strings.Contains(msg, "DSN key "+p.key+" given twice") {
						return
					}
				}
				if strings.Contains(msg, "warmpg: invalid") || strings.Contains(msg, "warmpg: unknown") {
					t.Fatalf("rejection names no key of %v: %v", d.pool, err)
				}
			}
			return
		}
		defer c.Close()
		if splitErr != nil {
			t.Fatalf("splitDSN failed (%v) but OpenConnector accepted %q", splitErr, dsn)
		}
		// What the inner driver gets has no pool_* key left, and splitting
		// it again finds the same DSN, with its password in the same place.
		again, err := splitDSN(d.inner)
		if err != nil || len(again.pool) != 0 {
			t.Fatalf("inner DSN %q of %q still has pool keys %v (%v)", d.inner, dsn, again.pool, err)
		}
		if again.inner != d.inner || again.masked != d.masked {
			t.Fatalf("splitting is not stable: %q then %q (masked %q then %q)", d.inner, again.inner, d.masked, again.masked)
		}
	})
}
