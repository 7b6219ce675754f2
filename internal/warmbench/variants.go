package warmbench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	_ "github.com/lib/pq" // the "postgres" driver for the pq variant

	"github.com/warmpg/warmpg"
)

// URLFunc returns a server's URL with extra unescaped "key=value" params,
// as pgtest.Server.URL does (possibly rewritten to go through a proxy).
type URLFunc func(params ...string) string

// Variant is one way to run a benchmarked operation, on its own pool.
type Variant struct {
	Name  string
	Op    func(context.Context) error // the timed operation
	Warm  func(context.Context) error // runs a query on every connection of the pool
	DB    *sql.DB                     // nil for pgxpool
	Pool  *pgxpool.Pool               // pgxpool's, else nil
	Close func()
}

// Reuse variants: each runs "select 1" on a pool of its own. A name without
// a driver prefix is one of warmpg's pool_reset modes; a name ending in
// ExecSuffix is the same variant with default_query_exec_mode=exec (an
// unnamed Parse/Bind/Describe/Execute/Sync every time, what PgBouncer
// setups use; not for "pq", which has no exec modes).
//
//	check            sql.Open("warmpg", url): pool_reset=check, the default
//	none, ping,      the same with pool_reset=none, ping or rollback
//	rollback
//	pgx-never-ping   stdlib.OpenDB with OptionShouldPing returning false: nothing
//	                 at all on reuse, the floor for any database/sql pool
//	pgx-default      sql.Open("pgx", url): pings on first reuse and after 1 s idle
//	pgx-ping-always  OptionShouldPing returning true: a ping before every query
//	                 (SQLAlchemy pool_pre_ping)
//	pgx-rollback     never-ping plus OptionResetSession sending ROLLBACK before
//	                 every reuse (SQLAlchemy's reset-on-return)
//	pgxpool          pgxpool, MaxConns=MinConns=conns, pool.QueryRow: no
//	                 database/sql (pings after 1 s idle, as pgx-default)
//	pq               sql.Open("postgres", url), lib/pq: one simple-protocol Query
const ExecSuffix = "-exec"

// BenchmarkReuseVariants are the variants BenchmarkReuse compares.
var BenchmarkReuseVariants = []string{
	"check", "pgx-never-ping", "pgx-default", "pgx-ping-always", "pgx-rollback", "pgxpool",
	"check-exec", "pgx-never-ping-exec", "pgx-default-exec", "pgx-ping-always-exec", "pgx-rollback-exec", "pgxpool-exec",
	"pq",
}

// ResetModes are the warmpg reset modes the command compares (not discard,
// whose eight statements are a different trade-off).
var ResetModes = []string{"check", "none", "ping", "rollback"}

// Peers are the pools warmpg's reset modes are compared with.
var Peers = []string{"pgx-never-ping", "pgx-default", "pgx-ping-always", "pgx-rollback", "pq", "pgxpool"}

// IsWarmpg reports whether the variant name is one of warmpg's reset modes.
func IsWarmpg(name string) bool { return isMode(strings.TrimSuffix(name, ExecSuffix)) }

// isMode reports whether s is a reset mode's name, exactly.
func isMode(s string) bool {
	m, err := warmpg.ParseResetMode(s)
	return err == nil && string(m) == s
}

