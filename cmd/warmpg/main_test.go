package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

func TestMain(m *testing.M) {
	// The test binary doubles as the command, so that exit codes can be
	// checked end to end (TestExitCodes).
	if os.Getenv("WARMPG_TEST_RUN_MAIN") == "1" {
		os.Args = append([]string{"warmpg"}, strings.Fields(os.Getenv("WARMPG_TEST_ARGS"))...)
		main()
		os.Exit(0)
	}
	// pgtest.Main also checks with goleak that no goroutine outlives the tests.
	os.Exit(pgtest.Main(m))
}

func ctxT(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// runOK runs the command and fails the test on an error.
func runOK(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	out, _ := runOKErr(t, ctx, args...)
	return out
}

// runOKErr is runOK that also returns what the command wrote to stderr.
func runOKErr(t *testing.T, ctx context.Context, args ...string) (stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	if err := run(ctx, args, &out, &errb); err != nil {
		t.Fatalf("warmpg %s: %v\nstdout:\n%s\nstderr:\n%s", strings.Join(args, " "), err, out.String(), errb.String())
	}
	// Test logs show no password either.
	t.Logf("warmpg %s\n%s", strings.ReplaceAll(strings.Join(args, " "), pgtest.PasswordUserPassword, "xxxxx"), out.String())
	return out.String(), errb.String()
}

// cellSep separates table cells: two spaces or more.
var cellSep = regexp.MustCompile(`\s{2,}`)

// tableRows returns the data rows of the table whose title starts with
// title: the lines after its header line up to the blank line or the first
// note, split into cells. It fails the test if there is no such table or
// it has no rows, or a row has not the header's number of cells.
func tableRows(t *testing.T, out, title string) [][]string {
	t.Helper()
	lines := strings.Split(out, "\n")
	for i, l := range lines {
		if !strings.HasPrefix(strings.TrimSpace(l), title) || i+1 >= len(lines) {
			continue
		}
		head := cellSep.Split(strings.TrimSpace(lines[i+1]), -1)
		var rows [][]string
		for _, l := range lines[i+2:] {
			if l == "" || strings.HasPrefix(l, "  ") {
				break
			}
			cells := cellSep.Split(strings.TrimSpace(l), -1)
			if len(cells) != len(head) {
				t.Fatalf("table %q: row %q has %d cells, header %q has %d", title, l, len(cells), head, len(head))
			}
			rows = append(rows, cells)
		}
		if len(rows) == 0 {
			t.Fatalf("table %q has no rows:\n%s", title, out)
		}
		return rows
	}
	t.Fatalf("no table %q in:\n%s", title, out)
	return nil
}

// number parses a numeric cell ("2619", "7.8×"); ratios ("0.98 / 1.00 /
// 1.03×") give their middle value.
func number(t *testing.T, cell string) float64 {
	t.Helper()
	parts := strings.Split(strings.TrimSuffix(cell, "×"), " / ")
	v, err := strconv.ParseFloat(parts[len(parts)/2], 64)
	if err != nil || v < 0 {
		t.Fatalf("cell %q is not a number", cell)
	}
	return v
}

// rangeCell parses "12.1–15.3" or "12.1" (low = high) and checks that the
// ends are positive and in order.
func rangeCell(t *testing.T, cell string) [2]float64 {
	t.Helper()
	lo, hi, ok := strings.Cut(cell, "–")
	if !ok {
		hi = lo
	}
	r := [2]float64{number(t, lo), number(t, hi)}
	if r[0] <= 0 || r[0] > r[1] {
		t.Errorf("range %q: want 0 < low <= high", cell)
	}
	return r
}

// numbers checks that the given columns of every row are positive numbers
// and returns the first column → numbers.
func numbers(t *testing.T, rows [][]string, cols ...int) map[string][]float64 {
	t.Helper()
	out := map[string][]float64{}
	for _, r := range rows {
		for _, c := range cols {
			v := number(t, r[c])
			if v <= 0 {
				t.Errorf("row %q: column %d is %v, want > 0", r, c, v)
			}
			out[r[0]] = append(out[r[0]], v)
		}
	}
	return out
}

// The demo against a server it is given, at small sizes: every table, every
// number; the restart is skipped (the harness's server is shared).
func TestDemoWithDSN(t *testing.T) {
	srv := pgtest.Get(t)
	out := runOK(t, ctxT(t, 2*time.Minute), "demo", "-dsn", srv.URL(), "-rtt", "1ms", "-n", "4", "-runs", "1",
		"-burst", "4", "-burst-after", "20ms", "-conns", "2", "-clients", "4", "-queries", "40", "-ro-ops", "6")
	if !strings.Contains(out, "1ms injected round-trip time") || !strings.Contains(out, "server at "+srv.Addr()) {
		t.Errorf("no heading")
	}
	warm := numbers(t, tableRows(t, out, "1. Cold vs warmed pool: opening 4 connections"), 1, 2, 3)
	for _, m := range []string{"one-by-one", "warmpg.WarmDB", "pgxpool MinConns"} {
		if len(warm[m]) != 3 {
			t.Errorf("no row for %s", m)
		}
	}
	if warm["one-by-one"][2] != 1 {
		t.Errorf("one-by-one vs itself is %v, want 1", warm["one-by-one"][2])
	}
	numbers(t, tableRows(t, out, "First burst: 4 queries at once"), 1, 2, 3)
	reuse := numbers(t, tableRows(t, out, "2. Reset on reuse"), 1, 2)
	for _, m := range []string{"check", "none", "ping", "rollback"} {
		if len(reuse[m]) != 2 {
			t.Errorf("no row for pool_reset=%s", m)
		}
	}
	if !regexp.MustCompile(`After a fast server restart.*\n  skipped: restarting needs the throwaway cluster`).MatchString(out) {
		t.Error("the restart is not reported as skipped")
	}
	ro := numbers(t, tableRows(t, out, "3. Read-only transactions"), 1, 2, 3)
	if len(ro) != 4 || ro["read-only tx, pool_autocommit=true"][2] != 1 || ro["read-only tx, plain pgx"][2] != 3 {
		t.Errorf("read-only rows: %v", ro)
	}
	rw := numbers(t, tableRows(t, out, "4. Read-write transactions"), 1, 2, 3)
	if len(rw) != 4 || rw["read-write tx, warmpg default"][2] != 2 || rw["read-write tx, plain pgx"][2] != 3 {
		t.Errorf("read-write rows: %v", rw)
	}
}

// The demo with no DSN starts its own cluster, and restarts it.
func TestDemoThrowawayCluster(t *testing.T) {
	if srv := pgtest.Get(t); srv.Kind != pgtest.KindLocal {
		t.Skipf("no local PostgreSQL binaries (the server is %s)", srv.Kind)
	}
	t.Setenv("WARMPG_DEMO_DSN", "")
	out, stderr := runOKErr(t, ctxT(t, 2*time.Minute), "demo", "-rtt", "1ms", "-n", "2", "-runs", "1",
		"-burst", "2", "-burst-after", "0s", "-conns", "1", "-clients", "2", "-queries", "10", "-ro-ops", "3", "-restart-pool", "2")
	if !strings.Contains(out, "throwaway local cluster") {
		t.Errorf("no heading")
	}
	// warmpg's pools in the demo log to slog.Default(), which the demo
	// points at stderr for Warn and above: no warmpg line may reach the
	// terminal between the tables (a pool exhausted by the demo's own
	// queueing, a discarded connection after its restart).
	for _, line := range strings.Split(stderr, "\n") {
		if strings.Contains(line, "warmpg: ") && strings.Contains(line, "level=") {
			t.Errorf("the demo printed a warmpg log line: %s", line)
		}
	}
	if strings.Contains(out, "level=") {
		t.Errorf("the demo printed a log line on stdout:\n%s", out)
	}
	rows := tableRows(t, out, "After a fast server restart: 2 queries at once on each pool of 2")
	if len(rows) != 5 {
		t.Fatalf("%d restart rows, want 5 (4 modes and pgx)", len(rows))
	}
	for _, r := range rows {
		failed, of := number(t, r[1]), number(t, r[2])
		if of != 2 || failed > of || number(t, r[3]) != 0 {
			t.Errorf("restart row %q: want at most 2 of 2 failed, and none on the next burst", r)
		}
		if r[0] == "warmpg check" && failed != 0 {
			t.Errorf("check mode lost %v queries to the restart", failed)
		}
		if len(r) < 5 {
			t.Fatalf("restart row %q has no discarded column", r)
		}
		switch {
		case r[0] == "warmpg check" && number(t, r[4]) < 1:
			t.Errorf("check mode discarded %s dead connections after the restart, want at least 1", r[4])
		case strings.HasPrefix(r[0], "database/sql + pgx") && r[4] != "-":
			t.Errorf("pgx row counts discards: %q", r)
		}
	}
}

// bench at small sizes: every table, every variant, ratios against the
// best peer (TPC-B: against pgxpool), the TPC-B tables adding up and gone
// afterwards, and a well-formed SVG with the TPC-B plot.
func TestBench(t *testing.T) {
	srv := pgtest.Get(t)
	svg := filepath.Join(t.TempDir(), "bench.svg")
	ctx := ctxT(t, 2*time.Minute)
	out := runOK(t, ctx, "bench", "--dsn", srv.URL(), "--rtt", "0", "--clients", "4", "--conns", "2",
		"--reps", "2", "--queries", "40", "--sizes", "4,2", "--tpcb-duration", "200ms", "--tpcb-clients", "2", "--svg", svg)
	tput := numbers(t, tableRows(t, out, "Throughput: select 1, 4 clients on 2 connections, 40 queries"), 1, 2, 3, 4)
	want := []string{"warmpg check", "warmpg none", "warmpg ping", "warmpg rollback",
		"pgx-never-ping", "pgx-default", "pgx-ping-always", "pgx-rollback", "pq", "pgxpool"}
	for _, v := range want {
		q := tput[v]
		if len(q) != 4 || q[0] > q[1] || q[1] > q[2] {
			t.Errorf("%s: %v, want min <= median <= max", v, q)
		}
	}
	best := regexp.MustCompile(`best peer: (\S+) \(highest median\)`).FindStringSubmatch(out)
	if best == nil || tput[best[1]][3] != 1 {
		t.Errorf("no best peer, or its ratio to itself is not 1: %v", best)
	}
	warm := numbers(t, tableRows(t, out, "Warm-up: time to open N connections, 2 repetitions"), 1, 2, 3, 4)
	if len(warm) != 6 || len(warm["2 / warmpg.WarmDB"]) != 4 || len(warm["4 / pgxpool MinConns"]) != 4 {
		t.Errorf("warm rows: %v", warm)
	}
	if !strings.Contains(out, "command: warmpg bench --dsn ") {
		t.Error("the command line is not shown")
	}
	tpcb := numbers(t, tableRows(t, out, "TPC-B (pgbench-like): BEGIN, 5 statements, COMMIT; 2 clients on 2 connections, 200ms per variant per repetition, 2 repetitions"), 1, 2, 3, 4)
	for _, v := range []string{"warmpg", "pgx-stdlib", "pgxpool", "pq"} {
		q := tpcb[v]
		if len(q) != 4 || q[0] > q[1] || q[1] > q[2] {
			t.Errorf("TPC-B %s: %v, want min <= median <= max", v, q)
		}
	}
	if tpcb["pgxpool"][3] != 1 {
		t.Errorf("TPC-B: pgxpool's ratio to itself is %v", tpcb["pgxpool"][3])
	}
	if m := regexp.MustCompile(`(\d+) transactions committed \(warm-up included\), (\d+) history rows; the balances add up`).FindStringSubmatch(out); m == nil || m[1] != m[2] || m[1] == "0" {
		t.Errorf("TPC-B: no count of committed transactions and history rows, or they differ: %v", m)
	}
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	var left int
	if err := conn.QueryRow(ctx, "select count(*) from pg_tables where tablename like 'warmpg\\_tpcb\\_%'").Scan(&left); err != nil || left != 0 {
		t.Errorf("TPC-B tables left after bench: %d (%v)", left, err)
	}
	validSVG(t, svg)
	if b, _ := os.ReadFile(svg); !strings.Contains(string(b), "transactions/s") {
		t.Error("the chart has no TPC-B plot")
	}
}

// check against the harness's server, as the password user, in both DSN
// forms: the limits, a pool that fits, the formula, the warm estimate, and
// a recommended DSN without the password.
func TestCheck(t *testing.T) {
	srv := pgtest.Get(t)
	pw := srv.WithPasswordUser(t)
	ctx := ctxT(t, time.Minute)
	var maxConns int
	conn, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	err = conn.QueryRow(ctx, "select current_setting('max_connections')::int").Scan(&maxConns)
	conn.Close(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for _, dsn := range []string{pw.URL("pool_warm_parallelism=8"), pw.KeyValue("pool_warm_parallelism=8")} {
		out := runOK(t, ctx, "check", dsn, "--instances", "2", "--rps", "1000", "--query-time", "20ms")
		if strings.Contains(out, pgtest.PasswordUserPassword) {
			t.Fatal("the password is in the output")
		}
		srvRows := tableRows(t, out, "Server")
		if srvRows[0][0] != "max_connections" || int(number(t, srvRows[0][1])) != maxConns {
			t.Errorf("max_connections row %q, want %d", srvRows[0], maxConns)
		}
		for _, r := range tableRows(t, out, "In use now") {
			number(t, r[1]) // may be 0
		}
		sz := map[string]string{}
		for _, r := range tableRows(t, out, "Sizing") {
			sz[r[0]] = r[1]
		}
		// 1000 rps over 2 instances × 20 ms × 1.5 = 15 per instance.
		if !strings.HasPrefix(sz["formula pool per instance"], "15 = ") || !strings.HasPrefix(sz["pool per instance"], "15 (from the formula)") ||
			sz["pool × instances"] != "30" || !strings.HasPrefix(sz["fits"], "yes") || sz["pooler (PgBouncer)"] != "not needed" {
			t.Errorf("sizing: %q", sz)
		}
		warm := map[string][2]float64{}
		for _, r := range tableRows(t, out, "Warming") {
			warm[r[0]] = rangeCell(t, r[1])
		}
		one, ok1 := warm["15 with warmpg.WarmDB, 8 at once (estimate)"]
		fleet, ok2 := warm["2 instances warming at once (estimate)"]
		// The estimate comes from connects timed on this machine, which
		// may be loaded: no bound against the one-by-one figure holds for
		// certain, but the fleet's cannot be below one instance's.
		if _, ok3 := warm["15 connections one by one"]; !ok1 || !ok2 || !ok3 || fleet[0] < one[0] || fleet[1] < one[1] {
			t.Errorf("warming rows: %v", warm)
		}
		if !strings.Contains(sz["instances during a deploy"], "3 = 2 + 1") || !strings.Contains(sz["left for other clients"], "10% of the slots") {
			t.Errorf("the assumptions are not stated: %q", sz)
		}
		rec := out[strings.Index(out, "Recommended DSN"):]
		for _, want := range []string{"pool_max_conns=15", "pool_max_idle_conns=15", "pool_prewarm=true", "xxxxx", pgtest.PasswordUser} {
			if !strings.Contains(rec, want) {
				t.Errorf("recommended DSN has no %q: %s", want, rec)
			}
		}
	}
}

// A pool the server cannot give: not fitting, a pooler advised, the pool
// cut to what fits.
func TestCheckDoesNotFit(t *testing.T) {
	srv := pgtest.Get(t)
	out := runOK(t, ctxT(t, time.Minute), "check", srv.URL("pool_max_conns=9000"), "-instances", "3")
	sz := map[string]string{}
	for _, r := range tableRows(t, out, "Sizing") {
		sz[r[0]] = r[1]
	}
	if !strings.HasPrefix(sz["fits"], "NO: the peak exceeds the free slots less the reserve") || sz["pooler (PgBouncer)"] != "advisable" ||
		sz["pool per instance"] != "9000 (from the DSN's pool_max_conns)" {
		t.Errorf("sizing: %q", sz)
	}
	if !strings.Contains(out, "pooler: pool × (instances + deploy surge) = 36000 exceeds the free slots less the reserve") || !strings.Contains(out, "default_query_exec_mode=exec") {
		t.Error("no reason for the pooler")
	}
	if !regexp.MustCompile(`pool_max_conns=\d{1,3}&`).MatchString(out) || !strings.Contains(out, "pool cut to") {
		t.Error("the recommended pool is not cut to fit")
	}
}

// Bad flags and inputs fail with a message naming what was wrong.
func TestBadInput(t *testing.T) {
	refused := "postgres://postgres@127.0.0.1:1/postgres?sslmode=disable"
	for _, tc := range []struct {
		args  []string
		want  string // in the error
		usage bool   // a usageError (exit 2)
	}{
		{[]string{"frobnicate"}, `unknown command "frobnicate"`, true},
		{[]string{"demo", "-n", "0"}, "-n 0: want", true},
		{[]string{"demo", "-n", "100000"}, "-n 100000", true},
		{[]string{"demo", "-rtt", "-1ms"}, "-rtt -1ms", true},
		{[]string{"demo", "-runs", "0"}, "-runs 0", true},
		{[]string{"demo", "-bogus"}, "flag provided but not defined: -bogus", true},
		{[]string{"demo", "extra"}, "demo takes no arguments", true},
		{[]string{"demo", "-dsn", "mysql://x"}, "-dsn", true},
		{[]string{"bench", "-reps", "-1"}, "-reps -1", true},
		{[]string{"bench", "-sizes", "10,x"}, `"x" is not a pool size`, true},
		{[]string{"bench", "-sizes", "10,10"}, "appears twice", true},
		{[]string{"bench", "-sizes", "0"}, "-sizes", true},
		{[]string{"bench", "-conns", "abc"}, "invalid value \"abc\" for flag -conns", true},
		{[]string{"bench", "-svg", "/no/such/dir/x.svg"}, "-svg /no/such/dir/x.svg", true},
		{[]string{"bench", "-tpcb-duration", "2m"}, "-tpcb-duration 2m0s", true},
		{[]string{"bench", "-tpcb-duration", "-1s"}, "-tpcb-duration -1s", true},
		{[]string{"bench", "-tpcb-clients", "0"}, "-tpcb-clients 0", true},
		{[]string{"check"}, "no DSN given", true},
		{[]string{"check", "a=b", "c=d"}, "one DSN expected", true},
		{[]string{"check", "not-a-dsn"}, "bad DSN", true},
		{[]string{"check", "postgres://u:secret@[::1"}, "bad DSN", true},
		{[]string{"check", refused + "&pool_max_conns=lots"}, `pool_max_conns="lots"`, true},
		{[]string{"check", refused + "&pool_bogus=1"}, `unknown DSN key "pool_bogus"`, true},
		{[]string{"check", refused, "-instances", "-1"}, "-instances -1", true},
		{[]string{"check", refused, "-instances", "0"}, "-instances 0", true},
		{[]string{"check", refused, "-rps", "-5", "-query-time", "1s"}, "-rps -5", true},
		{[]string{"check", refused, "-rps", "NaN", "-query-time", "1s"}, "-rps NaN", true},
		{[]string{"check", refused, "-rps", "10", "-query-time", "-1s"}, "-query-time -1s", true},
		{[]string{"check", refused, "-rps", "10"}, "-rps and -query-time go together", true},
		{[]string{"check", refused, "-query-time", "ten"}, `invalid value "ten" for flag -query-time`, true},
		{[]string{"check", refused, "-rps", "100000", "-query-time", "1s"}, "more than any one server can give", true},
		{[]string{"check", refused, "-pool", "-3"}, "-pool -3", true},
		{[]string{"check", refused, "-timeout", "0s"}, "-timeout 0s", true},
		{[]string{"check", refused, "-timeout", "5s"}, "cannot connect", false},
	} {
		var out, errb bytes.Buffer
		err := run(ctxT(t, 30*time.Second), tc.args, &out, &errb)
		switch {
		case err == nil:
			t.Errorf("%q: no error", tc.args)
		case !strings.Contains(err.Error(), tc.want):
			t.Errorf("%q: error %q does not say %q", tc.args, err, tc.want)
		case (exitCode(err) == 2) != tc.usage:
			t.Errorf("%q: exit code %d for %v", tc.args, exitCode(err), err)
		case strings.Contains(err.Error(), "secret"):
			t.Errorf("%q: the password is in the error: %v", tc.args, err)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), nil, &out, &out); err != nil || !strings.Contains(out.String(), "usage") {
		t.Errorf("no args: %v %q", err, out.String())
	}
	for _, cmd := range []string{"demo", "bench", "check"} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), []string{cmd, "-h"}, &out, &errb); !errors.Is(err, flag.ErrHelp) ||
			!strings.Contains(errb.String(), "usage: warmpg "+cmd) {
			t.Errorf("%s -h: %v %q", cmd, err, errb.String())
		}
	}
}

