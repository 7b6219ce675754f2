package gormexample_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/warmpg/warmpg"
	gormexample "github.com/warmpg/warmpg/examples/gorm"
	"github.com/warmpg/warmpg/examples/internal/extest"
)

// GORM by driver name, warmed through gdb.DB().
func ExampleOpenByDriverName() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server() // in an application: the DSN from its configuration
	if err != nil {
		fmt.Println(err)
		return
	}
	schema, drop, err := extest.NewSchema(ctx, srv, "gorm_example")
	if err != nil {
		log.Fatal(err)
	}
	defer drop()

	gdb, rep, err := gormexample.OpenByDriverName(ctx, srv.URL(schema, "pool_max_conns=4", "pool_autocommit=true"))
	if err != nil {
		log.Fatal(err)
	}
	sqlDB, _ := gdb.DB()
	defer sqlDB.Close()
	fmt.Println("warmed:", rep.Warmed, "of", rep.Requested)

	if err := gormexample.Migrate(ctx, gdb); err != nil {
		log.Fatal(err)
	}
	gdb.Create(&[]gormexample.Account{{Owner: "ada", Balance: 100}, {Owner: "bob", Balance: 20}})
	if err := gormexample.Transfer(ctx, gdb, "ada", "bob", 30); err != nil {
		log.Fatal(err)
	}
	accounts, total, err := gormexample.Statement(ctx, gdb)
	if err != nil {
		log.Fatal(err)
	}
	for _, a := range accounts {
		fmt.Println(a.Owner, a.Balance)
	}
	fmt.Println("total", total)
	c, _ := warmpg.Stats(sqlDB)
	fmt.Println("connects:", c.Connects, "autocommit txs:", c.AutocommitTxs)
	// Output:
	// warmed: 4 of 4
	// ada 70
	// bob 50
	// total 120
	// connects: 4 autocommit txs: 1
}
