package sqlxexample_test

import (
	"fmt"
	"log"

	"github.com/jmoiron/sqlx"

	sqlxexample "github.com/warmpg/warmpg/examples/sqlx"
)

// What sqlx sends once it knows warmpg speaks PostgreSQL. Opening dials
// nothing (no pool_prewarm), so this runs without a server.
func ExampleOpen() {
	db, err := sqlxexample.Open("postgres://app@db.invalid/app?pool_max_conns=20")
	if err != nil {
		log.Fatal(err)
	}
	defer db.Close()

	fmt.Println(sqlx.BindType("warmpg") == sqlx.UNKNOWN) // why the recipe names "pgx"
	fmt.Println(db.Rebind("select name from users where id = ? and org = ?"))
	q, _, _ := db.BindNamed("insert into users (name, email) values (:name, :email)", sqlxexample.User{Name: "Ada"})
	fmt.Println(q)
	q, _, _ = sqlx.In("select name from users where id in (?)", []int64{1, 2, 3})
	fmt.Println(db.Rebind(q))
	fmt.Println("max open:", db.Stats().MaxOpenConnections)
	// Output:
	// true
	// select name from users where id = $1 and org = $2
	// insert into users (name, email) values ($1, $2)
	// select name from users where id in ($1, $2, $3)
	// max open: 20
}
