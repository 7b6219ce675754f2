// Package warmpg is a database/sql driver for PostgreSQL that wraps a real
// driver (github.com/jackc/pgx/v5/stdlib by default, github.com/lib/pq on
// request, or any driver.Connector) and adds what database/sql's pool lacks:
//
//   - warming: WarmDB opens a pool's connections concurrently, in about the
//     time of one connect instead of one connect per connection;
//   - pool settings in the DSN (pool_max_conns, pool_max_idle_conns, ...),
//     applied by Open and WarmDB;
//   - reset control: what happens when a pooled connection is reused.
//
// It registers itself as "warmpg":
//
//	db, err := sql.Open("warmpg", "postgres://app@db/app?pool_max_conns=60&pool_max_idle_conns=50")
//	rep, err := warmpg.WarmDB(ctx, db) // 50 connections, opened concurrently, now idle in db
//
// Every DSN key that starts with pool_ is warmpg's and is removed before the
// inner driver sees the DSN; everything else reaches the inner driver as it
// was given. Each key can also be set with an environment variable
// (EnvName: WARMPG_POOL_MAX_CONNS, ...) and with an Option; an Option wins
// over the DSN, which wins over the environment.
package warmpg

import (
	"context"
	"database/sql"
	"database/sql/driver"
)

var (
	_ driver.Driver        = (*Driver)(nil)
	_ driver.DriverContext = (*Driver)(nil)
)

// DriverName is the name warmpg registers with database/sql.
const DriverName = "warmpg"

func init() {
	sql.Register(DriverName, &Driver{})
}

// Driver is warmpg's driver.Driver. The registered one parses every name it
// is given as a DSN. The one a *sql.DB reports through db.Driver() belongs to
// that DB's Connector, which is how WarmDB finds the pool settings the DSN
// asked for.
type Driver struct {
	connector *Connector // nil for the registered driver
}

// Open opens one connection. database/sql calls OpenConnector instead; Open
// exists for code that uses a driver.Driver directly (a wrapper that knows
// only driver.Driver makes database/sql call it for every connection).
//
// On the Driver a *sql.DB reports (db.Driver()), Open connects through that
// DB's Connector, whatever name says. On the registered driver it parses
// name and opens one connection with no background work: there is no pool
// for pool_prewarm to warm or pool_min_idle_conns to keep warm, so they
// have no effect there; the other settings apply to the connection.
func (d *Driver) Open(name string) (driver.Conn, error) {
	if d.connector != nil {
		return d.connector.Connect(context.Background())
	}
	c, err := openConnector(name, nil)
	if err != nil {
		return nil, err
	}
	return c.Connect(context.Background())
}

// OpenConnector parses the DSN name and the WARMPG_POOL_* environment and
// returns a *Connector. The error names any bad pool_* key, its value and
// what is allowed; it never shows a password. A name pgx's
// stdlib.RegisterConnConfig returned opens that config, as with "pgx".
func (d *Driver) OpenConnector(name string) (driver.Connector, error) {
	return OpenConnector(name)
}

// Connector returns the Connector this Driver belongs to, or nil for the
// registered driver.
func (d *Driver) Connector() *Connector { return d.connector }
