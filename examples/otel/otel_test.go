package otelexample_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/XSAM/otelsql"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	otelexample "github.com/warmpg/warmpg/examples/otel"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// telemetry is an in-memory OpenTelemetry pipeline: ended spans in a
// recorder, metrics on demand from a manual reader.
type telemetry struct {
	spans  *tracetest.SpanRecorder
	tp     *sdktrace.TracerProvider
	reader *sdkmetric.ManualReader
	mp     *sdkmetric.MeterProvider
}

func newTelemetry(t *testing.T) *telemetry {
	sr := tracetest.NewSpanRecorder()
	reader := sdkmetric.NewManualReader()
	tel := &telemetry{
		spans:  sr,
		tp:     sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(sr)),
		reader: reader,
		mp:     sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader)),
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		tel.tp.Shutdown(ctx)
		tel.mp.Shutdown(ctx)
	})
	return tel
}

// spanCount returns how many ended spans are named name.
func (tel *telemetry) spanCount(name string) int {
	n := 0
	for _, s := range tel.spans.Ended() {
		if s.Name() == name {
			n++
		}
	}
	return n
}

func (tel *telemetry) spanNames() []string {
	var names []string
	for _, s := range tel.spans.Ended() {
		if !slices.Contains(names, s.Name()) {
			names = append(names, s.Name())
		}
	}
	slices.Sort(names)
	return names
}

// metric collects and returns the data point of the metric name whose
// attributes include want, and whether there is one.
func (tel *telemetry) metric(t *testing.T, name string, want ...attribute.KeyValue) (float64, bool) {
	t.Helper()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}
	matches := func(set attribute.Set) bool {
		for _, kv := range want {
			if v, ok := set.Value(kv.Key); !ok || v != kv.Value {
				return false
			}
		}
		return true
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			if m.Name != name {
				continue
			}
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						return float64(p.Value), true
					}
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						return float64(p.Value), true
					}
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						return p.Value, true
					}
				}
			case metricdata.Histogram[float64]:
				for _, p := range d.DataPoints {
					if matches(p.Attributes) {
						return float64(p.Count), true
					}
				}
			default:
				t.Fatalf("metric %s: unexpected data %T", name, m.Data)
			}
		}
	}
	return 0, false
}

// open opens the recipe's pool on the harness's server, closed when the
// test ends.
func open(t *testing.T, ctx context.Context, tel *telemetry, dsn string, opts ...warmpg.Option) (*otelexample.Pool, warmpg.WarmReport) {
	t.Helper()
	p, rep, err := otelexample.Open(ctx, dsn, otelexample.Config{
		TracerProvider: tel.tp, MeterProvider: tel.mp, Name: "orders", Options: opts,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Error(err)
		}
	})
	return p, rep
}

// Statements, transactions and resets become spans; database/sql's pool
// statistics, the statement durations and warmpg's counters become metrics.
func TestTracesAndMetrics(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	tel := newTelemetry(t)
	p, rep := open(t, ctx, tel, srv.URL(), warmpg.WithMaxConns(4), warmpg.WithMaxIdleConns(3))
	if rep.Warmed != 3 {
		t.Fatalf("warm report %v, want 3/3", rep)
	}
	for i := range 5 {
		var n int
		if err := p.QueryRowContext(ctx, "select $1::int", i).Scan(&n); err != nil {
			t.Fatal(err)
		}
	}
	tx, err := p.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "select 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}

	for name, want := range map[string]int{
		"sql.connector.connect":  3, // the warm-up's dials
		"sql.conn.query":         5,
		"sql.conn.begin_tx":      1,
		"sql.conn.exec":          1,
		"sql.tx.commit":          1,
		"sql.conn.reset_session": 6, // every reuse: warmpg's ResetSession ran under otelsql's
	} {
		if got := tel.spanCount(name); got != want {
			t.Errorf("%d %s spans, want %d (spans: %v)", got, name, want, tel.spanNames())
		}
	}

	// A connection held while the metrics are read: warmpg's gauges of who
	// holds the pool see it.
	held, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if err := held.PingContext(ctx); err != nil {
		t.Fatal(err)
	}

	orders := attribute.String("db.namespace", "orders")
	checks := []struct {
		name string
		kv   []attribute.KeyValue
		want float64
	}{
		{"db.sql.connection.open", []attribute.KeyValue{attribute.String("status", "idle")}, 2}, // and one held
		{"db.sql.connection.max_open", nil, 4},
		{"warmpg.connects", []attribute.KeyValue{orders}, 3},
		{"warmpg.reuses", []attribute.KeyValue{orders, attribute.String("warmpg.reuse.outcome", "clean")}, 7}, // the held one's too
		{"warmpg.reuses", []attribute.KeyValue{orders, attribute.String("warmpg.reuse.outcome", "discarded")}, 0},
		{"warmpg.connections.in_use", []attribute.KeyValue{orders}, 1},
		{"warmpg.pool.exhaustions", []attribute.KeyValue{orders}, 0},
	}
	for _, c := range checks {
		if got, ok := tel.metric(t, c.name, c.kv...); !ok || got != c.want {
			t.Errorf("metric %s%v = %v (found %v), want %v", c.name, c.kv, got, ok, c.want)
		}
	}
	if n, ok := tel.metric(t, "db.client.operation.duration"); !ok || n == 0 {
		t.Errorf("no db.client.operation.duration histogram points")
	}
	if s, ok := tel.metric(t, "warmpg.connections.oldest_in_use", orders); !ok || s <= 0 {
		t.Errorf("warmpg.connections.oldest_in_use = %v (found %v), want the held connection's age", s, ok)
	}
	if got := p.Connector.Stats(); got.Connects != 3 || got.Clean != 7 || got.InUse != 1 {
		t.Errorf("connector counters %v, want connects=3 clean=7 in_use=1", got)
	}
}

