package warmbench_test

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

// The TPC-B workload runs on every variant through a proxy at 1 ms RTT,
// briefly, and its tables add up afterwards: one history row per committed
// transaction, and the balances of accounts, tellers and branches each the
// sum of the deltas. Each variant sends the round trips its name says (the
// proxy counts Query and Sync messages): seven per transaction for pgx's
// stdlib and pgxpool (BEGIN, five statements, COMMIT), six for warmpg, whose
// BEGIN goes with the first statement, and twelve for lib/pq, which
// prepares each statement with arguments in a round trip of its own.
func TestTPCB(t *testing.T) {
	srv := pgtest.Get(t)
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(time.Millisecond), pgproxy.WithMaxMessages(0))
	if err != nil {
		t.Fatal(err)
	}
	defer proxy.Close()
	url := func(params ...string) string { return strings.Replace(srv.URL(params...), srv.Addr(), proxy.Addr(), 1) }
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(context.Background())

	w := warmbench.NewTPCB(fmt.Sprintf("warmpg_tpcb_test_%d_", os.Getpid()), 2, 100)
	if err := w.Setup(ctx, conn, ""); err != nil {
		t.Fatal(err)
	}
	defer w.Drop(context.Background(), conn)
	const conns = 2
	vs, err := warmbench.OpenTPCBVariants(ctx, url, conns, w)
	defer closeVariants(t, vs)
	if err != nil {
		t.Fatal(err)
	}
	if len(vs) != len(warmbench.TPCBVariants) {
		t.Fatalf("%d variants, want %d", len(vs), len(warmbench.TPCBVariants))
	}
	if err := warmbench.WarmVariants(ctx, vs, conns); err != nil {
		t.Fatal(err)
	}
	for _, v := range vs {
		proxy.Reset()
		const n = 5
		if _, err := warmbench.RunBatch(ctx, v.Op, n, 1); err != nil {
			t.Fatalf("%s: %v", v.Name, err)
		}
		rt := proxy.Count('Q') + proxy.Count('S')
		// pgx's stdlib and pgxpool ping a connection idle for over a
		// second, which a slow machine may cause once per connection.
		want := map[string][2]int{"warmpg": {6 * n, 6 * n}, "pgx-stdlib": {7 * n, 7*n + conns},
			"pgxpool": {7 * n, 7*n + conns}, "pq": {12 * n, 12 * n}}[v.Name]
		if rt < want[0] || rt > want[1] {
			t.Errorf("%s: %d round trips for %d transactions, want %d to %d (%v)", v.Name, rt, n, want[0], want[1], proxy.Counts())
		}
	}
	var r warmbench.TPCBRounds
	if err := r.Run(ctx, vs, conns, 200*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	for _, v := range warmbench.TPCBVariants {
		if tps := r.Each(v)[0]; tps <= 0 {
			t.Errorf("%s: %v transactions per second", v, tps)
		}
	}
	history, err := w.Check(ctx, conn)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%d transactions committed, %d history rows; tps %v", w.Committed(), history, r.TPS)
}

func TestTPCBRounds(t *testing.T) {
	r := warmbench.TPCBRounds{TPS: []map[string]float64{{"a": 100, "b": 50}, {"a": 120, "b": 40}}}
	if got := r.Each("b"); len(got) != 2 || got[0] != 50 || got[1] != 40 {
		t.Errorf("each %v", got)
	}
	if got := r.Ratios("a", "b"); len(got) != 2 || got[0] != 0.5 || got[1] != 40.0/120 {
		t.Errorf("ratios %v", got)
	}
}
