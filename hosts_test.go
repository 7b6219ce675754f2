package warmpg_test

import (
	"context"
	"database/sql"
	"fmt"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// proxiedHosts starts n proxies in front of srv: n "hosts" of one server,
// each proxy counting the connections it accepted.
func proxiedHosts(t *testing.T, srv *pgtest.Server, n int) []*pgproxy.Proxy {
	t.Helper()
	ps := make([]*pgproxy.Proxy, n)
	for i := range ps {
		p, err := pgproxy.New(srv.Addr())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { p.Close() })
		ps[i] = p
	}
	return ps
}

// proxyDSN is a multi-host DSN over the proxies, for srv's user and
// database, in form kv (key=value), url-ports (hosts in the URL, ports in
// port=) or url (host:port,host:port; pgx only).
func proxyDSN(srv *pgtest.Server, ps []*pgproxy.Proxy, form string, params ...string) string {
	var hs, ports, hps []string
	for _, p := range ps {
		hs = append(hs, p.Host())
		ports = append(ports, fmt.Sprint(p.Port()))
		hps = append(hps, p.Addr())
	}
	switch form {
	case "kv":
		kv := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable", strings.Join(hs, ","), strings.Join(ports, ","), srv.User, srv.Database)
		if srv.Password != "" {
			kv += " password=" + srv.Password
		}
		return kv + " " + strings.Join(params, " ")
	}
	user := url.User(srv.User)
	if srv.Password != "" {
		user = url.UserPassword(srv.User, srv.Password)
	}
	q := append([]string{"sslmode=disable"}, params...)
	if form == "url" {
		return "postgres://" + user.String() + "@" + strings.Join(hps, ",") + "/" + srv.Database + "?" + strings.Join(q, "&")
	}
	q = append(q, "port="+strings.Join(ports, ","))
	return "postgres://" + user.String() + "@" + strings.Join(hs, ",") + "/" + srv.Database + "?" + strings.Join(q, "&")
}

func accepted(ps []*pgproxy.Proxy) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Accepted()
	}
	return out
}

func active(ps []*pgproxy.Proxy) []int {
	out := make([]int, len(ps))
	for i, p := range ps {
		out[i] = p.Active()
	}
	return out
}

func hostConns(t *testing.T, db *sql.DB) []int {
	t.Helper()
	s, ok := warmpg.Stats(db)
	if !ok {
		t.Fatal("not a warmpg DB")
	}
	out := make([]int, len(s.Hosts))
	for i, h := range s.Hosts {
		out[i] = h.Conns
	}
	return out
}

