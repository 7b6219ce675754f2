// Package otelexample instruments a warmpg pool with OpenTelemetry through
// github.com/XSAM/otelsql: spans and a duration histogram for every
// statement, database/sql's pool statistics as metrics
// (otelsql.RegisterDBStatsMetrics), and warmpg's own counters as
// observable counters (RegisterCounters).
//
// Wrap warmpg's connector, not the driver name, and keep it:
//
//	c, err := warmpg.OpenConnector(dsn) // pool_max_conns=20&pool_max_idle_conns=16 in the DSN
//	db := otelsql.OpenDB(c, otelsql.WithAttributes(semconv.DBSystemNamePostgreSQL))
//	rep, err := c.WarmDB(ctx, db) // applies the DSN's pool settings, then warms
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
//   - (*sql.Conn).Raw: the function gets otelsql's connection; warmpg.Unwrap
//     peels it (through its Raw method) and warmpg's, down to pgx's.
//
// What does not: db.Driver() is otelsql's driver, so the package functions
// warmpg.WarmDB(ctx, db) and warmpg.Stats(db) cannot find warmpg's connector
// from db. Call the connector's own: c.WarmDB(ctx, db), which applies the
// DSN's pool_max_conns / pool_max_idle_conns / lifetimes to db as
// warmpg.WarmDB does on a DB warmpg opened, and c.Stats().
//
// otelsql.Open("warmpg", dsn) works too, but then no code can reach the
// connector at all: prefer otelsql.OpenDB with a connector you keep.
package otelexample
