//go:build linux

package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/stdlib"
	"golang.org/x/sys/unix"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// sockOpts is what getsockopt reads back from a connection's socket.
type sockOpts struct{ keepalive, idle, interval, count, userTimeout int }

func readSockOpts(t *testing.T, rc syscall.RawConn) sockOpts {
	t.Helper()
	var o sockOpts
	var errs []error
	err := rc.Control(func(fd uintptr) {
		get := func(level, opt int) int {
			v, err := unix.GetsockoptInt(int(fd), level, opt)
			if err != nil {
				errs = append(errs, err)
			}
			return v
		}
		o.keepalive = get(unix.SOL_SOCKET, unix.SO_KEEPALIVE)
		o.idle = get(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
		o.interval = get(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
		o.count = get(unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
		o.userTimeout = get(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT)
	})
	if err != nil || len(errs) > 0 {
		t.Fatalf("getsockopt: %v %v", err, errs)
	}
	return o
}

// socketOf reads the socket options of the connection db hands out: for pgx
// through the public way (Unwrap, PgConn().Conn(), under warmpg's own
// layer), for lib/pq the socket warmpg's dialer kept.
func socketOf(t *testing.T, db *sql.DB) sockOpts {
	t.Helper()
	ctx := ctxTCP(t)
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	var o sockOpts
	err = c.Raw(func(dc any) error {
		var rc syscall.RawConn
		if sc, ok := Unwrap(dc).(*stdlib.Conn); ok {
			rc = rawConnOf(sc.Conn().PgConn().Conn())
		} else {
			rc = baseConn(dc.(driver.Conn)).raw
		}
		if rc == nil {
			return fmt.Errorf("no socket under %T", Unwrap(dc))
		}
		o = readSockOpts(t, rc)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return o
}

func ctxTCP(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// systemKeepalive is the kernel's own keep-alive defaults (seconds,
// seconds, probes), as a fresh socket has them.
func systemKeepalive(t *testing.T) (idle, interval, count int) {
	t.Helper()
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	idle, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPIDLE)
	interval, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPINTVL)
	count, _ = unix.GetsockoptInt(fd, unix.IPPROTO_TCP, unix.TCP_KEEPCNT)
	return idle, interval, count
}

// TestTCPKeysOnSocket: a DSN with libpq's TCP keys connects, on both
// backends and in both forms (before: pgx sent them to the server, which
// refused them with FATAL 42704 "unrecognized configuration parameter"; so
// did lib/pq), and the socket has what they say, read back with
// getsockopt. Keys not given are the system's defaults, as under libpq;
// with no key at all the socket keeps Go's keep-alive (15 s, 15 s, 9).
func TestTCPKeysOnSocket(t *testing.T) {
	withEnv(t)
	srv := pgtest.Get(t)
	sysIdle, sysIntvl, sysCnt := systemKeepalive(t)
	cases := []struct {
		name string
		keys []string
		want sockOpts
	}{
		{"all", []string{"keepalives=1", "keepalives_idle=37", "keepalives_interval=7", "keepalives_count=3", "tcp_user_timeout=2500"},
			sockOpts{1, 37, 7, 3, 2500}},
		{"idle only", []string{"keepalives_idle=41"}, sockOpts{1, 41, sysIntvl, sysCnt, 0}},
		{"zeros are the system's", []string{"keepalives_idle=0", "keepalives_interval=0", "keepalives_count=0", "tcp_user_timeout=0"},
			sockOpts{1, sysIdle, sysIntvl, sysCnt, 0}},
		{"off", []string{"keepalives=0", "tcp_user_timeout=900"}, sockOpts{0, sysIdle, sysIntvl, sysCnt, 900}},
		{"keepalives on alone", []string{"keepalives=1"}, sockOpts{1, sysIdle, sysIntvl, sysCnt, 0}},
		{"none: Go's", nil, sockOpts{1, 15, 15, 9, 0}},
	}
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		for _, form := range []string{"url", "kv"} {
			for _, tc := range cases {
				t.Run(fmt.Sprintf("%s/%s/%s", b, form, tc.name), func(t *testing.T) {
					params := append([]string{"pool_backend=" + string(b)}, tc.keys...)
					dsn := srv.URL(params...)
					if form == "kv" {
						dsn = srv.KeyValue(params...)
					}
					db, err := sql.Open("warmpg", dsn)
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					var one int
					if err := db.QueryRowContext(ctxTCP(t), "select 1").Scan(&one); err != nil {
						t.Fatalf("connect with %v: %v", tc.keys, err)
					}
					if got := socketOf(t, db); got != tc.want {
						t.Errorf("socket has %+v, want %+v", got, tc.want)
					}
				})
			}
		}
	}
}

// TestTCPKeysServerNeverSees: the keys reach the socket, not the server.
// keepalives_* are no server setting (the connect failed with 42704), but
// tcp_user_timeout is one, for the server's own socket: sent in the
// startup packet it set the server side's timeout (pg_settings source
// "client") instead of the client's. Now the server's stays its default.
func TestTCPKeysServerNeverSees(t *testing.T) {
	withEnv(t)
	srv := pgtest.Get(t)
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			db, err := sql.Open("warmpg", srv.URL("pool_backend="+string(b), "application_name=tcpkeys_seen",
				"keepalives=1", "keepalives_idle=30", "keepalives_interval=5", "keepalives_count=4", "tcp_user_timeout=10000"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var n int
			var source, app string
			err = db.QueryRowContext(ctxTCP(t), `select count(*) filter (where name like 'keepalive%'),
				max(source) filter (where name = 'tcp_user_timeout'), current_setting('application_name') from pg_settings`).Scan(&n, &source, &app)
			if err != nil {
				t.Fatal(err)
			}
			if n != 0 || source == "client" || app != "tcpkeys_seen" {
				t.Errorf("server: %d keepalive settings, tcp_user_timeout from %q, application_name %q; want 0, not from the client, tcpkeys_seen", n, source, app)
			}
		})
	}
}

// TestTCPKeysUnixSocketIgnored: over a Unix socket the keys are ignored, as
// libpq ignores them, and the connect works.
func TestTCPKeysUnixSocketIgnored(t *testing.T) {
	withEnv(t)
	srv := pgtest.Get(t)
	if srv.DataDir() == "" {
		t.Skip("needs a local server's Unix socket")
	}
	dir := filepath.Dir(srv.DataDir())
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			dsn := fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable pool_backend=%s keepalives_idle=30 tcp_user_timeout=500",
				dir, srv.Port, srv.User, srv.Database, b)
			db, err := sql.Open("warmpg", dsn)
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			var addr sql.NullString
			if err := db.QueryRowContext(ctxTCP(t), "select inet_client_addr()::text").Scan(&addr); err != nil {
				t.Fatal(err)
			}
			if addr.Valid {
				t.Errorf("connected over TCP (%s), want the Unix socket", addr.String)
			}
		})
	}
}

