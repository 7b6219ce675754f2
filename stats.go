package warmpg

import (
	"database/sql"
	"fmt"
	"sync/atomic"
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
}

// String returns the counters on one line; it holds no DSN and no secret.
func (s Counters) String() string {
	return fmt.Sprintf("connects=%d connect_errors=%d from_ready=%d clean=%d pinged=%d rolled_back=%d reset=%d discarded=%d autocommit_txs=%d autocommit_upgrades=%d",
		s.Connects, s.ConnectErrors, s.FromReady, s.Clean, s.Pinged, s.RolledBack, s.Reset, s.Discarded, s.AutocommitTxs, s.AutocommitUpgrades)
}

type stats struct {
	connects, connectErrors                           atomic.Int64
	clean, pinged, rolledBack, reset, discarded, acTx atomic.Int64
	acUp, readyHits                                   atomic.Int64
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
		AutocommitUpgrades: s.acUp.Load(),
		FromReady:          s.readyHits.Load(),
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
