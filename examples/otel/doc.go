// Package otelexample instruments a warmpg pool with OpenTelemetry through
// github.com/XSAM/otelsql: spans and a duration histogram for every
// statement, database/sql's pool statistics as metrics
// (otelsql.RegisterDBStatsMetrics), and warmpg's own counters as
// observable counters (RegisterCounters).
//
// Wrap warmpg's connector, not the driver name:
//
//	opts := []warmpg.Option{warmpg.WithMaxConns(20), warmpg.WithMaxIdleConns(16)}
//	c, err := warmpg.OpenConnector(dsn, opts...)
//	db := otelsql.OpenDB(c, otelsql.WithAttributes(semconv.DBSystemNamePostgreSQL))
//	rep, err := warmpg.WarmDB(ctx, db, opts...)
//
// What passes through otelsql (v0.44), as the tests here check on a real
// server:
//
//   - warmpg's reset mode: otelsql's connection forwards
//     driver.SessionResetter and driver.Validator to warmpg's, so check mode
//     still rolls back a transaction left open and replaces connections the
//     server closed (each reset also gets a sql.conn.reset_session span);
//   - pool_autocommit: BeginTx reaches warmpg, so a read-only transaction
//     sends no BEGIN (otelsql still records a sql.conn.begin_tx span);
//   - (*sql.Conn).Raw: the function gets otelsql's connection, whose Raw
//     method returns warmpg's; warmpg.Unwrap alone stops at otelsql's. Peel
//     both (PgxConn does) to reach pgx.
//
// What does not: db.Driver() is otelsql's driver, so warmpg.WarmDB(ctx, db)
// and warmpg.Stats(db) cannot find warmpg's connector from db. WarmDB then
// refuses to guess how many connections to warm and applies none of the
// DSN's pool_max_conns / pool_max_idle_conns / pool_max_conn_lifetime /
// pool_max_conn_idle_time: pass them as options (the same opts as above),
// and read warmpg's counters from the connector you kept, c.Stats(). The
// connector's own settings (pool_reset, pool_autocommit, pool_read_only,
// pool_prewarm, pool_min_idle_conns, lifetimes) work from the DSN as usual.
//
// otelsql.Open("warmpg", dsn) works too, but then no code can reach the
// connector at all: prefer otelsql.OpenDB with a connector you keep.
package otelexample