// TestTCPKeysRefused: bad values fail sql.Open with an error naming the
// key, the value and what is allowed (every bad key at once), on both
// backends; libpq itself fails some of them only at connect
// (keepalives_idle=0 or 40000 on Linux: setsockopt(TCP_KEEPIDLE) failed).
func TestTCPKeysRefused(t *testing.T) {
	withEnv(t)
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		for _, tc := range []struct{ dsn, want string }{
			{"host=h keepalives=2", `invalid DSN keepalives="2": want 1 (on, the default) or 0 (off)`},
			{"host=h keepalives=yes", `invalid DSN keepalives="yes"`},
			{"postgres://h/db?keepalives_idle=abc", `invalid DSN keepalives_idle="abc": want a whole number of seconds, 0 (the operating system's default) to 32767`},
			{"host=h keepalives_idle=-1", `invalid DSN keepalives_idle="-1"`},
			{"host=h keepalives_interval=40000", `invalid DSN keepalives_interval="40000": want a whole number of seconds`},
			{"host=h keepalives_count=128", `invalid DSN keepalives_count="128": want a whole number of probes, 0 (the operating system's default) to 127`},
			{"host=h tcp_user_timeout=1.5s", `invalid DSN tcp_user_timeout="1.5s": want a whole number of milliseconds`},
			{"host=h keepalives_count=x tcp_user_timeout=y", `keepalives_count="x"`},
			{"host=h keepalives_count=x tcp_user_timeout=y", `tcp_user_timeout="y"`},
			{"postgres://h/db?KEEPALIVES_IDLE=3", `unknown DSN key "KEEPALIVES_IDLE": did you mean keepalives_idle?`},
			{"host=h password=hunter2 keepalives_idle=abc", `invalid DSN keepalives_idle="abc"`},
		} {
			_, err := OpenConnector(tc.dsn + " pool_backend=" + string(b))
			if strings.HasPrefix(tc.dsn, "postgres://") {
				_, err = OpenConnector(tc.dsn + "&pool_backend=" + string(b))
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("%s %q: got %v, want %q", b, tc.dsn, err, tc.want)
			}
			if err != nil && (strings.Contains(err.Error(), "hunter2") || strings.Contains(err.Error(), "rejected the DSN")) {
				t.Errorf("%s %q: %v: want warmpg's own message, with no password", b, tc.dsn, err)
			}
		}
	}
	// Accepted as libpq accepts them: white space around the number.
	for _, b := range []Backend{BackendPgx, BackendPQ} {
		if _, err := OpenConnector("host=h keepalives_idle=' 12 ' pool_backend=" + string(b)); err != nil {
			t.Errorf("%s: %v", b, err)
		}
	}
}
