package sqlmockexample_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"

	"github.com/DATA-DOG/go-sqlmock"

	"github.com/warmpg/warmpg"
	sqlmockexample "github.com/warmpg/warmpg/examples/sqlmock"
)

// The whole recipe in one place: the application's Store on go-sqlmock
// through warmpg with the production options. No server is needed.
func Example() {
	const dsn = "example-accounts"
	mockDB, mock, err := sqlmock.NewWithDSN(dsn, sqlmock.QueryMatcherOption(sqlmock.QueryMatcherEqual))
	if err != nil {
		log.Fatal(err)
	}
	defer mockDB.Close()
	inner, err := warmpg.ConnectorFromDriver(mockDB.Driver(), dsn)
	if err != nil {
		log.Fatal(err)
	}
	c, err := warmpg.NewConnector(inner, sqlmockexample.PoolOptions()...)
	if err != nil {
		log.Fatal(err)
	}
	db := sql.OpenDB(c)
	defer db.Close()
	db.SetMaxOpenConns(1) // go-sqlmock: one connection, whatever Open is asked

	// Only the two queries: with pool_autocommit a read-only transaction
	// sends no BEGIN and no COMMIT. An unexpected one would fail the call.
	mock.ExpectQuery("select balance from accounts where id = $1").WithArgs(int64(7)).
		WillReturnRows(sqlmock.NewRows([]string{"balance"}).AddRow(120))
	mock.ExpectQuery("select count(*) from transfers where account_id = $1 and state = 'pending'").WithArgs(int64(7)).
		WillReturnRows(sqlmock.NewRows([]string{"count"}).AddRow(2))

	store := &sqlmockexample.Store{DB: db}
	sum, err := store.Summary(context.Background(), 7)
	fmt.Printf("%+v %v\n", sum, err)
	fmt.Println(mock.ExpectationsWereMet())
	// Output:
	// {Balance:120 Pending:2} <nil>
	// <nil>
}