// waitActive waits until the proxies hold want connections each (a proxy
// sees a client's close a moment after it happens).
func waitActive(ps []*pgproxy.Proxy, want []int) []int {
	deadline := time.Now().Add(2 * time.Second)
	for {
		got := active(ps)
		if fmt.Sprint(got) == fmt.Sprint(want) || time.Now().After(deadline) {
			return got
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// load_balance_hosts on both backends and every DSN form: random spreads a
// WarmDB(30) over three hosts 8–12 each (exactly 10: warming takes the host
// with the fewest), and without the key (or with disable) all 30 go to the
// first host, as libpq does. Before issue 28, pgx sent the key to the
// server, which refused every connect (42704).
func TestLoadBalanceHosts(t *testing.T) {
	srv := pgtest.Get(t)
	const n = 30
	for _, b := range backends {
		for _, form := range []string{"kv", "url-ports", "url"} {
			if b == warmpg.BackendPQ && form == "url" {
				continue // lib/pq cannot read host:port,host:port (docs/replicas.md)
			}
			for _, lb := range []string{"random", "disable", ""} {
				t.Run(fmt.Sprintf("%s/%s/%q", b, form, lb), func(t *testing.T) {
					ctx := ctxT(t, time.Minute)
					ps := proxiedHosts(t, srv, 3)
					params := []string{"pool_backend=" + string(b), fmt.Sprintf("pool_max_conns=%d", n), "connect_timeout=5"}
					if lb != "" {
						params = append(params, "load_balance_hosts="+lb)
					}
					db, err := warmpg.Open(proxyDSN(srv, ps, form, params...))
					if err != nil {
						t.Fatal(err)
					}
					defer db.Close()
					rep, err := warmpg.WarmDB(ctx, db)
					if err != nil || rep.Warmed != n {
						t.Fatalf("WarmDB: %v, %v", rep, err)
					}
					got := accepted(ps)
					if lb == "random" {
						for i, k := range got {
							if k < 8 || k > 12 {
								t.Errorf("host %d took %d of %d connections (all: %v), want 8-12", i, k, n, got)
							}
						}
					} else if fmt.Sprint(got) != fmt.Sprint([]int{n, 0, 0}) {
						t.Errorf("connections per host %v, want all %d on the first", got, n)
					}
					if hc := hostConns(t, db); fmt.Sprint(hc) != fmt.Sprint(waitActive(ps, hc)) {
						t.Errorf("Stats().Hosts says %v, the proxies hold %v", hc, active(ps))
					}
					// The key never reaches the server: a query works.
					var one int
					if err := db.QueryRowContext(ctx, "select 1").Scan(&one); err != nil {
						t.Fatal(err)
					}
				})
			}
		}
	}
}

// A bad load_balance_hosts fails the open, naming the key, the value and
// what is allowed, on both backends.
func TestLoadBalanceHostsInvalid(t *testing.T) {
	for _, b := range backends {
		for _, dsn := range []string{
			"host=a,b port=1,2 load_balance_hosts=sometimes pool_backend=" + string(b),
			"postgres://u@a,b/db?port=1,2&load_balance_hosts=sometimes&pool_backend=" + string(b),
		} {
			_, err := warmpg.Open(dsn)
			want := `warmpg: invalid DSN load_balance_hosts="sometimes": want disable (the default: the hosts in the DSN's order) or random`
			if err == nil || err.Error() != want {
				t.Errorf("%s: error %v, want %s", dsn, err, want)
			}
		}
	}
}

// One host black-holed (it accepts and never answers), connect_timeout=2:
// WarmDB(30) warms all 30 in about one connect timeout, not one per dial
// that tries the dead host (16.4 s and 0 warmed before issue 28), and at
// most one dial per pool_host_recheck goes to the dead host.
func TestHostDownBlackHole(t *testing.T) {
	srv := pgtest.Get(t)
	const n = 30
	for _, b := range backends {
		for _, lb := range []string{"random", "disable"} {
			t.Run(fmt.Sprintf("%s/%s", b, lb), func(t *testing.T) {
				ctx := ctxT(t, time.Minute)
				ps := proxiedHosts(t, srv, 3)
				dead := 1
				if lb == "disable" {
					dead = 0 // the first host: every connect would try it first
				}
				ps[dead].SetBlackHole(true)
				defer ps[dead].SetBlackHole(false)
				db, err := warmpg.Open(proxyDSN(srv, ps, "kv", "pool_backend="+string(b), "load_balance_hosts="+lb,
					"connect_timeout=2", fmt.Sprintf("pool_max_conns=%d", n), "pool_host_recheck=30s"))
				if err != nil {
					t.Fatal(err)
				}
				defer db.Close()
				start := time.Now()
				rep, err := warmpg.WarmDB(ctx, db)
				took := time.Since(start)
				t.Logf("%s: WarmDB(%d) warmed %d in %v; accepted per host %v", b, n, rep.Warmed, took.Round(time.Millisecond), accepted(ps))
				if err != nil || rep.Warmed != n {
					t.Fatalf("WarmDB: %v, %v", rep, firstLine(fmt.Sprint(err)))
				}
				if took >= 4*time.Second {
					t.Errorf("WarmDB(%d) took %v, want < 4 s", n, took)
				}
				if k := ps[dead].Accepted(); k > 1 {
					t.Errorf("%d dials went to the dead host, want at most 1 per recheck interval", k)
				}
				got := accepted(ps)
				if lb == "random" {
					up := []int{0, 2}
					for _, i := range up {
						if got[i] < 13 || got[i] > 17 {
							t.Errorf("live host %d took %d (all: %v), want 13-17 of %d", i, got[i], got, n)
						}
					}
				} else if got[1] != n {
					t.Errorf("connections per host %v, want all %d on the second (the first is down)", got, n)
				}
				s, _ := warmpg.Stats(db)
				if len(s.Hosts) != len(ps) {
					t.Fatalf("Stats().Hosts = %+v, want %d hosts", s.Hosts, len(ps))
				}
				if !s.Hosts[dead].Down {
					t.Errorf("Stats().Hosts = %+v, want host %d down", s.Hosts, dead)
				}
				// Within the recheck interval no connect goes to it again.
				before := ps[dead].Accepted()
				conns := make([]*sql.Conn, 0, n)
				for range n {
					c, err := db.Conn(ctx)
					if err != nil {
						t.Fatal(err)
					}
					conns = append(conns, c)
				}
				db.SetMaxIdleConns(0) // close them: the next ones are new connects
				for _, c := range conns {
					c.Close()
				}
				db.SetMaxIdleConns(n)
				start = time.Now()
				if _, err := warmpg.WarmDB(ctx, db); err != nil {
					t.Fatal(err)
				}
				if k := ps[dead].Accepted() - before; k != 0 {
					t.Errorf("%d dials to the dead host within its recheck interval, want 0", k)
				}
				if took := time.Since(start); took >= 2*time.Second {
					t.Errorf("second WarmDB took %v, want less than the connect timeout (2 s): no dial waits on the dead host", took)
				}
			})
		}
	}
}

// A host found down is skipped for pool_host_recheck, then tried again by
// one dial in the background, never by a connect: while it stays down one
// dial per interval reaches it and connects do not wait; once it answers,
// new connections go to it until it holds its share.
func TestHostRecheck(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ctx := ctxT(t, time.Minute)
			ps := proxiedHosts(t, srv, 2)
			ps[1].SetBlackHole(true)
			db, err := warmpg.Open(proxyDSN(srv, ps, "kv", "pool_backend="+string(b), "load_balance_hosts=random",
				"connect_timeout=1", "pool_host_recheck=1s", "pool_max_conns=40"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			warmTo := func(n int) time.Duration {
				t.Helper()
				start := time.Now()
				if rep, err := warmpg.WarmDB(ctx, db, warmpg.WithMaxIdleConns(n)); err != nil || rep.Warmed != n {
					t.Fatalf("WarmDB(%d): %v, %v", n, rep, err)
				}
				return time.Since(start)
			}
			warmTo(8)
			if k := ps[1].Accepted(); k != 1 {
				t.Fatalf("dials to the dead host %d, want 1", k)
			}
			if s, _ := warmpg.Stats(db); len(s.Hosts) != 2 {
				t.Fatalf("Stats().Hosts = %+v, want 2 hosts", s.Hosts)
			}
			// Past the recheck, still dead: one background dial; the warm
			// does not wait for it.
			time.Sleep(1100 * time.Millisecond)
			// A wait on the dead host costs its connect_timeout (1 s).
			if took := warmTo(16); took > 900*time.Millisecond {
				t.Errorf("WarmDB(16) with the dead host's recheck due took %v, want no wait on it (its connect_timeout is 1 s)", took)
			}
			time.Sleep(1500 * time.Millisecond) // the probe times out
			if k := ps[1].Accepted(); k != 2 {
				t.Errorf("dials to the dead host after one recheck interval: %d, want 2", k)
			}
			if s, _ := warmpg.Stats(db); !s.Hosts[1].Down {
				t.Errorf("Stats().Hosts = %+v, want host 1 down", s.Hosts)
			}
			// Back: the next recheck finds it, and it gets its share.
			ps[1].SetBlackHole(false)
			ps[1].CloseConns()
			time.Sleep(1100 * time.Millisecond)
			warmTo(17) // a connect starts the recheck
			deadline := time.Now().Add(3 * time.Second)
			for s, _ := warmpg.Stats(db); s.Hosts[1].Down; s, _ = warmpg.Stats(db) {
				if time.Now().After(deadline) {
					t.Fatalf("host still down after it came back: %+v", s.Hosts)
				}
				time.Sleep(10 * time.Millisecond)
			}
			warmTo(34)
			if got := hostConns(t, db); fmt.Sprint(got) != "[17 17]" {
				t.Errorf("connections per host %v after it came back, want [17 17]", got)
			}
		})
	}
}

// target_session_attrs decides which hosts are eligible, and warming
// balances over those only: over the primary and a hot standby with random,
// any splits 3/3, read-write and primary put all 6 on the primary,
// standby, read-only and prefer-standby all 6 on the standby; with the
// standby down, prefer-standby takes the primary.
func TestLoadBalanceTargetSessionAttrs(t *testing.T) {
	ctx := ctxT(t, 3*time.Minute)
	primary, standby := replicaPair(t, ctx)
	const n = 6
	cases := []struct {
		tsa        string
		wantP      int
		standbyOff bool
	}{
		{"any", 3, false},
		{"read-write", n, false},
		{"primary", n, false},
		{"standby", 0, false},
		{"read-only", 0, false},
		{"prefer-standby", 0, false},
		{"prefer-standby", n, true}, // the standby stopped: falls back
	}
	for _, b := range backends {
		for _, tc := range cases {
			name := fmt.Sprintf("%s/%s", b, tc.tsa)
			if tc.standbyOff {
				name += "/standby-stopped"
			}
			t.Run(name, func(t *testing.T) {
				if b == warmpg.BackendPQ && (tc.tsa == "prefer-standby" || tc.tsa == "read-only") {
					t.Skip("refused at open on lib/pq, or never picks a hot standby (docs/replicas.md)")
				}
				if tc.standbyOff {
					if err := standby.Stop(ctx, "fast"); err != nil {
						t.Fatal(err)
					}
					defer func() {
						if err := standby.Start(ctx); err != nil {
							t.Fatal(err)
						}
					}()
				}
				for _, order := range [][]*pgtest.Server{{primary, standby}, {standby, primary}} {
					dsn := multiHostKV(order, "target_session_attrs="+tc.tsa, "load_balance_hosts=random", "pool_backend="+string(b),
						"connect_timeout=5", fmt.Sprintf("pool_max_conns=%d", n))
					db, err := warmpg.Open(dsn)
					if err != nil {
						t.Fatal(err)
					}
					rep, err := warmpg.WarmDB(ctx, db)
					if err != nil || rep.Warmed != n {
						db.Close()
						t.Fatalf("WarmDB: %v, %v", rep, err)
					}
					conns := make([]*sql.Conn, n)
					onP := 0
					for i := range conns {
						if conns[i], err = db.Conn(ctx); err != nil {
							t.Fatal(err)
						}
						where, err := landed(ctx, conns[i], primary, standby)
						if err != nil {
							t.Fatal(err)
						}
						if where == "primary" {
							onP++
						}
					}
					for _, c := range conns {
						c.Close()
					}
					if onP != tc.wantP {
						t.Errorf("%s first: %d of %d on the primary, want %d (Stats: %v)", label(order[0], primary), onP, n, tc.wantP, hostConns(t, db))
					}
					if tc.wantP == 0 || tc.wantP == n && !tc.standbyOff {
						// The other host was found of the wrong role, and
						// the cache says so.
						s, _ := warmpg.Stats(db)
						wrong := 0
						for _, h := range s.Hosts {
							if h.WrongRole {
								wrong++
							}
						}
						if len(s.Hosts) != 2 || wrong != 1 {
							t.Errorf("Stats().Hosts = %+v, want 2 hosts, one of the wrong role", s.Hosts)
						}
					}
					if s := db.Stats(); s.OpenConnections != n {
						t.Errorf("open connections %d, want %d", s.OpenConnections, n)
					}
					db.Close()
				}
			})
		}
	}
}

var _ = context.Background

// Under load, one of three hosts (a primary and two hot standbys) is
// stopped and started again: the queries that fail are those in flight on
// its connections, and once it is back (rechecked after pool_host_recheck)
// it gets its share again as connections are renewed
// (pool_max_conn_lifetime), with no storm. That connects skip a down host
// until its recheck is TestHostRecheck's and TestHostDownBlackHole's, where
// proxies count the dials: here the server may accept a recheck before
// pg_ctl start returns, so what it holds at that moment says nothing.
func TestHostStopUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("starts three servers and stops one")
	}
	ctx := ctxT(t, 3*time.Minute)
	primary, s1 := replicaPair(t, ctx)
	s2 := pgtest.NewStandby(t, ctx, primary)
	hosts := []*pgtest.Server{primary, s1, s2}
	const n, workers = 30, 8
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			db, err := warmpg.Open(multiHostKV(hosts, "load_balance_hosts=random", "pool_backend="+string(b), "connect_timeout=2", "application_name=lbload",
				fmt.Sprintf("pool_max_conns=%d", n), "pool_max_conn_lifetime=2s", "pool_host_recheck=1s", "pool_prewarm=true"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			if got := hostConns(t, db); fmt.Sprint(got) != "[10 10 10]" {
				t.Errorf("prewarmed %v, want [10 10 10]", got)
			}
			var (
				mu     sync.Mutex
				failed int
				ok     int
				errs   []string
			)
			stop := make(chan struct{})
			var wg sync.WaitGroup
			for range workers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for {
						select {
						case <-stop:
							return
						case <-time.After(2 * time.Millisecond):
						}
						qctx, cancel := context.WithTimeout(ctx, 3*time.Second)
						var one int
						err := db.QueryRowContext(qctx, "select 1").Scan(&one)
						cancel()
						mu.Lock()
						if err != nil {
							failed++
							if len(errs) < 3 {
								errs = append(errs, firstLine(err.Error()))
							}
						} else {
							ok++
						}
						mu.Unlock()
					}
				}()
			}
			time.Sleep(500 * time.Millisecond)
			if err := s1.Stop(ctx, "fast"); err != nil {
				t.Fatal(err)
			}
			stopped := time.Now()
			time.Sleep(time.Second)
			if err := s1.Start(ctx); err != nil {
				t.Fatal(err)
			}
			started := time.Now()
			var back time.Duration
			deadline := started.Add(10 * time.Second)
			var last []int
			// The backends each server has for this pool, asked of the
			// servers (Stats counts a connection the server closed until
			// the pool discards it).
			backends := func() []int {
				out := make([]int, len(hosts))
				for i, h := range hosts {
					c, err := h.Connect(ctx)
					if err != nil {
						continue // down: 0
					}
					c.QueryRow(ctx, "select count(*) from pg_stat_activity where application_name = 'lbload'").Scan(&out[i])
					c.Close(ctx)
				}
				return out
			}
			for time.Now().Before(deadline) {
				last = backends()
				sum := last[0] + last[1] + last[2]
				// Its share of what the load keeps open (database/sql
				// closes what it does not need as lifetimes end).
				if last[1] >= 1 && last[1] >= sum/3-1 {
					back = time.Since(started)
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			close(stop)
			wg.Wait()
			st, _ := warmpg.Stats(db)
			t.Logf("%s: stopped %v, restarted (pg_ctl start returned) %v later; %d queries ok, %d failed %q; the host held its share of the %d allowed again %v after its start (per host %v); connects %d, connect errors %d",
				b, stopped.Format("15:04:05.000"), started.Sub(stopped).Round(time.Millisecond), ok, failed, errs, n, back.Round(time.Millisecond), last, st.Connects, st.ConnectErrors)
			if back == 0 {
				t.Errorf("connections per host %v (limit %d) 10 s after the host's start, want its share again", last, n)
			}
			if failed > n/3+workers {
				t.Errorf("%d queries failed, want at most those on the stopped host's connections (%d) and in flight (%d)", failed, n/3, workers)
			}
		})
	}
}

