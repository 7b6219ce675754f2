package warmpg

import (
	"database/sql"
	"log/slog"
	"slices"
	"strings"
	"testing"
	"time"
)

// withEnv replaces the environment warmpg reads for the length of a test.
func withEnv(t *testing.T, kv ...string) {
	t.Helper()
	old := environ
	environ = func() []string { return kv }
	t.Cleanup(func() { environ = old })
}

// splitCase is a DSN, what the inner driver must get, and the pool_* keys.
type splitCase struct {
	dsn, inner string
	pool       []dsnParam
}

func checkSplit(t *testing.T, cases []splitCase) {
	t.Helper()
	for _, tc := range cases {
		d, err := splitDSN(tc.dsn)
		if err != nil {
			t.Fatalf("splitDSN(%q): %v", tc.dsn, err)
		}
		inner, pool := d.inner, d.pool
		if inner != tc.inner {
			t.Errorf("splitDSN(%q) inner = %q, want %q", tc.dsn, inner, tc.inner)
		}
		if !slices.Equal(pool, tc.pool) {
			t.Errorf("splitDSN(%q) pool = %v, want %v", tc.dsn, pool, tc.pool)
		}
	}
}

func TestSplitDSNURL(t *testing.T) {
	withEnv(t)
	cases := []splitCase{
		{"postgres://u:p@h:5432/db", "postgres://u:p@h:5432/db", nil},
		{"postgres://u@h/db?sslmode=require&pool_max_conns=60&pool_max_idle_conns=50",
			"postgres://u@h/db?sslmode=require", []dsnParam{{"pool_max_conns", "60"}, {"pool_max_idle_conns", "50"}}},
		{"postgresql://h/db?pool_reset=ping", "postgresql://h/db", []dsnParam{{"pool_reset", "ping"}}},
		{"warmpg://h1,h2:5433/db?application_name=a%20b&pool_prewarm=true&connect_timeout=3",
			"postgres://h1,h2:5433/db?application_name=a%20b&connect_timeout=3", []dsnParam{{"pool_prewarm", "true"}}},
		{"WARMPG://h/db", "postgres://h/db", nil},
		// '#' is no delimiter to pgx and libpq: it stays where it was.
		{"postgres://h/db#frag?pool_warm_timeout=1s", "postgres://h/db#frag", []dsnParam{{"pool_warm_timeout", "1s"}}},
		// Encoding of untouched keys is kept byte for byte.
		{"postgres://h/db?options=-c%20search_path%3Dx&pool_reset=none", "postgres://h/db?options=-c%20search_path%3Dx", []dsnParam{{"pool_reset", "none"}}},
	}
	checkSplit(t, cases)
}

func TestSplitDSNKeyValue(t *testing.T) {
	cases := []splitCase{
		{"host=h port=5432 dbname=db", "host=h port=5432 dbname=db", nil},
		{"host=h pool_max_conns=8 dbname=db", "host=h dbname=db", []dsnParam{{"pool_max_conns", "8"}}},
		{"  host = h   pool_reset = 'ping'  password='a b\\'c'", "host = h password='a b\\'c'", []dsnParam{{"pool_reset", "ping"}}},
		{"pool_backend=pq", "", []dsnParam{{"pool_backend", "pq"}}},
		{"", "", nil},
		{"application_name='x y' pool_prewarm='on'", "application_name='x y'", []dsnParam{{"pool_prewarm", "on"}}},
	}
	checkSplit(t, cases)
}

func TestSplitDSNMalformed(t *testing.T) {
	for _, dsn := range []string{
		"host=h dbname",
		"host=h password='unterminated",
		"=x",
		"postgres://h/db?pool_max_conns=%zz",
	} {
		if _, err := splitDSN(dsn); err == nil {
			t.Errorf("splitDSN(%q): no error", dsn)
		}
	}
}

