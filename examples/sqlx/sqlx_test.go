package sqlxexample_test

import (
	"errors"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jmoiron/sqlx"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/examples/internal/extest"
	sqlxexample "github.com/warmpg/warmpg/examples/sqlx"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// pgtest.Main stops the harness's server after the tests and checks with
// goleak that no goroutine outlives them.
func TestMain(m *testing.M) { os.Exit(pgtest.Main(m)) }

// bindAtStart is sqlx's bind type for "warmpg" before any test could call
// sqlx.BindDriver.
var bindAtStart = sqlx.BindType("warmpg")

// sqlx does not know the driver name "warmpg": without help it would leave
// '?' placeholders in the SQL.
func TestWarmpgBindTypeIsUnknown(t *testing.T) {
	if bindAtStart != sqlx.UNKNOWN {
		t.Errorf("sqlx.BindType(\"warmpg\") = %d, want UNKNOWN (%d); if sqlx now knows warmpg, simplify the recipe", bindAtStart, sqlx.UNKNOWN)
	}
	if got := sqlx.BindType("pgx"); got != sqlx.DOLLAR {
		t.Errorf("sqlx.BindType(\"pgx\") = %d, want DOLLAR (%d)", got, sqlx.DOLLAR)
	}
}

// The recipe's DB rewrites every placeholder form into $n. No connection
// is needed: warmpg.Open without pool_prewarm dials nothing.
func TestPlaceholders(t *testing.T) {
	db, err := sqlxexample.Open("postgres://app@127.0.0.1:1/app")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got, want := db.Rebind("select * from t where a = ? and b = ?"), "select * from t where a = $1 and b = $2"; got != want {
		t.Errorf("Rebind = %q, want %q", got, want)
	}
	q, args, err := db.BindNamed("insert into t (a, b) values (:a, :b)", map[string]any{"a": 1, "b": "x"})
	if err != nil || q != "insert into t (a, b) values ($1, $2)" || len(args) != 2 {
		t.Errorf("BindNamed = %q %v %v, want $1, $2 and two args", q, args, err)
	}
	q, args, err = sqlx.In("select * from t where id in (?) and k = ?", []int64{4, 5, 6}, "k")
	if err != nil {
		t.Fatal(err)
	}
	if got, want := db.Rebind(q), "select * from t where id in ($1, $2, $3) and k = $4"; got != want || len(args) != 4 {
		t.Errorf("In + Rebind = %q with %d args, want %q with 4", got, len(args), want)
	}
}

// The pitfall: sqlx.Open("warmpg", ...) with no bind type sends '?' to
// PostgreSQL, which refuses it.
func TestSqlxOpenWithoutBindTypeFails(t *testing.T) {
	old := sqlx.BindType("warmpg")
	sqlx.BindDriver("warmpg", sqlx.UNKNOWN) // as in a process that never registered it
	t.Cleanup(func() { sqlx.BindDriver("warmpg", old) })
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db, err := sqlx.Open("warmpg", srv.URL())
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if got := db.Rebind("a = ?"); got != "a = ?" {
		t.Errorf("Rebind with an unknown bind type = %q, want it unchanged", got)
	}
	var n int
	err = db.GetContext(ctx, &n, db.Rebind("select ?::int"), 1)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42601" {
		t.Errorf("query with '?': %v, want SQLSTATE 42601 (syntax error)", err)
	}
}

