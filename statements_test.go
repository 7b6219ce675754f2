package warmpg

import (
	"fmt"
	"slices"
	"strings"
	"testing"
)

// The Space-Saving counter finds the most run statements of a skewed
// stream, in bounded memory, and forgets on request.
func TestHotStmtsTop(t *testing.T) {
	h := newHotStmts(4) // 16 slots
	// 4 hot statements (run 334, 250, 200, 167 times) among 1,000 one-offs:
	// each more than 1/16 of the stream, which Space-Saving guarantees to find.
	for i := range 1000 {
		h.observe(fmt.Sprintf("cold %d", i))
		for j, every := range []int{3, 4, 5, 6} {
			if i%every == 0 {
				h.observe(fmt.Sprintf("hot %d", j))
			}
		}
	}
	if got, want := h.top(4), []string{"hot 0", "hot 1", "hot 2", "hot 3"}; !slices.Equal(got, want) {
		t.Errorf("top(4) = %q, want %q", got, want)
	}
	if got := h.top(2); !slices.Equal(got, []string{"hot 0", "hot 1"}) {
		t.Errorf("top(2) = %q", got)
	}
	if len(h.byText) != 16 || len(h.h) != 16 {
		t.Errorf("tracked %d/%d, want 16", len(h.byText), len(h.h))
	}
	for _, s := range h.top(16) {
		if strings.HasPrefix(s, "cold") {
			t.Errorf("a one-off statement counts as hot: %q", s)
		}
	}
	h.forget("hot 0")
	if got := h.top(4); slices.Contains(got, "hot 0") || len(got) != 3 {
		t.Errorf("after forget: %q", got)
	}
	h.observe(strings.Repeat("x", hotMaxSQL+1))
	if _, ok := h.byText[strings.Repeat("x", hotMaxSQL+1)]; ok {
		t.Error("a statement longer than hotMaxSQL was tracked")
	}
}

// Counts halve as samples accumulate, so a statement that stopped running
// makes room for the new hot ones.
func TestHotStmtsAging(t *testing.T) {
	h := newHotStmts(1) // 16 slots; halving every 1,024 samples
	for range 1000 {
		h.observe("old")
	}
	for range 5000 {
		h.observe("new")
	}
	if got := h.top(1); !slices.Equal(got, []string{"new"}) {
		t.Errorf("top(1) = %q, want [new]", got)
	}
	if e := h.byText["old"]; e == nil || e.count >= 1000 {
		t.Errorf("old's count did not age: %+v", e)
	}
}

func TestWarmStatementsConfig(t *testing.T) {
	withEnv(t)
	cfg, _, err := parseConfig("postgres://h/db", nil)
	if err != nil || cfg.warmStmts != DefaultWarmStatements {
		t.Fatalf("default: %d %v", cfg.warmStmts, err)
	}
	cfg, _, err = parseConfig("postgres://h/db?pool_warm_statements=0", []Option{WithWarmStatementLimit(7)})
	if err != nil || cfg.warmStmts != 7 {
		t.Errorf("option over DSN: %d %v", cfg.warmStmts, err)
	}
	withEnv(t, "WARMPG_POOL_WARM_STATEMENTS=3")
	cfg, _, err = parseConfig("postgres://h/db", []Option{WithWarmStatements("select $1::int", "select $1::int", "select $1::text")})
	if err != nil || cfg.warmStmts != 3 || !slices.Equal(cfg.warmDeclared, []string{"select $1::int", "select $1::text"}) {
		t.Errorf("env and declared: %d %q %v", cfg.warmStmts, cfg.warmDeclared, err)
	}
	withEnv(t)
	for dsn, opts := range map[string][]Option{
		"postgres://h/db?pool_warm_statements=257":  nil,
		"postgres://h/db?pool_warm_statements=-1":   nil,
		"postgres://h/db?pool_warm_statements=many": nil,
	} {
		_, err := OpenConnector(dsn, opts...)
		if err == nil || !strings.Contains(err.Error(), "pool_warm_statements") || !strings.Contains(err.Error(), "0 to 256") {
			t.Errorf("%s: %v", dsn, err)
		}
	}
	_, err = OpenConnector("postgres://h/db?pool_warm_statements=1", WithWarmStatements("select $1::int", "select $1::text"))
	if err == nil || !strings.Contains(err.Error(), "declares 2 statements") || !strings.Contains(err.Error(), "pool_warm_statements=1") {
		t.Errorf("declared over the limit: %v", err)
	}
	_, err = OpenConnector("postgres://h/db", WithWarmStatements(" "))
	if err == nil || !strings.Contains(err.Error(), "WithWarmStatements") {
		t.Errorf("empty statement: %v", err)
	}
	_, err = OpenConnector("postgres://h/db", WithWarmStatementLimit(1000))
	if err == nil || !strings.Contains(err.Error(), "pool_warm_statements=1000") {
		t.Errorf("option over the cap: %v", err)
	}
}

// The connector's list: declared first, then learned, at most k, no
// duplicates.
func TestWarmList(t *testing.T) {
	cfg := newConfig()
	WithWarmStatements("d1", "d2")(&cfg)
	c := newConnector(nil, cfg)
	for range 3 {
		c.hot.observe("l1")
		c.hot.observe("d1")
		c.hot.observe("l2")
	}
	if got := c.warmList(3); !slices.Equal(got, []string{"d1", "d2", "l1"}) && !slices.Equal(got, []string{"d1", "d2", "l2"}) {
		t.Errorf("warmList(3) = %q", got)
	}
	if got := c.warmList(1); !slices.Equal(got, []string{"d1"}) {
		t.Errorf("warmList(1) = %q", got)
	}
	if got := c.warmList(10); len(got) != 4 {
		t.Errorf("warmList(10) = %q", got)
	}
}

// BenchmarkLearn: what learning adds to each parameterized statement run
// directly on a pgx connection, with every core calling it at once
// (RunParallel): a random number, and one time in 16 the counter's lock.
// Compare with a statement's own cost (tens of µs on loopback; see
// BenchmarkWarmStatementsLearnCost).
//
//	go test -run '^$' -bench BenchmarkLearn -cpu 1,2,8 .
func BenchmarkLearn(b *testing.B) {
	for _, on := range []bool{false, true} {
		b.Run(fmt.Sprintf("learn=%v", on), func(b *testing.B) {
			c := newConnector(nil, newConfig())
			qs := make([]string, 64)
			for i := range qs {
				qs[i] = fmt.Sprintf("select * from t%d where id = $1", i)
			}
			b.RunParallel(func(pb *testing.PB) {
				w := &conn{c: c, learns: on}
				i := 0
				for pb.Next() {
					w.learn(qs[i%len(qs)], 1)
					i++
				}
			})
		})
	}
}
