// Package sqlxexample is the sqlx recipe (github.com/jmoiron/sqlx).
//
// sqlx rewrites placeholders — Rebind, In, named queries (:name) — by the
// driver name it was given, and it does not know "warmpg":
// sqlx.BindType("warmpg") is sqlx.UNKNOWN, which leaves '?' in the SQL, and
// PostgreSQL rejects that (SQLSTATE 42601, syntax error). So tell sqlx that
// warmpg speaks PostgreSQL, one of two ways:
//
//	db, err := warmpg.Open(dsn)        // pool settings applied
//	xdb := sqlx.NewDb(db, "pgx")       // "pgx" (or "postgres"): $1, $2, ...
//
// or register the bind type once, before sqlx.Open:
//
//	sqlx.BindDriver("warmpg", sqlx.DOLLAR)
//	xdb, err := sqlx.Open("warmpg", dsn)
//
// sqlx.BindDriver changes a process-wide table; NewDb changes nothing
// global, which is why this recipe uses it. The driver name given to NewDb
// only chooses placeholders: the connections are warmpg's, and WarmDB and
// warmpg.Stats work on xdb.DB.
package sqlxexample
