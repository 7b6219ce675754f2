package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// conformanceLogin creates a non-superuser login role and a role it may
// SET ROLE to, and returns the server as that login and both names.
func conformanceLogin(t *testing.T, ctx context.Context, srv *pgtest.Server) (login *pgtest.Server, app, tenant string) {
	t.Helper()
	n := appSeq.Add(1)
	app, tenant = fmt.Sprintf("warmpg_conf_app_%d", n), fmt.Sprintf("warmpg_conf_tenant_%d", n)
	if err := srv.Exec(ctx, fmt.Sprintf("create role %s login; create role %s; grant %s to %s", app, tenant, tenant, app)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		srv.Exec(context.Background(), fmt.Sprintf("drop role if exists %s; drop role if exists %s", app, tenant))
	})
	return srv.WithUser(app, ""), app, tenant
}

// sessionKind is one way a user of a connection can change what the next
// user of it gets.
type sessionKind struct {
	name string
	// session: the change outlives a transaction (a setting, the role, a
	// temporary table, ...). Else it is a transaction left open.
	session bool
	// do is what user A does with the pool's one connection.
	do func(ctx context.Context, db *sql.DB, tenant string) error
	// observe is what user B reads; it differs from what a new session
	// reads if A's change reached B. For a transaction left open (observe
	// ""), B inserts a row, and the row is lost when the pool closes if B
	// ran inside A's transaction.
	observe string
}

// execAll runs qs on one *sql.Conn, then returns it to the pool.
func execAll(qs ...string) func(context.Context, *sql.DB, string) error {
	return func(ctx context.Context, db *sql.DB, _ string) error {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		for _, q := range qs {
			if _, err := c.ExecContext(ctx, q); err != nil {
				return fmt.Errorf("%s: %w", q, err)
			}
		}
		return nil
	}
}

// execPrepared prepares q on the pool (db.Prepare: the connection goes
// back to the pool in between, and is reset) and executes it once.
func execPrepared(q string, args func(tenant string) []any) func(context.Context, *sql.DB, string) error {
	return func(ctx context.Context, db *sql.DB, tenant string) error {
		st, err := db.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		defer st.Close()
		if _, err := st.ExecContext(ctx, args(tenant)...); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
		return nil
	}
}

// execConnPrepared prepares q on a *sql.Conn and executes it once.
func execConnPrepared(q string) func(context.Context, *sql.DB, string) error {
	return func(ctx context.Context, db *sql.DB, _ string) error {
		c, err := db.Conn(ctx)
		if err != nil {
			return err
		}
		defer c.Close()
		st, err := c.PrepareContext(ctx, q)
		if err != nil {
			return err
		}
		defer st.Close()
		_, err = st.ExecContext(ctx)
		return err
	}
}

// conformanceRows is where user B writes, to tell whether it ran inside A's
// transaction.
const conformanceRows = "warmpg_conf_rows"

// rowsWithKey counts, on a connection of its own, the rows of
// conformanceRows with key k.
func rowsWithKey(t *testing.T, ctx context.Context, srv *pgtest.Server, k string) int {
	t.Helper()
	c, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "select count(*) from "+conformanceRows+" where k = $1", k).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func sessionKinds() []sessionKind {
	noArgs := func(string) []any { return nil }
	role := "select current_user::text"
	temp := "select (to_regclass('pg_temp.warmpg_conf_t') is not null)::text"
	return []sessionKind{
		{name: "set_role", session: true, observe: role, do: func(ctx context.Context, db *sql.DB, tenant string) error {
			return execAll("SET ROLE "+tenant)(ctx, db, tenant)
		}},
		{name: "set_config_role", session: true, observe: role, do: func(ctx context.Context, db *sql.DB, tenant string) error {
			return execAll("SELECT set_config('role', '"+tenant+"', false)")(ctx, db, tenant)
		}},
		{name: "prepared_set_config_role", session: true, observe: role,
			do: execPrepared("SELECT set_config('role',$1,false)", func(tenant string) []any { return []any{tenant} })},
		{name: "search_path", session: true, observe: "select current_setting('search_path')", do: execAll("SET search_path = pg_catalog")},
		{name: "statement_timeout", session: true, observe: "select current_setting('statement_timeout')", do: execAll("SET statement_timeout = '4321ms'")},
		{name: "default_transaction_isolation", session: true, observe: "select current_setting('default_transaction_isolation')",
			do: execAll("SET default_transaction_isolation = 'serializable'")},
		{name: "session_characteristics", session: true, observe: "select current_setting('default_transaction_isolation')",
			do: execAll("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ")},
		{name: "time_zone", session: true, observe: "select current_setting('TimeZone')", do: execAll("SET TIME ZONE 'Asia/Tokyo'")},
		{name: "custom_setting", session: true, observe: "select coalesce(current_setting('app.tenant_id', true), '')",
			do: execAll("SELECT set_config('app.tenant_id', '7', false)")},
		{name: "temp_table", session: true, observe: temp, do: execAll("CREATE TEMP TABLE warmpg_conf_t (id int)")},
		{name: "select_into_temp", session: true, observe: temp, do: execAll("SELECT 1 AS x INTO TEMP warmpg_conf_t")},
		{name: "advisory_lock", session: true, observe: "select count(*)::text from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()",
			do: execAll("SELECT pg_advisory_lock(724011)")},
		{name: "listen", session: true, observe: "select count(*)::text from pg_listening_channels()", do: execAll("LISTEN warmpg_conf")},
		{name: "hold_cursor", session: true, observe: "select count(*)::text from pg_cursors",
			do: execAll("DECLARE warmpg_conf_c CURSOR WITH HOLD FOR SELECT 1")},
		{name: "sql_prepare", session: true, observe: "select count(*)::text from pg_prepared_statements where from_sql",
			do: execAll("PREPARE warmpg_conf_p AS SELECT 1")},

		{name: "begin", do: execAll("BEGIN")},
		{name: "start_transaction", do: execAll("START TRANSACTION")},
		{name: "begin_after_comment", do: execAll("/* req=1; user=2 */ BEGIN")},
		{name: "begin_after_nested_comment", do: execAll("/* x /* y */ z */ BEGIN")},
		{name: "begin_in_a_multi_statement_string", do: execAll("select 1; BEGIN")},
		{name: "prepared_begin", do: execPrepared("BEGIN", noArgs)},
		{name: "conn_prepared_begin", do: execConnPrepared("BEGIN")},
	}
}

