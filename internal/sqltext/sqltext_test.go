package sqltext

import "testing"

func TestScanEffects(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want Effect
	}{
		// Plain reads.
		{"select 1", 0},
		{"SELECT * FROM t WHERE id = $1", 0},
		{"  (select 1) union (select 2)", 0},
		{"with x as (select 1) select * from x", 0},
		{"values (1), (2)", 0},
		{"table t", 0},
		{"show search_path", 0},
		{"explain select 1", 0},
		{"fetch 10 from c", 0},
		{"", 0},
		{";;  ;", 0},
		{"-- only a comment", 0},
		{"select 'begin; set role x'", 0},
		{"select $$; set role x; $$", 0},
		{"select $tag$ $$ ; begin $tag$", 0},
		{`select "set_config"`, 0},
		{"select 1 -- ; set role x", 0},
		{"select 1 /* ; begin */", 0},
		{"select 1 /* a /* nested ; begin */ still ; set role x */", 0},
		{`select E'it\'s ; begin'`, 0},
		{"select 'it''s ; begin'", 0},
		{`select U&'d\0061t\+000061 ; begin'`, 0},
		{`select "weird ""; begin"" name" from t`, 0},
		{"select current_setting('role')", 0},
		{"select my_function()", 0}, // not in the text: documented
		{"select substring(s from 1 for key) from t", 0},
		{"select substring(s for no) from t", 0},
		{"select overlay(s placing 'x' from 1 for key) from t for key share", Lock},

		// Transactions.
		{"BEGIN", Begin},
		{"/* req=1; user=2 */ BEGIN", Begin},
		{"/* x /* y */ z */ BEGIN", Begin},
		{"-- hi\nbegin isolation level serializable", Begin},
		{"start transaction read only", Begin},
		{"commit", End},
		{"end", End},
		{"abort", End},
		{"rollback", End},
		{"rollback to savepoint a", Savepoint},
		{"rollback to a", Savepoint},
		{"savepoint a", Savepoint},
		{"release savepoint a", Savepoint},
		{"prepare transaction 'x'", End},
		{"commit prepared 'x'", 0},
		{"rollback prepared 'x'", 0},
		{"select 1; begin", Begin},
		{"begin; insert into t values (1); commit", Begin | Write | End},

		// Settings and role.
		{"SET search_path = s1", Setting},
		{"set statement_timeout = '1s'", Setting},
		{"SET default_transaction_isolation = 'serializable'", Setting},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", Setting},
		{"set session statement_timeout = 1", Setting},
		{"SET TIME ZONE 'UTC'", Setting},
		{"set local statement_timeout = '100ms'", LocalSetting},
		{"set transaction isolation level serializable", LocalSetting},
		{"set constraints all deferred", LocalSetting},
		{"SET ROLE tenant_a", Setting | Role},
		{"set role = tenant_a", Setting | Role},
		{"set session role tenant_a", Setting | Role},
		{"SET SESSION AUTHORIZATION app", Setting | Role},
		{"set session_authorization = app", Setting | Role},
		{"set local role tenant_a", LocalSetting},
		{"reset role", Setting | Role},
		{"reset session authorization", Setting | Role},
		{"reset all", Setting},
		{"reset search_path", Setting},
		{"discard all", Setting | Role | Prepare | TempObject | AdvisoryLock | Listen | HoldCursor},
		{"discard temp", Setting | TempObject},
		{"discard plans", Setting},
		{"SELECT set_config('role','tenant_a',false)", Setting | Role},
		{"select set_config('ROLE', 'tenant_a', 'off')", Setting | Role},
		{"select pg_catalog.set_config('app.tenant_id', '2', false)", Setting},
		{"select set_config('app.tenant_id', '2', true)", LocalSetting},
		{"select set_config('role', 'x', true)", LocalSetting},
		{"SELECT set_config('role',$1,false)", Setting | Role},
		{"SELECT set_config($1,$2,false)", Setting | Role},
		{"SELECT set_config('app.x',$1,$2)", Setting | LocalSetting},
		{`select "set_config"('app.x', '1', false)`, Setting},
		{"select set_config('app.x', lower('A'), (select false))", Setting | LocalSetting},

		// Other session state.
		{"CREATE TEMP TABLE t (id int)", Write | TempObject},
		{"create temporary table t as select 1", Write | TempObject},
		{"create local temp table t (id int)", Write | TempObject},
		{"create table pg_temp.t (id int)", Write | TempObject},
		{"create table t (id int)", Write},
		{"select pg_advisory_lock(1)", AdvisoryLock},
		{"select pg_try_advisory_lock_shared(1, 2)", AdvisoryLock},
		{"select pg_advisory_unlock_all()", AdvisoryLock},
		{"select pg_advisory_xact_lock(1)", Lock},
		{"LISTEN chan", Listen},
		{"unlisten *", Listen},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT 1", Write | HoldCursor},
		{"declare c cursor for select 1", Write},
		{"PREPARE p AS SELECT 1", Prepare},
		{"deallocate p", Prepare},
		{"deallocate all", Prepare},

		// Writes and locks: not plain reads.
		{"insert into t values (1)", Write},
		{"update t set x = 1", Write},
		{"delete from t", Write},
		{"merge into t using s on true when matched then do nothing", Write},
		{"copy t from stdin", Write},
		{"COPY (select 1) TO STDOUT", Write},
		{"call p()", Write},
		{"do $$ begin perform 1; end $$", Write},
		{"truncate t", Write},
		{"alter table t add column y int", Write},
		{"drop table t", Write},
		{"vacuum", Write},
		{"select * into t2 from t", Write},
		{"select 1 into temp t", Write | TempObject},
		{"SELECT 1 AS x INTO LOCAL TEMPORARY TABLE t", Write | TempObject},
		{"select 1 into pg_temp.t", Write | TempObject},
		{"select 1 into temp_results", Write},
		{"with d as (delete from t returning *) select * from d", Write},
		{"explain analyze insert into t values (1)", Write},
		{"select nextval('s')", Write},
		{"select setval('s', 1)", Write},
		{"select * from t for update", Write | Lock},
		{"select * from t for no key update", Write | Lock},
		{"select * from t for share", Lock},
		{"select * from t for key share", Lock},
		{"select * from t FOR NO KEY UPDATE of t skip locked", Write | Lock},
		{"select * from t for\n/* c */ share nowait", Lock},
		{"lock table t", Lock},
		{"frobnicate", Write},
		{"$1", Write},

		// Names and strings spelled with escapes are what they decode to.
		{`select U&"\0073et_config"('statement_timeout','1234',false)`, Setting},
		{`select u&"SET\005FCONFIG"('role', 'x', false)`, Setting | Role},
		{`select U&"\+000073et_config"('app.x', '1', true)`, LocalSetting},
		{`select U&"set!005fconfig" UESCAPE '!' ('search_path', 'pg_catalog', false)`, Setting},
		{"select U&\"set!005fconfig\" /* c */ uescape -- d\n '!'('app.x', '1', false)", Setting},
		{`select U&"set#005fconfig" UESCAPE E'#' ('app.x', '1', false)`, Setting},
		{`select U&"set#005fconfig" UESCAPE $$#$$ ('app.x', '1', false)`, Setting},
		{`select U&"set#005fconfig"UESCAPE'#'('app.x', '1', false)`, Setting},
		{`select set_config(U&'\0072ole', 'x', false)`, Setting | Role},
		{`select set_config(U&'\0072OLE', 'x', false)`, Setting | Role},
		{`select set_config(U&'\+000072ole', 'x', false)`, Setting | Role},
		{`select set_config(U&'!0072ole' UESCAPE '!', 'x', false)`, Setting | Role},
		{`select set_config(U&'session\005fauthorization', 'x', false)`, Setting | Role},
		{`select set_config(U&'r\\ole', 'x', false)`, Setting},               // r\ole
		{`select set_config(U&'r!!ole' UESCAPE '!', 'x', false)`, Setting},   // r!ole
		{`select set_config(U&'\0072ole' UESCAPE '!', 'x', false)`, Setting}, // '\' is plain here
		{`select set_config('role', 'x', U&'\0074')`, LocalSetting},
		{`select set_config('role', 'x', U&'o\0066f')`, Setting | Role},
		{`select set_config(N'role', 'x', false)`, Setting | Role},
		{`select set_config('it''s', 'x', false)`, Setting},
		{`select set_config(E'\162ole', 'x', false)`, Setting | Role},
		{`select set_config(E'\x72ole', 'x', false)`, Setting | Role},
		{`select set_config(E'\u0072ole', 'x', false)`, Setting | Role},
		{`select set_config(E'\U00000072ole', 'x', false)`, Setting | Role},
		{`select set_config(E'r\o\le', 'x', false)`, Setting | Role},
		{`select set_config(E'r''ole', 'x', false)`, Setting},
		{`select set_config('a.b', 'x', E'\x74rue')`, LocalSetting},
		{`select set_config('a.b', 'x', E'\164')`, LocalSetting},
		{`select U&"pg_\0061dvisory_lock"(1)`, AdvisoryLock},
		{`select U&"pg_\0061dvisory_xact_lock"(1)`, Lock},
		{`select U&"\006Eextval"('s')`, Write},
		{`SET U&"\0072ole" = tenant`, Setting | Role},
		{`set "role" to tenant`, Setting | Role},
		{`set session "ROLE" = tenant`, Setting | Role},
		{`set "session_authorization" = app`, Setting | Role},
		{`set local "role" = tenant`, LocalSetting},
		{`reset "role"`, Setting | Role},
		{`SET U&"\0073earch_path" = pg_catalog`, Setting},
		{`create table "pg_temp".t (id int)`, Write | TempObject},
		{`create table U&"pg\005Ftemp".t (id int)`, Write | TempObject},
		{`create table "PG_TEMP".t (id int)`, Write}, // a schema of that name
		{`select 1 into U&"pg_\0074emp".t`, Write | TempObject},
		{`select U&'\D83D\DE00', U&"\0073et_config"`, 0},
		{`select U&'\0072ole' uescape '!'`, 0},
		{`select 1 as uescape`, 0},

		// An escape the server refuses: what it names is not known.
		{`select U&"\00zzset_config"('app.x', '1', false)`, unsure},
		{`select U&"\0073et_config" UESCAPE`, unsure},
		{`select U&'\0000'`, unsure},
		{`select U&'\+110000'`, unsure},
		{`select U&'\D83D'`, unsure},
		{`select U&'\D83Dx'`, unsure},
		{`select U&'\DE00'`, unsure},
		{`select U&'\'`, unsure},
		{`select U&""`, unsure},
		{`select U&'x' UESCAPE '+'`, unsure},
		{`select U&'x' UESCAPE 'a'`, unsure},
		{`select U&'x' UESCAPE ''''`, unsure},
		{`select U&'x' UESCAPE ' '`, unsure},
		{`select U&'x' UESCAPE '!!'`, unsure},
		{`select U&'x' UESCAPE ''`, unsure},
		{`select U&'x' UESCAPE 1`, unsure},
		{`select U&'x' UESCAPE U&'!'`, unsure},
		{`select U&'x' UESCAPE $1`, unsure},
		{`select E'\u00'`, 0}, // refused, but names nothing
		{`select E'\uD83D'`, 0},
		{`select set_config(E'\u00', 'x', false)`, Setting | Role},
		{`select set_config(E'\000', 'x', false)`, Setting | Role},
		{`select set_config('a.b', 'x', E'\xff')`, Setting | LocalSetting},
		{`select E'\uD83D\uDE00'`, 0},
		{`select E'\xc3\xa9'`, 0},
		{`begin; select U&'\zz'`, Begin | unsure},
	} {
		if got := Scan(tc.sql).Effects; got != tc.want {
			t.Errorf("Scan(%q).Effects = %s, want %s", tc.sql, got, tc.want)
		}
	}
}

