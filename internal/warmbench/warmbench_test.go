package warmbench_test

import (
	"context"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// TestVariantsWork runs every reuse variant (BenchmarkReuse's and the
// command's) and every read-only-tx variant briefly, through a proxy without
// latency that counts round trips, so the benchmarks cannot rot and each
// variant is shown to do what its name says (check sends nothing on reuse,
// ping-always pings, ...).
func TestVariantsWork(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithMaxMessages(0))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	url := func(params ...string) string { return strings.Replace(srv.URL(params...), srv.Addr(), proxy.Addr(), 1) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	const conns, clients, n = 4, 8, 20
	names := slices.Concat(warmbench.BenchmarkReuseVariants, []string{"none", "ping", "rollback", "none-exec"})
	reuse, err := warmbench.OpenReuseVariants(ctx, url, conns, names)
	defer closeVariants(t, reuse)
	if err != nil {
		t.Fatal(err)
	}
	rotx, err := warmbench.OpenReadOnlyTxVariants(ctx, url)
	defer closeVariants(t, rotx)
	if err != nil {
		t.Fatal(err)
	}
	if len(reuse) != len(names) || len(rotx) != 4 {
		t.Fatalf("%d reuse and %d read-only-tx variants, want %d and 4", len(reuse), len(rotx), len(names))
	}
	for _, v := range slices.Concat(warmbench.ResetModes, warmbench.Peers) {
		if !slices.Contains(names, v) {
			t.Errorf("the command's variant %s is not tested", v)
		}
	}

	// Round trips (Query and Sync messages) for n operations: [min, max].
	// pgx-default and pgxpool ping a connection idle for over a second,
	// which a slow machine may cause once per connection.
	want := func(name string, conns int) [2]int {
		switch strings.TrimSuffix(name, "-exec") {
		case "check", "none", "pgx-never-ping", "pq", "select", "autocommit-ro-tx":
			return [2]int{n, n}
		case "pgx-default", "pgxpool":
			return [2]int{n, n + conns}
		case "ping", "rollback", "pgx-ping-always", "pgx-rollback":
			return [2]int{2 * n, 2 * n}
		case "warmpg-ro-tx":
			return [2]int{3 * n, 3 * n}
		case "pgx-ro-tx":
			return [2]int{3 * n, 3*n + conns}
		}
		t.Fatalf("no expectation for variant %s", name)
		return [2]int{}
	}
	for _, set := range []struct {
		vs             []*warmbench.Variant
		conns, clients int
	}{{reuse, conns, clients}, {rotx, 1, 1}} {
		if err := warmbench.WarmVariants(ctx, set.vs, set.clients); err != nil {
			t.Fatal(err)
		}
		for _, v := range set.vs {
			var before warmpg.Counters
			if v.DB != nil {
				before, _ = warmpg.Stats(v.DB)
			}
			proxy.Reset()
			if _, err := warmbench.RunBatch(ctx, v.Op, n, set.clients); err != nil {
				t.Errorf("%s: %v", v.Name, err)
				continue
			}
			rt := proxy.Count('Q') + proxy.Count('S')
			if w := want(v.Name, set.conns); rt < w[0] || rt > w[1] {
				t.Errorf("%s: %d round trips for %d operations, want %d to %d", v.Name, rt, n, w[0], w[1])
			}
			if v.DB != nil {
				if st := v.DB.Stats(); st.MaxOpenConnections != set.conns || st.OpenConnections != set.conns {
					t.Errorf("%s: pool has %d of at most %d connections, want %d of %d",
						v.Name, st.OpenConnections, st.MaxOpenConnections, set.conns, set.conns)
				}
				if after, ok := warmpg.Stats(v.DB); ok {
					// What reuse did, by mode: check and none only look.
					did := map[string]int64{
						"pinged":      after.Pinged - before.Pinged,
						"rolled back": after.RolledBack - before.RolledBack,
						"discarded":   after.Discarded - before.Discarded,
						"reset":       after.Reset - before.Reset,
					}
					mode := map[string]string{"ping": "pinged", "rollback": "rolled back"}[strings.TrimSuffix(v.Name, "-exec")]
					for what, d := range did {
						if (what == mode) != (d > 0) {
							t.Errorf("%s: %s %d times on reuse: %s", v.Name, what, d, after)
						}
					}
					if strings.HasPrefix(v.Name, "autocommit") && after.AutocommitTxs-before.AutocommitTxs != n {
						t.Errorf("%s: %d autocommit transactions, want %d", v.Name, after.AutocommitTxs-before.AutocommitTxs, n)
					}
				}
			}
		}
	}
}

func closeVariants(t *testing.T, vs []*warmbench.Variant) {
	if err := warmbench.CloseVariants(vs); err != nil {
		t.Error(err)
	}
}

func TestUnknownVariant(t *testing.T) {
	for _, name := range []string{"bogus", "pq-exec", "discard-exec-exec"} {
		vs, err := warmbench.OpenReuseVariants(context.Background(), func(...string) string { return "postgres://127.0.0.1:1/x" }, 1, []string{name})
		if err == nil || len(vs) != 0 || !strings.Contains(err.Error(), fmt.Sprintf("unknown reuse variant %q", name)) {
			t.Errorf("%s: %v, %d variants", name, err, len(vs))
		}
	}
	for name, want := range map[string]bool{"check": true, "none-exec": true, "discard": true, "pgx-default": false, "select": false, "Check": false} {
		if warmbench.IsWarmpg(name) != want {
			t.Errorf("IsWarmpg(%q) != %v", name, want)
		}
	}
}

func TestRotateMedian(t *testing.T) {
	s := []int{1, 2, 3}
	for i, want := range [][]int{{1, 2, 3}, {2, 3, 1}, {3, 1, 2}, {1, 2, 3}} {
		if got := warmbench.Rotate(s, i); !slices.Equal(got, want) {
			t.Errorf("Rotate(%v, %d) = %v, want %v", s, i, got, want)
		}
	}
	if !slices.Equal(s, []int{1, 2, 3}) || warmbench.Rotate([]int(nil), 3) != nil {
		t.Error("Rotate changed its input or made up elements")
	}
	if m := warmbench.Median([]time.Duration{3, 1, 2}); m != 2 {
		t.Errorf("median %v", m)
	}
	if m := warmbench.Median([]float64{4, 1, 3, 2}); m != 3 {
		t.Errorf("median of an even count %v, want the upper middle", m)
	}
}

func TestRounds(t *testing.T) {
	r := warmbench.NewRounds(10, 3)
	if r.Ops != 9 {
		t.Fatalf("Ops %d, want 9 (a multiple of the passes)", r.Ops)
	}
	r.Times = []map[string]time.Duration{
		{"a": time.Second, "b": 2 * time.Second},
		{"a": time.Second, "b": 4 * time.Second},
		{"a": 3 * time.Second, "b": 3 * time.Second},
		{"a": 2 * time.Second, "b": 6 * time.Second},
	}
	if got := r.Ratios("b", "a"); !slices.Equal(got, []float64{2, 4, 1, 3}) {
		t.Errorf("ratios %v", got)
	}
	if got := r.MedianRatio("b", "a"); got != 2.5 {
		t.Errorf("median ratio %v, want 2.5", got)
	}
	if got := r.PerSecond("a"); got != 36.0/7 {
		t.Errorf("per second %v", got)
	}
	if got := r.PerSecondEach("b"); !slices.Equal(got, []float64{4.5, 2.25, 3, 1.5}) {
		t.Errorf("per second each %v", got)
	}
}
