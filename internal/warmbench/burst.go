package warmbench

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// Burst fires n "select 1" queries at once on db and returns each one's
// latency from the burst's start, sorted, and the error of each query that
// failed (nil when none did).
func Burst(ctx context.Context, db *sql.DB, n int) ([]time.Duration, []error) {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = ScanOne(db.QueryRowContext(ctx, "select 1"))
			lat[i] = time.Since(start)
		}()
	}
	wg.Wait()
	slices.Sort(lat)
	var failed []error
	for _, err := range errs {
		if err != nil {
			failed = append(failed, err)
		}
	}
	return lat, failed
}

// FirstBurst is the first burst after a service opens its pool: it opens
// sql.Open("warmpg", dsn) sized to n connections (SetMaxOpenConns,
// SetMaxIdleConns, as an application does), with pool_prewarm=true when
// prewarm, waits start (the service's own start-up), fires n queries at
// once and returns their latencies, sorted. The pool is closed before it
// returns; its server backends may take a moment longer to go away.
func FirstBurst(ctx context.Context, dsn string, n int, start time.Duration, prewarm bool) ([]time.Duration, error) {
	if prewarm {
		sep := "?"
		if strings.Contains(dsn, "?") {
			sep = "&"
		}
		dsn += fmt.Sprintf("%spool_prewarm=true&pool_max_conns=%d", sep, n)
	}
	db, err := sql.Open("warmpg", dsn)
	if err != nil {
		return nil, err
	}
	defer db.Close()
	db.SetMaxOpenConns(n)
	db.SetMaxIdleConns(n)
	select {
	case <-time.After(start):
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	lat, errs := Burst(ctx, db, n)
	if len(errs) > 0 {
		return nil, fmt.Errorf("%d of %d queries failed: %w", len(errs), n, errors.Join(errs...))
	}
	return lat, nil
}
