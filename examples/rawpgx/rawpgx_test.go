package rawpgx_test

import (
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	"github.com/warmpg/warmpg/examples/rawpgx"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

func events(n int) []rawpgx.Event {
	at := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	ev := make([]rawpgx.Event, n)
	for i := range ev {
		ev[i] = rawpgx.Event{ID: int64(i + 1), Kind: fmt.Sprintf("kind-%d", i%7), At: at.Add(time.Duration(i) * time.Second)}
	}
	return ev
}

// CopyEvents loads 1,000 rows on both backends: pgx's CopyFrom reached
// through Raw and warmpg.Unwrap, lib/pq's COPY statement otherwise.
func TestCopyEvents(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range []warmpg.Backend{warmpg.BackendPgx, warmpg.BackendPQ} {
		t.Run(string(b), func(t *testing.T) {
			ctx := extest.Ctx(t, 30*time.Second)
			db, err := warmpg.Open(srv.URL(extest.Schema(t, srv), "pool_backend="+string(b), "pool_max_conns=2"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if _, err := db.ExecContext(ctx, rawpgx.Schema); err != nil {
				t.Fatal(err)
			}
			n, err := rawpgx.CopyEvents(ctx, db, events(1000))
			if err != nil || n != 1000 {
				t.Fatalf("CopyEvents = %d, %v; want 1000", n, err)
			}
			var count, sum int64
			var last time.Time
			if err := db.QueryRowContext(ctx, "select count(*), sum(id), max(at) from events").Scan(&count, &sum, &last); err != nil {
				t.Fatal(err)
			}
			if want := events(1000)[999].At; count != 1000 || sum != 500500 || !last.Equal(want) {
				t.Errorf("events: count %d, sum %d, last %s; want 1000, 500500, %s", count, sum, last, want)
			}
			// A failing COPY (a duplicate key) reports the server's error and
			// leaves the pool usable.
			if _, err := rawpgx.CopyEvents(ctx, db, events(1)); !isPgCode(err, "23505") {
				t.Errorf("duplicate COPY: %v, want SQLSTATE 23505", err)
			}
			if err := db.PingContext(ctx); err != nil {
				t.Errorf("pool after a failed COPY: %v", err)
			}
		})
	}
}

func isPgCode(err error, code string) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return pgErr.Code == code
	}
	// lib/pq's error type, without importing it for one field.
	var coded interface{ SQLState() string }
	return errors.As(err, &coded) && coded.SQLState() == code
}

// What Raw and warmpg.Unwrap hand out on each backend.
func TestUnwrapTypes(t *testing.T) {
	srv := pgtest.Get(t)
	cases := []struct {
		backend warmpg.Backend
		want    string
	}{
		{warmpg.BackendPgx, fmt.Sprintf("%T", &stdlib.Conn{})},
		{warmpg.BackendPQ, "*pq.conn"}, // lib/pq's connection type is unexported
	}
	for _, tc := range cases {
		t.Run(string(tc.backend), func(t *testing.T) {
			ctx := extest.Ctx(t, 30*time.Second)
			db, err := sql.Open("warmpg", srv.URL("pool_backend="+string(tc.backend)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			conn, err := db.Conn(ctx)
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			err = conn.Raw(func(dc any) error {
				inner := warmpg.Unwrap(dc)
				if got := fmt.Sprintf("%T", inner); got != tc.want {
					t.Errorf("warmpg.Unwrap(dc) is a %s, want %s", got, tc.want)
				}
				if _, ok := inner.(driver.Conn); !ok {
					t.Errorf("warmpg.Unwrap(dc) (%T) is not a driver.Conn", inner)
				}
				if inner == dc {
					t.Errorf("warmpg.Unwrap(dc) returned warmpg's own connection (%T)", dc)
				}
				// Unwrap returns anything that is not warmpg's unchanged.
				if again := warmpg.Unwrap(inner); again != inner {
					t.Errorf("warmpg.Unwrap(inner) = %T, want inner unchanged", again)
				}
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			err = rawpgx.WithPgxConn(ctx, db, func(*pgx.Conn) error { return nil })
			if wantErr := tc.backend != warmpg.BackendPgx; errors.Is(err, rawpgx.ErrNotPgx) != wantErr {
				t.Errorf("WithPgxConn on %s: %v", tc.backend, err)
			}
		})
	}
}

// A transaction the raw code leaves open is not handed to the next user:
// warmpg's default reset mode rolls it back when the connection is reused,
// and keeps the connection.
func TestRawLeftTransactionIsRolledBack(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db, err := warmpg.Open(srv.URL(extest.Schema(t, srv), "pool_max_conns=1"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = rawpgx.WithPgxConn(ctx, db, func(c *pgx.Conn) error {
		_, err := c.Exec(ctx, "begin; create table leaked (i int)")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	var inTx, exists bool
	if err := db.QueryRowContext(ctx, "select pg_current_xact_id_if_assigned() is not null, to_regclass('leaked') is not null").Scan(&inTx, &exists); err != nil {
		t.Fatal(err)
	}
	if inTx || exists {
		t.Errorf("next user: in the leaked transaction %v, sees its table %v; want neither", inTx, exists)
	}
	if c, _ := warmpg.Stats(db); c.RolledBack != 1 || c.Connects != 1 {
		t.Errorf("counters %v: want one rollback on the one connection", c)
	}
}
