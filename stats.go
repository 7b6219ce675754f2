package warmpg

import (
	"database/sql"
	"fmt"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// Counters count what a Connector's connections did since it was created.
// They complement sql.DBStats, which counts what the pool did.
type Counters struct {
	// Connects and ConnectErrors count connections opened and failed.
	Connects, ConnectErrors int64

	// What happened when a used connection was handed out again: one
	// outcome per reuse (ResetSession), whatever the mode, the most
	// expensive step counting (a check that pinged and then rolled back
	// counts as RolledBack):
	Clean      int64 // nothing sent (check found nothing; mode none)
	Pinged     int64 // a ping (mode ping; check: the server had sent data unasked)
	RolledBack int64 // a ROLLBACK (mode rollback; check: a transaction was left open)
	Reset      int64 // the session reset (mode discard; check: settings had changed)
	Discarded  int64 // refused with driver.ErrBadConn: database/sql took or dialled another

	// AutocommitTxs counts transactions begun without a BEGIN
	// (pool_autocommit); AutocommitUpgrades those of them that later sent
	// one, before their first statement that was not a plain read.
	AutocommitTxs, AutocommitUpgrades int64
	// FromReady counts connections Connect handed out from the connector's
	// ready store (pool_prewarm, pool_min_idle_conns) instead of dialling.
	FromReady int64
	// Replans counts statements sent again, once, after the server
	// refused a cached plan whose result columns a schema change had
	// changed (SQLSTATE 0A000, docs/replan.md).
	Replans int64
	// LazyTxs counts transactions begun with pool_lazy_begin: their BEGIN
	// went with their first statement, or was never sent.
	LazyTxs int64
	// StatementsWarmed counts statements new connections prepared ahead
	// (pool_warm_statements, docs/statements.md); StatementsWarmFailed
	// those that failed to prepare and were skipped (a table dropped, a
	// statement declared with a typo). Neither failed a connect.
	StatementsWarmed, StatementsWarmFailed int64

	// Who holds the pool's connections (docs/exhaustion.md), counted while
	// checkouts are tracked: pool_exhausted_log_interval > 0 (the
	// default), pool_leak_threshold > 0 or pool_log_level=debug; else 0.
	// InUse is how many connections are checked out now (db.Stats().InUse
	// counts the same from database/sql's side), OldestInUse how long the
	// longest holder has had its connection.
	InUse       int64
	OldestInUse time.Duration
	// HeldPastThreshold counts checkouts reported held past
	// pool_leak_threshold (each once); Exhaustions counts the times the
	// pool was reported exhausted (each exhaustion once, however long).
	HeldPastThreshold int64
	Exhaustions       int64

	// Hosts has, for a DSN that names several hosts, each host's
	// connections of this pool now (open: in use, idle in database/sql
	// and ready) and whether it is known down or of the wrong role for
	// target_session_attrs (docs/replicas.md); nil for one host.
	Hosts []HostStats
}

// String returns the counters on one line; it holds no DSN and no secret.
func (s Counters) String() string {
	return fmt.Sprintf("connects=%d connect_errors=%d from_ready=%d clean=%d pinged=%d rolled_back=%d reset=%d discarded=%d autocommit_txs=%d autocommit_upgrades=%d replans=%d lazy_txs=%d statements_warmed=%d statements_warm_failed=%d in_use=%d oldest_in_use=%s held_past_threshold=%d exhaustions=%d",
		s.Connects, s.ConnectErrors, s.FromReady, s.Clean, s.Pinged, s.RolledBack, s.Reset, s.Discarded, s.AutocommitTxs, s.AutocommitUpgrades, s.Replans, s.LazyTxs, s.StatementsWarmed, s.StatementsWarmFailed,
		s.InUse, s.OldestInUse, s.HeldPastThreshold, s.Exhaustions) + hostsString(s.Hosts)
}

// hostsString is " hosts=h1:n1,h2:n2(down)" for Counters.String, "" for one host.
func hostsString(hosts []HostStats) string {
	if len(hosts) == 0 {
		return ""
	}
	parts := make([]string, len(hosts))
	for i, h := range hosts {
		parts[i] = h.Host + "=" + strconv.Itoa(h.Conns)
		switch {
		case h.Down:
			parts[i] += "(down)"
		case h.WrongRole:
			parts[i] += "(wrong_role)"
		}
	}
	return " hosts=" + strings.Join(parts, ",")
}

type stats struct {
	connects, connectErrors                           atomic.Int64
	clean, pinged, rolledBack, reset, discarded, acTx atomic.Int64
	acUp, readyHits, replans, lazyTx                  atomic.Int64
	stmtsWarmed, stmtsWarmFailed                      atomic.Int64
}

func (s *stats) count(o outcome) {
	switch o {
	case outClean:
		s.clean.Add(1)
	case outPinged:
		s.pinged.Add(1)
	case outRolledBack:
		s.rolledBack.Add(1)
	case outReset:
		s.reset.Add(1)
	default:
		s.discarded.Add(1)
	}
}

// Stats returns the connector's counters.
func (c *Connector) Stats() Counters {
	s := &c.stats
	return Counters{
		Connects: s.connects.Load(), ConnectErrors: s.connectErrors.Load(),
		Clean: s.clean.Load(), Pinged: s.pinged.Load(), RolledBack: s.rolledBack.Load(),
		Reset: s.reset.Load(), Discarded: s.discarded.Load(), AutocommitTxs: s.acTx.Load(),
		AutocommitUpgrades:   s.acUp.Load(),
		FromReady:            s.readyHits.Load(),
		Replans:              s.replans.Load(),
		LazyTxs:              s.lazyTx.Load(),
		StatementsWarmed:     s.stmtsWarmed.Load(),
		StatementsWarmFailed: s.stmtsWarmFailed.Load(),

		InUse: c.holds.inUse.Load(), OldestInUse: c.holds.oldest(),
		HeldPastThreshold: c.holds.leaks.Load(), Exhaustions: c.holds.reports.Load(),
		Hosts: c.cfg.hosts.stats(),
	}
}

// Stats returns warmpg's counters for a DB warmpg opened; ok is false for
// any other DB.
func Stats(db *sql.DB) (s Counters, ok bool) {
	c, ok := connectorOf(db)
	if !ok {
		return Counters{}, false
	}
	return c.Stats(), true
}
