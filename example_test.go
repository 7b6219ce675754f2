package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"log/slog"
	"os"
	"strings"
	"time"

	"github.com/DATA-DOG/go-sqlmock"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/warmpg/warmpg"
)

// The README's first example: an existing sql.Open call, the pool settings in
// the DSN, and one WarmDB call at start-up.
func Example() {
	db, err := sql.Open("warmpg", "postgres://app@db:5432/app?sslmode=require&pool_max_conns=60&pool_max_idle_conns=50")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	rep, err := warmpg.WarmDB(ctx, db) // 50 connections, opened concurrently, now idle in db
	if err != nil {
		log.Printf("warm: %v", err) // partial: the rest stay warm, the pool is usable
	}
	log.Println(rep) // warmed 50/50 in 31ms
}

// Open applies the pool settings itself; with pool_prewarm it returns only
// once the pool is warm.
func ExampleOpen() {
	db, err := warmpg.Open("postgres://app@db/app?pool_max_conns=20&pool_prewarm=true",
		warmpg.WithWarmTimeout(5*time.Second))
	if err != nil {
		log.Fatal(err) // the server's own error, e.g. FATAL: password authentication failed
	}
	defer db.Close()
}

// A bad setting is refused at open, naming the key, the value and what is
// allowed.
func ExampleOpen_badSetting() {
	_, err := sql.Open("warmpg", "postgres://app:secret@db/app?pool_reset=sometimes")
	fmt.Println(err)
	// Output: warmpg: invalid DSN pool_reset="sometimes": want none, check, ping, rollback or discard
}

// WarmDB also warms a *sql.DB that warmpg did not open; the count comes from
// an option.
func ExampleWarmDB_anyDB() {
	db, err := sql.Open("pgx", "postgres://app@db/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := warmpg.WarmDB(context.Background(), db, warmpg.WithMaxIdleConns(16)); err != nil {
		log.Print(err)
	}
}

// Unwrap reaches the pgx connection under a warmpg one.
func ExampleUnwrap() {
	db, err := sql.Open("warmpg", "postgres://app@db/app")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	conn, err := db.Conn(context.Background())
	if err != nil {
		log.Fatal(err)
	}
	defer conn.Close()
	err = conn.Raw(func(driverConn any) error {
		pgxConn := warmpg.Unwrap(driverConn).(*stdlib.Conn).Conn()
		fmt.Println(pgxConn.PgConn().ParameterStatus("server_version"))
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
}

// In unit tests, warmpg wraps go-sqlmock's driver, so the code under test
// runs through warmpg and the mock sees exactly the SQL it sends.
func ExampleNewConnector_sqlmock() {
	mockDB, mock, err := sqlmock.NewWithDSN("example-sqlmock")
	if err != nil {
		log.Fatal(err)
	}
	defer mockDB.Close()
	inner, err := warmpg.ConnectorFromDriver(mockDB.Driver(), "example-sqlmock")
	if err != nil {
		log.Fatal(err)
	}
	c, err := warmpg.NewConnector(inner, warmpg.WithReset(warmpg.ResetNone))
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()

	mock.ExpectQuery("select name from users").WillReturnRows(sqlmock.NewRows([]string{"name"}).AddRow("ada"))
	var name string
	if err := db.QueryRow("select name from users where id = $1", 1).Scan(&name); err != nil {
		log.Fatal(err)
	}
	fmt.Println(name, mock.ExpectationsWereMet())
	// Output: ada <nil>
}

// Warm with no code change: code that calls sql.Open itself (GORM does) gets
// a pool that starts warm and stays warm from the DSN alone. database/sql
// keeps only 2 idle connections unless told otherwise.
func Example_keepWarm() {
	db, err := sql.Open("warmpg", "postgres://app@db/app?pool_prewarm=true&pool_max_conns=20"+
		"&pool_min_idle_conns=4&pool_max_conn_lifetime=30m")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	db.SetMaxOpenConns(20)
	db.SetMaxIdleConns(20)
}

// Counters show what reuse cost and how often the ready store served.
func ExampleStats() {
	db, err := sql.Open("warmpg", "postgres://app@db/app?pool_autocommit=true")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if st, ok := warmpg.Stats(db); ok {
		fmt.Println(st.Discarded, st.RolledBack)
	}
	// Output: 0 0
}

// warmpg's events go to the slog.Logger given with WithLogger, at or above
// pool_log_level (WithLogLevel); here the time and durations are dropped
// so that the output is the same on every run.
func ExampleWithLogLevel() {
	mockDB, _, err := sqlmock.NewWithDSN("example-log-level")
	if err != nil {
		log.Fatal(err)
	}
	defer mockDB.Close()
	inner, err := warmpg.ConnectorFromDriver(mockDB.Driver(), "example-log-level")
	if err != nil {
		log.Fatal(err)
	}
	h := slog.NewTextHandler(os.Stdout, &slog.HandlerOptions{
		Level: slog.LevelDebug,
		ReplaceAttr: func(_ []string, a slog.Attr) slog.Attr {
			switch a.Key {
			case slog.TimeKey, "elapsed", "age", "held":
				return slog.Attr{}
			case slog.MessageKey:
				msg, _, _ := strings.Cut(a.Value.String(), " in ")
				return slog.String(a.Key, msg)
			}
			return a
		},
	})
	c, err := warmpg.NewConnector(inner, warmpg.WithLogger(slog.New(h)), warmpg.WithLogLevel(slog.LevelDebug))
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	if _, err := warmpg.WarmDB(context.Background(), db, warmpg.WithMaxIdleConns(1)); err != nil {
		log.Fatal(err)
	}
	// Output:
	// level=DEBUG msg="warmpg: connection checked out" conn=1 in_use=1
	// level=DEBUG msg="warmpg: connection returned" conn=1 in_use=0
	// level=INFO msg="warmpg: warmed 1/1" requested=1 warmed=1 parallelism=1
}
