package warmpg_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pool_lazy_begin under pgx used directly through (*sql.Conn).Raw: a
// pipeline as a lazy transaction's first statements, and the unnamed
// statement prepared before the transaction (lazywire.go).

// rawPgConn returns the pgconn under a Raw driver connection.
func rawPgConn(dc any) *pgconn.PgConn {
	return warmpg.Unwrap(dc).(*stdlib.Conn).Conn().PgConn()
}

// Pipeline segments' queries (their %d is the segment's number): the
// transaction's id and isolation level; on a standby, which assigns no
// transaction ids, the backend's pid instead.
const (
	segmentQuery        = "select %d, txid_current()::text, current_setting('transaction_isolation')"
	standbySegmentQuery = "select %d, pg_backend_pid()::text, current_setting('transaction_isolation')"
)

// runPipeline runs segments segments through a pgx pipeline, one query
// (query) and a Sync each, all written before any result is read. It
// returns the rows each segment's query returned ("n txid isolation"), the
// error of the first Sync that failed, and the errors GetResults returned.
func runPipeline(ctx context.Context, pc *pgconn.PgConn, query string, segments int) (rows []string, syncErr error, resErrs []error) {
	ctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	p := pc.StartPipeline(ctx)
	for i := 1; i <= segments; i++ {
		p.SendQueryParams(fmt.Sprintf(query, i), nil, nil, nil, nil)
		if err := p.Sync(); err != nil {
			syncErr = err
			break
		}
	}
	for range 4 * segments {
		res, err := p.GetResults()
		if err != nil {
			resErrs = append(resErrs, err)
			var pe *pgconn.PgError
			if !errors.As(err, &pe) {
				break
			}
			continue
		}
		if res == nil {
			break
		}
		if rr, ok := res.(*pgconn.ResultReader); ok {
			r := rr.Read()
			if r.Err != nil {
				resErrs = append(resErrs, r.Err)
			}
			for _, row := range r.Rows {
				rows = append(rows, fmt.Sprintf("%s %s %s", row[0], row[1], row[2]))
			}
		}
	}
	if err := p.Close(); err != nil && syncErr == nil && len(resErrs) == 0 {
		resErrs = append(resErrs, err)
	}
	return rows, syncErr, resErrs
}

// A pipeline of 2 and 3 segments, each a query and a Sync, as a lazy
// transaction's first statements: the second Sync's write goes before the
// BEGIN's reply is read; it waits for it (pgx's background reader reads it)
// and every segment runs in the transaction. No deadlock, and the commit
// works.
func TestLazyBeginRawPipelineBegun(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true")
	for _, segments := range []int{2, 3} {
		t.Run(fmt.Sprint(segments), func(t *testing.T) {
			conn, tx := connTx(t, ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable})
			var rows []string
			var syncErr error
			var resErrs []error
			start := time.Now()
			if err := conn.Raw(func(dc any) error {
				rows, syncErr, resErrs = runPipeline(ctx, rawPgConn(dc), segmentQuery, segments)
				return nil
			}); err != nil {
				t.Fatal(err)
			}
			t.Logf("%d segments in %v: %q", segments, time.Since(start), rows)
			if syncErr != nil || len(resErrs) != 0 {
				t.Fatalf("pipeline: sync %v, results %v", syncErr, resErrs)
			}
			if len(rows) != segments {
				t.Fatalf("%d rows %q, want %d", len(rows), rows, segments)
			}
			var txid string
			if err := tx.QueryRowContext(ctx, "select txid_current()::text").Scan(&txid); err != nil {
				t.Fatal(err)
			}
			for i, r := range rows {
				if want := fmt.Sprintf("%d %s serializable", i+1, txid); r != want {
					t.Errorf("segment %d: %q, want %q (in the transaction)", i+1, r, want)
				}
			}
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
		})
	}
}

