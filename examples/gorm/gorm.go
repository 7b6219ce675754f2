package gormexample

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/warmpg/warmpg"
)

// Account is the recipe's model.
type Account struct {
	ID        uint   `gorm:"primaryKey"`
	Owner     string `gorm:"uniqueIndex;not null"`
	Balance   int64  `gorm:"not null"`
	CreatedAt time.Time
}

// gormConfig is the application's GORM configuration; the recipe keeps
// GORM's logger quiet.
func gormConfig() *gorm.Config {
	return &gorm.Config{Logger: logger.Discard}
}

// OpenByDriverName opens GORM on warmpg by driver name — GORM calls
// sql.Open("warmpg", dsn) — then warms the pool under it, which also applies
// the DSN's pool_* settings to it. Use it with pool_backend=pq; on the pgx
// backend prefer OpenOnDB, or put default_query_exec_mode=simple_protocol
// in the DSN: with DriverName "warmpg", an AutoMigrate after a schema
// change fails on pgx's statement cache (see the package doc).
func OpenByDriverName(ctx context.Context, dsn string) (*gorm.DB, warmpg.WarmReport, error) {
	gdb, err := gorm.Open(postgres.New(postgres.Config{DriverName: "warmpg", DSN: dsn}), gormConfig())
	if err != nil {
		return nil, warmpg.WarmReport{}, err
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		return nil, warmpg.WarmReport{}, err
	}
	rep, err := warmpg.WarmDB(ctx, sqlDB)
	if err != nil && rep.Warmed == 0 {
		sqlDB.Close()
		return nil, rep, err
	}
	return gdb, rep, nil // a partial warm-up keeps what opened; rep says how much
}

// OpenOnDB opens GORM on a *sql.DB the application opened with warmpg.Open
// (pool settings applied, warmed already with pool_prewarm=true) or
// sql.Open("warmpg", ...): the form to use on the pgx backend, where GORM's
// migrator then reads columns over the simple protocol. Closing the
// *sql.DB is the caller's business.
func OpenOnDB(db *sql.DB) (*gorm.DB, error) {
	return gorm.Open(postgres.New(postgres.Config{Conn: db}), gormConfig())
}

// Migrate creates or updates the accounts table.
func Migrate(ctx context.Context, gdb *gorm.DB) error {
	return gdb.WithContext(ctx).AutoMigrate(&Account{})
}

// ErrInsufficientFunds is returned by Transfer when from cannot pay.
var ErrInsufficientFunds = errors.New("insufficient funds")

// Transfer moves amount between two accounts in one transaction: both
// balances change, or neither does.
func Transfer(ctx context.Context, gdb *gorm.DB, from, to string, amount int64) error {
	return gdb.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		res := tx.Model(&Account{}).Where("owner = ? AND balance >= ?", from, amount).
			Update("balance", gorm.Expr("balance - ?", amount))
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("transfer from %s: %w", from, ErrInsufficientFunds)
		}
		res = tx.Model(&Account{}).Where("owner = ?", to).
			Update("balance", gorm.Expr("balance + ?", amount))
		if res.Error != nil {
			return res.Error
		}
		if res.RowsAffected != 1 {
			return fmt.Errorf("transfer to %s: no such account", to)
		}
		return nil
	})
}

// Statement is a read-only report: every account, richest first, and the
// total. It runs as a read-only transaction, which on a pool_autocommit
// pool sends no BEGIN or COMMIT (the two queries then share no snapshot).
func Statement(ctx context.Context, gdb *gorm.DB) (accounts []Account, total int64, err error) {
	err = gdb.WithContext(ctx).Transaction(func(tx *gorm.DB) error {
		if err := tx.Order("balance desc, owner").Find(&accounts).Error; err != nil {
			return err
		}
		return tx.Model(&Account{}).Select("coalesce(sum(balance), 0)").Scan(&total).Error
	}, &sql.TxOptions{ReadOnly: true})
	return accounts, total, err
}
