package otelexample_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"go.opentelemetry.io/otel/attribute"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
	"go.opentelemetry.io/otel/sdk/metric/metricdata"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	otelexample "github.com/warmpg/warmpg/examples/otel"
)

// An instrumented pool: spans for statements and resets, metrics for the
// pool and warmpg's counters. In an application the providers export to a
// collector; here they keep everything in memory to print it.
func ExampleOpen() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server() // in an application: the DSN from its configuration
	if err != nil {
		fmt.Println(err)
		return
	}
	spans := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(spans))
	defer tp.Shutdown(ctx)
	reader := sdkmetric.NewManualReader()
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(reader))
	defer mp.Shutdown(ctx)

	p, rep, err := otelexample.Open(ctx, srv.URL(), otelexample.Config{
		TracerProvider: tp,
		MeterProvider:  mp,
		Name:           "orders",
		Options:        []warmpg.Option{warmpg.WithMaxConns(4), warmpg.WithMaxIdleConns(2)},
	})
	if err != nil {
		log.Fatal(err)
	}
	defer p.Close()
	fmt.Println("warmed", rep.Warmed, "of", rep.Requested)

	var n int
	if err := p.QueryRowContext(ctx, "select 42").Scan(&n); err != nil {
		log.Fatal(err)
	}

	count := map[string]int{}
	for _, s := range spans.Ended() {
		count[s.Name()]++
	}
	fmt.Println("connect spans:", count["sql.connector.connect"], "query spans:", count["sql.conn.query"],
		"reset spans:", count["sql.conn.reset_session"])

	var rm metricdata.ResourceMetrics
	if err := reader.Collect(ctx, &rm); err != nil {
		log.Fatal(err)
	}
	for _, sm := range rm.ScopeMetrics {
		for _, m := range sm.Metrics {
			switch d := m.Data.(type) {
			case metricdata.Sum[int64]:
				if m.Name != "warmpg.reuses" && m.Name != "warmpg.connects" {
					continue
				}
				for _, dp := range d.DataPoints {
					if o, ok := dp.Attributes.Value("warmpg.reuse.outcome"); dp.Value > 0 || (ok && o.AsString() == "clean") {
						fmt.Println(m.Name, attrs(dp.Attributes, "warmpg.reuse.outcome"), dp.Value)
					}
				}
			case metricdata.Gauge[int64]:
				if m.Name != "db.sql.connection.open" {
					continue
				}
				for _, dp := range d.DataPoints {
					fmt.Println(m.Name, attrs(dp.Attributes, "status"), dp.Value)
				}
			}
		}
	}
	// Unordered output:
	// warmed 2 of 2
	// connect spans: 2 query spans: 1 reset spans: 1
	// warmpg.connects [] 2
	// warmpg.reuses [warmpg.reuse.outcome=clean] 1
	// db.sql.connection.open [status=idle] 2
	// db.sql.connection.open [status=inuse] 0
}

// attrs prints the attributes named keys, in order.
func attrs(set attribute.Set, keys ...attribute.Key) []string {
	var out []string
	for _, k := range keys {
		if v, ok := set.Value(k); ok {
			out = append(out, fmt.Sprintf("%s=%s", k, v.Emit()))
		}
	}
	return out
}