// The binary's exit codes: 2 for bad input, 1 for a server it cannot
// reach, 0 for help; the message on stderr.
func TestExitCodes(t *testing.T) {
	for _, tc := range []struct {
		args string
		code int
		want string
	}{
		{"check -instances -2 postgres://127.0.0.1:1/x", 2, "warmpg: -instances -2"},
		{"check postgres://postgres@127.0.0.1:1/x?sslmode=disable -timeout 5s", 1, "warmpg: check: cannot connect"},
		{"demo -h", 0, "usage: warmpg demo"},
	} {
		cmd := exec.Command(os.Args[0], "-test.run=^$")
		cmd.Env = append(os.Environ(), "WARMPG_TEST_RUN_MAIN=1", "WARMPG_TEST_ARGS="+tc.args)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		code := 0
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			code = ee.ExitCode()
		} else if err != nil {
			t.Fatal(err)
		}
		if code != tc.code || !strings.Contains(stderr.String(), tc.want) {
			t.Errorf("warmpg %s: exit %d, stderr %q; want exit %d and %q", tc.args, code, stderr.String(), tc.code, tc.want)
		}
	}
}

// check never shows a password, whatever its characters and DSN form,
// whether the check succeeds (the trusted superuser: the password is
// ignored by the server but printed in the recommended DSN) or fails
// (warmpg or net/url refuse the DSN; nothing listens on the port).
func TestCheckNeverShowsPassword(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 2*time.Minute)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := l.Addr().(*net.TCPAddr).Port
	l.Close()
	kvQuote := strings.NewReplacer(`\`, `\\`, `'`, `\'`)
	for _, port := range []int{srv.Port, closed} {
		hp := net.JoinHostPort(srv.Host, strconv.Itoa(port))
		for _, ch := range ` '"\/?#&=+%@:` {
			pw := "S3crA" + string(ch) + "tZ9qB"
			for _, dsn := range []string{
				"postgres://" + url.UserPassword(srv.User, pw).String() + "@" + hp + "/" + srv.Database + "?sslmode=disable",
				"postgres://" + srv.User + ":" + pw + "@" + hp + "/" + srv.Database + "?sslmode=disable",
				"postgres://" + srv.User + "@" + hp + "/" + srv.Database + "?sslmode=disable&password=" + url.QueryEscape(pw),
				"postgres://" + srv.User + "@" + hp + "/" + srv.Database + "?sslmode=disable&password=" + pw,
				fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable password='%s'", srv.Host, port, srv.User, srv.Database, kvQuote.Replace(pw)),
				fmt.Sprintf("host=%s port=%d user=%s dbname=%s sslmode=disable password=%s", srv.Host, port, srv.User, srv.Database,
					strings.ReplaceAll(kvQuote.Replace(pw), " ", `\ `)),
			} {
				var out, errb bytes.Buffer
				err := run(ctx, []string{"check", dsn, "--timeout", "5s"}, &out, &errb)
				all := fmt.Sprint(err) + out.String() + errb.String()
				if strings.Contains(all, "S3crA") || strings.Contains(all, "tZ9qB") {
					t.Errorf("check %s (port %d, %q): the password shows:\n%s", strings.Fields(dsn)[0][:10], port, ch, all)
				}
			}
		}
	}
}
