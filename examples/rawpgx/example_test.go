package rawpgx_test

import (
	"context"
	"fmt"
	"log"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	"github.com/warmpg/warmpg/examples/rawpgx"
)

// COPY through pgx on a warmpg pool.
func ExampleCopyEvents() {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv, err := extest.Server() // in an application: the DSN from its configuration
	if err != nil {
		fmt.Println(err)
		return
	}
	schema, drop, err := extest.NewSchema(ctx, srv, "rawpgx_example")
	if err != nil {
		log.Fatal(err)
	}
	defer drop()

	db, err := warmpg.Open(srv.URL(schema))
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, rawpgx.Schema); err != nil {
		log.Fatal(err)
	}
	at := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	n, err := rawpgx.CopyEvents(ctx, db, []rawpgx.Event{
		{ID: 1, Kind: "signup", At: at}, {ID: 2, Kind: "login", At: at}, {ID: 3, Kind: "login", At: at},
	})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println("copied", n)

	// Any pgx feature, on a connection from the pool: here a batch, one
	// round trip for both queries.
	err = rawpgx.WithPgxConn(ctx, db, func(c *pgx.Conn) error {
		b := &pgx.Batch{}
		b.Queue("select count(*) from events where kind = $1", "login")
		b.Queue("select max(id) from events")
		br := c.SendBatch(ctx, b)
		defer br.Close()
		var logins, maxID int64
		if err := br.QueryRow().Scan(&logins); err != nil {
			return err
		}
		if err := br.QueryRow().Scan(&maxID); err != nil {
			return err
		}
		fmt.Println("logins", logins, "max id", maxID)
		return nil
	})
	if err != nil {
		log.Fatal(err)
	}
	// Output:
	// copied 3
	// logins 2 max id 3
}
