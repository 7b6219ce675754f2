// Package rawpgx is the recipe for reaching the driver under warmpg:
// (*sql.Conn).Raw hands out warmpg's connection, and warmpg.Unwrap returns
// the one it wraps — pgx's *stdlib.Conn by default — for what only pgx can
// do, such as COPY FROM STDIN with CopyFrom:
//
//	conn, err := db.Conn(ctx)
//	defer conn.Close()
//	err = conn.Raw(func(dc any) error {
//		pgxConn := warmpg.Unwrap(dc).(*stdlib.Conn).Conn()
//		_, err := pgxConn.CopyFrom(ctx, pgx.Identifier{"events"}, cols, src)
//		return err
//	})
//
// With pool_backend=pq, Unwrap returns lib/pq's connection instead (an
// unexported type); lib/pq's COPY goes through database/sql, as
// "copy ... from stdin" prepared in a transaction, and CopyEvents does that.
//
// The connection returns to the pool when conn.Close runs. What the raw
// code left on it (an open transaction, a changed setting) is seen by
// warmpg's reset mode like anything else: the default, check, rolls back
// a transaction left open before the connection is used again.
//
// Behind a wrapper such as otelsql, the function given to Raw gets the
// wrapper's connection: see the otel example for the extra step.
package rawpgx
