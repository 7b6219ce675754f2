package pgtest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// startTLS starts a private cluster with WithTLS; on failure it skips or
// fails the way every test without a server does.
func startTLS(t *testing.T, ctx context.Context) *pgtest.Server {
	t.Helper()
	srv, err := pgtest.StartLocal(ctx, pgtest.WithTLS())
	if err != nil {
		pgtest.Get(t) // skips (or fails under CI) when no server can be had at all
		if os.Getenv(pgtest.EnvCI) != "true" && strings.Contains(err.Error(), "no PostgreSQL server binaries") {
			t.Skip(err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Close() })
	return srv
}

func readCert(t *testing.T, path string) *x509.Certificate {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	blk, rest := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" || len(strings.TrimSpace(string(rest))) != 0 {
		t.Fatalf("%s: want exactly one PEM CERTIFICATE", path)
	}
	c, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return c
}

// sslOf connects with connString and returns what pg_stat_ssl says of the
// connection: whether it uses TLS, and the TLS version.
func sslOf(ctx context.Context, connString string) (ssl bool, version string, err error) {
	conn, err := pgx.Connect(ctx, connString)
	if err != nil {
		return false, "", err
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, "select ssl, coalesce(version, '') from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl, &version)
	return ssl, version, err
}

func isCertVerifyError(err error) bool {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	return errors.As(err, &cve) && errors.As(err, &uae)
}

// TestStartLocalTLS: WithTLS makes a cluster whose certificate, for
// localhost and 127.0.0.1, verifies against CAFile and not against
// WrongCAFile; its key is private to the server's OS user; TLS and plain
// connections, the password role, and a restart all work.
func TestStartLocalTLS(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := startTLS(t, ctx)
	byName := srv.WithHost("localhost")
	verify := func(ca string, params ...string) []string {
		return append([]string{"sslmode=verify-full", "sslrootcert=" + ca, "connect_timeout=10"}, params...)
	}

	t.Run("files", func(t *testing.T) {
		ca, wrong := readCert(t, srv.CAFile()), readCert(t, srv.WrongCAFile())
		for _, c := range []*x509.Certificate{ca, wrong} {
			if !c.IsCA || !c.BasicConstraintsValid || c.KeyUsage&x509.KeyUsageCertSign == 0 {
				t.Errorf("%s: not a CA certificate", c.Subject)
			}
			if _, ok := c.PublicKey.(*ecdsa.PublicKey); !ok {
				t.Errorf("%s: key %T, want ECDSA", c.Subject, c.PublicKey)
			}
		}
		if ca.Subject.String() != wrong.Subject.String() || ca.Equal(wrong) {
			t.Errorf("the wrong CA should have the right one's name (%q) and another key: %q", ca.Subject, wrong.Subject)
		}
		leaf := readCert(t, filepath.Join(srv.DataDir(), "server.crt"))
		if k, ok := leaf.PublicKey.(*ecdsa.PublicKey); !ok || k.Curve.Params().Name != "P-256" {
			t.Errorf("server key %T, want ECDSA P-256", leaf.PublicKey)
		}
		roots, wrongRoots := x509.NewCertPool(), x509.NewCertPool()
		roots.AddCert(ca)
		wrongRoots.AddCert(wrong)
		for _, name := range []string{"localhost", "127.0.0.1"} {
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: name}); err != nil {
				t.Errorf("server certificate for %s: %v", name, err)
			}
			if _, err := leaf.Verify(x509.VerifyOptions{Roots: wrongRoots, DNSName: name}); err == nil {
				t.Errorf("server certificate verifies against the wrong CA for %s", name)
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, DNSName: "example.com"}); err == nil {
			t.Error("server certificate verifies for example.com")
		}

		fi, err := os.Stat(filepath.Join(srv.DataDir(), "server.key"))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o600 {
			t.Errorf("server.key mode %v, want 0600", fi.Mode().Perm())
		}
		if os.Geteuid() == 0 {
			pg, err := user.Lookup("postgres")
			if err != nil {
				t.Fatal(err)
			}
			if st := fi.Sys().(*syscall.Stat_t); strconv.Itoa(int(st.Uid)) != pg.Uid {
				t.Errorf("server.key owned by uid %d, want postgres (%s): the server runs as postgres", st.Uid, pg.Uid)
			}
		}
	})

	t.Run("connect", func(t *testing.T) {
		for _, tc := range []struct{ name, connString string }{
			{"verify-full localhost", byName.URL(verify(srv.CAFile())...)},
			{"verify-full 127.0.0.1", srv.URL(verify(srv.CAFile())...)},
			{"verify-full key=value", byName.KeyValue(verify(srv.CAFile())...)},
			{"verify-full password role", srv.WithPasswordUser(t).WithHost("localhost").URL(verify(srv.CAFile())...)},
			{"require (no verification)", srv.URL("sslmode=require")},
			{"Server.Connect", ""},
		} {
			name, connString := tc.name, tc.connString
			var (
				ssl bool
				ver string
				err error
			)
			if connString == "" {
				ssl, ver, err = sslOfConn(ctx, srv, "sslmode=verify-full", "sslrootcert="+srv.CAFile())
			} else {
				ssl, ver, err = sslOf(ctx, connString)
			}
			if err != nil || !ssl {
				t.Errorf("%s: TLS %v (%v), want true", name, ssl, err)
			} else {
				t.Logf("%s: %s", name, ver)
			}
		}
		// Without TLS, as the harness's own connections go.
		if ssl, _, err := sslOf(ctx, srv.URL()); err != nil || ssl {
			t.Errorf("sslmode=disable: TLS %v (%v), want false", ssl, err)
		}
		if err := srv.Exec(ctx, "select 1"); err != nil {
			t.Error(err)
		}
		if err := selectOne(ctx, srv.WithUser(pgtest.PasswordUser, "wrong").WithHost("localhost").URL(verify(srv.CAFile())...)); err == nil ||
			!strings.Contains(err.Error(), "password authentication failed") {
			t.Errorf("wrong password over TLS: %v, want the server's refusal", err)
		}
	})

	t.Run("wrong-ca", func(t *testing.T) {
		for _, connString := range []string{
			byName.URL(verify(srv.WrongCAFile())...),
			srv.URL(verify(srv.WrongCAFile())...),
		} {
			_, _, err := sslOf(ctx, connString)
			if err == nil {
				t.Fatal("connected with a CA that did not sign the server's certificate")
			}
			if !isCertVerifyError(err) {
				t.Errorf("want a certificate verification error, got %v", err)
			}
		}
	})

	t.Run("restart", func(t *testing.T) {
		if err := byName.Restart(ctx, "fast"); err != nil { // a copy may restart the server
			t.Fatal(err)
		}
		if ssl, _, err := sslOf(ctx, byName.URL(verify(srv.CAFile())...)); err != nil || !ssl {
			t.Errorf("after a restart: TLS %v (%v), want true", ssl, err)
		}
	})

	t.Run("close", func(t *testing.T) {
		if err := byName.Close(); err != nil {
			t.Fatal(err)
		}
		if err := srv.Exec(ctx, "select 1"); err != nil {
			t.Fatalf("closing a WithHost copy stopped the server: %v", err)
		}
		ca := srv.CAFile()
		if err := srv.Close(); err != nil {
			t.Fatal(err)
		}
		if _, err := os.Stat(ca); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("Close left %s: %v", ca, err)
		}
	})
}

// sslOfConn is sslOf through Server.Connect.
func sslOfConn(ctx context.Context, srv *pgtest.Server, params ...string) (bool, string, error) {
	conn, err := srv.WithHost("localhost").Connect(ctx, params...)
	if err != nil {
		return false, "", err
	}
	defer conn.Close(context.Background())
	var ssl bool
	var version string
	err = conn.QueryRow(ctx, "select ssl, coalesce(version, '') from pg_stat_ssl where pid = pg_backend_pid()").Scan(&ssl, &version)
	return ssl, version, err
}

// Servers WithTLS did not start have no CA files.
func TestTLSFilesOnlyWithTLS(t *testing.T) {
	srv, err := pgtest.FromURL("postgres://u@db.example:5432/d")
	if err != nil {
		t.Fatal(err)
	}
	if srv.CAFile() != "" || srv.WrongCAFile() != "" {
		t.Errorf("CAFile %q, WrongCAFile %q for a server from a URL, want none", srv.CAFile(), srv.WrongCAFile())
	}
	if c := srv.WithHost("localhost"); c.Host != "localhost" || c.Port != srv.Port || c.User != srv.User || srv.Host != "db.example" {
		t.Errorf("WithHost: copy %+v of %+v", c, srv)
	}
}
