// Package gormexample is the GORM recipe (gorm.io/gorm with
// gorm.io/driver/postgres).
//
// The form to use with warmpg's default (pgx) backend: open the *sql.DB
// yourself and hand it to GORM.
//
//	db, err := warmpg.Open(dsn) // or sql.Open("warmpg", dsn)
//	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{})
//
// Why: GORM's migrator reads a table's columns with SELECT * … LIMIT 1
// (Migrator.GetRows, behind ColumnTypes and so AutoMigrate), and
// gorm.io/driver/postgres sends that over the simple protocol only when
// its DriverName is "" or "pgx". With DriverName: "warmpg" it goes through
// pgx's statement cache, and an AutoMigrate after a schema change fails
// with "cached plan must not change result type (SQLSTATE 0A000)".
// Config{Conn: db} leaves DriverName empty; warmpg.Open also applies the
// DSN's pool settings at once (and with pool_prewarm=true the pool is warm
// before GORM sees it). TestAutoMigrateAfterAlterTable runs AutoMigrate, an
// ALTER TABLE and AutoMigrate again on one connection in this form.
//
// By driver name, GORM calls sql.Open("warmpg", dsn) itself:
//
//	gdb, err := gorm.Open(postgres.New(postgres.Config{DriverName: "warmpg", DSN: dsn}), &gorm.Config{})
//	sqlDB, err := gdb.DB()
//	rep, err := warmpg.WarmDB(ctx, sqlDB) // applies the DSN's pool_* settings, then warms
//
// This is the form for pool_backend=pq: lib/pq caches no statements, and
// with Config{Conn: db} it would be handed the pgx.QueryExecMode argument
// GORM adds to that query ("pq: got 2 parameters but the statement requires
// 1"). On the pgx backend it needs default_query_exec_mode=simple_protocol
// in the DSN, which gives up pgx's statement cache for every query. Since
// GORM, not warmpg, opened the *sql.DB, the DSN's pool settings take effect
// only when WarmDB applies them (or with pool_prewarm=true, which warms in
// the background from the DSN alone; database/sql still keeps only 2 idle
// connections until something calls SetMaxIdleConns).
//
// Either way gdb.DB() is warmpg's pool: warmpg.WarmDB and warmpg.Stats
// work on it, and a read-only GORM transaction
// (gdb.Transaction(fn, &sql.TxOptions{ReadOnly: true})) on a
// pool_autocommit pool sends no BEGIN or COMMIT.
package gormexample
