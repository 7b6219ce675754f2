package otelexample

import (
	"context"
	"database/sql"
	"errors"

	"github.com/XSAM/otelsql"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/metric"
	semconv "go.opentelemetry.io/otel/semconv/v1.40.0"
	"go.opentelemetry.io/otel/trace"

	"github.com/warmpg/warmpg"
)

// Pool is an instrumented warmpg pool: the *sql.DB the application uses and
// the warmpg connector under otelsql, kept for its Stats.
type Pool struct {
	*sql.DB
	Connector *warmpg.Connector

	regs []metric.Registration
}

// Config says where telemetry goes and how big the pool is.
type Config struct {
	TracerProvider trace.TracerProvider // nil: the global one
	MeterProvider  metric.MeterProvider // nil: the global one
	// Name labels the pool's metrics (db.namespace), e.g. "orders".
	Name string
	// Options for warmpg.OpenConnector, over the DSN's pool_* keys.
	Options []warmpg.Option
}

// Open opens dsn through warmpg, wraps the connector with otelsql, registers
// database/sql's statistics and warmpg's counters with the meter provider,
// and warms the pool. A partial warm-up keeps what opened.
func Open(ctx context.Context, dsn string, cfg Config) (*Pool, warmpg.WarmReport, error) {
	c, err := warmpg.OpenConnector(dsn, cfg.Options...)
	if err != nil {
		return nil, warmpg.WarmReport{}, err
	}
	attrs := []attribute.KeyValue{semconv.DBSystemNamePostgreSQL, semconv.DBNamespace(cfg.Name)}
	var otelOpts []otelsql.Option
	otelOpts = append(otelOpts, otelsql.WithAttributes(attrs...))
	if cfg.TracerProvider != nil {
		otelOpts = append(otelOpts, otelsql.WithTracerProvider(cfg.TracerProvider))
	}
	if cfg.MeterProvider != nil {
		otelOpts = append(otelOpts, otelsql.WithMeterProvider(cfg.MeterProvider))
	}
	p := &Pool{DB: otelsql.OpenDB(c, otelOpts...), Connector: c}

	statsReg, err := otelsql.RegisterDBStatsMetrics(p.DB, otelOpts...)
	if err != nil {
		p.Close()
		return nil, warmpg.WarmReport{}, err
	}
	p.regs = append(p.regs, statsReg)
	mp := cfg.MeterProvider
	if mp == nil {
		mp = otel.GetMeterProvider()
	}
	countersReg, err := RegisterCounters(mp.Meter("github.com/warmpg/warmpg/examples/otel"), c.Stats, attrs...)
	if err != nil {
		p.Close()
		return nil, warmpg.WarmReport{}, err
	}
	p.regs = append(p.regs, countersReg)

	// The connector's WarmDB: db.Driver() is otelsql's, so the package's
	// WarmDB could not find the DSN's pool settings from p.DB.
	rep, err := c.WarmDB(ctx, p.DB)
	if err != nil && rep.Warmed == 0 {
		p.Close()
		return nil, rep, err
	}
	return p, rep, nil
}

// Close unregisters the pool's metrics and closes it (which closes the
// connector: otelsql forwards io.Closer).
func (p *Pool) Close() error {
	var errs []error
	for _, r := range p.regs {
		errs = append(errs, r.Unregister())
	}
	p.regs = nil
	errs = append(errs, p.DB.Close())
	return errors.Join(errs...)
}

