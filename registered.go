package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
)

// registeredPrefix starts every name stdlib.RegisterConnConfig returns
// ("registeredConnConfig1", ...).
const registeredPrefix = "registeredConnConfig"

// isRegisteredName reports whether name has the form of a name
// stdlib.RegisterConnConfig returns. No DSN has it: a key=value DSN of one
// word is malformed.
func isRegisteredName(name string) bool {
	n, ok := strings.CutPrefix(name, registeredPrefix)
	if !ok || n == "" {
		return false
	}
	for i := 0; i < len(n); i++ {
		if n[i] < '0' || n[i] > '9' {
			return false
		}
	}
	return true
}

// openRegistered returns a Connector for a config registered with pgx's
// stdlib.RegisterConnConfig, as sql.Open("pgx", name) would use it, with
// warmpg's defaults, the environment and opts applied (a name carries no
// pool_* keys).
func openRegistered(name string, opts []Option) (*Connector, error) {
	cfg, err := buildConfig(nil, opts)
	if err != nil {
		return nil, err
	}
	if cfg.backend != BackendPgx {
		return nil, fmt.Errorf("warmpg: %s names a pgx config (stdlib.RegisterConnConfig), so pool_backend must be pgx, not %s", name, cfg.backend)
	}
	rc := &registeredConnector{name: name, sem: make(chan struct{}, 1)}
	c := newConnector(rc, cfg)
	rc.cfg = &c.cfg
	c.ownPgx = true
	return c, nil
}

// registeredConnector opens connections with a registered pgx config. pgx
// offers no way to read a registered config but through a connection made
// with it, so the first Connect opens one through pgx's driver, copies its
// config (tracer, hooks and all), closes it, and from then on dials
// through a stdlib connector built from the copy with warmpg's settings
// applied, as for a DSN.
type registeredConnector struct {
	name     string
	cfg      *config // the Connector's; read only
	sem      chan struct{}
	resolved atomic.Pointer[resolvedConnector]
}

type resolvedConnector struct{ driver.Connector }

func (r *registeredConnector) Connect(ctx context.Context) (driver.Conn, error) {
	ic, err := r.resolve(ctx)
	if err != nil {
		return nil, err
	}
	return ic.Connect(ctx)
}

func (r *registeredConnector) Driver() driver.Driver { return stdlib.GetDefaultDriver() }

func (r *registeredConnector) resolve(ctx context.Context) (driver.Connector, error) {
	if rc := r.resolved.Load(); rc != nil {
		return rc.Connector, nil
	}
	select {
	case r.sem <- struct{}{}:
		defer func() { <-r.sem }()
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	if rc := r.resolved.Load(); rc != nil {
		return rc.Connector, nil
	}
	dc, err := stdlib.GetDefaultDriver().(driver.DriverContext).OpenConnector(r.name)
	if err != nil {
		return nil, err
	}
	probe, err := dc.Connect(ctx)
	if err != nil {
		var pe *pgconn.ParseConfigError
		if errors.As(err, &pe) {
			// pgx found no registered config and read the name as a DSN.
			return nil, fmt.Errorf("warmpg: no pgx config is registered as %s (stdlib.RegisterConnConfig; UnregisterConnConfig removes one)", r.name)
		}
		return nil, err
	}
	sc, ok := probe.(*stdlib.Conn)
	if !ok {
		probe.Close()
		return nil, fmt.Errorf("warmpg: pgx's driver opened a %T for %s, want *stdlib.Conn", probe, r.name)
	}
	pc := sc.Conn().Config()
	probe.Close()
	ic, tsa := pgxConnector(r.cfg, pc)
	if r.cfg.readOnly && tsa == "read-write" {
		return nil, fmt.Errorf("warmpg: pool_read_only=true with the target_session_attrs=read-write of %s can match no server (want primary, or no pool_read_only)", r.name)
	}
	r.resolved.Store(&resolvedConnector{ic})
	return ic, nil
}
