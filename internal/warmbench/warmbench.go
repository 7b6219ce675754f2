// Package warmbench fills connection pools the ways warmpg is compared on,
// timing only the fill. The benchmarks (go test -bench BenchmarkWarm) and
// the demo (warmpg demo) share it so they measure the same thing.
package warmbench

import (
	"context"
	"database/sql"
	"fmt"
	"log/slog"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver for OneByOne

	"github.com/warmpg/warmpg"
)

// Method is one way to fill a pool.
type Method string

const (
	// OneByOne: db.Conn one at a time on plain database/sql + pgx, what a
	// cold pool pays as requests arrive one after another.
	OneByOne Method = "one-by-one"
	// WarmDB: warmpg.WarmDB on sql.Open("warmpg", dsn).
	WarmDB Method = "warmpg.WarmDB"
	// Pgxpool: pgxpool with MinConns=N, timed until N connections are idle
	// (pgxpool dials them all at once, unbounded).
	Pgxpool Method = "pgxpool MinConns"
)

// Methods lists every Method, the baseline first.
var Methods = []Method{OneByOne, WarmDB, Pgxpool}

// Fill opens a pool on the URL dsn, fills it with n connections by method,
// and returns the time the fill took. The pool is closed before Fill returns;
// its server backends may take a moment longer to go away.
func Fill(ctx context.Context, method Method, dsn string, n int) (time.Duration, error) {
	switch method {
	case OneByOne:
		db, err := sql.Open("pgx", dsn)
		if err != nil {
			return 0, err
		}
		defer db.Close()
		db.SetMaxIdleConns(n)
		conns := make([]*sql.Conn, 0, n)
		defer func() {
			for _, c := range conns {
				c.Close()
			}
		}()
		start := time.Now()
		for range n {
			c, err := db.Conn(ctx)
			if err != nil {
				return 0, fmt.Errorf("%s: %d of %d: %w", method, len(conns), n, err)
			}
			conns = append(conns, c)
		}
		return time.Since(start), nil

	case WarmDB:
		db, err := warmpg.Open(dsn, warmpg.WithMaxConns(n), warmpg.WithWarmTimeout(time.Minute),
			warmpg.WithLogger(slog.New(slog.DiscardHandler)))
		if err != nil {
			return 0, err
		}
		defer db.Close()
		start := time.Now()
		rep, err := warmpg.WarmDB(ctx, db)
		elapsed := time.Since(start)
		if err != nil {
			return 0, err
		}
		if rep.Warmed != n {
			return 0, fmt.Errorf("%s: warmed %d of %d", method, rep.Warmed, n)
		}
		return elapsed, nil

	case Pgxpool:
		cfg, err := pgxpool.ParseConfig(dsn)
		if err != nil {
			return 0, err
		}
		cfg.MinConns, cfg.MaxConns = int32(n), int32(n)
		start := time.Now()
		pool, err := pgxpool.NewWithConfig(ctx, cfg)
		if err != nil {
			return 0, err
		}
		defer pool.Close()
		// pgxpool reports nothing when its background fill is done: poll.
		for pool.Stat().IdleConns() < int32(n) {
			if err := ctx.Err(); err != nil {
				return 0, fmt.Errorf("%s: %d of %d idle: %w", method, pool.Stat().IdleConns(), n, err)
			}
			time.Sleep(100 * time.Microsecond)
		}
		return time.Since(start), nil
	}
	return 0, fmt.Errorf("warmbench: unknown method %q", method)
}
