package warmpg_test

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg"
	"github.com/warmpg/warmpg/internal/pgtest"
)

// The package registers itself with database/sql as "warmpg".
func TestDriverRegistered(t *testing.T) {
	if warmpg.DriverName != "warmpg" {
		t.Errorf("DriverName = %q", warmpg.DriverName)
	}
	if !slices.Contains(sql.Drivers(), warmpg.DriverName) {
		t.Fatalf("sql.Drivers() = %v, want %q among them", sql.Drivers(), warmpg.DriverName)
	}
	// sql.Open dials nothing; the DB's driver leads to the connector that
	// parsed the DSN (which is how WarmDB finds the pool settings).
	db, err := sql.Open(warmpg.DriverName, "postgres://app@127.0.0.1:1/app?pool_max_conns=3")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	d, ok := db.Driver().(*warmpg.Driver)
	if !ok || d.Connector() == nil {
		t.Fatalf("db.Driver() = %T, want a *warmpg.Driver with its connector", db.Driver())
	}
	if c, ok := warmpg.Stats(db); !ok || c.Connects != 0 {
		t.Errorf("Stats = %v, %v; want warmpg's, with no connect", c, ok)
	}
}

// OpenConnector parses the DSN (and the environment) into a *Connector whose
// Driver leads back to it; the registered driver belongs to no connector.
// A bad DSN fails there, naming the key and never the password.
func TestDriverOpenConnector(t *testing.T) {
	d := &warmpg.Driver{}
	if d.Connector() != nil {
		t.Error("a bare Driver claims a connector")
	}
	dc, err := d.OpenConnector("postgres://app:pw@127.0.0.1:1/app?pool_max_conns=3&pool_reset=ping")
	if err != nil {
		t.Fatal(err)
	}
	c, ok := dc.(*warmpg.Connector)
	if !ok {
		t.Fatalf("OpenConnector returned %T, want *warmpg.Connector", dc)
	}
	defer c.Close()
	if cd, ok := c.Driver().(*warmpg.Driver); !ok || cd.Connector() != c {
		t.Errorf("the connector's Driver() = %T does not lead back to it", c.Driver())
	}
	_, err = d.OpenConnector("postgres://app:hunter2-secret@127.0.0.1:1/app?pool_reset=sometimes")
	if err == nil || !strings.Contains(err.Error(), `pool_reset="sometimes"`) || strings.Contains(err.Error(), "hunter2-secret") {
		t.Errorf("bad DSN: %v; want an error naming pool_reset=\"sometimes\" and not the password", err)
	}
}

// Driver.Open, for code that uses a driver.Driver directly, opens one
// connection that works and goes away when closed; a bad DSN opens none.
func TestDriverOpen(t *testing.T) {
	srv := pgtest.Get(t)
	ctx := ctxT(t, 30*time.Second)
	app := appName(t)
	d := &warmpg.Driver{}
	if _, err := d.Open(srv.URL("application_name="+app, "pool_max_conns=x")); err == nil || !strings.Contains(err.Error(), "pool_max_conns") {
		t.Fatalf("Open with a bad pool_max_conns: %v", err)
	}
	if n, err := srv.BackendCount(ctx, app); err != nil || n != 0 {
		t.Fatalf("a bad DSN left %d backends (%v)", n, err)
	}
	for _, b := range backends {
		conn, err := d.Open(srv.URL("application_name="+app, "pool_backend="+string(b)))
		if err != nil {
			t.Fatalf("%s: %v", b, err)
		}
		if n, err := srv.BackendCount(ctx, app); err != nil || n != 1 {
			t.Errorf("%s: %d backends (%v), want the one Open made", b, n, err)
		}
		if p, ok := conn.(driver.Pinger); !ok {
			t.Errorf("%s: the connection (%T) is no driver.Pinger", b, conn)
		} else if err := p.Ping(context.Background()); err != nil {
			t.Errorf("%s: ping: %v", b, err)
		}
		if err := conn.Close(); err != nil {
			t.Fatalf("%s: close: %v", b, err)
		}
		if n, err := srv.WaitBackendCount(ctx, app, 0); err != nil {
			t.Fatalf("%s: %d backends after Close (%v)", b, n, err)
		}
	}
}
