// Package gormexample is the GORM recipe (gorm.io/gorm with
// gorm.io/driver/postgres). There are two ways in:
//
// By driver name: GORM calls sql.Open("warmpg", dsn) itself.
//
//	gdb, err := gorm.Open(postgres.New(postgres.Config{DriverName: "warmpg", DSN: dsn}), &gorm.Config{})
//	sqlDB, err := gdb.DB()
//	rep, err := warmpg.WarmDB(ctx, sqlDB) // applies the DSN's pool_* settings, then warms
//
// Since GORM, not warmpg, opened the *sql.DB, the DSN's pool settings take
// effect only when WarmDB applies them (or with pool_prewarm=true, which
// warms in the background from the DSN alone; database/sql still keeps
// only 2 idle connections until something calls SetMaxIdleConns).
//
// From a *sql.DB you opened: warmpg.Open applies the pool settings at once.
//
//	db, err := warmpg.Open(dsn)
//	gdb, err := gorm.Open(postgres.New(postgres.Config{Conn: db}), &gorm.Config{})
//
// Either way gdb.DB() is warmpg's pool: warmpg.WarmDB and warmpg.Stats
// work on it, and a read-only GORM transaction
// (gdb.Transaction(fn, &sql.TxOptions{ReadOnly: true})) on a
// pool_autocommit pool sends no BEGIN or COMMIT.
package gormexample
