package promexample_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	promexample "github.com/warmpg/warmpg/examples/prometheus"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// The collector's metrics pass promlint (counters end in _total, help
// text, no reserved labels) and its descriptions match what it sends.
func TestCollectorLint(t *testing.T) {
	c := promexample.NewCollector("orders", func() warmpg.Counters {
		return warmpg.Counters{Connects: 3, Clean: 5, Discarded: 1}
	})
	problems, err := testutil.CollectAndLint(c)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("promlint: %s: %s", p.Metric, p.Text)
	}
	if n := testutil.CollectAndCount(c); n != 18 {
		t.Errorf("%d metrics, want 18 (5 of them reuse outcomes)", n)
	}
	reg := prometheus.NewPedanticRegistry() // checks Describe against Collect
	if err := reg.Register(c); err != nil {
		t.Fatal(err)
	}
	if _, err := reg.Gather(); err != nil {
		t.Fatal(err)
	}
}

// A pool warmpg did not open has no warmpg counters: Register says so
// instead of exporting zeros.
func TestRegisterForeignDB(t *testing.T) {
	db, err := sql.Open("pgx", "postgres://app@127.0.0.1:1/app")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	reg := prometheus.NewRegistry()
	if err := promexample.Register(reg, db, "other"); err == nil {
		t.Fatal("Register accepted a pool warmpg did not open")
	}
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Errorf("%d metric families registered after a failed Register, want none", len(mfs))
	}
}

func openWarm(t *testing.T, srv *pgtest.Server, app string) *sql.DB {
	t.Helper()
	db, err := warmpg.Open(srv.URL("application_name="+app, "pool_max_conns=3", "pool_prewarm=true"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// After warming and ten queries one at a time, both exporters agree with
// what happened: three connections, all idle; ten reuses that sent nothing.
func TestMetricsAfterQueries(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db := openWarm(t, srv, extest.Name(t, "app"))
	reg := prometheus.NewRegistry()
	if err := promexample.Register(reg, db, "orders"); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		if _, err := db.ExecContext(ctx, "select $1::int", i); err != nil {
			t.Fatal(err)
		}
	}
	want := `
# HELP go_sql_idle_connections The number of idle connections.
# TYPE go_sql_idle_connections gauge
go_sql_idle_connections{db_name="orders"} 3
# HELP go_sql_max_open_connections Maximum number of open connections to the database.
# TYPE go_sql_max_open_connections gauge
go_sql_max_open_connections{db_name="orders"} 3
# HELP warmpg_connects_total Connections warmpg opened to the server.
# TYPE warmpg_connects_total counter
warmpg_connects_total{db_name="orders"} 3
# HELP warmpg_reuses_total Reuses of a pooled connection, by what the reset cost: clean (nothing sent), pinged, rolled_back, reset, discarded (found dead or unfit and replaced).
# TYPE warmpg_reuses_total counter
warmpg_reuses_total{db_name="orders",outcome="clean"} 10
warmpg_reuses_total{db_name="orders",outcome="discarded"} 0
warmpg_reuses_total{db_name="orders",outcome="pinged"} 0
warmpg_reuses_total{db_name="orders",outcome="reset"} 0
warmpg_reuses_total{db_name="orders",outcome="rolled_back"} 0
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(want),
		"go_sql_idle_connections", "go_sql_max_open_connections", "warmpg_connects_total", "warmpg_reuses_total"); err != nil {
		t.Error(err)
	}
	// Who holds the pool: one connection held, then none.
	held, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	labels := map[string]string{"db_name": "orders"}
	if n := value(t, reg, "warmpg_connections_in_use", labels); n != 1 {
		t.Errorf("warmpg_connections_in_use = %v holding one, want 1", n)
	}
	if s := value(t, reg, "warmpg_connection_oldest_in_use_seconds", labels); s <= 0 {
		t.Errorf("warmpg_connection_oldest_in_use_seconds = %v holding one, want > 0", s)
	}
	held.Close()
	if n := value(t, reg, "warmpg_connections_in_use", labels); n != 0 {
		t.Errorf("warmpg_connections_in_use = %v after the return, want 0", n)
	}
}

// value returns the value of the metric name whose labels include want, from
// a fresh gather.
func value(t *testing.T, reg prometheus.Gatherer, name string, want map[string]string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
	next:
		for _, m := range mf.GetMetric() {
			for k, v := range want {
				if !hasLabel(m, k, v) {
					continue next
				}
			}
			if c := m.GetCounter(); c != nil {
				return c.GetValue()
			}
			return m.GetGauge().GetValue()
		}
	}
	t.Fatalf("no metric %s%v", name, want)
	return 0
}

func hasLabel(m *dto.Metric, name, value string) bool {
	for _, l := range m.GetLabel() {
		if l.GetName() == name && l.GetValue() == value {
			return true
		}
	}
	return false
}

// Killed backends show as discarded reuses and new connects, not as failed
// queries: the signal to alert on.
func TestMetricsShowDiscardedConnections(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	app := extest.Name(t, "app")
	db := openWarm(t, srv, app)
	reg := prometheus.NewRegistry()
	if err := promexample.Register(reg, db, "orders"); err != nil {
		t.Fatal(err)
	}
	if n, err := srv.TerminateBackends(ctx, app); err != nil || n != 3 {
		t.Fatalf("terminated %d backends (%v), want 3", n, err)
	}
	if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
		t.Fatalf("%d backends still there: %v", n, err)
	}
	// Three at once, so each takes one of the dead connections.
	var wg sync.WaitGroup
	errs := make(chan error, 3)
	for range 3 {
		wg.Go(func() {
			_, err := db.ExecContext(ctx, "select pg_sleep(0.05)")
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Errorf("query after the backends were killed: %v", err)
		}
	}
	labels := map[string]string{"db_name": "orders"}
	if d := value(t, reg, "warmpg_reuses_total", map[string]string{"db_name": "orders", "outcome": "discarded"}); d < 1 {
		t.Errorf("warmpg_reuses_total{outcome=discarded} = %v, want >= 1", d)
	}
	if c := value(t, reg, "warmpg_connects_total", labels); c < 4 {
		t.Errorf("warmpg_connects_total = %v, want the 3 warmed and at least one replacement", c)
	}
}

// What a scrape returns over HTTP.
func TestScrape(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db := openWarm(t, srv, extest.Name(t, "app"))
	reg := prometheus.NewRegistry()
	if err := promexample.Register(reg, db, "orders"); err != nil {
		t.Fatal(err)
	}
	if err := db.PingContext(ctx); err != nil {
		t.Fatal(err)
	}
	rec := httptest.NewRecorder()
	promhttp.HandlerFor(reg, promhttp.HandlerOpts{}).ServeHTTP(rec, httptest.NewRequestWithContext(context.Background(), "GET", "/metrics", nil))
	body := rec.Body.String()
	for _, want := range []string{
		`go_sql_open_connections{db_name="orders"} 3`,
		`warmpg_connects_total{db_name="orders"} 3`,
		`warmpg_reuses_total{db_name="orders",outcome="clean"} 1`,
		`# TYPE warmpg_reuses_total counter`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("scrape lacks %q:\n%s", want, body)
		}
	}
}