// Behind otelsql, db.Driver() is otelsql's: the package's WarmDB and Stats
// do not find warmpg's connector from the *sql.DB; the connector's own
// WarmDB applies the DSN's pool sizes.
func TestWarmDBBehindOtelsql(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	c, err := warmpg.OpenConnector(srv.URL("pool_max_conns=4", "pool_max_idle_conns=3"))
	if err != nil {
		t.Fatal(err)
	}
	db := otelsql.OpenDB(c)
	defer db.Close()

	if _, ok := db.Driver().(*warmpg.Driver); ok {
		t.Error("db.Driver() is warmpg's: otelsql now passes it through; simplify the recipe")
	}
	if _, ok := warmpg.Stats(db); ok {
		t.Error("warmpg.Stats(db) found warmpg behind otelsql; simplify the recipe")
	}
	// Without a count the package's WarmDB refuses: it cannot see the DSN's.
	if _, err := warmpg.WarmDB(ctx, db); err == nil || !strings.Contains(err.Error(), "WithMaxIdleConns") {
		t.Errorf("WarmDB without a count: %v, want the error asking for WithMaxIdleConns", err)
	}
	// The recipe: the connector's WarmDB applies pool_max_conns=4 and
	// pool_max_idle_conns=3 from the DSN, then warms 3.
	rep, err := c.WarmDB(ctx, db)
	if err != nil || rep.Warmed != 3 {
		t.Fatalf("c.WarmDB = %v, %v", rep, err)
	}
	if st := db.Stats(); st.MaxOpenConnections != 4 || st.Idle != 3 {
		t.Errorf("after c.WarmDB: max open %d, idle %d; want 4 and 3", st.MaxOpenConnections, st.Idle)
	}
	if got := c.Stats(); got.Connects != 3 {
		t.Errorf("connector counters %v: want the 3 warmed connections", got)
	}
}

// leaveTransactionOpen begins a transaction with plain SQL on one of db's
// connections, creates table in it, and returns the connection to the
// pool with the transaction still open — a bug in application code that
// the pool's reset must not pass on to the next user.
func leaveTransactionOpen(ctx context.Context, db *sql.DB, table string) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	for _, q := range []string{"begin", "create table " + table + " (i int)"} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			return err
		}
	}
	return nil
}

// nextUser reports whether the next statement on db runs inside a
// transaction, and whether it sees table.
func nextUser(ctx context.Context, db *sql.DB, table string) (inTx, sees bool, err error) {
	err = db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null, to_regclass($1) is not null", table).Scan(&inTx, &sees)
	return inTx, sees, err
}