func TestScanStatements(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want int
	}{
		{"", 0},
		{"select 1", 1},
		{"select 1;", 1},
		{"select 1; select 2", 2},
		{"select 1;;select 2;", 2},
		{"select ';'; select \";\"", 2},
		{"select $$;$$; select $a$;$a$", 2},
		{"select 1 /* ; */; -- ;\nselect 2", 2},
		{"create rule r as on insert to t do also (insert into u values (1); insert into u values (2))", 1},
		{"select 'unterminated; begin", 1},
		{"select $$unterminated; begin", 1},
		{"select 1 /* unterminated ; begin", 1},
		{`select U&'\zz'; select 1; select U&"a" uescape ; select 2`, 4},
		{`select U&'a' uescape '!'; select 1`, 2},
	} {
		if got := Scan(tc.sql).Statements; got != tc.want {
			t.Errorf("Scan(%q).Statements = %d, want %d", tc.sql, got, tc.want)
		}
	}
}

func TestScanLast(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want Effect
	}{
		{"select 1", 0},
		{"begin", Begin},
		{"commit", End},
		{"begin; insert into t values (1); commit", End},
		{"commit; begin", Begin},
		{"rollback; select 1", End},
		{"begin; savepoint a; rollback to a", Begin},
		{"select 'commit'; begin", Begin},
	} {
		if got := Scan(tc.sql).Last; got != tc.want {
			t.Errorf("Scan(%q).Last = %s, want %s", tc.sql, got, tc.want)
		}
	}
}

