package warmpg_test

import (
	"context"
	"database/sql"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// TestIntegrationKeepWarmLeavesServerSlots (issue 13, 4): keep-warm asked
// for more ready connections than the server has slots, with no
// pool_max_conns, stays within half of the slots an ordinary role may use
// (max_connections − superuser_reserved_connections − reserved_connections),
// and other clients still connect. Before, it took every slot and another
// role's connects failed with 53300 (remaining connection slots are
// reserved).
func TestIntegrationKeepWarmLeavesServerSlots(t *testing.T) {
	ctx := ctxT(t, 2*time.Minute)
	srv := pgtest.Own(t, ctx, pgtest.WithSetting("max_connections", "20"))
	if err := srv.Exec(ctx, "create role other_client login"); err != nil {
		t.Fatal(err)
	}
	admin, err := srv.Connect(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(context.Background())
	var slots int
	if err := admin.QueryRow(ctx, "select current_setting('max_connections')::int - current_setting('superuser_reserved_connections')::int"+
		" - coalesce(current_setting('reserved_connections', true)::int, 0)").Scan(&slots); err != nil {
		t.Fatal(err)
	}

	for _, b := range backends {
		t.Run(string(b), func(t *testing.T) {
			app := appName(t)
			c, err := warmpg.OpenConnector(srv.URL("application_name="+app, "pool_backend="+string(b), "pool_min_idle_conns=30"),
				warmpg.WithLogger(faultQuietLog))
			if err != nil {
				t.Fatal(err)
			}
			db := sql.OpenDB(c)
			defer db.Close()
			// Let keep-warm fill: the count stops changing for 1 s.
			last, since := -1, time.Now()
			for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
				n, err := srv.BackendCount(ctx, app)
				if err != nil {
					t.Fatal(err)
				}
				if n != last {
					last, since = n, time.Now()
				} else if n > 0 && time.Since(since) > time.Second {
					break
				}
			}
			t.Logf("%s: keep-warm with pool_min_idle_conns=30 holds %d connections; the server has %d slots for ordinary roles", b, last, slots)
			if last > slots/2 {
				t.Errorf("keep-warm holds %d connections, more than half of the server's %d slots", last, slots)
			}
			if last == 0 {
				t.Error("keep-warm holds nothing")
			}
			// Another client, as an ordinary role, still gets connections.
			other := srv.WithUser("other_client", "")
			var conns []*pgx.Conn
			for i := range 5 {
				conn, err := other.Connect(ctx)
				if err != nil {
					t.Errorf("another client's connection %d: %v", i+1, err)
					break
				}
				conns = append(conns, conn)
			}
			for _, conn := range conns {
				conn.Close(context.Background())
			}
			db.Close()
			if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil || n != 0 {
				t.Fatalf("%d backends left after Close (%v)", n, err)
			}
		})
	}
}
