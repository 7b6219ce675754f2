package sqlxexample

import (
	"context"
	"database/sql"
	"errors"

	"github.com/jmoiron/sqlx"

	"github.com/warmpg/warmpg"
)

// Open opens the pool with warmpg.Open (the DSN's pool_* settings applied;
// warm before it returns with pool_prewarm=true) and wraps it for sqlx with
// PostgreSQL's placeholders.
func Open(dsn string, opts ...warmpg.Option) (*sqlx.DB, error) {
	db, err := warmpg.Open(dsn, opts...)
	if err != nil {
		return nil, err
	}
	return sqlx.NewDb(db, "pgx"), nil
}

// User is a row of the users table.
type User struct {
	ID    int64  `db:"id"`
	Name  string `db:"name"`
	Email string `db:"email"`
}

// Schema creates the users table.
const Schema = `create table users (
	id    bigserial primary key,
	name  text not null,
	email text not null unique
)`

// CreateUsers inserts users in one statement: a named query over a slice
// becomes one multi-row INSERT with $1 ... $2n.
func CreateUsers(ctx context.Context, db *sqlx.DB, users []User) error {
	if len(users) == 0 {
		return nil
	}
	_, err := db.NamedExecContext(ctx, `insert into users (name, email) values (:name, :email)`, users)
	return err
}

// UsersByID returns the users whose id is in ids, by id. sqlx.In expands
// the slice into one '?' per element; Rebind turns them into $1, $2, ....
func UsersByID(ctx context.Context, db *sqlx.DB, ids []int64) ([]User, error) {
	if len(ids) == 0 {
		return nil, nil
	}
	query, args, err := sqlx.In(`select id, name, email from users where id in (?) order by id`, ids)
	if err != nil {
		return nil, err
	}
	var users []User
	err = db.SelectContext(ctx, &users, db.Rebind(query), args...)
	return users, err
}

// ErrNotFound is returned when no user matches.
var ErrNotFound = errors.New("user not found")

// UserByEmail returns the user with that email, using a named query with
// a map argument.
func UserByEmail(ctx context.Context, db *sqlx.DB, email string) (User, error) {
	stmt, err := db.PrepareNamedContext(ctx, `select id, name, email from users where email = :email`)
	if err != nil {
		return User{}, err
	}
	defer stmt.Close()
	var u User
	err = stmt.GetContext(ctx, &u, map[string]any{"email": email})
	if errors.Is(err, sql.ErrNoRows) {
		return User{}, ErrNotFound
	}
	return u, err
}
