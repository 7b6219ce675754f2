package warmbench

import (
	"context"
	"database/sql"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// TPCB is a pgbench-like TPC-B read-write workload ("tpcb-like", pgbench's
// default script) on tables of its own: each transaction runs, between
// BEGIN and COMMIT,
//
//	UPDATE accounts SET abalance = abalance + $delta WHERE aid = $aid
//	SELECT abalance FROM accounts WHERE aid = $aid
//	UPDATE tellers SET tbalance = tbalance + $delta WHERE tid = $tid
//	UPDATE branches SET bbalance = bbalance + $delta WHERE bid = $bid
//	INSERT INTO history (tid, bid, aid, delta, mtime) VALUES (…, now())
//
// with aid, tid, bid and delta (-5000 to 5000) drawn at random, as pgbench
// draws them: seven round trips per transaction where BEGIN and COMMIT are
// one each. Its scale is its number of branches (10 tellers each, and
// AccountsPerBranch accounts, where pgbench has 100,000: the round trips,
// not the table sizes, are what is compared).
type TPCB struct {
	Prefix            string // of the four tables' names: Prefix+"accounts", …
	Branches          int
	AccountsPerBranch int

	committed atomic.Int64 // transactions committed by every variant's Op
}

// TPCBVariants are OpenTPCBVariants' names: warmpg (sql.Open("warmpg"):
// pool_lazy_begin sends BEGIN with the first statement), plain pgx
// (sql.Open("pgx")), pgxpool without database/sql, lib/pq
// (sql.Open("postgres")). pgxpool, the native pool, is what the others are
// compared with.
var TPCBVariants = []string{"warmpg", "pgx-stdlib", "pgxpool", "pq"}

// TPCBBase is the variant the others' throughput is divided by.
const TPCBBase = "pgxpool"

// NewTPCB returns the workload of scale branches on tables named prefix+….
func NewTPCB(prefix string, branches, accountsPerBranch int) *TPCB {
	return &TPCB{Prefix: prefix, Branches: branches, AccountsPerBranch: accountsPerBranch}
}

func (w *TPCB) table(name string) string { return w.Prefix + name }

// Setup creates the tables (dropping any of the same names) and fills them,
// on conn; grantee, when not "", may then read and write them.
func (w *TPCB) Setup(ctx context.Context, conn *pgx.Conn, grantee string) error {
	tellers, accounts := 10*w.Branches, w.AccountsPerBranch*w.Branches
	stmts := []string{
		w.dropSQL(),
		fmt.Sprintf("create table %s (bid int primary key, bbalance int not null, filler char(88))", w.table("branches")),
		fmt.Sprintf("create table %s (tid int primary key, bid int not null, tbalance int not null, filler char(84))", w.table("tellers")),
		fmt.Sprintf("create table %s (aid int primary key, bid int not null, abalance int not null, filler char(84))", w.table("accounts")),
		fmt.Sprintf("create table %s (tid int, bid int, aid int, delta int, mtime timestamp, filler char(22))", w.table("history")),
		fmt.Sprintf("insert into %s select i, 0 from generate_series(1, %d) i", w.table("branches"), w.Branches),
		fmt.Sprintf("insert into %s select i, (i - 1) / 10 + 1, 0 from generate_series(1, %d) i", w.table("tellers"), tellers),
		fmt.Sprintf("insert into %s select i, (i - 1) / %d + 1, 0, '' from generate_series(1, %d) i", w.table("accounts"), w.AccountsPerBranch, accounts),
		fmt.Sprintf("vacuum analyze %s, %s, %s, %s", w.table("branches"), w.table("tellers"), w.table("accounts"), w.table("history")),
	}
	if grantee != "" {
		stmts = append(stmts, fmt.Sprintf("grant select, insert, update on %s, %s, %s, %s to %s",
			w.table("branches"), w.table("tellers"), w.table("accounts"), w.table("history"), pgx.Identifier{grantee}.Sanitize()))
	}
	for _, s := range stmts {
		if _, err := conn.Exec(ctx, s); err != nil {
			return fmt.Errorf("tpc-b setup: %s: %w", strings.Fields(s)[0], err)
		}
	}
	return nil
}

func (w *TPCB) dropSQL() string {
	return fmt.Sprintf("drop table if exists %s, %s, %s, %s", w.table("branches"), w.table("tellers"), w.table("accounts"), w.table("history"))
}

// Drop drops the tables.
func (w *TPCB) Drop(ctx context.Context, conn *pgx.Conn) error {
	_, err := conn.Exec(ctx, w.dropSQL())
	return err
}

// Committed is how many transactions the variants' Ops have committed.
func (w *TPCB) Committed() int64 { return w.committed.Load() }

// Check reads the tables on conn and fails unless they add up: one history
// row per committed transaction (Committed), and the accounts', tellers'
// and branches' balances each summing to the history's deltas.
func (w *TPCB) Check(ctx context.Context, conn *pgx.Conn) (history int64, err error) {
	var a, t, b, d int64
	err = conn.QueryRow(ctx, fmt.Sprintf(`select (select count(*) from %[1]s), (select coalesce(sum(delta), 0) from %[1]s),
		(select sum(abalance) from %[2]s), (select sum(tbalance) from %[3]s), (select sum(bbalance) from %[4]s)`,
		w.table("history"), w.table("accounts"), w.table("tellers"), w.table("branches"))).Scan(&history, &d, &a, &t, &b)
	if err != nil {
		return 0, err
	}
	if c := w.Committed(); history != c {
		return history, fmt.Errorf("tpc-b: %d history rows, %d transactions committed", history, c)
	}
	if a != d || t != d || b != d {
		return history, fmt.Errorf("tpc-b: balances do not add up: accounts %d, tellers %d, branches %d, history deltas %d", a, t, b, d)
	}
	return history, nil
}

// tpcbArgs are one transaction's random draws.
type tpcbArgs struct{ aid, tid, bid, delta int }

func (w *TPCB) draw() tpcbArgs {
	return tpcbArgs{
		aid:   1 + rand.IntN(w.AccountsPerBranch*w.Branches),
		tid:   1 + rand.IntN(10*w.Branches),
		bid:   1 + rand.IntN(w.Branches),
		delta: rand.IntN(10001) - 5000,
	}
}

// statements returns the five statements, in order.
func (w *TPCB) statements() [5]string {
	return [5]string{
		"update " + w.table("accounts") + " set abalance = abalance + $1 where aid = $2",
		"select abalance from " + w.table("accounts") + " where aid = $1",
		"update " + w.table("tellers") + " set tbalance = tbalance + $1 where tid = $2",
		"update " + w.table("branches") + " set bbalance = bbalance + $1 where bid = $2",
		"insert into " + w.table("history") + " (tid, bid, aid, delta, mtime) values ($1, $2, $3, $4, current_timestamp)",
	}
}

// sqlTxOp is one transaction on a *sql.DB.
func (w *TPCB) sqlTxOp(db *sql.DB) func(context.Context) error {
	q := w.statements()
	return func(ctx context.Context) error {
		a := w.draw()
		tx, err := db.BeginTx(ctx, nil)
		if err != nil {
			return err
		}
		err = func() error {
			if err := oneRow(tx.ExecContext(ctx, q[0], a.delta, a.aid)); err != nil {
				return err
			}
			var bal int
			if err := tx.QueryRowContext(ctx, q[1], a.aid).Scan(&bal); err != nil {
				return err
			}
			if err := oneRow(tx.ExecContext(ctx, q[2], a.delta, a.tid)); err != nil {
				return err
			}
			if err := oneRow(tx.ExecContext(ctx, q[3], a.delta, a.bid)); err != nil {
				return err
			}
			return oneRow(tx.ExecContext(ctx, q[4], a.tid, a.bid, a.aid, a.delta))
		}()
		if err != nil {
			tx.Rollback()
			return err
		}
		if err := tx.Commit(); err != nil {
			return err
		}
		w.committed.Add(1)
		return nil
	}
}

// pgxTxOp is one transaction on a pgxpool.
func (w *TPCB) pgxTxOp(pool *pgxpool.Pool) func(context.Context) error {
	q := w.statements()
	one := func(tag interface{ RowsAffected() int64 }, err error) error {
		if err == nil && tag.RowsAffected() != 1 {
			err = fmt.Errorf("%d rows, want 1", tag.RowsAffected())
		}
		return err
	}
	return func(ctx context.Context) error {
		a := w.draw()
		tx, err := pool.Begin(ctx)
		if err != nil {
			return err
		}
		err = func() error {
			if err := one(tx.Exec(ctx, q[0], a.delta, a.aid)); err != nil {
				return err
			}
			var bal int
			if err := tx.QueryRow(ctx, q[1], a.aid).Scan(&bal); err != nil {
				return err
			}
			if err := one(tx.Exec(ctx, q[2], a.delta, a.tid)); err != nil {
				return err
			}
			if err := one(tx.Exec(ctx, q[3], a.delta, a.bid)); err != nil {
				return err
			}
			return one(tx.Exec(ctx, q[4], a.tid, a.bid, a.aid, a.delta))
		}()
		if err != nil {
			tx.Rollback(ctx)
			return err
		}
		if err := tx.Commit(ctx); err != nil {
			return err
		}
		w.committed.Add(1)
		return nil
	}
}

// oneRow checks that an Exec changed one row.
func oneRow(res sql.Result, err error) error {
	if err != nil {
		return err
	}
	n, err := res.RowsAffected()
	if err == nil && n != 1 {
		err = fmt.Errorf("%d rows, want 1", n)
	}
	return err
}

// OpenTPCBVariants opens a pool of exactly conns warmed connections for each
// of TPCBVariants, whose Op is one of w's transactions. On error it returns
// the variants opened so far, to close.
func OpenTPCBVariants(ctx context.Context, url URLFunc, conns int, w *TPCB) ([]*Variant, error) {
	var vs []*Variant
	for _, name := range TPCBVariants {
		var v *Variant
		var err error
		switch name {
		case "pgxpool":
			v, err = OpenPgxpoolVariant(ctx, name, url(), conns)
			if err == nil {
				v.Op = w.pgxTxOp(v.Pool)
			}
		default:
			driver := map[string]string{"warmpg": "warmpg", "pgx-stdlib": "pgx", "pq": "postgres"}[name]
			dsn := url()
			if name == "warmpg" {
				// Every connection is in use all the time here, by
				// design: not an exhaustion to log.
				dsn = url("pool_exhausted_log_interval=0")
			}
			v, err = OpenSQLVariant(ctx, name, func() (*sql.DB, error) { return sql.Open(driver, dsn) }, conns, w.sqlTxOp)
		}
		if v != nil {
			vs = append(vs, v)
		}
		if err != nil {
			return vs, fmt.Errorf("open %s: %w", name, err)
		}
	}
	return vs, nil
}

// RunFor runs op over clients goroutines, each one after another, until d
// has passed, and returns how many ran and the wall time from the first
// start to the last finish (a little over d: each goroutine finishes the
// operation it runs at d). It stops at the first error, and gives up on an
// operation still running StuckGrace after BatchTimeout (see Bounded).
func RunFor(ctx context.Context, op func(context.Context) error, clients int, d time.Duration) (int, time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, d+BatchTimeout)
	defer cancel()
	var n int
	var elapsed time.Duration
	err := Bounded(ctx, "run", func() error {
		var done atomic.Int64
		var stop atomic.Bool
		var first error
		var once sync.Once
		var wg sync.WaitGroup
		start := time.Now()
		deadline := start.Add(d)
		for range clients {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() && time.Now().Before(deadline) {
					if err := op(ctx); err != nil {
						once.Do(func() { first = err })
						stop.Store(true)
						return
					}
					done.Add(1)
				}
			}()
		}
		wg.Wait()
		n, elapsed = int(done.Load()), time.Since(start)
		return first
	})
	if err != nil {
		return 0, 0, err
	}
	return n, elapsed, nil
}

