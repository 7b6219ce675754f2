package gormexample_test

import (
	"context"
	"database/sql"
	"errors"
	"os"
	"strings"
	"testing"
	"time"

	"gorm.io/driver/postgres"
	"gorm.io/gorm"
	"gorm.io/gorm/logger"

	"github.com/warmpg/warmpg"
	gormexample "github.com/warmpg/warmpg/examples/gorm"
	"github.com/warmpg/warmpg/examples/internal/extest"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// seed migrates and creates three accounts.
func seed(t *testing.T, ctx context.Context, gdb *gorm.DB) {
	t.Helper()
	if err := gormexample.Migrate(ctx, gdb); err != nil {
		t.Fatal(err)
	}
	accounts := []gormexample.Account{{Owner: "ada", Balance: 100}, {Owner: "bob", Balance: 50}, {Owner: "cy", Balance: 0}}
	if err := gdb.WithContext(ctx).Create(&accounts).Error; err != nil {
		t.Fatal(err)
	}
	for _, a := range accounts {
		if a.ID == 0 {
			t.Fatalf("account %s got no ID back (RETURNING)", a.Owner)
		}
	}
}

func balances(t *testing.T, ctx context.Context, gdb *gorm.DB) map[string]int64 {
	t.Helper()
	var accounts []gormexample.Account
	if err := gdb.WithContext(ctx).Find(&accounts).Error; err != nil {
		t.Fatal(err)
	}
	m := map[string]int64{}
	for _, a := range accounts {
		m[a.Owner] = a.Balance
	}
	return m
}

// exercise runs the recipe's operations on gdb and checks their results.
func exercise(t *testing.T, ctx context.Context, gdb *gorm.DB) {
	t.Helper()
	seed(t, ctx, gdb)
	if err := gormexample.Transfer(ctx, gdb, "ada", "cy", 30); err != nil {
		t.Fatal(err)
	}
	// bob cannot pay 80: the transaction rolls back, nothing moves.
	if err := gormexample.Transfer(ctx, gdb, "bob", "cy", 80); !errors.Is(err, gormexample.ErrInsufficientFunds) {
		t.Fatalf("transfer beyond the balance: %v, want ErrInsufficientFunds", err)
	}
	// An unknown payee: the debit already made is rolled back with it.
	if err := gormexample.Transfer(ctx, gdb, "ada", "nobody", 10); err == nil {
		t.Fatal("transfer to an unknown account succeeded")
	}
	want := map[string]int64{"ada": 70, "bob": 50, "cy": 30}
	if got := balances(t, ctx, gdb); len(got) != 3 || got["ada"] != 70 || got["bob"] != 50 || got["cy"] != 30 {
		t.Fatalf("balances %v, want %v", got, want)
	}
	accounts, total, err := gormexample.Statement(ctx, gdb)
	if err != nil {
		t.Fatal(err)
	}
	if total != 150 || len(accounts) != 3 || accounts[0].Owner != "ada" || accounts[2].Owner != "cy" {
		t.Fatalf("statement: %v total %d; want ada, bob, cy and 150", accounts, total)
	}
}

// GORM opens the pool by driver name; WarmDB on gdb.DB() applies the DSN's
// pool settings and warms it; GORM's queries, transactions and rollbacks
// then run on the warmed connections.
func TestOpenByDriverName(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 60*time.Second)
	app := extest.Name(t, "app")
	gdb, rep, err := gormexample.OpenByDriverName(ctx, srv.URL(extest.Schema(t, srv), "application_name="+app,
		"pool_max_conns=4", "pool_max_idle_conns=3", "pool_autocommit=true"))
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	if rep.Warmed != 3 || rep.Requested != 3 {
		t.Errorf("warm report %v, want 3/3", rep)
	}
	st := sqlDB.Stats()
	if st.MaxOpenConnections != 4 || st.Idle != 3 {
		t.Errorf("gdb.DB(): max open %d, idle %d; want the DSN's 4 and 3", st.MaxOpenConnections, st.Idle)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 3 {
		t.Errorf("server sees %d backends (%v), want 3", n, err)
	}

	exercise(t, ctx, gdb)

	c, ok := warmpg.Stats(sqlDB)
	if !ok {
		t.Fatal("warmpg.Stats(gdb.DB()): not warmpg's pool")
	}
	// GORM used one connection at a time: every statement ran on a warmed
	// one. Statement's read-only transaction sent no BEGIN.
	if c.Connects != 3 || c.Discarded != 0 || c.AutocommitTxs != 1 || c.Clean == 0 {
		t.Errorf("counters %v: want connects=3, discarded=0, autocommit_txs=1, clean>0", c)
	}
}

// GORM on a *sql.DB the application opened: from warmpg.Open (pool settings
// applied and, with pool_prewarm, warm before GORM sees it) or from
// sql.Open("warmpg", ...).
func TestOpenOnDB(t *testing.T) {
	srv := pgtest.Get(t)
	opens := map[string]func(dsn string) (*sql.DB, error){
		"warmpg.Open": func(dsn string) (*sql.DB, error) { return warmpg.Open(dsn) },
		"sql.Open":    func(dsn string) (*sql.DB, error) { return sql.Open("warmpg", dsn) },
	}
	for name, open := range opens {
		t.Run(name, func(t *testing.T) {
			ctx := extest.Ctx(t, 60*time.Second)
			db, err := open(srv.URL(extest.Schema(t, srv), "pool_max_conns=2", "pool_prewarm=true", "pool_reset=rollback"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			gdb, err := gormexample.OpenOnDB(db)
			if err != nil {
				t.Fatal(err)
			}
			if sqlDB, err := gdb.DB(); err != nil || sqlDB != db {
				t.Fatalf("gdb.DB() = %p, %v; want the *sql.DB given (%p)", sqlDB, err, db)
			}
			if _, err := warmpg.WarmDB(ctx, db); err != nil {
				t.Fatal(err)
			}
			exercise(t, ctx, gdb)
			c, ok := warmpg.Stats(db)
			if !ok {
				t.Fatal("warmpg.Stats: not warmpg's pool")
			}
			// pool_reset=rollback: every reuse sent one ROLLBACK, none failed.
			if c.RolledBack == 0 || c.Clean != 0 || c.Discarded != 0 {
				t.Errorf("counters %v: want rolled_back>0, clean=0, discarded=0", c)
			}
		})
	}
}

// With pool_prewarm=true the DSN alone warms GORM's pool: warmpg's
// connector opens the connections in the background as soon as GORM calls
// sql.Open, and GORM's first queries are handed those instead of dialling.
func TestPrewarmFromDSNAlone(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	app := extest.Name(t, "app")
	gdb, err := gorm.Open(postgres.New(postgres.Config{DriverName: "warmpg",
		DSN: srv.URL(extest.Schema(t, srv), "application_name="+app, "pool_prewarm=true", "pool_max_idle_conns=3")}),
		&gorm.Config{Logger: logger.Discard})
	if err != nil {
		t.Fatal(err)
	}
	sqlDB, err := gdb.DB()
	if err != nil {
		t.Fatal(err)
	}
	defer sqlDB.Close()
	if n, err := srv.WaitBackendCount(ctx, app, 3); err != nil {
		t.Fatalf("%d backends (%v), want pool_prewarm's 3 before any query", n, err)
	}
	if err := gormexample.Migrate(ctx, gdb); err != nil {
		t.Fatal(err)
	}
	c, _ := warmpg.Stats(sqlDB)
	if c.FromReady == 0 || c.Connects != 3 {
		t.Errorf("counters %v: want GORM's queries served from the 3 prewarmed connections", c)
	}
}

// The accounts table before and after a schema change, for
// TestAutoMigrateAfterAlterTable.
type accountV1 struct {
	ID    uint `gorm:"primaryKey"`
	Owner string
}

func (accountV1) TableName() string { return "migrated_accounts" }

type accountV2 struct {
	ID    uint `gorm:"primaryKey"`
	Owner string
	Email string
}

func (accountV2) TableName() string { return "migrated_accounts" }

// TestAutoMigrateAfterAlterTable: AutoMigrate, a schema change, then
// AutoMigrate again, on one connection, in the forms the recipe recommends.
// AutoMigrate reads the table's columns with SELECT * … LIMIT 1 (GORM's
// Migrator.GetRows). gorm.io/driver/postgres sends that over the simple
// protocol only when its DriverName is "" or "pgx"; with DriverName:
// "warmpg" on the pgx backend it goes through pgx's statement cache, and
// after the ALTER TABLE the cached statement fails with "cached plan must
// not change result type (SQLSTATE 0A000)". Config{Conn: db} leaves
// DriverName empty; lib/pq caches no statements.
func TestAutoMigrateAfterAlterTable(t *testing.T) {
	srv := pgtest.Get(t)
	for _, tc := range []struct {
		name    string
		backend string
		open    func(t *testing.T, dsn string) gorm.Dialector
	}{
		{"pgx/Conn from sql.Open", "pgx", func(t *testing.T, dsn string) gorm.Dialector {
			db, err := sql.Open("warmpg", dsn)
			if err != nil {
				t.Fatal(err)
			}
			return postgres.New(postgres.Config{Conn: db})
		}},
		{"pgx/Conn from warmpg.Open", "pgx", func(t *testing.T, dsn string) gorm.Dialector {
			db, err := warmpg.Open(dsn)
			if err != nil {
				t.Fatal(err)
			}
			return postgres.New(postgres.Config{Conn: db})
		}},
		{"pq/DriverName", "pq", func(t *testing.T, dsn string) gorm.Dialector {
			return postgres.New(postgres.Config{DriverName: "warmpg", DSN: dsn})
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := extest.Ctx(t, 60*time.Second)
			// One connection: every statement meets the previous ones' cache.
			dsn := srv.URL(extest.Schema(t, srv), "pool_backend="+tc.backend, "pool_max_conns=1")
			gdb, err := gorm.Open(tc.open(t, dsn), &gorm.Config{Logger: logger.Discard})
			if err != nil {
				t.Fatal(err)
			}
			sqlDB, err := gdb.DB()
			if err != nil {
				t.Fatal(err)
			}
			defer sqlDB.Close()
			sqlDB.SetMaxOpenConns(1)
			gdb = gdb.WithContext(ctx)
			for i, step := range []func() error{
				func() error { return gdb.AutoMigrate(&accountV1{}) }, // creates the table
				func() error { return gdb.AutoMigrate(&accountV1{}) }, // reads its columns
				func() error { return gdb.Exec("ALTER TABLE migrated_accounts ADD COLUMN note text").Error },
				func() error { return gdb.AutoMigrate(&accountV2{}) }, // reads them again, adds email
				func() error { return gdb.AutoMigrate(&accountV2{}) },
				func() error { return gdb.Create(&accountV2{Owner: "ada", Email: "ada@example.com"}).Error },
			} {
				if err := step(); err != nil {
					t.Fatalf("step %d: %v", i+1, err)
				}
			}
			cols, err := gdb.Migrator().ColumnTypes(&accountV2{})
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, c := range cols {
				names = append(names, c.Name())
			}
			if got := strings.Join(names, ","); got != "id,owner,note,email" {
				t.Errorf("columns %s, want id,owner,note,email", got)
			}
		})
	}
}