func TestParseConfigDefaults(t *testing.T) {
	withEnv(t)
	cfg, _, err := parseConfig("postgres://h/db", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.backend != BackendPgx || cfg.reset != ResetCheck || cfg.maxConns != 0 ||
		cfg.idleConns() != 2 || cfg.warmTimeout != DefaultWarmTimeout || cfg.prewarm || cfg.autocommit {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, _, err = parseConfig("postgres://h/db?pool_max_conns=60", nil)
	if err != nil {
		t.Fatal(err)
	}
	if got := cfg.idleConns(); got != 60 {
		t.Errorf("pool_max_idle_conns default with pool_max_conns=60: got %d, want 60", got)
	}
}

func TestParseConfigEveryKey(t *testing.T) {
	withEnv(t)
	dsn := "postgres://h/db?pool_backend=pq&pool_max_conns=60&pool_max_idle_conns=50&pool_prewarm=yes" +
		"&pool_reset=Rollback&pool_autocommit=1&pool_max_conn_lifetime=1h&pool_max_conn_idle_time=5m" +
		"&pool_warm_parallelism=16&pool_warm_timeout=2s&pool_read_only=on&pool_max_conn_lifetime_jitter=10m" +
		"&pool_min_idle_conns=4&pool_connect_retry_timeout=0&pool_pgbouncer=true&pool_log_level=Debug&pool_cancel_grace=3s" +
		"&pool_leak_threshold=2s&pool_exhausted_log_interval=30s&pool_lazy_begin=0&pool_warm_statements=5&pool_replan=off" +
		"&pool_password_file=/run/secrets/pw&pool_host_recheck=3s"
	cfg, inner, err := parseConfig(dsn, nil)
	if err != nil {
		t.Fatal(err)
	}
	if inner != "postgres://h/db" {
		t.Errorf("inner = %q", inner)
	}
	want := config{backend: BackendPQ, maxConns: 60, maxIdleConns: 50, prewarm: true, reset: ResetRollback,
		autocommit: true, maxConnLifetime: time.Hour, maxConnIdleTime: 5 * time.Minute, warmParallelism: 16,
		warmTimeout: 2 * time.Second, readOnly: true, lifetimeJitter: 10 * time.Minute, minIdleConns: 4}
	if cfg.backend != want.backend || cfg.maxConns != want.maxConns || cfg.maxIdleConns != want.maxIdleConns ||
		cfg.prewarm != want.prewarm || cfg.reset != want.reset || cfg.autocommit != want.autocommit ||
		cfg.maxConnLifetime != want.maxConnLifetime || cfg.maxConnIdleTime != want.maxConnIdleTime ||
		cfg.warmParallelism != want.warmParallelism || cfg.warmTimeout != want.warmTimeout || cfg.readOnly != want.readOnly ||
		cfg.lifetimeJitter != want.lifetimeJitter || cfg.minIdleConns != want.minIdleConns || cfg.connectRetry != 0 ||
		!cfg.pgbouncer || cfg.logLevel != slog.LevelDebug || cfg.cancelGrace != 3*time.Second ||
		cfg.leakThreshold != 2*time.Second || cfg.exhaustedInterval != 30*time.Second ||
		cfg.lazyBegin || cfg.set&bitLazyBegin == 0 || cfg.warmStmts != 5 || cfg.replan || cfg.set&bitReplan == 0 ||
		cfg.passwordFile != "/run/secrets/pw" || cfg.creds == nil || cfg.hostRecheck != 3*time.Second {
		t.Errorf("got %+v\nwant %+v", cfg, want)
	}
	// Every documented key is exercised above.
	for _, p := range params {
		if !strings.Contains(dsn, p.key+"=") {
			t.Errorf("key %s not covered by this test", p.key)
		}
	}
}

func TestParseConfigRejects(t *testing.T) {
	withEnv(t)
	cases := []struct {
		dsn  string
		want []string // all must appear in the error
	}{
		{"postgres://h/db?pool_max_conn=5", []string{`"pool_max_conn"`, "unknown", "pool_max_conns"}},
		{"postgres://h/db?pool_max_conns=abc", []string{"pool_max_conns", `"abc"`, "0 to 10000"}},
		{"postgres://h/db?pool_max_conns=-1", []string{"pool_max_conns", `"-1"`, "0 to 10000"}},
		{"postgres://h/db?pool_max_conns=1e9", []string{"pool_max_conns", `"1e9"`, "0 to 10000"}},
		{"postgres://h/db?pool_max_conns=1000000000", []string{"pool_max_conns", `"1000000000"`, "0 to 10000"}},
		{"postgres://h/db?pool_max_idle_conns=10001", []string{"pool_max_idle_conns", `"10001"`}},
		{"postgres://h/db?pool_reset=sometimes", []string{"pool_reset", `"sometimes"`, "none, check, ping, rollback or discard"}},
		{"postgres://h/db?pool_prewarm=maybe", []string{"pool_prewarm", `"maybe"`, "true or false"}},
		{"postgres://h/db?pool_autocommit=2", []string{"pool_autocommit", `"2"`, "true or false"}},
		{"postgres://h/db?pool_read_only=ro", []string{"pool_read_only", `"ro"`, "true or false"}},
		{"postgres://h/db?pool_lazy_begin=soon", []string{"pool_lazy_begin", `"soon"`, "true or false"}},
		{"postgres://h/db?pool_replan=sometimes", []string{"pool_replan", `"sometimes"`, "true or false"}},
		{"postgres://h/db?pool_lazy_begin=true&pool_backend=pq", []string{"pool_lazy_begin=true", "pool_backend=pq", "want pool_backend=pgx"}},
		{"postgres://h/db?pool_min_idle_conns=-2", []string{"pool_min_idle_conns", `"-2"`, "0 to 10000"}},
		{"postgres://h/db?pool_max_conns=3&pool_min_idle_conns=4", []string{"pool_min_idle_conns=4", "pool_max_conns=3"}},
		{"postgres://h/db?pool_max_conn_lifetime=1m&pool_max_conn_lifetime_jitter=2m", []string{"pool_max_conn_lifetime_jitter=2m0s", "pool_max_conn_lifetime=1m0s"}},
		{"postgres://h/db?pool_max_conn_lifetime_jitter=1s", []string{"pool_max_conn_lifetime_jitter=1s", "needs a lifetime"}},
		{"postgres://h/db?pool_connect_retry_timeout=-1s", []string{"pool_connect_retry_timeout", `"-1s"`}},
		{"postgres://h/db?pool_host_recheck=0", []string{"pool_host_recheck", `"0"`, "positive duration"}},
		{"postgres://h/db?pool_max_conn_lifetime=-5m", []string{"pool_max_conn_lifetime", `"-5m"`, "duration"}},
		{"postgres://h/db?pool_max_conn_lifetime=30", []string{"pool_max_conn_lifetime", `"30"`, "30s"}},
		{"postgres://h/db?pool_max_conn_idle_time=forever", []string{"pool_max_conn_idle_time", `"forever"`}},
		{"postgres://h/db?pool_warm_timeout=0s", []string{"pool_warm_timeout", `"0s"`, "positive"}},
		{"postgres://h/db?pool_warm_parallelism=0", []string{"pool_warm_parallelism", `"0"`, "1 to 1000"}},
		{"postgres://h/db?pool_backend=mysql", []string{"pool_backend", `"mysql"`, "pgx or pq"}},
		{"postgres://h/db?pool_pgbouncer=transaction", []string{"pool_pgbouncer", `"transaction"`, "true or false"}},
		{"postgres://h/db?pool_log_level=verbose", []string{"pool_log_level", `"verbose"`, "debug, info, warn, error or off"}},
		{"postgres://h/db?pool_max_conns=10&pool_max_idle_conns=20", []string{"pool_max_idle_conns=20", "pool_max_conns=10"}},
		{"host=h pool_max_conns=x", []string{"pool_max_conns", `"x"`}},
		{"host=h pool_nope=1", []string{`"pool_nope"`, "unknown"}},
	}
	for _, tc := range cases {
		_, err := OpenConnector(tc.dsn)
		if err == nil {
			t.Errorf("OpenConnector(%q): no error", tc.dsn)
			continue
		}
		for _, w := range tc.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("OpenConnector(%q) error %q does not contain %q", tc.dsn, err, w)
			}
		}
		// sql.Open reports the same error (it calls OpenConnector).
		if _, err := sql.Open(DriverName, tc.dsn); err == nil {
			t.Errorf("sql.Open(%q): no error", tc.dsn)
		}
	}
}