// TPCBRounds holds each repetition's transactions per second per variant.
type TPCBRounds struct {
	TPS []map[string]float64
}

// Run runs one more repetition: every variant for d, clients goroutines,
// in the order rotated by the repetition's number.
func (r *TPCBRounds) Run(ctx context.Context, vs []*Variant, clients int, d time.Duration) error {
	rep := len(r.TPS)
	tps := make(map[string]float64, len(vs))
	for _, v := range Rotate(vs, rep) {
		n, elapsed, err := RunFor(ctx, v.Op, clients, d)
		if err != nil {
			return fmt.Errorf("repetition %d: %s: %w", rep, v.Name, err)
		}
		tps[v.Name] = float64(n) / elapsed.Seconds()
	}
	r.TPS = append(r.TPS, tps)
	return nil
}

// Each is a variant's transactions per second in each repetition.
func (r *TPCBRounds) Each(name string) []float64 {
	out := make([]float64, len(r.TPS))
	for i, t := range r.TPS {
		out[i] = t[name]
	}
	return out
}

// Ratios is, per repetition, a's transactions per second over base's.
func (r *TPCBRounds) Ratios(base, a string) []float64 {
	out := make([]float64, len(r.TPS))
	for i, t := range r.TPS {
		out[i] = t[a] / t[base]
	}
	return out
}
