package promexample

import (
	"database/sql"
	"errors"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"

	"github.com/warmpg/warmpg"
)

// Collector is a prometheus.Collector for warmpg's counters of one pool.
type Collector struct {
	stats func() warmpg.Counters

	connects, connectErrors, fromReady, reuses, autocommitTxs *prometheus.Desc
	autocommitUpgrades, replans, lazyTxs                      *prometheus.Desc
	statementsWarmed, statementsWarmFailed                    *prometheus.Desc
	inUse, oldestInUse, heldPastThreshold, exhaustions        *prometheus.Desc
	hostConns                                                 *prometheus.Desc
}

var _ prometheus.Collector = (*Collector)(nil)

// NewCollector returns a Collector that reads stats at every scrape —
// (*warmpg.Connector).Stats, or a closure over warmpg.Stats(db) — and labels
// every metric db_name=dbName, as collectors.NewDBStatsCollector does.
func NewCollector(dbName string, stats func() warmpg.Counters) *Collector {
	labels := prometheus.Labels{"db_name": dbName}
	desc := func(name, help string, variable ...string) *prometheus.Desc {
		return prometheus.NewDesc(prometheus.BuildFQName("warmpg", "", name), help, variable, labels)
	}
	return &Collector{
		stats:         stats,
		connects:      desc("connects_total", "Connections warmpg opened to the server."),
		connectErrors: desc("connect_errors_total", "Connection attempts that failed."),
		fromReady:     desc("connections_from_ready_total", "Connections handed out from the ready store (pool_prewarm, pool_min_idle_conns) instead of dialled."),
		reuses: desc("reuses_total", "Reuses of a pooled connection, by what the reset cost: clean (nothing sent), pinged, rolled_back, reset, discarded (found dead or unfit and replaced).",
			"outcome"),
		autocommitTxs: desc("autocommit_transactions_total", "Transactions that sent no BEGIN or COMMIT (pool_autocommit)."),
		autocommitUpgrades: desc("autocommit_upgrades_total",
			"Transactions begun without a BEGIN (pool_autocommit) that later sent one, before their first statement that was not a plain read."),
		replans: desc("replans_total",
			"Statements sent again, once, after the server refused a cached plan whose result columns a schema change had changed (SQLSTATE 0A000)."),
		lazyTxs: desc("lazy_transactions_total",
			"Transactions begun with pool_lazy_begin: their BEGIN went with their first statement, or was never sent."),
		statementsWarmed: desc("statements_warmed_total", "Statements new connections prepared ahead (pool_warm_statements)."),
		statementsWarmFailed: desc("statements_warm_failed_total",
			"Statements new connections failed to prepare ahead and skipped (pool_warm_statements); no connect failed for them."),
		inUse:       desc("connections_in_use", "Connections checked out now, as warmpg counts them (docs/exhaustion.md)."),
		oldestInUse: desc("connection_oldest_in_use_seconds", "How long the longest holder has held its connection."),
		heldPastThreshold: desc("connections_held_past_threshold_total",
			"Checkouts held past pool_leak_threshold, each counted once."),
		exhaustions: desc("pool_exhaustions_total", "Times the pool was reported exhausted (every connection it may open checked out)."),
		hostConns: desc("host_connections", "For a DSN that names several hosts: the pool's connections to each host now, and the host's state: up, down (a connect found it down; skipped until rechecked) or wrong_role (for target_session_attrs).",
			"host", "state"),
	}
}

// NewCollectorForDB returns a Collector for a pool warmpg opened
// (sql.Open("warmpg", ...), warmpg.Open, sql.OpenDB with a
// *warmpg.Connector), or an error for any other.
func NewCollectorForDB(db *sql.DB, dbName string) (*Collector, error) {
	if _, ok := warmpg.Stats(db); !ok {
		return nil, errors.New("promexample: the pool was not opened through warmpg (behind a wrapper? use NewCollector with the connector's Stats)")
	}
	return NewCollector(dbName, func() warmpg.Counters {
		c, _ := warmpg.Stats(db)
		return c
	}), nil
}

// Describe sends every metric's description.
func (c *Collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.connects, c.connectErrors, c.fromReady, c.reuses, c.autocommitTxs,
		c.autocommitUpgrades, c.replans, c.lazyTxs, c.statementsWarmed, c.statementsWarmFailed,
		c.inUse, c.oldestInUse, c.heldPastThreshold, c.exhaustions, c.hostConns} {
		ch <- d
	}
}

// Collect reads the counters once and sends them.
func (c *Collector) Collect(ch chan<- prometheus.Metric) {
	s := c.stats()
	counter := func(d *prometheus.Desc, v int64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}
	counter(c.connects, s.Connects)
	counter(c.connectErrors, s.ConnectErrors)
	counter(c.fromReady, s.FromReady)
	counter(c.reuses, s.Clean, "clean")
	counter(c.reuses, s.Pinged, "pinged")
	counter(c.reuses, s.RolledBack, "rolled_back")
	counter(c.reuses, s.Reset, "reset")
	counter(c.reuses, s.Discarded, "discarded")
	counter(c.autocommitTxs, s.AutocommitTxs)
	counter(c.autocommitUpgrades, s.AutocommitUpgrades)
	counter(c.replans, s.Replans)
	counter(c.lazyTxs, s.LazyTxs)
	counter(c.statementsWarmed, s.StatementsWarmed)
	counter(c.statementsWarmFailed, s.StatementsWarmFailed)
	counter(c.heldPastThreshold, s.HeldPastThreshold)
	counter(c.exhaustions, s.Exhaustions)
	ch <- prometheus.MustNewConstMetric(c.inUse, prometheus.GaugeValue, float64(s.InUse))
	ch <- prometheus.MustNewConstMetric(c.oldestInUse, prometheus.GaugeValue, s.OldestInUse.Seconds())
	for _, h := range s.Hosts {
		ch <- prometheus.MustNewConstMetric(c.hostConns, prometheus.GaugeValue, float64(h.Conns), h.Host, HostState(h))
	}
}

// HostState is a host's state as the exporters label it: up, down or
// wrong_role.
func HostState(h warmpg.HostStats) string {
	switch {
	case h.Down:
		return "down"
	case h.WrongRole:
		return "wrong_role"
	}
	return "up"
}

// Register registers, on reg, database/sql's statistics of db (go_sql_*)
// and warmpg's counters (warmpg_*), both labelled db_name=dbName.
func Register(reg prometheus.Registerer, db *sql.DB, dbName string) error {
	wc, err := NewCollectorForDB(db, dbName)
	if err != nil {
		return err
	}
	sc := collectors.NewDBStatsCollector(db, dbName)
	if err := reg.Register(sc); err != nil {
		return err
	}
	if err := reg.Register(wc); err != nil {
		reg.Unregister(sc)
		return err
	}
	return nil
}
