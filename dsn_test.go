package warmpg

import (
	"context"
	"database/sql"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// TestDSNRepeatedPoolKeyRefused: a pool_* key given twice is refused,
// naming it, in both forms (it was silently last-wins).
func TestDSNRepeatedPoolKeyRefused(t *testing.T) {
	withEnv(t)
	for _, dsn := range []string{
		"postgres://u@h/db?pool_max_conns=5&pool_max_conns=7",
		"host=h pool_max_conns=5 pool_max_conns=7",
		"postgres://u@h/db?pool_max_conns=5&pool_max_conns=5",
	} {
		_, err := OpenConnector(dsn)
		if err == nil || !strings.Contains(err.Error(), "DSN key pool_max_conns given twice") {
			t.Errorf("%q: got %v, want a refusal naming pool_max_conns", dsn, err)
		}
	}
}

// TestDSNUpperCasePoolKeyRefused: POOL_MAX_CONNS would reach the server as
// a setting; it is refused with the key it resembles.
func TestDSNUpperCasePoolKeyRefused(t *testing.T) {
	withEnv(t)
	for _, dsn := range []string{
		"postgres://u@h/db?POOL_MAX_CONNS=3",
		"host=h Pool_Max_Conns=3",
	} {
		_, err := OpenConnector(dsn)
		if err == nil || !strings.Contains(err.Error(), "did you mean pool_max_conns?") {
			t.Errorf("%q: got %v, want did you mean pool_max_conns", dsn, err)
		}
		if d, err := splitDSN(dsn); err != nil || strings.Contains(strings.ToLower(d.inner), "pool_") {
			t.Errorf("%q: inner DSN %q still holds the key (%v)", dsn, d.inner, err)
		}
	}
	// An unknown key in any case is unknown.
	if _, err := OpenConnector("postgres://h/db?POOL_NOPE=1"); err == nil || !strings.Contains(err.Error(), `unknown DSN key "POOL_NOPE" (known:`) {
		t.Errorf("POOL_NOPE: got %v", err)
	}
}

// TestDSNSplitForms: white space around a DSN and the scheme's case.
func TestDSNSplitForms(t *testing.T) {
	withEnv(t)
	checkSplit(t, []splitCase{
		{"  postgres://u@h/db?sslmode=disable&pool_max_conns=3 \n", "postgres://u@h/db?sslmode=disable", []dsnParam{{"pool_max_conns", "3"}}},
		{"POSTGRES://u@h:5/db?pool_reset=none", "postgres://u@h:5/db", []dsnParam{{"pool_reset", "none"}}},
		{"PostgreSQL://u@h/db", "postgresql://u@h/db", nil},
		{" wArmpg://=", "postgres://=", nil},
		{"\thost=h pool_max_conns=2 ", "host=h", []dsnParam{{"pool_max_conns", "2"}}},
		// pgx and libpq end user:password at the first '@' before any '/';
		// '?' and '#' are part of it.
		{"postgres://u:p?w#x@h/db?pool_reset=none", "postgres://u:p?w#x@h/db", []dsnParam{{"pool_reset", "none"}}},
	})
}

// TestDSNMasked: the masked DSN has each password token replaced, found by
// position.
func TestDSNMasked(t *testing.T) {
	for _, tc := range []struct{ dsn, masked string }{
		{"postgres://u:e@h/db?pool_reset=none", "postgres://u:xxxxx@h/db"},
		{"postgres://u:p?w#x@h/db", "postgres://u:xxxxx@h/db"},
		{"postgres://u@h/db?password=S3cr+tZ&sslmode=disable&sslpassword=x", "postgres://u@h/db?password=xxxxx&sslmode=disable&sslpassword=xxxxx"},
		{`host=h password='it\'s S3cr3tZ' user=e`, `host=h password=xxxxx user=e`},
		{`host=h password=ab\ S3cr3tZ user=e`, `host=h password=xxxxx user=e`},
		{`host=h password= e user=e`, `host=h password= xxxxx user=e`},
		{`host=h password='' user=e`, `host=h password=xxxxx user=e`},
		{"postgres://u:@h/db", "postgres://u:@h/db"},
	} {
		d, err := splitDSN(tc.dsn)
		if err != nil {
			t.Fatalf("%q: %v", tc.dsn, err)
		}
		if d.masked != tc.masked {
			t.Errorf("%q: masked %q, want %q", tc.dsn, d.masked, tc.masked)
		}
	}
}

// TestDSNAmbiguousPasswordRefused: a raw '@' outside user:password@ (a
// password with '/' or '@') makes the parsers disagree on where the
// password ends, and so where to connect; it is refused, without the
// password. A raw '&' in a query password leaves a word with no '='.
func TestDSNAmbiguousPasswordRefused(t *testing.T) {
	withEnv(t)
	for _, dsn := range []string{
		"postgres://pwuser:S3cr3tZ/pw@host:5432/db",
		"postgres://pwuser:1234/pw@host:5432/db",
		"postgres://pwuser:S3cr@tZ@host:5432/db",
		"postgres://host:5432/db?user=a@b",
		"postgres://pwuser@host/db?password=S3cr&tZ",
	} {
		_, err := OpenConnector(dsn)
		if err == nil || !strings.HasPrefix(err.Error(), "warmpg: malformed DSN") {
			t.Errorf("%q: got %v, want a malformed-DSN refusal", dsn, err)
			continue
		}
		if strings.Contains(err.Error(), "S3cr") || strings.Contains(err.Error(), "tZ") || strings.Contains(err.Error(), "1234") {
			t.Errorf("%q: error shows the password: %v", dsn, err)
		}
	}
	// Percent-encoded, all of them work; an '@' in a query value without a
	// ':' before it is unambiguous.
	for _, dsn := range []string{
		"postgres://pwuser:S3cr3tZ%2Fpw@host:5432/db",
		"postgres://pwuser:S3cr%40tZ@host:5432/db",
		"postgres://host:5432/db?user=a%40b",
		"postgres://host/db?user=a@b",
	} {
		c, err := OpenConnector(dsn)
		if err != nil {
			t.Errorf("%q: %v", dsn, err)
			continue
		}
		c.Close()
	}
	// lib/pq reads a raw '?' or '#' in user:password as the query or
	// fragment; pgx as the password.
	if _, err := OpenConnector("postgres://u:S3cr?tZ@h/db?pool_backend=pq"); err == nil || strings.Contains(err.Error(), "S3cr") {
		t.Errorf("pq with '?' in the password: got %v, want a refusal without the password", err)
	}
	c, err := OpenConnector("postgres://u:S3cr?tZ@h/db")
	if err != nil {
		t.Fatalf("pgx with '?' in the password: %v", err)
	}
	c.Close()
	// lib/pq ends an unquoted value at any Unicode space; pgx and libpq
	// at an ASCII one. Here lib/pq would connect to host "evil".
	if _, err := OpenConnector("host=h pool_backend=pq password=S3cr\u00a0host=evil"); err == nil || strings.Contains(err.Error(), "S3cr") || strings.Contains(err.Error(), "evil") {
		t.Errorf("pq with a non-ASCII space in an unquoted password: got %v, want a refusal without the password", err)
	}
	for _, dsn := range []string{"host=h pool_backend=pq password='S3cr\u00a0tZ'", "host=h password=S3cr\u00a0tZ"} {
		c, err := OpenConnector(dsn)
		if err != nil {
			t.Errorf("%q: %v", dsn, err)
			continue
		}
		c.Close()
	}
}

// TestDSNWhitespaceAndCapitalsConnectWhereTheDSNSays: a URL with white space
// around it has its pool_* keys applied, not sent to the server; a
// POSTGRES:// URL connects to the host, port, user and database it names
// (pgx read it as key=value and dialled the default unix socket).
func TestDSNWhitespaceAndCapitalsConnectWhereTheDSNSays(t *testing.T) {
	srv := pgtest.Get(t)
	withEnv(t)
	url := srv.URL("pool_max_conns=3")
	for _, dsn := range []string{
		"  " + url + " ",
		"\n" + url,
		"POSTGRES" + strings.TrimPrefix(url, "postgres"),
		"WarmPG" + strings.TrimPrefix(url, "postgres"),
	} {
		for _, backend := range []string{"pgx", "pq"} {
			func() {
				db, err := sql.Open("warmpg", strings.Replace(dsn, "pool_max_conns=3", "pool_max_conns=3&pool_backend="+backend, 1))
				if err != nil {
					t.Fatalf("%s %q: %v", backend, dsn, err)
				}
				defer db.Close()
				ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
				defer cancel()
				var port int
				var dbname, user string
				err = db.QueryRowContext(ctx, "SELECT coalesce(inet_server_port(), 0), current_database(), current_user").Scan(&port, &dbname, &user)
				if err != nil {
					t.Errorf("%s %q: %v", backend, dsn, err)
					return
				}
				if port != srv.Port || dbname != srv.Database || user != srv.User {
					t.Errorf("%s %q: connected to port %d database %s as %s, want %d %s %s", backend, dsn, port, dbname, user, srv.Port, srv.Database, srv.User)
				}
				if _, err := WarmDB(ctx, db); err != nil {
					t.Errorf("%s %q: WarmDB: %v", backend, dsn, err)
				}
				if got := db.Stats().MaxOpenConnections; got != 3 {
					t.Errorf("%s %q: MaxOpenConnections %d, want 3 (pool_max_conns applied)", backend, dsn, got)
				}
			}()
		}
	}
}

// TestWarmDBNilContext: a nil context is an error, as a nil db is, not a
// panic.
func TestWarmDBNilContext(t *testing.T) {
	withEnv(t)
	db, err := sql.Open("warmpg", "postgres://u@127.0.0.1:1/db?pool_max_conns=1")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	//nolint:staticcheck // a nil context on purpose
	if _, err := WarmDB(nil, db); err == nil || !strings.Contains(err.Error(), "ctx is nil") {
		t.Errorf("WarmDB(nil, db): %v", err)
	}
	c, _ := connectorOf(db)
	//nolint:staticcheck // a nil context on purpose
	if _, err := c.WarmDB(nil, db); err == nil || !strings.Contains(err.Error(), "ctx is nil") {
		t.Errorf("(*Connector).WarmDB(nil, db): %v", err)
	}
}