// The background filler balances too: sql.Open with pool_prewarm and
// pool_min_idle_conns over three hosts fills its ready store (6: the prewarm, which pool_min_idle_conns=3 does not exceed) 2/2/2.
func TestLoadBalanceKeepWarm(t *testing.T) {
	srv := pgtest.Get(t)
	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			ps := proxiedHosts(t, srv, 3)
			db, err := sql.Open("warmpg", proxyDSN(srv, ps, "kv", "pool_backend="+string(b), "load_balance_hosts=random",
				"pool_prewarm=true", "pool_max_idle_conns=6", "pool_min_idle_conns=3", "pool_max_conns=20"))
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			deadline := time.Now().Add(10 * time.Second)
			for time.Now().Before(deadline) && (fmt.Sprint(accepted(ps)) != "[2 2 2]" || fmt.Sprint(hostConns(t, db)) != "[2 2 2]") {
				time.Sleep(20 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond) // nothing more comes
			if got := accepted(ps); fmt.Sprint(got) != "[2 2 2]" {
				t.Errorf("ready store's connections per host %v, want [2 2 2]", got)
			}
			if got := hostConns(t, db); fmt.Sprint(got) != "[2 2 2]" {
				t.Errorf("Stats().Hosts %v, want [2 2 2]", got)
			}
		})
	}
}