// leaks is the documented outcome, the README's "what each mode catches":
// no mode lets the next user run inside a transaction left open; check and
// discard reset every session change a statement's text shows; none, ping
// and rollback reset no session state.
func leaks(k sessionKind, mode warmpg.ResetMode) bool {
	if !k.session {
		return false
	}
	return mode == warmpg.ResetNone || mode == warmpg.ResetPing || mode == warmpg.ResetRollback
}

// The session-state conformance test: every kind of change × every reset
// mode × both backends, against a real server, through a pool of one
// connection so that user B certainly gets user A's connection. A logs in
// as a non-superuser. In check and discard modes the connection is also
// kept (reset, not redialled).
func TestIntegrationSessionConformance(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 5*time.Minute)
	login, app, tenant := conformanceLogin(t, ctx, srv)
	if err := srv.Exec(ctx, fmt.Sprintf("create table if not exists %s (k text); grant insert on %s to %s", conformanceRows, conformanceRows, app)); err != nil {
		t.Fatal(err)
	}
	modes := []warmpg.ResetMode{warmpg.ResetNone, warmpg.ResetCheck, warmpg.ResetPing, warmpg.ResetRollback, warmpg.ResetDiscard}
	var table strings.Builder
	table.WriteString("\n| state | backend |")
	for _, m := range modes {
		fmt.Fprintf(&table, " %s |", m)
	}
	table.WriteString("\n|---|---|" + strings.Repeat("---|", len(modes)) + "\n")
	for _, k := range sessionKinds() {
		for _, b := range backends {
			fmt.Fprintf(&table, "| %s | %s |", k.name, b)
			for _, mode := range modes {
				got := "?"
				t.Run(k.name+"/"+string(b)+"/"+string(mode), func(t *testing.T) {
					db, err := warmpg.Open(login.URL("pool_backend="+string(b), "pool_max_conns=1", "pool_reset="+string(mode)))
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					observe := func() string {
						var v string
						if err := db.QueryRowContext(ctx, k.observe).Scan(&v); err != nil {
							t.Fatalf("%s: %v", k.observe, err)
						}
						return v
					}
					var fresh string
					if k.observe != "" {
						fresh = observe()
					}
					if err := k.do(ctx, db, tenant); err != nil {
						t.Fatal(err)
					}
					var leaked bool
					var seen string
					if k.observe != "" {
						seen = observe()
						leaked = seen != fresh
					} else {
						key := k.name + "/" + string(b) + "/" + string(mode)
						if _, err := db.ExecContext(ctx, "insert into "+conformanceRows+" (k) values ($1)", key); err != nil {
							t.Fatal(err)
						}
						st, _ := warmpg.Stats(db)
						db.Close() // a transaction still open is rolled back
						n := rowsWithKey(t, ctx, srv, key)
						leaked, seen = n == 0, fmt.Sprintf("%d rows of its insert after the pool closed (counters %v)", n, st)
					}
					got = "reset"
					if leaked {
						got = "**leaks**"
					}
					if leaked != leaks(k, mode) {
						t.Errorf("user B reads %q (a new session: %q): leaked=%v, documented %v", seen, fresh, leaked, leaks(k, mode))
					}
					st, _ := warmpg.Stats(db)
					if (mode == warmpg.ResetCheck || mode == warmpg.ResetDiscard) && (st.Connects != 1 || st.Discarded != 0) {
						t.Errorf("counters %v: want the connection reset and kept", st)
					}
				})
				fmt.Fprintf(&table, " %s |", got)
			}
			table.WriteString("\n")
		}
	}
	t.Log(table.String())
}
