package sqlmockexample

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"

	"github.com/warmpg/warmpg"
)

// PoolOptions are the application's pool settings, used by Open in
// production and by the unit tests on go-sqlmock, so both run the same
// warmpg behaviour.
func PoolOptions() []warmpg.Option {
	return []warmpg.Option{
		warmpg.WithMaxConns(20),
		warmpg.WithMaxIdleConns(10),
		warmpg.WithAutocommit(true), // read-only transactions send no BEGIN/COMMIT
	}
}

// Open opens the production pool and warms it.
func Open(ctx context.Context, dsn string) (*sql.DB, error) {
	db, err := warmpg.Open(dsn, PoolOptions()...)
	if err != nil {
		return nil, err
	}
	if err := Start(ctx, db); err != nil {
		db.Close()
		return nil, err
	}
	return db, nil
}

// Start warms db's pool (the number from PoolOptions) and logs what it
// did; it fails only when no connection at all could be opened.
func Start(ctx context.Context, db *sql.DB) error {
	rep, err := warmpg.WarmDB(ctx, db)
	if err != nil && rep.Warmed == 0 {
		return fmt.Errorf("database: %w", err)
	}
	slog.Info("database pool ready", "warmed", rep.Warmed, "requested", rep.Requested, "error", err)
	return nil
}

// Store is the application's data access.
type Store struct {
	DB *sql.DB
}

// Summary is an account's balance and its pending transfers.
type Summary struct {
	Balance int64
	Pending int
}

// Summary reads an account's balance and pending transfers in a read-only
// transaction: with pool_autocommit it sends just the two queries.
func (s *Store) Summary(ctx context.Context, account int64) (Summary, error) {
	tx, err := s.DB.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		return Summary{}, err
	}
	defer tx.Rollback()
	var sum Summary
	if err := tx.QueryRowContext(ctx, "select balance from accounts where id = $1", account).Scan(&sum.Balance); err != nil {
		return Summary{}, fmt.Errorf("balance of %d: %w", account, err)
	}
	if err := tx.QueryRowContext(ctx, "select count(*) from transfers where account_id = $1 and state = 'pending'", account).Scan(&sum.Pending); err != nil {
		return Summary{}, fmt.Errorf("pending of %d: %w", account, err)
	}
	return sum, tx.Commit()
}

// ErrInsufficientFunds is returned by Transfer when from cannot pay.
var ErrInsufficientFunds = errors.New("insufficient funds")

// Transfer moves amount from one account to another in one read-write
// transaction: BEGIN, the debit, the credit, COMMIT — or ROLLBACK when the
// debit finds too little money.
func (s *Store) Transfer(ctx context.Context, from, to, amount int64) error {
	tx, err := s.DB.BeginTx(ctx, nil)
	if err != nil {
		return err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, "update accounts set balance = balance - $1 where id = $2 and balance >= $1", amount, from)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return ErrInsufficientFunds
	}
	if _, err := tx.ExecContext(ctx, "update accounts set balance = balance + $1 where id = $2", amount, to); err != nil {
		return err
	}
	return tx.Commit()
}
