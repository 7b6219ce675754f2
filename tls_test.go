package warmpg_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"database/sql"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// startTLSServer starts a private cluster that serves TLS (pgtest.WithTLS)
// and closes it when the test ends. When no local cluster can be started,
// it skips or fails the test the way every test does when it has no server.
func startTLSServer(t *testing.T, ctx context.Context) *pgtest.Server {
	t.Helper()
	srv := pgtest.Own(t, ctx, pgtest.WithTLS())
	if srv.CAFile() == "" || srv.WrongCAFile() == "" {
		t.Fatal("pgtest.WithTLS gave a server without CA files")
	}
	return srv
}

// verifyFull returns the DSN parameters for TLS with the server's
// certificate verified against ca, by name, plus params. warmpg must pass
// them to the inner driver untouched.
func verifyFull(ca string, params ...string) []string {
	return append([]string{"sslmode=verify-full", "sslrootcert=" + ca}, params...)
}

// isCertVerifyError reports whether err is, or wraps, crypto/tls's
// certificate verification error for a server certificate no trusted CA
// signed.
func isCertVerifyError(err error) bool {
	var cve *tls.CertificateVerificationError
	var uae x509.UnknownAuthorityError
	return errors.As(err, &cve) && errors.As(err, &uae)
}

// connTLS reports whether the connection that runs the query uses TLS, as
// the server sees it.
const connTLS = "select ssl from pg_stat_ssl where pid = pg_backend_pid()"

// tlsBackends counts the client backends with application_name app, and
// how many of them use TLS, as the server sees them.
func tlsBackends(ctx context.Context, srv *pgtest.Server, app string) (withTLS, total int, err error) {
	conn, err := srv.Connect(ctx)
	if err != nil {
		return 0, 0, err
	}
	defer conn.Close(context.Background())
	err = conn.QueryRow(ctx, `select count(*) filter (where s.ssl), count(*)
		from pg_stat_activity a join pg_stat_ssl s using (pid)
		where a.backend_type = 'client backend' and a.application_name = $1 and a.pid <> pg_backend_pid()`,
		app).Scan(&withTLS, &total)
	return withTLS, total, err
}

