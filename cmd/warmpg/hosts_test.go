package main

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// check over a DSN that names three hosts (proxies in front of the
// harness's server, one black-holed): a Hosts table with each host's
// connections and state. With load_balance_hosts=random the live two hold
// 3 each of the 6 check opens at once, the dead one 0 and "down"; without
// it all 6 are on the first.
func TestCheckHosts(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, time.Minute)
	for _, lb := range []string{"random", ""} {
		t.Run(lb, func(t *testing.T) {
			var hs, ports []string
			var ps []*pgproxy.Proxy
			for range 3 {
				p, err := pgproxy.New(srv.Addr())
				if err != nil {
					t.Fatal(err)
				}
				defer p.Close()
				ps = append(ps, p)
				hs = append(hs, p.Host())
				ports = append(ports, fmt.Sprint(p.Port()))
			}
			ps[2].SetBlackHole(true)
			defer ps[2].SetBlackHole(false)
			dsn := fmt.Sprintf("host=%s port=%s user=%s dbname=%s sslmode=disable connect_timeout=1", strings.Join(hs, ","), strings.Join(ports, ","), srv.User, srv.Database)
			if srv.Password != "" {
				dsn += " password=" + srv.Password
			}
			if lb != "" {
				dsn += " load_balance_hosts=" + lb
			}
			out := runOK(t, ctx, "check", dsn, "--pool", "4")
			rows := tableRows(t, out, "Hosts")
			if len(rows) != 3 {
				t.Fatalf("Hosts rows %q, want 3", rows)
			}
			want := [][2]string{{"3", "up"}, {"3", "up"}, {"0", "down"}}
			if lb == "" {
				want = [][2]string{{"6", "up"}, {"0", "up"}, {"0", "up"}}
			}
			for i, r := range rows {
				if r[0] != ps[i].Addr() || r[1] != want[i][0] || !strings.HasPrefix(r[2], want[i][1]) {
					t.Errorf("host row %d %q, want %s, %s, %s", i, r, ps[i].Addr(), want[i][0], want[i][1])
				}
			}
		})
	}
}
