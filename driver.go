// Package warmpg is a database/sql driver for PostgreSQL that opens your
// pool warm.
//
// database/sql opens connections lazily, one request at a time, and each one
// pays a full connect: TCP, TLS negotiation, authentication (about 4 round
// trips) and a server fork. A service that starts cold under traffic pays
// that on its first requests. warmpg wraps a real driver —
// github.com/jackc/pgx/v5/stdlib by default, github.com/lib/pq with
// pool_backend=pq, or any driver.Connector through NewConnector — and adds:
//
//   - concurrent warming: WarmDB opens a pool's connections at once, in
//     about the time of one connect instead of one per connection;
//     pool_prewarm=true does it from the DSN alone, and pool_min_idle_conns
//     keeps ready connections beyond what database/sql holds;
//   - pool settings in the DSN (pool_max_conns, pool_max_idle_conns, ...),
//     applied by Open and WarmDB;
//   - safe reuse with no round trip: the default pool_reset=check sends
//     nothing when a pooled connection is reused, yet hands out none that a
//     server restart killed, and rolls back or resets only what was left
//     dirty;
//   - autocommit for transactions that cannot write (pool_autocommit), and
//     settings for PgBouncer in transaction mode (pool_pgbouncer) and read
//     replicas (pool_read_only);
//   - log/slog events and counters (Stats).
//
// It registers itself as "warmpg" and is a drop-in for existing sql.Open
// calls, GORM, sqlx and go-sqlmock tests:
//
//	db, err := sql.Open("warmpg", "postgres://app@db/app?pool_max_conns=60&pool_max_idle_conns=50")
//	rep, err := warmpg.WarmDB(ctx, db) // 50 connections, opened concurrently, now idle in db
//
// or let Open apply the pool settings, which sql.Open cannot reach, and,
// with pool_prewarm, warm before it returns:
//
//	db, err := warmpg.Open("postgres://app@db/app?pool_max_conns=20&pool_prewarm=true")
//
// # Settings
//
// Every DSN key that starts with pool_ is warmpg's and is removed before the
// inner driver sees the DSN; everything else reaches the inner driver as it
// was given. Each key can also be set with an environment variable
// (EnvName: WARMPG_POOL_MAX_CONNS, ...) and with an Option; an Option wins
// over the DSN, which wins over the environment. Bad input fails sql.Open
// and Open with an error that names the key, the value and what is
// allowed, and never the password.
//
// # GORM and sqlx
//
// With GORM, open the *sql.DB yourself and pass postgres.Config{Conn: db}.
// gorm.io/driver/postgres reads a table's columns over the simple protocol
// only for the driver names "" and "pgx", so with DriverName: "warmpg" an
// AutoMigrate after a schema change fails on pgx's statement cache ("cached
// plan must not change result type"); with pool_backend=pq, DriverName:
// "warmpg" is the form to use. sqlx picks placeholders by driver name and
// does not know "warmpg": use sqlx.NewDb(db, "pgx").
//
// # How a statement runs
//
// Every statement reaches the wrapped driver through one step (step.go),
// whichever way it came — Exec, Query, a prepared statement (Tx.Stmt
// included), Prepare, Ping: its text is read once (internal/sqltext); the
// connection's one state (state.go: idle, autocommit, BEGIN pending, in a
// transaction, failed; the session clean or dirty) decides whether it is
// refused (a lazy transaction whose BEGIN failed) or first upgrades a
// pool_autocommit transaction, and records what the text may change; the
// driver runs it, with a lazy BEGIN in the same write (lazywire.go, which
// also sees what pgx sends through (*sql.Conn).Raw); the replan error is
// resent once when nothing can have run (replan.go); and the BEGIN's
// outcome and the context's end are read back into the error.
// ResetSession (reset.go) reads the state when the connection is reused.
// A feature that acts on statements plugs in there.
//
// The repository's README has the settings table and the measured numbers;
// its docs directory has each mode in detail.
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