func TestReportsEveryBadKey(t *testing.T) {
	withEnv(t)
	_, err := OpenConnector("postgres://h/db?pool_max_conns=x&pool_reset=y")
	if err == nil || !strings.Contains(err.Error(), "pool_max_conns") || !strings.Contains(err.Error(), "pool_reset") {
		t.Fatalf("want both bad keys named, got %v", err)
	}
}

func TestPrecedenceEnvDSNOption(t *testing.T) {
	withEnv(t, "WARMPG_POOL_MAX_CONNS=5", "WARMPG_POOL_RESET=ping", "WARMPG_POOL_WARM_TIMEOUT=", "PATH=/bin")
	cfg, _, err := parseConfig("postgres://h/db?pool_reset=none", nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.maxConns != 5 {
		t.Errorf("env WARMPG_POOL_MAX_CONNS: got %d, want 5", cfg.maxConns)
	}
	if cfg.reset != ResetNone {
		t.Errorf("DSN must win over env: reset = %s, want none", cfg.reset)
	}
	if cfg.warmTimeout != DefaultWarmTimeout {
		t.Errorf("empty env var must count as unset: warm timeout %s", cfg.warmTimeout)
	}
	withEnv(t, "WARMPG_POOL_HOST_RECHECK=4s")
	if cfg, _, err := parseConfig("postgres://h/db", nil); err != nil || cfg.hostRecheck != 4*time.Second {
		t.Errorf("env WARMPG_POOL_HOST_RECHECK=4s: got %v, %v", cfg.hostRecheck, err)
	}
	if cfg, _, err := parseConfig("postgres://h/db", []Option{WithHostRecheck(time.Minute)}); err != nil || cfg.hostRecheck != time.Minute {
		t.Errorf("WithHostRecheck(1m) over the env: got %v, %v", cfg.hostRecheck, err)
	}
	withEnv(t, "WARMPG_POOL_MAX_CONNS=5", "WARMPG_POOL_RESET=ping")
	cfg, _, err = parseConfig("postgres://h/db?pool_reset=none", []Option{WithReset(ResetDiscard), WithMaxConns(7)})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.reset != ResetDiscard || cfg.maxConns != 7 {
		t.Errorf("options must win: reset %s maxConns %d", cfg.reset, cfg.maxConns)
	}
}

func TestEnvRejects(t *testing.T) {
	withEnv(t, "WARMPG_POOL_MAX_CONNS=lots")
	_, err := OpenConnector("postgres://h/db")
	if err == nil || !strings.Contains(err.Error(), "WARMPG_POOL_MAX_CONNS") || !strings.Contains(err.Error(), `"lots"`) {
		t.Fatalf("want the variable and value named, got %v", err)
	}
	withEnv(t, "WARMPG_POOL_MAX_CONN=3")
	_, err = OpenConnector("postgres://h/db")
	if err == nil || !strings.Contains(err.Error(), "WARMPG_POOL_MAX_CONN") || !strings.Contains(err.Error(), "unknown") {
		t.Fatalf("want the unknown variable named, got %v", err)
	}
}

func TestOptionRejects(t *testing.T) {
	withEnv(t)
	cases := []struct {
		opt  Option
		want string
	}{
		{WithMaxConns(-1), "pool_max_conns=-1"},
		{WithMaxConns(MaxPoolSize + 1), "pool_max_conns=10001"},
		{WithMaxIdleConns(-3), "pool_max_idle_conns=-3"},
		{WithWarmParallelism(0), "pool_warm_parallelism=0"},
		{WithWarmTimeout(0), "pool_warm_timeout=0s"},
		{WithMaxConnLifetime(-time.Second), "pool_max_conn_lifetime=-1s"},
		{WithMaxConnIdleTime(-time.Second), "pool_max_conn_idle_time=-1s"},
		{WithReset("sometimes"), "pool_reset=sometimes"},
		{WithReset(""), "pool_reset="},
		{WithBackend("mysql"), "pool_backend=mysql"},
		{WithHostRecheck(0), "pool_host_recheck=0s"},
	}
	for _, tc := range cases {
		_, err := OpenConnector("postgres://h/db", tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("want error containing %q, got %v", tc.want, err)
		}
		_, err = NewConnector(&fakeConnector{}, tc.opt)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("NewConnector: want error containing %q, got %v", tc.want, err)
		}
	}
}