// RegisterCounters exports warmpg's counters, read from stats at each
// collection, as observable counters on meter:
//
//	warmpg.connects                  {connection}   connections opened
//	warmpg.connect_errors            {error}        connection attempts that failed
//	warmpg.connections_from_ready    {connection}   handed out ready instead of dialled
//	warmpg.reuses                    {reuse}        by warmpg.reuse.outcome: clean, pinged, rolled_back, reset, discarded
//	warmpg.autocommit_transactions   {transaction}  transactions that sent no BEGIN
//	warmpg.autocommit_upgrades       {transaction}  of those, the ones that later sent one
//	warmpg.replans                   {statement}    statements sent again after a schema change broke their cached plan
//	warmpg.lazy_transactions         {transaction}  transactions begun with pool_lazy_begin
//	warmpg.statements.warmed         {statement}    statements new connections prepared ahead (pool_warm_statements)
//	warmpg.statements.warm_failed    {statement}    statements that failed to prepare ahead and were skipped
//	warmpg.connections.held_past_threshold {checkout} held past pool_leak_threshold
//	warmpg.pool.exhaustions          {exhaustion}   times the pool was reported exhausted
//
// and, as observable gauges, who holds the pool's connections now:
//
//	warmpg.connections.in_use        {connection}   checked out now
//	warmpg.connections.oldest_in_use s              how long the longest holder has held its connection
//	warmpg.host.connections          {connection}   for a DSN that names several hosts: the pool's connections to each,
//	                                                by warmpg.host (host:port) and warmpg.host.state (up, down, wrong_role)
func RegisterCounters(meter metric.Meter, stats func() warmpg.Counters, attrs ...attribute.KeyValue) (metric.Registration, error) {
	counter := func(name, unit, desc string) (metric.Int64ObservableCounter, error) {
		return meter.Int64ObservableCounter(name, metric.WithUnit(unit), metric.WithDescription(desc))
	}
	connects, err1 := counter("warmpg.connects", "{connection}", "Connections warmpg opened to the server.")
	connectErrors, err2 := counter("warmpg.connect_errors", "{error}", "Connection attempts that failed.")
	fromReady, err3 := counter("warmpg.connections_from_ready", "{connection}", "Connections handed out from the ready store instead of dialled.")
	reuses, err4 := counter("warmpg.reuses", "{reuse}", "Reuses of a pooled connection, by what the reset cost.")
	autocommit, err5 := counter("warmpg.autocommit_transactions", "{transaction}", "Transactions that sent no BEGIN or COMMIT.")
	autocommitUp, err6 := counter("warmpg.autocommit_upgrades", "{transaction}",
		"Transactions begun without a BEGIN that later sent one, before their first statement that was not a plain read.")
	replans, err7 := counter("warmpg.replans", "{statement}",
		"Statements sent again, once, after the server refused a cached plan whose result columns a schema change had changed (SQLSTATE 0A000).")
	lazy, err8 := counter("warmpg.lazy_transactions", "{transaction}",
		"Transactions begun with pool_lazy_begin: their BEGIN went with their first statement, or was never sent.")
	warmed, err9 := counter("warmpg.statements.warmed", "{statement}", "Statements new connections prepared ahead (pool_warm_statements).")
	warmFailed, err10 := counter("warmpg.statements.warm_failed", "{statement}",
		"Statements new connections failed to prepare ahead and skipped; no connect failed for them.")
	heldPast, err11 := counter("warmpg.connections.held_past_threshold", "{checkout}", "Checkouts held past pool_leak_threshold, each counted once.")
	exhaustions, err12 := counter("warmpg.pool.exhaustions", "{exhaustion}", "Times the pool was reported exhausted.")
	inUse, err13 := meter.Int64ObservableGauge("warmpg.connections.in_use", metric.WithUnit("{connection}"),
		metric.WithDescription("Connections checked out now, as warmpg counts them."))
	oldest, err14 := meter.Float64ObservableGauge("warmpg.connections.oldest_in_use", metric.WithUnit("s"),
		metric.WithDescription("How long the longest holder has held its connection."))
	hostConns, err15 := meter.Int64ObservableGauge("warmpg.host.connections", metric.WithUnit("{connection}"),
		metric.WithDescription("For a DSN that names several hosts: the pool's connections to each host now, by host and state (up, down, wrong_role)."))
	if err := errors.Join(err1, err2, err3, err4, err5, err6, err7, err8, err9, err10, err11, err12, err13, err14, err15); err != nil {
		return nil, err
	}
	base := metric.WithAttributes(attrs...)
	outcome := func(o string) metric.ObserveOption {
		return metric.WithAttributes(append(attrs[:len(attrs):len(attrs)], attribute.String("warmpg.reuse.outcome", o))...)
	}
	return meter.RegisterCallback(func(_ context.Context, o metric.Observer) error {
		s := stats()
		o.ObserveInt64(connects, s.Connects, base)
		o.ObserveInt64(connectErrors, s.ConnectErrors, base)
		o.ObserveInt64(fromReady, s.FromReady, base)
		o.ObserveInt64(reuses, s.Clean, outcome("clean"))
		o.ObserveInt64(reuses, s.Pinged, outcome("pinged"))
		o.ObserveInt64(reuses, s.RolledBack, outcome("rolled_back"))
		o.ObserveInt64(reuses, s.Reset, outcome("reset"))
		o.ObserveInt64(reuses, s.Discarded, outcome("discarded"))
		o.ObserveInt64(autocommit, s.AutocommitTxs, base)
		o.ObserveInt64(autocommitUp, s.AutocommitUpgrades, base)
		o.ObserveInt64(replans, s.Replans, base)
		o.ObserveInt64(lazy, s.LazyTxs, base)
		o.ObserveInt64(warmed, s.StatementsWarmed, base)
		o.ObserveInt64(warmFailed, s.StatementsWarmFailed, base)
		o.ObserveInt64(heldPast, s.HeldPastThreshold, base)
		o.ObserveInt64(exhaustions, s.Exhaustions, base)
		o.ObserveInt64(inUse, s.InUse, base)
		o.ObserveFloat64(oldest, s.OldestInUse.Seconds(), base)
		for _, h := range s.Hosts {
			state := "up"
			switch {
			case h.Down:
				state = "down"
			case h.WrongRole:
				state = "wrong_role"
			}
			o.ObserveInt64(hostConns, int64(h.Conns), metric.WithAttributes(append(attrs[:len(attrs):len(attrs)],
				attribute.String("warmpg.host", h.Host), attribute.String("warmpg.host.state", state))...))
		}
		return nil
	}, connects, connectErrors, fromReady, reuses, autocommit, autocommitUp, replans, lazy, warmed, warmFailed,
		heldPast, exhaustions, inUse, oldest, hostConns)
}

// PgxConn returns the *pgx.Conn under a driver connection handed to
// (*sql.Conn).Raw: warmpg.Unwrap peels otelsql's wrapper (its Raw method)
// and warmpg's. It reports false when the connection is not pgx's
// (pool_backend=pq).
func PgxConn(driverConn any) (*pgx.Conn, bool) {
	sc, ok := warmpg.Unwrap(driverConn).(*stdlib.Conn)
	if !ok {
		return nil, false
	}
	return sc.Conn(), true
}