// MayHave rules out only texts Scan finds without any session or
// transaction effect.
func TestMayHave(t *testing.T) {
	for _, tc := range []struct {
		sql  string
		want bool
	}{
		{"select 1", false},
		{"SELECT * FROM t WHERE id = $1", false},
		{"  /* x /* y */ */ (select 1)", false},
		{"-- c\ninsert into t values ($1, $2)", false},
		{"update t set x = 1 where id = $1", false},
		{"delete from t", false},
		{"with x as (select 1) select * from x", false},
		{"select * from t for update", false}, // Lock is not one of them
		{"select 1;", true},
		{"select 1; begin", true},
		{"begin", true},
		{"set role x", true},
		{"show search_path", true},
		{"select set_config('a.b', '1', false)", true},
		{"SELECT SET_CONFIG('a.b', '1', false)", true},
		{"select pg_advisory_lock(1)", true},
		{"select 1 into temp t", true},
		{"select 'temp'", true}, // a false alarm: Scan decides
		{"/* unterminated", true},
		{"selectx", true},
		{"", true},
		{`select U&"\0073et_config"('a.b', '1', false)`, true},
		{`select u&'\0072ole'`, true},
		{`select U&"pg_\0061dvisory_lock"(1)`, true},
		{"select a & b, au&b from t", false},
		{`select E'\u00'`, false},
		{`select a&'x'`, false},
	} {
		if got := MayHave(tc.sql, quickEffects); got != tc.want {
			t.Errorf("MayHave(%q) = %v, want %v", tc.sql, got, tc.want)
		}
		if !MayHave(tc.sql, quickEffects) && Scan(tc.sql).Has(quickEffects) {
			t.Errorf("MayHave(%q) is false but Scan finds %s", tc.sql, Scan(tc.sql).Effects)
		}
	}
	if !MayHave("select 1", Write) {
		t.Error("MayHave cannot rule out Write")
	}
}