// The recipe end to end on a real server: a multi-row named insert, In
// with a slice, a prepared named query; all on warmpg's pool.
func TestRecipe(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	db, err := sqlxexample.Open(srv.URL(extest.Schema(t, srv), "pool_max_conns=3", "pool_prewarm=true"))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, sqlxexample.Schema); err != nil {
		t.Fatal(err)
	}
	users := []sqlxexample.User{{Name: "Ada", Email: "ada@example.com"}, {Name: "Bob", Email: "bob@example.com"}, {Name: "Cy", Email: "cy@example.com"}}
	if err := sqlxexample.CreateUsers(ctx, db, users); err != nil {
		t.Fatal(err)
	}
	got, err := sqlxexample.UsersByID(ctx, db, []int64{1, 3, 99})
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "Ada" || got[1].Name != "Cy" {
		t.Errorf("UsersByID(1, 3, 99) = %v, want Ada and Cy", got)
	}
	u, err := sqlxexample.UserByEmail(ctx, db, "bob@example.com")
	if err != nil || u.ID != 2 || u.Name != "Bob" {
		t.Errorf("UserByEmail(bob) = %+v, %v", u, err)
	}
	if _, err := sqlxexample.UserByEmail(ctx, db, "nobody@example.com"); !errors.Is(err, sqlxexample.ErrNotFound) {
		t.Errorf("UserByEmail(nobody) = %v, want ErrNotFound", err)
	}
	c, ok := warmpg.Stats(db.DB)
	if !ok {
		t.Fatal("warmpg.Stats(db.DB): not warmpg's pool")
	}
	if c.Connects != 3 || c.Discarded != 0 {
		t.Errorf("counters %v: want the 3 prewarmed connections and no discards", c)
	}
}

// The other way: register warmpg's bind type with sqlx once, then
// sqlx.Open("warmpg", ...) rewrites placeholders itself.
func TestBindDriver(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := extest.Ctx(t, 30*time.Second)
	old := sqlx.BindType("warmpg")
	sqlx.BindDriver("warmpg", sqlx.DOLLAR)
	t.Cleanup(func() { sqlx.BindDriver("warmpg", old) }) // process-wide: restore it for the other tests

	db, err := sqlx.Open("warmpg", srv.URL(extest.Schema(t, srv)))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := db.ExecContext(ctx, sqlxexample.Schema); err != nil {
		t.Fatal(err)
	}
	if err := sqlxexample.CreateUsers(ctx, db, []sqlxexample.User{{Name: "Ada", Email: "ada@example.com"}}); err != nil {
		t.Fatal(err)
	}
	u, err := sqlxexample.UserByEmail(ctx, db, "ada@example.com")
	if err != nil || u.Name != "Ada" {
		t.Errorf("UserByEmail = %+v, %v", u, err)
	}
}

// With pool_pgbouncer=true a prepared statement stays in the client (a
// transaction-mode pooler may run each statement on another server
// connection), so Prepare sends nothing and bad SQL fails at the first
// execution instead — sqlx's own TestNamedQueries expects the Prepare to
// fail. Without the setting, Prepare asks the server and fails at once.
func TestPgBouncerPrepareDefersErrors(t *testing.T) {
	srv := pgtest.Get(t)
	for _, backend := range []string{"pgx", "pq"} {
		for _, bouncer := range []bool{false, true} {
			t.Run(backend+"/pool_pgbouncer="+strconv.FormatBool(bouncer), func(t *testing.T) {
				ctx := extest.Ctx(t, 30*time.Second)
				db, err := sqlxexample.Open(srv.URL("pool_backend="+backend, "pool_max_conns=1"), warmpg.WithPgBouncer(bouncer))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				const bad = "select * from no_such_table_warmpg where id = :id"
				st, err := db.PrepareNamedContext(ctx, bad)
				if !bouncer {
					if err == nil {
						st.Close()
						t.Fatal("PrepareNamed of bad SQL succeeded without pool_pgbouncer")
					}
					return
				}
				if err != nil {
					t.Fatalf("PrepareNamed with pool_pgbouncer=true: %v; want no error until the first execution", err)
				}
				defer st.Close()
				var ids []int64
				err = st.SelectContext(ctx, &ids, map[string]any{"id": 1})
				if err == nil || !strings.Contains(err.Error(), "no_such_table_warmpg") {
					t.Fatalf("first execution: %v, want the server's error naming the table", err)
				}
			})
		}
	}
}
