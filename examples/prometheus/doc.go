// Package promexample exports a warmpg pool's metrics to Prometheus
// (github.com/prometheus/client_golang): database/sql's own pool statistics
// through client_golang's collectors.NewDBStatsCollector (go_sql_*), and
// warmpg's counters — what each connect and each reuse cost — through this
// package's Collector (warmpg_*):
//
//	reg := prometheus.NewRegistry()
//	if err := promexample.Register(reg, db, "orders"); err != nil { ... }
//	http.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
//
// Exported, one metric (or outcome) per field of warmpg.Counters, each with
// the constant label db_name:
//
//	warmpg_connects_total                    connections opened
//	warmpg_connect_errors_total              connection attempts that failed
//	warmpg_connections_from_ready_total      connections handed out ready (pool_prewarm, pool_min_idle_conns) instead of dialled
//	warmpg_reuses_total{outcome="..."}       reuses of a pooled connection, by what the reset cost:
//	                                         clean (nothing sent), pinged, rolled_back, reset, discarded
//	warmpg_autocommit_transactions_total     transactions that sent no BEGIN (pool_autocommit)
//	warmpg_autocommit_upgrades_total         of those, the ones that later sent one (a statement that was not a plain read)
//	warmpg_replans_total                     statements sent again after a schema change broke their cached plan (docs/replan.md)
//	warmpg_lazy_transactions_total           transactions begun with pool_lazy_begin (BEGIN sent with the first statement, or never)
//	warmpg_statements_warmed_total           statements new connections prepared ahead (pool_warm_statements)
//	warmpg_statements_warm_failed_total      statements that failed to prepare ahead and were skipped
//	warmpg_connections_in_use                gauge: connections checked out now
//	warmpg_connection_oldest_in_use_seconds  gauge: how long the longest holder has held its connection
//	warmpg_connections_held_past_threshold_total  checkouts held past pool_leak_threshold
//	warmpg_pool_exhaustions_total            times the pool was reported exhausted
//	warmpg_host_connections{host,state}      gauge, for a DSN that names several hosts: the pool's connections
//	                                         to each host now; state up, down or wrong_role (docs/replicas.md)
//
// What to watch: outcome="discarded" counts connections found dead (a
// server restart, a killed backend) and replaced before any query failed;
// outcome="rolled_back" counts connections returned inside a transaction,
// which usually means code that forgot a Commit or Rollback. An
// oldest_in_use_seconds that keeps climbing, or exhaustions that rise, is a
// connection held too long (rows never closed, a transaction open across a
// slow call): docs/exhaustion.md says how to find the code that holds it.
//
// Counters are read when Prometheus scrapes, from warmpg.Stats(db); for a
// pool warmpg's Stats cannot see (a wrapper such as otelsql opened it),
// build the collector from the connector: NewCollector("orders", connector.Stats).
package promexample