// PGLOADBALANCEHOSTS, libpq's variable, counts when the DSN has no
// load_balance_hosts (pgx: warmpg reads it; lib/pq reads it itself), and a
// bad value names the variable.
func TestLoadBalanceHostsEnv(t *testing.T) {
	srv := pgtest.Get(t)
	t.Setenv("PGLOADBALANCEHOSTS", "random")
	for _, b := range backends {
		ps := proxiedHosts(t, srv, 3)
		db, err := warmpg.Open(proxyDSN(srv, ps, "kv", "pool_backend="+string(b), "pool_max_conns=9"))
		if err != nil {
			t.Fatal(err)
		}
		ctx := ctxT(t, 30*time.Second)
		if rep, err := warmpg.WarmDB(ctx, db); err != nil || rep.Warmed != 9 {
			t.Fatalf("%s: WarmDB: %v, %v", b, rep, err)
		}
		if got := accepted(ps); fmt.Sprint(got) != "[3 3 3]" {
			t.Errorf("%s: connections per host %v, want [3 3 3]", b, got)
		}
		db.Close()
	}
	t.Setenv("PGLOADBALANCEHOSTS", "often")
	_, err := warmpg.Open("host=a,b port=1,2")
	if want := `warmpg: invalid environment variable PGLOADBALANCEHOSTS="often"`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("error %v, want %s", err, want)
	}
}