// OpenReuseVariants opens a pool of exactly conns warmed connections for
// each named reuse variant. On error it returns the variants opened so far,
// to close.
func OpenReuseVariants(ctx context.Context, url URLFunc, conns int, names []string) ([]*Variant, error) {
	neverPing := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return false })
	alwaysPing := stdlib.OptionShouldPing(func(context.Context, stdlib.ShouldPingParams) bool { return true })
	rollback := stdlib.OptionResetSession(func(ctx context.Context, c *pgx.Conn) error {
		_, err := c.Exec(ctx, "rollback")
		return err
	})
	var vs []*Variant
	for _, name := range names {
		base, exec := strings.CutSuffix(name, ExecSuffix)
		var params []string
		if exec {
			params = append(params, "default_query_exec_mode=exec")
		}
		dsn := url(params...)
		pgxDB := func(opts ...stdlib.OptionOpenDB) func() (*sql.DB, error) {
			return func() (*sql.DB, error) {
				cfg, err := pgx.ParseConfig(dsn)
				if err != nil {
					return nil, err
				}
				return stdlib.OpenDB(*cfg, opts...), nil
			}
		}
		var open func() (*sql.DB, error)
		switch {
		case isMode(base):
			open = func() (*sql.DB, error) {
				return sql.Open("warmpg", url(slices.Concat(params, []string{"pool_reset=" + base})...))
			}
		case base == "pgx-never-ping":
			open = pgxDB(neverPing)
		case base == "pgx-default":
			open = func() (*sql.DB, error) { return sql.Open("pgx", dsn) }
		case base == "pgx-ping-always":
			open = pgxDB(alwaysPing)
		case base == "pgx-rollback":
			open = pgxDB(neverPing, rollback)
		case base == "pq" && !exec:
			open = func() (*sql.DB, error) { return sql.Open("postgres", dsn) }
		case base == "pgxpool":
			v, err := OpenPgxpoolVariant(ctx, name, dsn, conns)
			if err != nil {
				return vs, fmt.Errorf("open %s: %w", name, err)
			}
			vs = append(vs, v)
			continue
		default:
			return vs, fmt.Errorf("warmbench: unknown reuse variant %q", name)
		}
		v, err := OpenSQLVariant(ctx, name, open, conns, SelectOp)
		if err != nil {
			return vs, fmt.Errorf("open %s: %w", name, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// ReadOnlyTxVariants are BenchmarkReadOnlyTx's variants, one connection
// each, pgx's default exec mode:
//
//	select            warmpg: db.QueryRowContext "select 1": one round trip
//	autocommit-ro-tx  warmpg with pool_autocommit=true: BeginTx(ReadOnly),
//	                  tx.QueryRowContext "select 1", Commit: BEGIN and COMMIT
//	                  are not sent (one round trip)
//	warmpg-ro-tx      the same transaction on warmpg without pool_autocommit:
//	                  BEGIN READ ONLY, select, COMMIT (three round trips)
//	pgx-ro-tx         the same on plain sql.Open("pgx", url) (three round trips)
var ReadOnlyTxVariants = []string{"select", "autocommit-ro-tx", "warmpg-ro-tx", "pgx-ro-tx"}

// OpenReadOnlyTxVariants opens the ReadOnlyTxVariants' pools, one warmed
// connection each. On error it returns the variants opened so far, to close.
func OpenReadOnlyTxVariants(ctx context.Context, url URLFunc) ([]*Variant, error) {
	var vs []*Variant
	for _, o := range []struct {
		name, driver, dsn string
		op                func(*sql.DB) func(context.Context) error
	}{
		{"select", "warmpg", url(), SelectOp},
		{"autocommit-ro-tx", "warmpg", url("pool_autocommit=true"), ReadOnlyTxOp},
		{"warmpg-ro-tx", "warmpg", url("pool_lazy_begin=false"), ReadOnlyTxOp},
		{"pgx-ro-tx", "pgx", url(), ReadOnlyTxOp},
	} {
		v, err := OpenSQLVariant(ctx, o.name, func() (*sql.DB, error) { return sql.Open(o.driver, o.dsn) }, 1, o.op)
		if err != nil {
			return vs, fmt.Errorf("open %s: %w", o.name, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// LazyBeginVariants are OpenLazyBeginVariants' names, in order.
var LazyBeginVariants = []string{"statement", "lazy-tx", "eager-tx", "pgx-tx"}

// OpenLazyBeginVariants opens BenchmarkLazyBegin's variants: one warmed
// connection each, running WriteTxOp on table ("" for no table: the
// statement is then a select of its argument, still in a read-write
// transaction).
//
//	statement  warmpg: the transaction's statement alone, no transaction
//	lazy-tx    warmpg, pool_lazy_begin=true (the default)
//	eager-tx   warmpg, pool_lazy_begin=false: BEGIN sent at BeginTx
//	pgx-tx     plain sql.Open("pgx", url)
func OpenLazyBeginVariants(ctx context.Context, url URLFunc, table string) ([]*Variant, error) {
	var vs []*Variant
	for _, o := range []struct {
		name, driver, dsn string
		op                func(*sql.DB) func(context.Context) error
	}{
		{"statement", "warmpg", url(), func(db *sql.DB) func(context.Context) error { return writeOp(db, table) }},
		{"lazy-tx", "warmpg", url("pool_lazy_begin=true"), func(db *sql.DB) func(context.Context) error { return WriteTxOp(db, table) }},
		{"eager-tx", "warmpg", url("pool_lazy_begin=false"), func(db *sql.DB) func(context.Context) error { return WriteTxOp(db, table) }},
		{"pgx-tx", "pgx", url(), func(db *sql.DB) func(context.Context) error { return WriteTxOp(db, table) }},
	} {
		v, err := OpenSQLVariant(ctx, o.name, func() (*sql.DB, error) { return sql.Open(o.driver, o.dsn) }, 1, o.op)
		if err != nil {
			return vs, fmt.Errorf("open %s: %w", o.name, err)
		}
		vs = append(vs, v)
	}
	return vs, nil
}

// writeOp adds one to the counter of row 1 of table (id int, n int).
func writeOp(db interface {
	ExecContext(context.Context, string, ...any) (sql.Result, error)
}, table string) func(context.Context) error {
	if table == "" {
		return func(ctx context.Context) error {
			_, err := db.ExecContext(ctx, "select $1::int", 1)
			return err
		}
	}
	return func(ctx context.Context) error {
		res, err := db.ExecContext(ctx, "update "+table+" set n = n + 1 where id = $1", 1)
		if err == nil {
			var n int64
			if n, err = res.RowsAffected(); err == nil && n != 1 {
				err = fmt.Errorf("updated %d rows, want 1", n)
			}
		}
		return err
	}
}

// WriteTxOp runs writeOp's update in a read-write transaction on db: a
// one-statement transaction, as GORM wraps every Create, Update and Delete.
func WriteTxOp(db *sql.DB, table string) func(context.Context) error {
	return func(ctx context.Context) error {
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		if err := writeOp(tx, table)(ctx); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
}

// CloseVariants closes every pool, giving up on one that takes longer than
// CloseTimeout (pgxpool.Close waits for every connection to come back), and
// returns the errors.
func CloseVariants(vs []*Variant) error {
	var errs []error
	for _, v := range vs {
		ctx, cancel := context.WithTimeout(context.Background(), CloseTimeout)
		if err := Bounded(ctx, "close "+v.Name, func() error { v.Close(); return nil }); err != nil {
			errs = append(errs, err)
		}
		cancel()
	}
	return errors.Join(errs...)
}

// OpenSQLVariant opens a *sql.DB with open and warms conns connections with
// WarmDB, which works on any *sql.DB; the pool is then exactly conns
// connections (SetMaxOpenConns, SetMaxIdleConns).
func OpenSQLVariant(ctx context.Context, name string, open func() (*sql.DB, error), conns int,
	op func(*sql.DB) func(context.Context) error) (*Variant, error) {
	v := &Variant{Name: name, Close: func() {}}
	db, err := open()
	if err != nil {
		return v, err
	}
	db.SetMaxOpenConns(conns)
	db.SetMaxIdleConns(conns)
	rep, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxConns(conns), warmpg.WithMaxIdleConns(conns),
		warmpg.WithLogger(slog.New(slog.DiscardHandler)))
	if err == nil && rep.Warmed != conns {
		err = fmt.Errorf("warmed %d of %d connections", rep.Warmed, conns)
	}
	if err != nil {
		db.Close()
		return v, err
	}
	v.DB, v.Op = db, op(db)
	v.Close = func() { db.Close() }
	v.Warm = func(ctx context.Context) error {
		err := holdEach(ctx, conns, db.Conn,
			func(c *sql.Conn) error { return ScanOne(c.QueryRowContext(ctx, "select 1")) },
			func(c *sql.Conn) { c.Close() })
		if err != nil {
			return err
		}
		if st := db.Stats(); st.OpenConnections != conns || st.MaxOpenConnections != conns {
			return fmt.Errorf("pool has %d connections of at most %d, want %d", st.OpenConnections, st.MaxOpenConnections, conns)
		}
		return nil
	}
	return v, nil
}

// OpenPgxpoolVariant opens a pgxpool of exactly conns connections.
func OpenPgxpoolVariant(ctx context.Context, name, dsn string, conns int) (*Variant, error) {
	v := &Variant{Name: name, Close: func() {}}
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return v, err
	}
	cfg.MaxConns, cfg.MinConns = int32(conns), int32(conns)
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return v, err
	}
	v.Close, v.Pool = pool.Close, pool
	v.Op = func(ctx context.Context) error { return ScanOne(pool.QueryRow(ctx, "select 1")) }
	v.Warm = func(ctx context.Context) error {
		err := holdEach(ctx, conns, pool.Acquire,
			func(c *pgxpool.Conn) error { return ScanOne(c.QueryRow(ctx, "select 1")) },
			(*pgxpool.Conn).Release)
		if err != nil {
			return err
		}
		if got := pool.Stat().TotalConns(); got != int32(conns) {
			return fmt.Errorf("pool has %d connections, want %d", got, conns)
		}
		return nil
	}
	return v, nil
}

// holdEach holds n connections of a pool at once, so that each is a
// different one, runs query on each, then releases them all.
func holdEach[C any](ctx context.Context, n int, acquire func(context.Context) (C, error),
	query func(C) error, release func(C)) error {
	held := make([]C, 0, n)
	defer func() {
		for _, c := range held {
			release(c)
		}
	}()
	for range n {
		c, err := acquire(ctx)
		if err != nil {
			return err
		}
		held = append(held, c)
		if err := query(c); err != nil {
			return err
		}
	}
	return nil
}

// SelectOp runs "select 1" on db.
func SelectOp(db *sql.DB) func(context.Context) error {
	return func(ctx context.Context) error { return ScanOne(db.QueryRowContext(ctx, "select 1")) }
}

// ReadOnlyTxOp runs "select 1" in a read-only transaction on db.
func ReadOnlyTxOp(db *sql.DB) func(context.Context) error {
	return func(ctx context.Context) error {
		tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			return err
		}
		if err := ScanOne(tx.QueryRowContext(ctx, "select 1")); err != nil {
			tx.Rollback()
			return err
		}
		return tx.Commit()
	}
}

// ScanOne scans a row of "select 1" (a *sql.Row or a pgx.Row).
func ScanOne(row interface{ Scan(...any) error }) error {
	var n int
	if err := row.Scan(&n); err != nil {
		return err
	}
	if n != 1 {
		return fmt.Errorf("select 1 returned %d", n)
	}
	return nil
}

// WarmVariants runs each variant's Warm (a query on every connection) and
// then a short untimed batch of its operation.
func WarmVariants(ctx context.Context, vs []*Variant, clients int) error {
	for _, v := range vs {
		if err := Bounded(ctx, "warm "+v.Name, func() error { return v.Warm(ctx) }); err != nil {
			return fmt.Errorf("warm %s: %w", v.Name, err)
		}
		if _, err := RunBatch(ctx, v.Op, 4*clients, clients); err != nil {
			return fmt.Errorf("warm-up batch %s: %w", v.Name, err)
		}
	}
	return nil
}
