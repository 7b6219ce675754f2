package main

import (
	"strings"
	"testing"
)

func TestDSN(t *testing.T) {
	for _, tc := range []struct {
		in, want string // want: String() after setting pool_max_conns=20
		get      map[string]string
	}{
		{
			"postgres://app:s3cret@db:5432/app?sslmode=require&pool_max_conns=5",
			"postgres://app:xxxxx@db:5432/app?sslmode=require&pool_max_conns=20",
			map[string]string{"sslmode": "require", "pool_max_conns": "5"},
		},
		{
			"warmpg://app@db/app",
			"warmpg://app@db/app?pool_max_conns=20",
			map[string]string{},
		},
		{
			"postgresql://db/app?user=app&password=s3cret&application_name=a%20b",
			"postgresql://db/app?user=app&password=xxxxx&application_name=a%20b&pool_max_conns=20",
			map[string]string{"application_name": "a b", "password": "s3cret"},
		},
		{
			"host=db user=app password='s3 cret' dbname=app pool_max_conns=5",
			"host=db user=app password=xxxxx dbname=app pool_max_conns=20",
			map[string]string{"password": "s3 cret", "host": "db", "pool_max_conns": "5"},
		},
		{
			`host = db  password=s3\ cret application_name='it\'s'`,
			`host=db password=xxxxx application_name='it\'s' pool_max_conns=20`,
			map[string]string{"password": "s3 cret", "application_name": "it's"},
		},
		{"", "pool_max_conns=20", map[string]string{}},
	} {
		d, err := parseDSN(tc.in)
		if err != nil {
			t.Errorf("%q: %v", tc.in, err)
			continue
		}
		for k, v := range tc.get {
			if got, ok := d.get(k); !ok || got != v {
				t.Errorf("%q: get(%s) = %q, %v; want %q", tc.in, k, got, ok, v)
			}
		}
		if _, ok := d.get("nope"); ok {
			t.Errorf("%q: get(nope) found", tc.in)
		}
		d.set("pool_max_conns", "20")
		if got := d.String(); got != tc.want {
			t.Errorf("%q:\n got %s\nwant %s", tc.in, got, tc.want)
		}
		if strings.Contains(d.String(), "s3") {
			t.Errorf("%q: password shown: %s", tc.in, d.String())
		}
	}
	for _, bad := range []string{"not-a-dsn", "host=db 'x'", "password='unterminated", "postgres://a:secret@[::1"} {
		if _, err := parseDSN(bad); err == nil {
			t.Errorf("%q: no error", bad)
		} else if strings.Contains(err.Error(), "secret") {
			t.Errorf("%q: the password is in the error: %v", bad, err)
		}
	}
}