// tlsBurst takes n connections from db at once — so every idle one is
// handed out, stale or not, before any is returned — then runs connTLS on
// each. It returns the errors of the queries that failed and how many
// connections that answered do not use TLS.
func tlsBurst(ctx context.Context, db *sql.DB, n int) (errs []error, plain int) {
	var (
		mu    sync.Mutex
		wg    sync.WaitGroup
		ready sync.WaitGroup
	)
	ready.Add(n)
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := db.Conn(ctx)
			ready.Done()
			if err == nil {
				defer c.Close()
				ready.Wait() // hold it until all n are held
				var ssl bool
				if err = c.QueryRowContext(ctx, connTLS).Scan(&ssl); err == nil && !ssl {
					mu.Lock()
					plain++
					mu.Unlock()
				}
			}
			if err != nil {
				mu.Lock()
				errs = append(errs, err)
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	return errs, plain
}

// TLS with sslmode=verify-full, both backends, against a private cluster
// whose certificate a throwaway CA signed:
//
//   - the TLS keys of the DSN reach the inner driver untouched (warmpg strips
//     only pool_*): with the right CA every connection is TLS, as
//     pg_stat_ssl says; with the wrong CA the connect fails with crypto/tls's
//     certificate verification error, from sql.Open's DB and from
//     warmpg.Open with pool_prewarm alike;
//   - check mode peeks the TCP socket under TLS: reuse sends nothing (no
//     ping), and after a fast restart or pg_terminate_backend a burst on a
//     warm pool of 4 loses no query, the stale connections discarded.
func TestIntegrationTLS(t *testing.T) {
	srv := startTLSServer(t, ctxT(t, 2*time.Minute))
	byName := srv.WithHost("localhost") // verify-full checks the name
	ca, wrongCA := srv.CAFile(), srv.WrongCAFile()

	// A copy of the CA under a path that needs escaping in a URL and
	// quoting in key=value form: it must reach the driver byte for byte.
	oddDir := filepath.Join(t.TempDir(), "ca dir")
	if err := os.Mkdir(oddDir, 0o755); err != nil {
		t.Fatal(err)
	}
	oddCA := filepath.Join(oddDir, "it's root+ca &=%20;.crt")
	if b, err := os.ReadFile(ca); err != nil {
		t.Fatal(err)
	} else if err := os.WriteFile(oddCA, b, 0o644); err != nil {
		t.Fatal(err)
	}

	t.Run("verify-full", func(t *testing.T) {
		for _, b := range backends {
			for _, form := range []string{"url", "kv", "url-ip", "url-odd-path", "kv-odd-path"} {
				t.Run(string(b)+"/"+form, func(t *testing.T) {
					ctx := ctxT(t, 30*time.Second)
					app := appName(t)
					other := []string{"application_name=" + app, "pool_backend=" + string(b), "pool_max_conns=3"}
					var dsn string
					switch form {
					case "url":
						dsn = byName.URL(verifyFull(ca, other...)...)
					case "kv":
						dsn = byName.KeyValue(verifyFull(ca, other...)...)
					case "url-ip": // the certificate names 127.0.0.1 too
						dsn = srv.URL(verifyFull(ca, other...)...)
					case "url-odd-path":
						dsn = byName.URL(verifyFull(oddCA, other...)...)
					case "kv-odd-path":
						dsn = byName.KeyValue(verifyFull(oddCA, other...)...)
					}

					db, err := sql.Open("warmpg", dsn)
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					var ssl bool
					if err := db.QueryRowContext(ctx, connTLS).Scan(&ssl); err != nil {
						t.Fatalf("sql.Open: %v", err)
					}
					if !ssl {
						t.Error("sql.Open: the connection does not use TLS: the DSN's sslmode did not reach the driver")
					}
					db.Close()
					// Its backend goes away shortly after the close.
					if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
						t.Fatalf("%d backends left after db.Close: %v", n, err)
					}

					db, err = warmpg.Open(dsn + sep(form) + "pool_prewarm=true")
					if err != nil {
						t.Fatalf("warmpg.Open with pool_prewarm: %v", err)
					}
					defer db.Close()
					if withTLS, total, err := tlsBackends(ctx, srv, app); err != nil || withTLS != 3 || total != 3 {
						t.Errorf("after warmpg.Open with pool_prewarm the server shows %d TLS backends of %d (%v), want 3 of 3", withTLS, total, err)
					}
					if err := db.QueryRowContext(ctx, connTLS).Scan(&ssl); err != nil || !ssl {
						t.Errorf("warmpg.Open: TLS %v, %v; want true", ssl, err)
					}
				})
			}
		}
	})

	// Verification really runs: a CA that did not sign the server's
	// certificate (same name, other key) is refused.
	t.Run("wrong-ca", func(t *testing.T) {
		for _, b := range backends {
			t.Run(string(b), func(t *testing.T) {
				ctx := ctxT(t, 30*time.Second)
				app := appName(t)
				dsn := byName.URL(verifyFull(wrongCA, "application_name="+app, "pool_backend="+string(b), "pool_max_conns=2")...)

				db, err := sql.Open("warmpg", dsn)
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				err = db.PingContext(ctx)
				if err == nil {
					t.Fatal("sql.Open: connected although the CA did not sign the server's certificate")
				}
				if !isCertVerifyError(err) {
					t.Errorf("sql.Open: want crypto/tls's certificate verification error (*tls.CertificateVerificationError wrapping x509.UnknownAuthorityError), got %T: %v", err, err)
				}
				t.Logf("sql.Open, wrong CA: %v", err)
				if st, _ := warmpg.Stats(db); st.Connects != 0 || st.ConnectErrors < 1 {
					t.Errorf("counters %v: want only failed connects", st)
				}
				db.Close()

				pdb, err := warmpg.Open(dsn + "&pool_prewarm=true")
				if err == nil {
					pdb.Close()
					t.Fatal("warmpg.Open with pool_prewarm: no error although the CA did not sign the server's certificate")
				}
				if !isCertVerifyError(err) {
					t.Errorf("warmpg.Open: want crypto/tls's certificate verification error (*tls.CertificateVerificationError wrapping x509.UnknownAuthorityError), got %T: %v", err, err)
				}
				t.Logf("warmpg.Open with pool_prewarm, wrong CA: %v", err)
				if _, total, err := tlsBackends(ctx, srv, app); err != nil || total != 0 {
					t.Errorf("the server shows %d backends (%v), want none", total, err)
				}
			})
		}
	})

	// disrupt kills every pooled backend of the application app.
	for _, disrupt := range []struct {
		name string
		do   func(ctx context.Context, t *testing.T, app string)
	}{
		{"fast-restart", func(ctx context.Context, t *testing.T, app string) {
			if err := srv.Restart(ctx, "fast"); err != nil {
				t.Fatal(err)
			}
		}},
		{"terminate-backends", func(ctx context.Context, t *testing.T, app string) {
			killBackends(t, ctx, srv, app, 4)
		}},
	} {
		t.Run(disrupt.name, func(t *testing.T) {
			for _, b := range backends {
				t.Run(string(b), func(t *testing.T) {
					ctx := ctxT(t, time.Minute)
					app := appName(t)
					const pool = 4
					db, err := warmpg.Open(byName.URL(verifyFull(ca, "application_name="+app, "pool_backend="+string(b),
						fmt.Sprintf("pool_max_conns=%d", pool), "pool_prewarm=true")...))
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					if withTLS, total, err := tlsBackends(ctx, srv, app); err != nil || withTLS != pool || total != pool {
						t.Fatalf("warm pool: the server shows %d TLS backends of %d (%v), want %d of %d", withTLS, total, err, pool, pool)
					}

					// Reuse over TLS sends nothing: the check looked at the
					// TCP socket under TLS and found it quiet.
					before, _ := warmpg.Stats(db)
					if errs, plain := tlsBurst(ctx, db, pool); len(errs) != 0 || plain != 0 {
						t.Fatalf("before: %d failed (%v), %d without TLS", len(errs), errors.Join(errs...), plain)
					}
					st, _ := warmpg.Stats(db)
					if st.Clean-before.Clean != pool || st.Pinged != before.Pinged || st.Discarded != before.Discarded || st.Connects != before.Connects {
						t.Fatalf("counters before %v, after %v: want %d clean reuses and nothing else (a ping means the socket under TLS was not checked)", before, st, pool)
					}

					disrupt.do(ctx, t, app)

					errs, plain := tlsBurst(ctx, db, pool)
					after, _ := warmpg.Stats(db)
					t.Logf("%d of %d queries failed after %s; counters %v", len(errs), pool, disrupt.name, after)
					if len(errs) != 0 {
						t.Errorf("%d of %d queries failed after %s: %v", len(errs), pool, disrupt.name, errors.Join(errs...))
					}
					if plain != 0 {
						t.Errorf("%d connections dialled after %s do not use TLS", plain, disrupt.name)
					}
					if d := after.Discarded - st.Discarded; d < pool {
						t.Errorf("counters before %v, after %v: %d discarded, want every stale connection (%d) discarded", st, after, d, pool)
					}
					if withTLS, total, err := tlsBackends(ctx, srv, app); err != nil || withTLS != pool || total != pool {
						t.Errorf("after: the server shows %d TLS backends of %d (%v), want %d of %d", withTLS, total, err, pool, pool)
					}
				})
			}
		})
	}
}

// sep is what joins one more parameter to a DSN of the given form.
func sep(form string) string {
	if strings.HasPrefix(form, "kv") {
		return " "
	}
	return "&"
}
