package rawpgx

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
)

// ErrNotPgx is returned by WithPgxConn when the pool's connections are not
// pgx's (pool_backend=pq, or another inner driver).
var ErrNotPgx = errors.New("the connection is not pgx's")

// WithPgxConn runs fn with the *pgx.Conn under one of db's connections,
// held for the duration of fn and then returned to the pool. fn must not
// keep the *pgx.Conn after it returns, nor close it.
func WithPgxConn(ctx context.Context, db *sql.DB, fn func(*pgx.Conn) error) error {
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(driverConn any) error {
		inner := warmpg.Unwrap(driverConn)
		sc, ok := inner.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("%w: %T", ErrNotPgx, inner)
		}
		return fn(sc.Conn())
	})
}

// Event is a row of the events table.
type Event struct {
	ID   int64
	Kind string
	At   time.Time
}

// Schema creates the events table.
const Schema = `create table events (id bigint primary key, kind text not null, at timestamptz not null)`

var eventColumns = []string{"id", "kind", "at"}

// CopyEvents bulk-loads events with COPY FROM STDIN and returns how many
// rows were copied: through pgx's CopyFrom on the pgx backend (binary
// format, no transaction needed), through lib/pq's COPY statement in a
// transaction on the pq backend.
func CopyEvents(ctx context.Context, db *sql.DB, events []Event) (int64, error) {
	var n int64
	err := WithPgxConn(ctx, db, func(c *pgx.Conn) error {
		var err error
		n, err = c.CopyFrom(ctx, pgx.Identifier{"events"}, eventColumns,
			pgx.CopyFromSlice(len(events), func(i int) ([]any, error) {
				return []any{events[i].ID, events[i].Kind, events[i].At}, nil
			}))
		return err
	})
	if errors.Is(err, ErrNotPgx) {
		return copyPQ(ctx, db, events)
	}
	return n, err
}

// copyPQ is lib/pq's COPY: prepared in a transaction, one Exec per row,
// an Exec without arguments to finish.
func copyPQ(ctx context.Context, db *sql.DB, events []Event) (int64, error) {
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback()
	stmt, err := tx.PrepareContext(ctx, "copy events (id, kind, at) from stdin")
	if err != nil {
		return 0, err
	}
	for _, e := range events {
		if _, err := stmt.ExecContext(ctx, e.ID, e.Kind, e.At); err != nil {
			stmt.Close()
			return 0, err
		}
	}
	res, err := stmt.ExecContext(ctx)
	if err != nil {
		stmt.Close()
		return 0, err
	}
	if err := stmt.Close(); err != nil {
		return 0, err
	}
	if err := tx.Commit(); err != nil {
		return 0, err
	}
	return res.RowsAffected()
}
