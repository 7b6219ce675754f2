package promexample_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	promexample "github.com/warmpg/warmpg/examples/prometheus"
)

// Register a pool's metrics on a registry; here they are gathered and
// printed instead of served on /metrics.
func ExampleRegister() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server() // in an application: the DSN from its configuration
	if err != nil {
		fmt.Println(err)
		return
	}
	db, err := warmpg.Open(srv.URL("pool_max_conns=4", "pool_prewarm=true", "pool_autocommit=true"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	reg := prometheus.NewRegistry()
	if err := promexample.Register(reg, db, "orders"); err != nil {
		log.Fatal(err)
	}

	for range 5 {
		if _, err := db.ExecContext(ctx, "select 1"); err != nil {
			log.Fatal(err)
		}
	}
	tx, err := db.BeginTx(ctx, &sql.TxOptions{ReadOnly: true}) // pool_autocommit: no BEGIN
	if err != nil {
		log.Fatal(err)
	}
	tx.Commit()

	mfs, err := reg.Gather()
	if err != nil {
		log.Fatal(err)
	}
	for _, mf := range mfs {
		switch mf.GetName() {
		case "go_sql_idle_connections", "warmpg_connects_total", "warmpg_reuses_total", "warmpg_autocommit_transactions_total":
			for _, m := range mf.GetMetric() {
				v := m.GetCounter().GetValue() + m.GetGauge().GetValue()
				if v == 0 {
					continue
				}
				fmt.Print(mf.GetName())
				for _, l := range m.GetLabel() {
					fmt.Printf(" %s=%s", l.GetName(), l.GetValue())
				}
				fmt.Println(":", v)
			}
		}
	}
	// Output:
	// go_sql_idle_connections db_name=orders: 4
	// warmpg_autocommit_transactions_total db_name=orders: 1
	// warmpg_connects_total db_name=orders: 4
	// warmpg_reuses_total db_name=orders outcome=clean: 6
}