// The same pipeline on a hot standby, which refuses BEGIN ISOLATION LEVEL
// SERIALIZABLE: the server skips the first segment (up to its Sync) but
// would run the second outside any transaction. warmpg holds the second
// segment's write back until the BEGIN's reply is in, and refuses it; pgx
// closes the connection and the pool replaces it.
func TestLazyBeginRawPipelineFailedBegin(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	_, standby := replicaPair(t, ctx)
	db := lazyDB(t, standby.URL, "pool_lazy_begin=true")
	conn, tx := connTx(t, ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable})
	var rows []string
	var syncErr error
	var resErrs []error
	if err := conn.Raw(func(dc any) error {
		rows, syncErr, resErrs = runPipeline(ctx, rawPgConn(dc), standbySegmentQuery, 2)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	t.Logf("rows %q, sync error %v, result errors %v", rows, syncErr, resErrs)
	if len(rows) != 0 {
		t.Fatalf("after the failed BEGIN, segments ran outside the transaction: %q", rows)
	}
	if syncErr == nil || !strings.Contains(syncErr.Error(), "BEGIN failed") {
		t.Errorf("the second segment's Sync: %v, want warmpg's refusal", syncErr)
	}
	tx.Rollback()
	conn.Close()
	// The pool goes on: the refused connection is replaced.
	var one int
	if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

// The unnamed statement, prepared through Raw before BeginTx and executed
// through Raw after it: the lazy BEGIN goes on warmpg's own statement, so
// it survives and returns its row. With pgx's eager BEGIN, a simple Query,
// the server drops it: 26000 (a difference, written down in
// docs/lazy-begin.md).
func TestLazyBeginRawUnnamedStatement(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 60*time.Second)
	db := lazyDB(t, srv.URL, "pool_lazy_begin=true")
	conn := holdConn(t, ctx, db)
	for i := range 2 {
		unnamedAcrossBegin(t, ctx, conn, nil, 42+i)
	}

	eager := lazyDB(t, srv.URL, "pool_lazy_begin=false")
	ec, err := eager.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer ec.Close()
	if err := ec.Raw(func(dc any) error {
		_, err := rawPgConn(dc).Prepare(ctx, "", "select $1::int", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tx, err := ec.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	err = ec.Raw(func(dc any) error {
		return rawPgConn(dc).ExecPrepared(ctx, "", [][]byte{[]byte("1")}, nil, nil).Read().Err
	})
	if code := sqlState(err); code != "26000" {
		t.Errorf("eager BEGIN: the unnamed statement after it: %v, want 26000 (the difference documented)", err)
	}
}

// unnamedAcrossBegin prepares "select $1::int" on the unnamed statement
// through Raw, begins a transaction, runs it through Raw with n, and
// commits.
func unnamedAcrossBegin(t *testing.T, ctx context.Context, conn *sql.Conn, opts *sql.TxOptions, n int) {
	t.Helper()
	if err := conn.Raw(func(dc any) error {
		_, err := rawPgConn(dc).Prepare(ctx, "", "select $1::int", nil)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	tx, err := conn.BeginTx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback() // after a failure; after Commit, a no-op
	var r *pgconn.Result
	if err := conn.Raw(func(dc any) error {
		r = rawPgConn(dc).ExecPrepared(ctx, "", [][]byte{fmt.Append(nil, n)}, nil, nil).Read()
		return r.Err
	}); err != nil {
		t.Fatalf("the unnamed statement after the lazy BEGIN: %v", err)
	}
	if tag := r.CommandTag.String(); len(r.Rows) != 1 || string(r.Rows[0][0]) != fmt.Sprint(n) || tag != "SELECT 1" {
		t.Fatalf("the unnamed statement after the lazy BEGIN: %d rows %q, tag %q; want %d (it ran the BEGIN's statement instead?)", len(r.Rows), r.Rows, tag, n)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
}

// On a hot standby: a BEGIN that fails (SERIALIZABLE) leaves warmpg's own
// statement prepared on the server (the server skipped its trailing Close);
// the next transaction's BEGIN closes it first, and the unnamed statement
// prepared before that transaction still runs right.
func TestLazyBeginRawUnnamedAfterFailedBegin(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	_, standby := replicaPair(t, ctx)
	db := lazyDB(t, standby.URL, "pool_lazy_begin=true")
	conn, tx := connTx(t, ctx, db, &sql.TxOptions{Isolation: sql.LevelSerializable})
	var one int
	if err := tx.QueryRowContext(ctx, "select $1::int", 1).Scan(&one); !errors.Is(err, warmpg.ErrLazyBeginFailed) {
		t.Fatalf("first statement on a standby, SERIALIZABLE: %v, want ErrLazyBeginFailed", err)
	}
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	var left int
	if err := conn.QueryRowContext(ctx, "select count(*) from pg_prepared_statements where name = 'warmpg_begin'").Scan(&left); err != nil {
		t.Fatal(err)
	}
	t.Logf("warmpg_begin prepared after the failed BEGIN: %d", left)
	unnamedAcrossBegin(t, ctx, conn, nil, 7)
	unnamedAcrossBegin(t, ctx, conn, &sql.TxOptions{ReadOnly: true, Isolation: sql.LevelRepeatableRead}, 8)
	if err := conn.QueryRowContext(ctx, "select count(*) from pg_prepared_statements where name = 'warmpg_begin'").Scan(&left); err != nil {
		t.Fatal(err)
	}
	if left != 0 {
		t.Errorf("warmpg_begin still prepared after transactions that began: %d", left)
	}
}