func TestParseResetMode(t *testing.T) {
	for _, s := range []string{"none", "check", "ping", "rollback", "discard", " PING "} {
		if _, err := ParseResetMode(s); err != nil {
			t.Errorf("ParseResetMode(%q): %v", s, err)
		}
	}
	if _, err := ParseResetMode("always"); err == nil || !strings.Contains(err.Error(), `"always"`) {
		t.Errorf("ParseResetMode(always): %v", err)
	}
}

// A known secret must never show in an error, whichever form and backend.
func TestErrorsNeverShowPassword(t *testing.T) {
	withEnv(t)
	const secret = "Sup3r-S3cret-Pw"
	dsns := []string{
		"postgres://app:" + secret + "@h/db?pool_max_conns=x",
		"postgres://app:" + secret + "@h/db?pool_bogus=1",
		"postgres://app:" + secret + "@h:notaport/db",
		"postgres://app:" + secret + "@h/db?sslmode=bogus",
		"postgres://app:" + secret + "@h/db?pool_backend=pq&sslmode=bogus",
		"postgres://app@h/db?password=" + secret + "&sslmode=bogus",
		"host=h password=" + secret + " pool_max_conns=x",
		"host=h password='" + secret + "' sslmode=bogus",
		"host=h password=" + secret + " pool_backend=pq sslmode=bogus",
		"host=h password='" + secret + " unterminated",
		"host=h password",
		"host=h password=x " + secret + " dbname=d", // a password that lost its key: a stray word
		secret,
		"postgres://app:" + secret + "@h/db?pool_max_conns=%zz",
		"postgres://app@h/db?password=" + secret + "%zz",
	}
	for _, dsn := range dsns {
		_, err := OpenConnector(dsn)
		if err == nil {
			t.Errorf("OpenConnector(%q): want an error", dsn)
			continue
		}
		if strings.Contains(err.Error(), secret) {
			t.Errorf("error shows the password: %v", err)
		}
		if _, err := sql.Open(DriverName, dsn); err == nil || strings.Contains(err.Error(), secret) {
			t.Errorf("sql.Open error shows the password or is nil: %v", err)
		}
	}
}

