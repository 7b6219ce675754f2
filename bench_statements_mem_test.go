package warmpg_test

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// BenchmarkWarmStatementsServerMemory measures what a warmed statement
// costs the server: pg_backend_memory_contexts' total on one connection
// before and after preparing 32 statements of a shape (the catalog caches
// warmed by one statement of the shape first), and after 6 more
// executions of each (PostgreSQL caches a generic plan from the sixth).
// PostgreSQL 14 or later.
//
//	go test -run '^$' -bench BenchmarkWarmStatementsServerMemory -benchtime 1x .
//
// Metrics: <shape>-prepared-KB and <shape>-executed-KB, per statement.
func BenchmarkWarmStatementsServerMemory(b *testing.B) {
	srv := pgtest.Get(b)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	t := b
	for b.Loop() { // the measurement below is exact: it runs once, untimed
	}
	if err := srv.Exec(ctx, "drop table if exists warmst_memt, warmst_memu; create table warmst_memt (id int primary key, a int, b text, c timestamptz, d numeric, e bool, f text, g int, h bigint, i text); create table warmst_memu (id int primary key, t_id int, x text, y int); insert into warmst_memt select i, i, 'b', now(), i, true, 'f', i, i, 'i' from generate_series(1,1000) i; insert into warmst_memu select i, i, 'x', i from generate_series(1,1000) i; analyze warmst_memt; analyze warmst_memu"); err != nil {
		t.Fatal(err)
	}
	for _, shape := range []struct{ name, q string }{
		{"pk-select-3col", "select id, a, b, %d from warmst_memt where id = $1"},
		{"select-star", "select *, %d from warmst_memt where id = $1"},
		{"join", "select t.*, u.x, u.y, %d from warmst_memt t join warmst_memu u on u.t_id = t.id where t.id = $1 and u.y > $2"},
		{"insert", "insert into warmst_memu (id, t_id, x, y) values ($1, $2, 'x%d', 0) on conflict do nothing"},
	} {
		c, err := srv.Connect(ctx)
		if err != nil {
			t.Fatal(err)
		}
		mem := func() int64 {
			var n int64
			if err := c.QueryRow(ctx, "select sum(total_bytes) from pg_backend_memory_contexts", pgx.QueryExecModeSimpleProtocol).Scan(&n); err != nil {
				t.Fatal(err)
			}
			return n
		}
		// send runs statements first to first+n-1 of the shape in one
		// batch: pgx prepares each the first time, executes it after.
		send := func(first, n int) {
			bt := &pgx.Batch{}
			for i := first; i < first+n; i++ {
				bt.Queue(fmt.Sprintf(shape.q, i), memArgs(shape.name)...)
			}
			if err := c.SendBatch(ctx, bt).Close(); err != nil {
				t.Fatal(err)
			}
		}
		send(1000, 1) // the catalog caches, warmed by one statement of the shape first
		m0 := mem()
		const k = 32
		send(0, k)
		m1 := mem()
		for range 6 {
			send(0, k)
		}
		m2 := mem()
		b.ReportMetric(float64(m1-m0)/1024/k, shape.name+"-prepared-KB")
		b.ReportMetric(float64(m2-m0)/1024/k, shape.name+"-executed-KB")
		c.Close(ctx)
	}
	if err := srv.Exec(ctx, "drop table warmst_memt, warmst_memu"); err != nil {
		t.Fatal(err)
	}
}

func memArgs(name string) []any {
	if name == "join" || name == "insert" {
		return []any{5, 5}
	}
	return []any{5}
}
