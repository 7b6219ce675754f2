package databasesql_test

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/databasesql"
	"github.com/warmpg/warmpg/examples/internal/extest"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// OpenPool applies the DSN's pool settings and leaves pool_max_idle_conns
// connections open and idle; the first queries reuse them.
func TestOpenPoolAppliesDSNAndWarms(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	app := extest.Name(t, "app")
	db, err := databasesql.OpenPool(ctx, srv.URL("application_name="+app,
		"pool_max_conns=4", "pool_max_idle_conns=3"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()

	st := db.Stats()
	if st.MaxOpenConnections != 4 || st.Idle != 3 || st.OpenConnections != 3 {
		t.Errorf("after OpenPool: max open %d, idle %d, open %d; want 4, 3, 3",
			st.MaxOpenConnections, st.Idle, st.OpenConnections)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 3 {
		t.Errorf("server sees %d backends (%v), want 3", n, err)
	}
	for i := range 10 {
		var n int
		if err := db.QueryRowContext(ctx, "select $1::int", i).Scan(&n); err != nil || n != i {
			t.Fatalf("query %d: %d, %v", i, n, err)
		}
	}
	c, ok := warmpg.Stats(db)
	if !ok {
		t.Fatal("warmpg.Stats: db not opened through warmpg")
	}
	// Ten queries, one at a time: each reuses a warmed connection and the
	// default reset mode (check) sends nothing on reuse.
	if c.Connects != 3 || c.Clean != 10 || c.Discarded != 0 {
		t.Errorf("counters %v: want connects=3 clean=10 discarded=0", c)
	}
}

// A bad pool_* key fails at sql.Open, naming the key and value but never
// the password; nothing is dialled.
func TestOpenPoolBadSetting(t *testing.T) {
	ctx := extest.Ctx(t, 10*time.Second)
	_, err := databasesql.OpenPool(ctx, "postgres://app:hunter2@127.0.0.1:1/app?pool_max_conns=lots")
	if err == nil {
		t.Fatal("OpenPool accepted pool_max_conns=lots")
	}
	if !strings.Contains(err.Error(), `pool_max_conns="lots"`) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("error %q: want the key and value named, and no password", err)
	}
}

// A server that refuses every connection fails start-up with the dial
// error, within the warm-up timeout, and leaves nothing open.
func TestOpenPoolNoServer(t *testing.T) {
	ctx := extest.Ctx(t, 30*time.Second)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close() // nothing listens there now
	start := time.Now()
	db, err := databasesql.OpenPool(ctx, "postgres://app@"+addr+"/app?sslmode=disable"+
		"&pool_max_conns=2&pool_connect_retry_timeout=0&pool_warm_timeout=5s")
	if err == nil {
		db.Close()
		t.Fatal("OpenPool succeeded with no server")
	}
	if !strings.Contains(err.Error(), "refused") {
		t.Errorf("error %q: want the dial error", err)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %s, want within pool_warm_timeout", d)
	}
}

// ReadTotals gives the same answer on every pool; on a pool_autocommit pool
// its read-only transaction is counted as one that sent no BEGIN.
func TestReadTotals(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	schema := extest.Schema(t, srv)
	setup, err := sql.Open("warmpg", srv.URL(schema))
	if err != nil {
		t.Fatal(err)
	}
	defer setup.Close()
	if _, err := setup.ExecContext(ctx, `create table orders (id serial primary key, amount bigint not null);
		insert into orders (amount) values (100), (250), (7)`); err != nil {
		t.Fatal(err)
	}

	for _, autocommit := range []bool{false, true} {
		t.Run(fmt.Sprint("autocommit=", autocommit), func(t *testing.T) {
			db, err := databasesql.OpenPool(ctx, srv.URL(schema, "pool_max_conns=2",
				fmt.Sprint("pool_autocommit=", autocommit)))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			got, err := databasesql.ReadTotals(ctx, db)
			if err != nil {
				t.Fatal(err)
			}
			if want := (databasesql.Totals{Orders: 3, Revenue: 357}); got != want {
				t.Errorf("ReadTotals = %+v, want %+v", got, want)
			}
			c, _ := warmpg.Stats(db)
			if want := int64(map[bool]int{false: 0, true: 1}[autocommit]); c.AutocommitTxs != want {
				t.Errorf("AutocommitTxs = %d, want %d", c.AutocommitTxs, want)
			}
		})
	}
}

// txShape runs two statements in a transaction begun with opts and reports
// whether they ran in one server transaction (txid_current assigns a
// transaction id; a second call in the same transaction returns the same
// one) and whether the server treated the transaction as read-only.
func txShape(ctx context.Context, db *sql.DB, opts *sql.TxOptions) (oneTx bool, readOnly string, err error) {
	tx, err := db.BeginTx(ctx, opts)
	if err != nil {
		return false, "", err
	}
	defer tx.Rollback()
	var a, b int64
	if err := tx.QueryRowContext(ctx, "select txid_current()").Scan(&a); err != nil {
		return false, "", err
	}
	if err := tx.QueryRowContext(ctx, "select txid_current(), current_setting('transaction_read_only')").Scan(&b, &readOnly); err != nil {
		return false, "", err
	}
	return a == b, readOnly, tx.Commit()
}

// What a read-only transaction is on the server, pool by pool: a real one
// by default; separate statements, not enforced read-only, with
// pool_autocommit; separate statements the server does keep read-only with
// pool_autocommit and pool_read_only; a real one again at repeatable read,
// which exists to share a snapshot.
func TestReadOnlyTransactionShape(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	cases := []struct {
		params    []string
		isolation sql.IsolationLevel
		oneTx     bool
		readOnly  string
	}{
		{nil, sql.LevelDefault, true, "on"},
		{[]string{"pool_autocommit=true"}, sql.LevelDefault, false, "off"},
		{[]string{"pool_autocommit=true", "pool_read_only=true"}, sql.LevelDefault, false, "on"},
		{[]string{"pool_autocommit=true"}, sql.LevelRepeatableRead, true, "on"},
	}
	for _, tc := range cases {
		t.Run(fmt.Sprint(strings.Join(tc.params, "&"), "/", tc.isolation), func(t *testing.T) {
			db, err := sql.Open("warmpg", srv.URL(tc.params...))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			oneTx, ro, err := txShape(ctx, db, &sql.TxOptions{ReadOnly: true, Isolation: tc.isolation})
			if err != nil {
				t.Fatal(err)
			}
			if oneTx != tc.oneTx || ro != tc.readOnly {
				t.Errorf("one transaction %v, transaction_read_only %s; want %v, %s", oneTx, ro, tc.oneTx, tc.readOnly)
			}
		})
	}
}

// On a pool_read_only pool the server refuses writes, autocommit or not.
func TestReadOnlyPoolRefusesWrites(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db, err := sql.Open("warmpg", srv.URL(extest.Schema(t, srv), "pool_autocommit=true", "pool_read_only=true"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer tx.Rollback()
	_, err = tx.ExecContext(ctx, "create table t (i int)")
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "25006" {
		t.Fatalf("write on a read-only pool: %v; want SQLSTATE 25006 (read_only_sql_transaction)", err)
	}
}
