package stdlib_test

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// The suite's own openDB opens through pgx's stdlib; gen.sh renames it
// openDBPgx. With SUITE_DRIVER=warmpg (the default) every pool the suite
// opens goes through warmpg instead: openDB through the name
// stdlib.RegisterConnConfig gives its config (the stdlib.OptionOpenDB
// options have no warmpg equivalent and are dropped: the tests that need
// them fail the same with pool_lazy_begin on and off), and sql.Open("pgx",
// …) becomes sql.Open(suiteDriver, …). WARMPG_POOL_LAZY_BEGIN chooses the
// mode, as for any warmpg pool.
var suiteDriver = "warmpg"

func openDB(t testing.TB, opts ...stdlib.OptionOpenDB) *sql.DB {
	t.Helper()
	if suiteDriver == "pgx" {
		return openDBPgx(t, opts...)
	}
	config, err := pgx.ParseConfig(os.Getenv("PGX_TEST_DATABASE"))
	if err != nil {
		t.Fatal(err)
	}
	db, err := sql.Open("warmpg", stdlib.RegisterConnConfig(config))
	if err != nil {
		t.Fatal(err)
	}
	return db
}

// unwrapDC is what the suite's Raw callbacks get their *stdlib.Conn from.
func unwrapDC(dc any) any { return warmpg.Unwrap(dc) }

func TestMain(m *testing.M) {
	if d := os.Getenv("SUITE_DRIVER"); d != "" {
		suiteDriver = d
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	srv, err := pgtest.Open(ctx, "")
	cancel()
	if err != nil {
		fmt.Fprintln(os.Stderr, "pgxsuite: no server:", err)
		os.Exit(1)
	}
	os.Setenv("PGX_TEST_DATABASE", srv.URL())
	code := m.Run()
	srv.Close()
	os.Exit(code)
}

// The mode the suite runs in is the one WARMPG_POOL_LAZY_BEGIN asks for:
// a transaction counts as lazy exactly when it is on.
func TestSuiteMode(t *testing.T) {
	if suiteDriver != "warmpg" {
		t.Skip("plain pgx")
	}
	db := openDB(t)
	defer db.Close()
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.Exec("select 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	s, _ := warmpg.Stats(db)
	want := os.Getenv("WARMPG_POOL_LAZY_BEGIN") != "false"
	if (s.LazyTxs == 1) != want {
		t.Errorf("LazyTxs = %d with WARMPG_POOL_LAZY_BEGIN=%q", s.LazyTxs, os.Getenv("WARMPG_POOL_LAZY_BEGIN"))
	}
}