// target_session_attrs: combinations that cannot work are refused at open,
// naming both settings; which values ask for a standby (a promoted server
// then no longer matches, see conn.checkServerRole) is read from the DSN for
// pgx (which keeps a function, not the name) and lib/pq alike.
func TestTargetSessionAttrs(t *testing.T) {
	withEnv(t)
	for _, tc := range []struct {
		dsn         string
		err         string
		standbyOnly bool
	}{
		{"host=h", "", false},
		{"host=h target_session_attrs=standby", "", true},
		{"host=h target_session_attrs=prefer-standby", "", true},
		{"host=h target_session_attrs=read-only", "", true},
		{"host=h target_session_attrs=read-only pool_read_only=true", "", false},
		{"host=h target_session_attrs=primary", "", false},
		{"host=h target_session_attrs=read-write", "", false},
		{"postgres://h/db?target_session_attrs=standby", "", true},
		{"host=h target_session_attrs=standby pool_backend=pq", "", true},
		{"host=h target_session_attrs=read-write pool_read_only=true", "pool_read_only=true with target_session_attrs=read-write", false},
		{"host=h target_session_attrs=read-write pool_read_only=true pool_backend=pq", "pool_read_only=true with target_session_attrs=read-write", false},
		{"host=h target_session_attrs=prefer-standby pool_backend=pq", "prefer-standby with pool_backend=pq", false},
	} {
		c, err := OpenConnector(tc.dsn)
		switch {
		case tc.err != "":
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("OpenConnector(%q) = %v, want an error with %q", tc.dsn, err, tc.err)
			}
		case err != nil:
			t.Errorf("OpenConnector(%q): %v", tc.dsn, err)
		default:
			if c.cfg.standbyOnly != tc.standbyOnly {
				t.Errorf("OpenConnector(%q): standbyOnly=%v, want %v", tc.dsn, c.cfg.standbyOnly, tc.standbyOnly)
			}
			c.Close()
		}
	}
}
