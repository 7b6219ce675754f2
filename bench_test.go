package warmpg_test

import (
	"context"
	"database/sql/driver"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// BenchmarkWarm fills a pool of N connections at 5 ms injected round-trip
// time the three warmbench ways (WarmDB, one by one, pgxpool MinConns), in
// the same iteration so machine noise hits all three alike.
//
// It reports each time in ms and the ratios the targets are set on:
// warmdb/pgxpool (target <= 1.3) and onebyone/warmdb (target >= 5).
// ns/op is the sum of the three and means nothing alone.
//
//	go test -run '^$' -bench BenchmarkWarm -benchtime 3x .
func BenchmarkWarm(b *testing.B) {
	// A connect as production makes it: scram-sha-256 password auth and
	// sslmode=prefer against a server without TLS, 4 round trips in all
	// (SSLRequest, startup, two SASL exchanges), as DESIGN.md measured.
	srv := pgtest.Get(b).WithPasswordUser(b)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(5*time.Millisecond), pgproxy.WithSpin(0))
	if err != nil {
		b.Fatal(err)
	}
	defer proxy.Close()
	for _, n := range []int{100, 300} {
		b.Run(fmt.Sprintf("N=%d", n), func(b *testing.B) {
			app := fmt.Sprintf("warmpg_bench_warm_%d", n)
			dsn := strings.Replace(srv.URL("application_name="+app, "sslmode=prefer"), srv.Addr(), proxy.Addr(), 1)
			sum := map[warmbench.Method]time.Duration{}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				// Rotate the order so none always runs on a freshly idle server.
				for _, m := range warmbench.Rotate(warmbench.Methods, i) {
					ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
					d, err := warmbench.Fill(ctx, m, dsn, n)
					if err == nil {
						// Untimed by the metrics: let the server reap the pool.
						_, err = srv.WaitBackendCount(ctx, app, 0)
					}
					cancel()
					if err != nil {
						b.Fatalf("%s: %v", m, err)
					}
					sum[m] += d
				}
			}
			ms := func(m warmbench.Method) float64 { return float64(sum[m].Microseconds()) / 1000 / float64(b.N) }
			b.ReportMetric(ms(warmbench.WarmDB), "warmdb-ms")
			b.ReportMetric(ms(warmbench.OneByOne), "onebyone-ms")
			b.ReportMetric(ms(warmbench.Pgxpool), "pgxpool-ms")
			b.ReportMetric(ms(warmbench.WarmDB)/ms(warmbench.Pgxpool), "warmdb/pgxpool")
			b.ReportMetric(ms(warmbench.OneByOne)/ms(warmbench.WarmDB), "onebyone/warmdb")
		})
	}
}

// BenchmarkResetSessionCheck is the cost of check mode's clean path alone:
// one ResetSession and one IsValid on a healthy, idle pgx connection to a
// real server (the socket peek is a syscall; nothing is sent) — that is,
// one checkout and return as warmpg sees them. Sub-benchmarks:
// default (exhaustion reporting on: the checkout bookkeeping),
// off (pool_exhausted_log_interval=0: none) and leak (pool_leak_threshold
// on: the caller's stack too). BenchmarkCheckout compares them in
// interleaved rounds, which a shared machine's drift does not skew.
//
//	go test -run '^$' -bench BenchmarkResetSessionCheck .
func BenchmarkResetSessionCheck(b *testing.B) {
	srv := pgtest.Get(b)
	for _, v := range []struct{ name, keys string }{
		{"default", ""},
		{"off", "pool_exhausted_log_interval=0"},
		{"leak", "pool_leak_threshold=1h"},
	} {
		b.Run(v.name, func(b *testing.B) {
			var keys []string
			if v.keys != "" {
				keys = append(keys, v.keys)
			}
			c, err := warmpg.OpenConnector(srv.URL(keys...))
			if err != nil {
				b.Fatal(err)
			}
			defer c.Close()
			dc, err := c.Connect(context.Background())
			if err != nil {
				b.Fatal(err)
			}
			defer dc.Close()
			r, v := dc.(driver.SessionResetter), dc.(driver.Validator)
			ctx := context.Background()
			v.IsValid() // back from Connect's checkout
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if err := r.ResetSession(ctx); err != nil || !v.IsValid() {
					b.Fatal("clean connection refused:", err)
				}
			}
			b.StopTimer()
			if st := c.Stats(); st.Clean != int64(b.N) {
				b.Fatalf("counters %v, want every reuse clean", st)
			}
		})
	}
}