// Every field of warmpg.Counters is exported, each under its own metric:
// the fields are found by reflection, so a field added to Counters later
// fails this test until the collector exports it (and the table below
// names where).
func TestCollectorExportsEveryCounter(t *testing.T) {
	// Where each field goes: metric name and the labels besides db_name.
	// A gauge says what it is now; everything else counts.
	want := map[string]extest.Export{
		"Connects":             {Metric: `warmpg_connects_total`},
		"ConnectErrors":        {Metric: `warmpg_connect_errors_total`},
		"Clean":                {Metric: `warmpg_reuses_total{outcome="clean"}`},
		"Pinged":               {Metric: `warmpg_reuses_total{outcome="pinged"}`},
		"RolledBack":           {Metric: `warmpg_reuses_total{outcome="rolled_back"}`},
		"Reset":                {Metric: `warmpg_reuses_total{outcome="reset"}`},
		"Discarded":            {Metric: `warmpg_reuses_total{outcome="discarded"}`},
		"AutocommitTxs":        {Metric: `warmpg_autocommit_transactions_total`},
		"AutocommitUpgrades":   {Metric: `warmpg_autocommit_upgrades_total`},
		"FromReady":            {Metric: `warmpg_connections_from_ready_total`},
		"Replans":              {Metric: `warmpg_replans_total`},
		"LazyTxs":              {Metric: `warmpg_lazy_transactions_total`},
		"StatementsWarmed":     {Metric: `warmpg_statements_warmed_total`},
		"StatementsWarmFailed": {Metric: `warmpg_statements_warm_failed_total`},
		"InUse":                {Metric: `warmpg_connections_in_use`, Gauge: true},
		"OldestInUse":          {Metric: `warmpg_connection_oldest_in_use_seconds`, Gauge: true},
		"HeldPastThreshold":    {Metric: `warmpg_connections_held_past_threshold_total`},
		"Exhaustions":          {Metric: `warmpg_pool_exhaustions_total`},
		"Hosts":                {Metric: `warmpg_host_connections{host="db1:5432",state="up"}`, Gauge: true},
	}

	s, values := extest.DistinctCounters(t)

	reg := prometheus.NewPedanticRegistry()
	if err := reg.Register(promexample.NewCollector("orders", func() warmpg.Counters { return s })); err != nil {
		t.Fatal(err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string][]extest.Export{} // field -> samples carrying its value
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			id := mf.GetName()
			var labels []string
			for _, l := range m.GetLabel() {
				if l.GetName() != "db_name" {
					labels = append(labels, fmt.Sprintf("%s=%q", l.GetName(), l.GetValue()))
				} else if l.GetValue() != "orders" {
					t.Errorf("%s: db_name=%q, want orders", id, l.GetValue())
				}
			}
			if len(labels) > 0 {
				id += "{" + strings.Join(labels, ",") + "}"
			}
			var val float64
			switch mf.GetType() {
			case dto.MetricType_COUNTER:
				val = m.GetCounter().GetValue()
			case dto.MetricType_GAUGE:
				val = m.GetGauge().GetValue()
			default:
				t.Errorf("%s: type %s, want counter or gauge", id, mf.GetType())
				continue
			}
			field, ok := values[val]
			if !ok {
				t.Errorf("%s = %v: no field of warmpg.Counters has that value", id, val)
				continue
			}
			got[field] = append(got[field], extest.Export{Metric: id, Gauge: mf.GetType() == dto.MetricType_GAUGE})
		}
	}
	extest.CheckEveryCounter(t, want, got)
}
