// Package databasesql is the plain database/sql recipe: existing sql.Open
// code gets warmpg by changing the driver name, keeps its pool settings in
// the DSN, warms the pool at start-up, and runs read-only work without
// BEGIN and COMMIT.
//
//	db, err := sql.Open("warmpg", "postgres://app@db/app?pool_max_conns=20&pool_max_idle_conns=16&pool_autocommit=true")
//	rep, err := warmpg.WarmDB(ctx, db) // applies pool_max_conns/pool_max_idle_conns, then opens 16 connections at once
//
// sql.Open cannot reach the *sql.DB it returns, so the pool_* keys take
// effect when WarmDB applies them (warmpg.Open applies them at once).
//
// With pool_autocommit=true a transaction begun with
// sql.TxOptions{ReadOnly: true} sends no BEGIN, COMMIT or ROLLBACK: each of
// its statements runs on its own, one round trip each. The price: the
// statements share no snapshot, and the server does not enforce ReadOnly
// unless the pool is also pool_read_only=true (a replica's pool), where it
// refuses every write.
package databasesql