func TestPlainRead(t *testing.T) {
	if !Scan("select 1").PlainRead() {
		t.Error("select 1 is a plain read")
	}
	if Scan("select 1 for update").PlainRead() {
		t.Error("FOR UPDATE is not a plain read")
	}
	if !Scan("select 1").Has(0) == Scan("select 1").Has(Write) {
		t.Error("Has")
	}
	if !Scan("set role x").Has(SessionState) {
		t.Error("SET ROLE changes session state")
	}
	if Scan("set local role x").Has(SessionState) {
		t.Error("SET LOCAL changes no session state")
	}
}

// FuzzScan checks what must hold for any text: no panic, and a text's
// effects are those of its statements: appending "; select 1" neither adds
// nor removes any (unless the text leaves a string, identifier or comment
// open, which would swallow it).
func FuzzScan(f *testing.F) {
	for _, s := range []string{
		"select 1", "/* x /* y */ z */ BEGIN", "select $$;$$; begin", `select E'\'' ; set role x`,
		"select set_config('role', $1, false)", "declare c cursor with hold for select 1",
		`U&"a""b"`, "$1$2$$", "select 'a'; commit", "(", ")))", "--",
		`select U&"\0073et_config"('statement_timeout','1234',false)`, `select set_config(U&'!0072ole' UESCAPE '!', 'x', false)`,
		`U&"x" uescape`, `U&'x' UESCAPE $a`, `U&"\D83D\DE00" UESCAPE E'\\'`, `E'\u00'`, `U&'a' uescape U&'b' uescape '!'`,
		`set "role" = x`, `create table U&"pg\005Ftemp".t ()`,
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		a := Scan(s)
		if a.Statements < 0 {
			t.Fatal("negative count")
		}
		if !closedText(s) {
			return
		}
		if !MayHave(s, quickEffects) && a.Effects&quickEffects != 0 {
			t.Fatalf("MayHave(%q) = false but Scan finds %s", s, a.Effects)
		}
		b := Scan(s + "\n; select 1")
		if b.Effects != a.Effects {
			t.Fatalf("Scan(%q) = %s but with a select appended %s", s, a.Effects, b.Effects)
		}
		if b.Statements != a.Statements+1 {
			t.Fatalf("Scan(%q) counts %d statements but with a select appended %d", s, a.Statements, b.Statements)
		}
	})
}

// closedText reports whether s ends outside any string, identifier,
// dollar quote, block comment and parenthesis.
func closedText(s string) bool {
	l := lexer{s: s}
	for l.next().kind != tEOF {
	}
	return !l.open && l.depth == 0
}

func TestKeyword(t *testing.T) {
	for in, want := range map[string]string{
		"COPY t FROM STDIN":          "copy",
		"  /* a; b */ -- c\n copy t": "copy",
		"/* x /* y */ z */ Begin":    "begin",
		"((select 1))":               "select",
		"":                           "",
		"'copy'":                     "",
		";copy t":                    "",
		"\"copy\" t":                 "",
	} {
		if got := Keyword(in); got != want {
			t.Errorf("Keyword(%q) = %q, want %q", in, got, want)
		}
	}
}
