package databasesql_test

import (
	"context"
	"database/sql"
	"fmt"
	"log"
	"strings"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/databasesql"
	"github.com/warmpg/warmpg/examples/internal/extest"
)

// Existing sql.Open code: change the driver name, put the pool settings in
// the DSN, warm once at start-up.
func ExampleOpenPool() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server() // in an application: the DSN from its configuration
	if err != nil {
		fmt.Println(err)
		return
	}
	db, err := databasesql.OpenPool(ctx, srv.URL("pool_max_conns=8", "pool_max_idle_conns=4"))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	st := db.Stats()
	fmt.Println("max open:", st.MaxOpenConnections, "idle:", st.Idle)
	c, _ := warmpg.Stats(db)
	fmt.Println("connects:", c.Connects)
	// Output:
	// max open: 8 idle: 4
	// connects: 4
}

// What a read-only transaction becomes with pool_autocommit: no BEGIN, so
// its two statements are two transactions, and the server does not enforce
// ReadOnly unless the pool is pool_read_only.
func ExampleReadTotals_autocommit() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server()
	if err != nil {
		fmt.Println(err)
		return
	}
	for _, params := range [][]string{nil, {"pool_autocommit=true"}, {"pool_autocommit=true", "pool_read_only=true"}} {
		db, err := sql.Open("warmpg", srv.URL(params...))
		if err != nil {
			log.Fatal(err)
		}
		oneTx, readOnly, err := txShape(ctx, db, &sql.TxOptions{ReadOnly: true})
		if err != nil {
			log.Fatal(err)
		}
		c, _ := warmpg.Stats(db)
		fmt.Printf("%-41q one transaction: %-5v read-only: %-3s autocommit txs: %d\n", strings.Join(params, "&"), oneTx, readOnly, c.AutocommitTxs)
		db.Close()
	}
	// Output:
	// ""                                        one transaction: true  read-only: on  autocommit txs: 0
	// "pool_autocommit=true"                    one transaction: false read-only: off autocommit txs: 1
	// "pool_autocommit=true&pool_read_only=true" one transaction: false read-only: on  autocommit txs: 1
}
