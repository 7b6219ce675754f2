// Package sqlmockexample shows how an application that uses warmpg
// unit-tests its own data-access code with go-sqlmock
// (github.com/DATA-DOG/go-sqlmock), with warmpg in the path: the code under
// test runs through warmpg exactly as in production (same options, same
// reset mode, same autocommit), and the mock sees exactly the SQL warmpg
// lets through — so a test can assert what was NOT sent, such as the BEGIN
// and COMMIT a read-only transaction skips with pool_autocommit.
//
// The application keeps its pool settings in one place (PoolOptions) and
// opens its pool with them in production:
//
//	db, err := warmpg.Open(dsn, accounts.PoolOptions()...)
//
// and, in its tests, on go-sqlmock's driver:
//
//	mockDB, mock, err := sqlmock.NewWithDSN(t.Name())
//	inner, err := warmpg.ConnectorFromDriver(mockDB.Driver(), t.Name())
//	c, err := warmpg.NewConnector(inner, accounts.PoolOptions()...)
//	db := sql.OpenDB(c)
//
// go-sqlmock has no connector of its own, hence ConnectorFromDriver, and
// needs a DSN that names its mock, hence NewWithDSN.
//
// What go-sqlmock cannot do: model several connections. Every Open returns
// the same mock connection, so a test of warming, of a pool's size or of
// concurrent use is not a test of a pool. Give the pool one connection
// (db.SetMaxOpenConns(1), and warm one) and test concurrency against a real
// server, as the other examples do.
package sqlmockexample