// queryAfterKill warms n connections of db, terminates their backends,
// waits until they are gone, then runs n queries at once (one per pooled
// connection) and returns how many failed.
func queryAfterKill(t *testing.T, ctx context.Context, srv *pgtest.Server, db *sql.DB, app string, n int) (failed int, errs []error) {
	t.Helper()
	if _, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(n), warmpg.WithMaxIdleConns(n)); err != nil {
		t.Fatal(err)
	}
	if k, err := srv.TerminateBackends(ctx, app); err != nil || k != n {
		t.Fatalf("terminated %d backends (%v), want %d", k, err, n)
	}
	if k, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
		t.Fatalf("%d backends still there: %v", k, err)
	}
	var (
		wg sync.WaitGroup
		mu sync.Mutex
	)
	for range n {
		wg.Go(func() {
			_, err := db.ExecContext(ctx, "select pg_sleep(0.05)")
			if err != nil {
				mu.Lock()
				failed++
				errs = append(errs, err)
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	return failed, errs
}

// warmpg's ResetSession still runs under otelsql: a transaction left open
// is rolled back before the connection is reused, and connections whose
// backends were killed are replaced before a query fails on them.
func TestResetSessionPassesThroughOtelsql(t *testing.T) {
	srv := pgtest.Get(t)
	t.Run("leaked transaction", func(t *testing.T) {
		ctx := extest.Ctx(t, 30*time.Second)
		tel := newTelemetry(t)
		p, _ := open(t, ctx, tel, srv.URL(extest.Schema(t, srv)), warmpg.WithMaxConns(1), warmpg.WithMaxIdleConns(1))
		if err := leaveTransactionOpen(ctx, p.DB, "leaked"); err != nil {
			t.Fatal(err)
		}
		inTx, sees, err := nextUser(ctx, p.DB, "leaked")
		if err != nil {
			t.Fatal(err)
		}
		if inTx || sees {
			t.Errorf("next user: inside the leaked transaction %v, sees its table %v; want neither", inTx, sees)
		}
		if got := p.Connector.Stats(); got.RolledBack != 1 || got.Connects != 1 {
			t.Errorf("connector counters %v: want one rollback on the one connection", got)
		}
		if tel.spanCount("sql.conn.reset_session") == 0 {
			t.Error("no sql.conn.reset_session span: otelsql did not call ResetSession")
		}
	})
	t.Run("killed backends", func(t *testing.T) {
		ctx := extest.Ctx(t, 30*time.Second)
		app := extest.Name(t, "app")
		tel := newTelemetry(t)
		p, _ := open(t, ctx, tel, srv.URL("application_name="+app), warmpg.WithMaxConns(4), warmpg.WithMaxIdleConns(4))
		if failed, errs := queryAfterKill(t, ctx, srv, p.DB, app, 4); failed != 0 {
			t.Errorf("%d of 4 queries failed after pg_terminate_backend: %v", failed, errors.Join(errs...))
		}
		if got := p.Connector.Stats(); got.Discarded == 0 {
			t.Errorf("connector counters %v: want the dead connections discarded", got)
		}
	})
}

// hidingConnector is the wrapper the tests above must catch: its
// connections are driver.Conn and nothing more, so database/sql sees no
// SessionResetter or Validator and never calls warmpg's.
type hidingConnector struct{ driver.Connector }

type hidingConn struct{ driver.Conn }

func (h hidingConnector) Connect(ctx context.Context) (driver.Conn, error) {
	c, err := h.Connector.Connect(ctx)
	if err != nil {
		return nil, err
	}
	return hidingConn{c}, nil
}

// The two scenarios above do catch a wrapper that hides warmpg's
// ResetSession: through hidingConnector the next user runs inside the
// leaked transaction, and queries fail on the killed backends.
func TestScenariosCatchAHidingWrapper(t *testing.T) {
	srv := pgtest.Get(t)
	t.Run("leaked transaction", func(t *testing.T) {
		ctx := extest.Ctx(t, 30*time.Second)
		c, err := warmpg.OpenConnector(srv.URL(extest.Schema(t, srv)))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(hidingConnector{c})
		defer db.Close()
		db.SetMaxOpenConns(1)
		if err := leaveTransactionOpen(ctx, db, "leaked"); err != nil {
			t.Fatal(err)
		}
		inTx, sees, err := nextUser(ctx, db, "leaked")
		if err != nil {
			t.Fatal(err)
		}
		if !inTx || !sees {
			t.Errorf("through a hiding wrapper: inside the leaked transaction %v, sees its table %v; want both", inTx, sees)
		}
	})
	t.Run("killed backends", func(t *testing.T) {
		ctx := extest.Ctx(t, 30*time.Second)
		app := extest.Name(t, "app")
		c, err := warmpg.OpenConnector(srv.URL("application_name=" + app))
		if err != nil {
			t.Fatal(err)
		}
		db := sql.OpenDB(hidingConnector{c})
		defer db.Close()
		if failed, _ := queryAfterKill(t, ctx, srv, db, app, 4); failed == 0 {
			t.Error("through a hiding wrapper no query failed on the killed backends: the scenario cannot tell")
		}
	})
}

// pool_autocommit works through otelsql: a read-only transaction sends no
// BEGIN (its two statements get two transaction ids), though otelsql
// records a begin_tx span for it.
func TestAutocommitBehindOtelsql(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	tel := newTelemetry(t)
	p, _ := open(t, ctx, tel, srv.URL("pool_autocommit=true"), warmpg.WithMaxConns(1), warmpg.WithMaxIdleConns(1))
	tx, err := p.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	var a, b int64
	if err := tx.QueryRowContext(ctx, "select txid_current()").Scan(&a); err != nil {
		t.Fatal(err)
	}
	if err := tx.QueryRowContext(ctx, "select txid_current()").Scan(&b); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	if a == b {
		t.Error("both statements ran in one transaction: a BEGIN was sent")
	}
	if got := p.Connector.Stats(); got.AutocommitTxs != 1 {
		t.Errorf("connector counters %v: want autocommit_txs=1", got)
	}
	if tel.spanCount("sql.conn.begin_tx") != 1 || tel.spanCount("sql.tx.commit") != 1 {
		t.Errorf("spans %v: want one begin_tx and one commit span", tel.spanNames())
	}
}

// Raw behind otelsql: the function gets otelsql's connection, and
// warmpg.Unwrap peels both wrappers down to pgx's.
func TestRawBehindOtelsql(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	tel := newTelemetry(t)
	p, _ := open(t, ctx, tel, srv.URL(), warmpg.WithMaxConns(1), warmpg.WithMaxIdleConns(1))
	conn, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var viaSQL int32
	if err := conn.QueryRowContext(ctx, "select pg_backend_pid()").Scan(&viaSQL); err != nil {
		t.Fatal(err)
	}
	err = conn.Raw(func(dc any) error {
		if _, ok := dc.(*stdlib.Conn); ok {
			t.Error("Raw handed pgx's connection itself: otelsql no longer wraps; simplify the recipe")
		}
		if _, ok := warmpg.Unwrap(dc).(*stdlib.Conn); !ok {
			t.Errorf("warmpg.Unwrap(%T) = %T, want pgx's *stdlib.Conn", dc, warmpg.Unwrap(dc))
		}
		pc, ok := otelexample.PgxConn(dc)
		if !ok {
			return fmt.Errorf("PgxConn(%T): not reached", dc)
		}
		if viaPgx := pc.PgConn().PID(); viaPgx != uint32(viaSQL) {
			t.Errorf("pgx connection's backend %d, the *sql.Conn's %d: not the same connection", viaPgx, viaSQL)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// PgxConn says no for lib/pq's connections, behind otelsql or not.
func TestPgxConnOnPQ(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	tel := newTelemetry(t)
	p, _ := open(t, ctx, tel, srv.URL("pool_backend=pq"), warmpg.WithMaxConns(1), warmpg.WithMaxIdleConns(1))
	conn, err := p.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(dc any) error {
		if _, ok := otelexample.PgxConn(dc); ok {
			t.Error("PgxConn reached pgx on the pq backend")
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// otelsql.Open by driver name: otelsql opens warmpg once to find its driver
// and closes that DB; the connector it then builds is unreachable from
// code. Connections still get warmpg's reset, pool_prewarm still works
// (and the discarded first connector leaves no backend behind), but
// warmpg.Stats has nothing to read.
func TestOtelsqlOpenByDriverName(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	app := extest.Name(t, "app")
	db, err := otelsql.Open("warmpg", srv.URL(extest.Schema(t, srv), "application_name="+app, "pool_prewarm=true", "pool_max_idle_conns=3"))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(1)
	if n, err := srv.WaitBackendCount(ctx, app, 3); err != nil {
		t.Fatalf("%d backends (%v), want pool_prewarm's 3", n, err)
	}
	if _, ok := warmpg.Stats(db); ok {
		t.Error("warmpg.Stats found the connector behind otelsql.Open; simplify the recipe")
	}
	if err := leaveTransactionOpen(ctx, db, "leaked"); err != nil {
		t.Fatal(err)
	}
	inTx, sees, err := nextUser(ctx, db, "leaked")
	if err != nil {
		t.Fatal(err)
	}
	if inTx || sees {
		t.Errorf("next user: inside the leaked transaction %v, sees its table %v; want neither", inTx, sees)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 3 {
		t.Errorf("%d backends (%v), want 3: one ready connection in use, two ready", n, err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
		t.Errorf("%d backends left after Close: %v", n, err)
	}
}

// Every field of warmpg.Counters is exported by RegisterCounters, each
// under its own metric: the fields are found by reflection, so a field
// added to Counters later fails this test until RegisterCounters exports it
// (and the table below names where).
func TestRegisterCountersExportsEveryCounter(t *testing.T) {
	// Where each field goes: instrument name and warmpg.reuse.outcome (if
	// any). A gauge says what it is now; everything else is a monotonic sum.
	want := map[string]extest.Export{
		"Connects":             {Metric: "warmpg.connects"},
		"ConnectErrors":        {Metric: "warmpg.connect_errors"},
		"Clean":                {Metric: "warmpg.reuses{clean}"},
		"Pinged":               {Metric: "warmpg.reuses{pinged}"},
		"RolledBack":           {Metric: "warmpg.reuses{rolled_back}"},
		"Reset":                {Metric: "warmpg.reuses{reset}"},
		"Discarded":            {Metric: "warmpg.reuses{discarded}"},
		"AutocommitTxs":        {Metric: "warmpg.autocommit_transactions"},
		"AutocommitUpgrades":   {Metric: "warmpg.autocommit_upgrades"},
		"FromReady":            {Metric: "warmpg.connections_from_ready"},
		"Replans":              {Metric: "warmpg.replans"},
		"LazyTxs":              {Metric: "warmpg.lazy_transactions"},
		"StatementsWarmed":     {Metric: "warmpg.statements.warmed"},
		"StatementsWarmFailed": {Metric: "warmpg.statements.warm_failed"},
		"InUse":                {Metric: "warmpg.connections.in_use", Gauge: true},
		"OldestInUse":          {Metric: "warmpg.connections.oldest_in_use", Gauge: true},
		"HeldPastThreshold":    {Metric: "warmpg.connections.held_past_threshold"},
		"Exhaustions":          {Metric: "warmpg.pool.exhaustions"},
		"Hosts":                {Metric: "warmpg.host.connections{db1:5432 up}", Gauge: true},
	}

	s, values := extest.DistinctCounters(t)

	tel := newTelemetry(t)
	orders := attribute.String("db.namespace", "orders")
	reg, err := otelexample.RegisterCounters(tel.mp.Meter("test"), func() warmpg.Counters { return s }, orders)
	if err != nil {
		t.Fatal(err)
	}
	defer reg.Unregister()
	var rm metricdata.ResourceMetrics
	if err := tel.reader.Collect(context.Background(), &rm); err != nil {
		t.Fatal(err)
	}

	got := map[string][]extest.Export{} // field -> data points carrying its value
	add := func(name string, attrs attribute.Set, val float64, gauge bool) {
		id := name
		if o, ok := attrs.Value("warmpg.reuse.outcome"); ok {
			id += "{" + o.AsString() + "}"
		}
		if h, ok := attrs.Value("warmpg.host"); ok {
			st, _ := attrs.Value("warmpg.host.state")
			id += "{" + h.AsString() + " " + st.AsString() + "}"
		}
		if ns, ok := attrs.Value("db.namespace"); !ok || ns.AsString() != "orders" {
			t.Errorf("%s: db.namespace %q (found %v), want orders", id, ns.AsString(), ok)
		}
		field, ok := values[val]
		if !ok {
			t.Errorf("%s = %v: no field of warmpg.Counters has that value", id, val)
			return
		}
		got[field] = append(got[field], extest.Export{Metric: id, Gauge: gauge})
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if !d.IsMonotonic || d.Temporality != metricdata.CumulativeTemporality {
					t.Errorf("%s: monotonic %v, temporality %v; want a cumulative counter", m.Name, d.IsMonotonic, d.Temporality)
				}
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, float64(p.Value), false)
				}
			case metricdata.Gauge[int64]:
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, float64(p.Value), true)
				}
			case metricdata.Gauge[float64]:
				for _, p := range d.DataPoints {
					add(m.Name, p.Attributes, p.Value, true)
				}
			default:
				t.Errorf("metric %s: unexpected data %T", m.Name, m.Data)
			}
		}
	}
	extest.CheckEveryCounter(t, want, got)
}
