package warmpg

import (
	"context"
	"database/sql/driver"
	"testing"
)

// BenchmarkStepOverhead is the statement step's own cost (step.go): a
// QueryContext with one argument on a warmpg connection around a fake
// inner connection that answers at once, against the inner connection
// called directly. The difference is what warmpg adds per statement, with
// no server and no network in the way:
//
//	go test -run '^$' -bench BenchmarkStepOverhead -benchmem .
func BenchmarkStepOverhead(b *testing.B) {
	ctx := context.Background()
	args := []driver.NamedValue{{Ordinal: 1, Value: int64(1)}}
	inner := &fakeConn{}
	b.Run("inner", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			r, _ := inner.QueryContext(ctx, "select $1::int", args)
			r.Close()
		}
	})
	c := &conn{inner: inner, c: &Connector{}}
	b.Run("warmpg", func(b *testing.B) {
		b.ReportAllocs()
		for range b.N {
			r, err := c.QueryContext(ctx, "select $1::int", args)
			if err != nil {
				b.Fatal(err)
			}
			r.Close()
		}
	})
}
