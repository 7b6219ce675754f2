package warmpg_test

import (
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// A session change spelled with U& escapes (issue 24) is reset before the
// next checkout, as its plain spelling is: the lexer reads U&"\0073et_config"
// as set_config, U&'\0072ole' as 'role', and so on. Against a real server,
// both backends, check mode, a pool of one connection.
func TestIntegrationSessionUnicodeEscapes(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	login, _, tenant := conformanceLogin(t, ctx, srv)
	role := "select current_user::text"
	changes := []struct{ name, do, observe string }{
		{"set_config", `select U&"\0073et_config"('statement_timeout','1234',false)`, "select current_setting('statement_timeout')"},
		{"set_config_6_digits", `select U&"\+000073et_config"('statement_timeout','2345',false)`, "select current_setting('statement_timeout')"},
		{"set_config_uescape", `select U&"set!005fconfig" UESCAPE '!' ('search_path', 'pg_catalog', false)`, "select current_setting('search_path')"},
		{"set_config_role", `select U&"\0073et_config"(U&'\0072ole', '` + tenant + `', false)`, role},
		{"set_quoted_role", `SET U&"\0072ole" = ` + tenant, role},
		{"advisory_lock", `select U&"pg_\0061dvisory_lock"(724024)`,
			"select count(*)::text from pg_locks where locktype = 'advisory' and pid = pg_backend_pid()"},
		{"temp_table", `create table U&"pg\005Ftemp".warmpg_uni_t (id int)`,
			"select (to_regclass('pg_temp.warmpg_uni_t') is not null)::text"},
	}
	for _, b := range backends {
		for _, ch := range changes {
			t.Run(string(b)+"/"+ch.name, func(t *testing.T) {
				db, err := warmpg.Open(login.URL("pool_backend="+string(b), "pool_max_conns=1"))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				observe := func() string {
					var v string
					if err := db.QueryRowContext(ctx, ch.observe).Scan(&v); err != nil {
						t.Fatalf("%s: %v", ch.observe, err)
					}
					return v
				}
				fresh := observe()
				if err := execAll(ch.do)(ctx, db, tenant); err != nil {
					t.Fatal(err)
				}
				if got := observe(); got != fresh {
					t.Errorf("after %s the next checkout reads %q, a new session %q", ch.do, got, fresh)
				}
				st, _ := warmpg.Stats(db)
				if st.Reset != 1 || st.Connects != 1 || st.Discarded != 0 {
					t.Errorf("counters %v: want the session reset once, on the one connection", st)
				}
			})
		}
	}
}
