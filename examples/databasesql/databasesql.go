package databasesql

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"

	"github.com/warmpg/warmpg"
)

// OpenPool opens the application's pool with sql.Open and warms it: WarmDB
// first applies the DSN's pool_* settings (pool_max_conns,
// pool_max_idle_conns, ...), then opens pool_max_idle_conns connections
// concurrently and leaves them idle in the pool.
//
// A partial warm-up is logged and the pool is kept (the connections that
// opened stay warm, the rest open on demand); a warm-up in which nothing
// opened fails start-up with the server's own error.
func OpenPool(ctx context.Context, dsn string) (*sql.DB, error) {
	db, err := sql.Open("warmpg", dsn)
	if err != nil {
		return nil, err // a bad pool_* key, named with its value; never the password
	}
	rep, err := warmpg.WarmDB(ctx, db)
	if err != nil {
		if rep.Warmed == 0 {
			db.Close()
			return nil, err
		}
		slog.Warn("database pool partly warm", "warmed", rep.Warmed, "requested", rep.Requested, "error", err)
	}
	return db, nil
}

// Totals summarises the orders table.
type Totals struct {
	Orders  int
	Revenue int64
}

// ReadTotals reads Totals in a read-only transaction. On a pool with
// pool_autocommit=true that transaction sends no BEGIN and no COMMIT: the
// two statements run on their own, each seeing what was committed when it
// started, so they may disagree if orders are written meanwhile. Code that
// needs one snapshot asks for sql.LevelRepeatableRead, which stays a real
// transaction.
func ReadTotals(ctx context.Context, db *sql.DB) (Totals, error) {
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Totals{}, err
	}
	defer tx.Rollback() // after Commit: sql.ErrTxDone, ignored

	var t Totals
	if err := tx.QueryRowContext(ctx, "select count(*) from orders").Scan(&t.Orders); err != nil {
		return Totals{}, fmt.Errorf("count orders: %w", err)
	}
	if err := tx.QueryRowContext(ctx, "select coalesce(sum(amount), 0) from orders").Scan(&t.Revenue); err != nil {
		return Totals{}, fmt.Errorf("sum orders: %w", err)
	}
	return t, tx.Commit()
}
