package warmpg

import (
	"database/sql"
	"errors"
	"fmt"
	"log/slog"
)

// Evict retires every connection of a pool at once (docs/cloud.md): after a
// credential rotation, a DNS change, a certificate renewal or a parameter
// change, the pool goes on with new connections only. HikariCP's
// softEvictConnections and pgxpool's Reset do the same.
//
// Each connection records the connector's eviction generation when its
// connect begins (holds.evictGen); Evict raises it, and a connection of an
// older generation is expired (conn.expired): database/sql's IsValid drops
// it when it comes back, ResetSession refuses it if it is handed out, and
// keep-warm's ready store drops it. database/sql's idle connections are
// closed at once by lowering MaxIdleConns to none and setting it back, the
// one way database/sql closes idle connections on request.

// Evict closes every idle connection of db now — those idle in database/sql
// and keep-warm's ready ones — and every connection in use when it is
// returned; a connect in flight when Evict is called yields a connection
// that is closed at its first return too. database/sql then opens new ones
// as requests need them, and keep-warm (pool_min_idle_conns) refills its
// ready store at its own pace, through WarmDB's dial window: a few dials at
// first, more while connects stay fast, not all at once.
//
// Evict sends nothing and waits for nothing: the connections in use finish
// their work. It sets db's MaxIdleConns back to pool_max_idle_conns (its
// default: pool_max_conns if set, else database/sql's 2): database/sql has
// no way to read a limit set by hand with db.SetMaxIdleConns, so set that
// one again after Evict, or set it with pool_max_idle_conns instead. A
// connection that comes back in the moment between the two is closed too.
//
// db must have been opened through warmpg (sql.Open("warmpg", ...), Open,
// or sql.OpenDB with a *Connector); behind a wrapper that hides warmpg's
// driver (otelsql), call (*Connector).Evict.
func Evict(db *sql.DB) error {
	if db == nil {
		return errors.New("warmpg: Evict: db is nil")
	}
	c, ok := connectorOf(db)
	if !ok {
		return fmt.Errorf("warmpg: Evict: db was not opened through warmpg (its driver is %T), so warmpg cannot tell its connections apart (want sql.Open(\"warmpg\", dsn), warmpg.Open, or (*Connector).Evict behind a wrapper)", db.Driver())
	}
	return c.Evict(db)
}

// Evict is the package's Evict for a db whose connections come from c
// through a wrapper that hides c from db.Driver().
func (c *Connector) Evict(db *sql.DB) error {
	if db == nil {
		return errors.New("warmpg: Evict: db is nil")
	}
	if c.closed.Load() {
		return errors.New("warmpg: Evict: connector is closed")
	}
	c.holds.evictGen.Add(1)
	ready := 0
	if c.ready != nil {
		ready = c.ready.evict()
	}
	before := db.Stats()
	db.SetMaxIdleConns(0) // closes every idle connection, now
	db.SetMaxIdleConns(c.cfg.idleConns())
	after := db.Stats()
	c.cfg.logEvent(slog.LevelInfo, "warmpg: evicted the pool's connections: idle ones closed, those in use close when returned",
		"idle_closed", after.MaxIdleClosed-before.MaxIdleClosed, "ready_closed", ready, "in_use", after.InUse)
	return nil
}

// evicted reports whether an Evict came after c's connect began.
func (c *conn) evicted() bool { return c.hold.gen != c.c.holds.evictGen.Load() }

// evict closes the ready connections an Evict retired and lets the filler
// refill through a new dial window. It returns how many it closed.
func (r *ready) evict() int {
	var drop []*readyConn
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return 0
	}
	keep := r.conns[:0]
	for _, rc := range r.conns {
		if rc.base.evicted() {
			drop = append(drop, rc)
			continue
		}
		keep = append(keep, rc)
	}
	clear(r.conns[len(keep):])
	r.conns = keep
	// The dials in flight bring evicted connections: no Connect waits
	// for them.
	r.epoch++
	r.staleDialing = r.dialing
	if r.c.cfg.keepWarm() {
		r.win = newDialWindow(&r.c.cfg, r.c.cfg.parallelism(r.c.cfg.minIdleConns))
	}
	r.mu.Unlock()
	for _, rc := range drop {
		rc.w.Close()
	}
	r.poke()
	return len(drop)
}
