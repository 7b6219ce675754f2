// Package extest holds what the examples' tests share: names unique to a
// test, bounded contexts, and the harness's server for Example functions.
// It is test support, not part of any recipe.
package extest

import (
	"context"
	"fmt"
	"reflect"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

var seq atomic.Int64

// Name returns prefix followed by a number unique in this test binary and
// the test's name, lower case and safe as an SQL identifier or an
// application_name: tests share one server, so what they create or count
// must be theirs alone. It stays within PostgreSQL's 63-byte identifiers.
func Name(t testing.TB, prefix string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(t.Name()) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	s := fmt.Sprintf("%s%d_%s", prefix, seq.Add(1), b.String())
	if len(s) > 63 {
		s = s[:63]
	}
	return s
}

// Ctx returns a context that ends after d or when the test ends.
func Ctx(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// Server returns the harness's shared server for an Example function, which
// has no *testing.T to give pgtest.Get: the test binary's TestMain must be
// pgtest.Main's, as for Get. When no server can be had it returns the reason;
// the example then prints it and fails its Output check (an example cannot
// skip).
func Server() (*pgtest.Server, error) {
	return pgtest.Shared()
}

// Schema creates a schema unique to the test on srv, drops it (and what the
// test created in it) when the test ends, and returns the connection
// parameter that makes it the search_path: "search_path=NAME", for
// srv.URL or srv.KeyValue. The recipes' SQL then names its tables plainly,
// as an application's does, and tests sharing the server do not collide.
func Schema(t testing.TB, srv *pgtest.Server) string {
	t.Helper()
	name := Name(t, "s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := srv.Exec(ctx, "create schema "+name); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := srv.Exec(ctx, "drop schema "+name+" cascade"); err != nil {
			t.Errorf("drop schema %s: %v", name, err)
		}
	})
	return "search_path=" + name
}

// NewSchema is Schema for an Example function: it creates the schema name
// on srv and returns the search_path parameter and a function that drops it.
func NewSchema(ctx context.Context, srv *pgtest.Server, name string) (param string, drop func(), err error) {
	name = fmt.Sprintf("%s_%d", name, seq.Add(1))
	if err := srv.Exec(ctx, "drop schema if exists "+name+" cascade; create schema "+name); err != nil {
		return "", nil, err
	}
	return "search_path=" + name, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = srv.Exec(ctx, "drop schema "+name+" cascade")
	}, nil
}

// DistinctCounters returns warmpg.Counters whose field i holds i+100 (in
// seconds for a duration), no two fields alike, and which field each value
// belongs to: an exporter's test finds every field by its value. A field
// of another type fails the test, naming it: the exporters need its unit.
func DistinctCounters(t testing.TB) (warmpg.Counters, map[float64]string) {
	t.Helper()
	var s warmpg.Counters
	v := reflect.ValueOf(&s).Elem()
	durationType := reflect.TypeFor[time.Duration]()
	values := map[float64]string{} // value -> field
	for i := range v.NumField() {
		f := v.Type().Field(i)
		n := int64(i + 100)
		switch {
		case f.Type == durationType:
			v.Field(i).SetInt(n * int64(time.Second))
		case f.Type.Kind() == reflect.Int64:
			v.Field(i).SetInt(n)
		case f.Type == reflect.TypeFor[[]warmpg.HostStats]():
			// One host, up, holding n connections.
			v.Field(i).Set(reflect.ValueOf([]warmpg.HostStats{{Host: "db1:5432", Conns: int(n)}}))
		default:
			t.Fatalf("Counters.%s is a %s: teach the exporters (and their tests) its unit", f.Name, f.Type)
		}
		values[float64(n)] = f.Name
	}
	return s, values
}

// Export is where an exporter puts one field of warmpg.Counters: the
// metric's name with its labels, and whether it is a gauge (what it is now)
// rather than a counter.
type Export struct {
	Metric string
	Gauge  bool
}

// CheckEveryCounter is the end of an exporter's every-counter test: got
// holds, per field of the DistinctCounters it exported, the samples that
// carried its value; want, where each field should go. It fails t for a
// field want does not name, one exported nowhere or more than once, and one
// exported elsewhere than want says.
func CheckEveryCounter(t testing.TB, want map[string]Export, got map[string][]Export) {
	t.Helper()
	for _, f := range reflect.VisibleFields(reflect.TypeFor[warmpg.Counters]()) {
		name := f.Name
		w, ok := want[name]
		if !ok {
			t.Errorf("Counters.%s: no metric named for it in this test; export it and add it here", name)
		}
		switch samples := got[name]; {
		case len(samples) == 0:
			t.Errorf("Counters.%s (%d) is not exported", name, f.Index[0]+100)
		case len(samples) > 1:
			t.Errorf("Counters.%s (%d) is exported %d times: %v", name, f.Index[0]+100, len(samples), samples)
		case ok && samples[0] != w:
			t.Errorf("Counters.%s exported as %+v, want %+v", name, samples[0], w)
		}
	}
}
