package main

import (
	"fmt"
	"math"
	"time"
)

// The numbers check sizes by, from the pool guide (DESIGN.md):
//
//	pool_size ≈ peak requests/s × average query seconds × 1.5
//	max_connections ≥ pool_size × instances + other services + 50
//
// and PostgreSQL forks a process per connection, 10–20 MB each.
const (
	formulaFactor     = 1.5
	guideHeadroom     = 50
	backendMemLowMB   = 10
	backendMemHighMB  = 20
	poolerMemoryMB    = 4096 // backends taking more than this (at 20 MB each): a pooler is advisable
	oversizeFactor    = 4    // a pool this many times the formula's mostly idles
	defaultWarmAtOnce = 64   // warmpg's pool_warm_parallelism default
	// defaultReservePct of the slots, at least defaultReserveMin, are left
	// for other clients when -reserve is not given.
	defaultReservePct = 10
	defaultReserveMin = 5
	// sampleBurst is how many connects check opens at once to measure what
	// concurrency costs the server.
	sampleBurst = 8
)

// defaultReserve is the reserve check assumes for slots ordinary roles may
// open: a tenth of them, at least defaultReserveMin.
func defaultReserve(slots int) int {
	return max(defaultReserveMin, (slots*defaultReservePct+99)/100)
}

// serverLimits is what check reads from the server.
type serverLimits struct {
	maxConnections    int
	superuserReserved int
	reserved          int // reserved_connections (PostgreSQL 16+); 0 before
	roleLimit         int // the role's CONNECTION LIMIT; -1: none
	databaseLimit     int // the database's CONNECTION LIMIT; -1: none
	inUse             int // client backends now, check's own excluded
}

// demand is what the application asks for.
type demand struct {
	instances   int
	pool        int     // per instance, from -pool or the DSN; 0: not given
	rps         float64 // peak requests per second over all instances
	queryTime   time.Duration
	connectTime time.Duration // one connect, measured (the median)
	parallelism int           // pool_warm_parallelism; 0: the default
	// surge is how many more instances run during a rolling deploy, when
	// the new ones open their pools before the old ones close theirs.
	surge int
	// reserve is how many slots to leave free for other clients of the
	// server (psql, migrations, cron jobs, other services); <0: the
	// default, defaultReserve.
	reserve int
	// warm is how many connections WarmDB opens per instance
	// (pool_max_idle_conns); 0: the pool.
	warm int
	// sample is what a small concurrent sample of connects measured; zero
	// when none was taken.
	sample connectSample
}

// connectSample is what check measured of connects: one at a time (the
// fastest and slowest of a few) and k at once (the whole burst's time,
// fastest and slowest of a few bursts).
type connectSample struct {
	oneMin, oneMax     time.Duration
	k                  int
	burstMin, burstMax time.Duration
}

// sizing is check's arithmetic.
type sizing struct {
	suggested int // the formula's pool per instance (rps / instances); 0 without rps and query time
	pool      int // the pool per instance checked: demand.pool, else suggested
	total     int // pool × instances
	slots     int // connections ordinary roles may open: max − superuser_reserved − reserved
	free      int // slots − in use
	fits      bool
	limitedBy string // the first limit total exceeds ("free slots", ...); "" if it fits
	maxFit    int    // the largest pool per instance that fits (0 if none does)
	guideMax  int    // max_connections the guide asks for: total + in use + 50
	guideOK   bool
	memLowMB  int // total × 10 MB
	memHighMB int // total × 20 MB
	pooler    []string
	oversized bool // pool > 4 × the formula's
	connect   time.Duration
	oneByOne  time.Duration
	// The deploy and reserve check's advice leaves room for.
	surge, reserve int
	peak           int // pool × (instances + surge): the most during a deploy
	// Warming one instance's pool: warmN connections, atOnce at a time
	// (pool_warm_parallelism, but never more than warmN), estimated from
	// the sample as a range; fleetLow/High: every instance warming at once.
	warmN                 int
	atOnce                int
	warmLow, warmHigh     time.Duration
	fleetLow, fleetHigh   time.Duration
	perConnLow, perConnHi time.Duration // the server's cost of one more concurrent connect
}

// suggestPool is the formula: peak rps × average query seconds × 1.5,
// rounded up; at least 1 when there is any load.
func suggestPool(rps float64, queryTime time.Duration) int {
	if rps <= 0 || queryTime <= 0 {
		return 0
	}
	return max(1, int(math.Ceil(rps*queryTime.Seconds()*formulaFactor-1e-9)))
}

func size(l serverLimits, d demand) sizing {
	s := sizing{suggested: suggestPool(d.rps/float64(d.instances), d.queryTime), connect: d.connectTime}
	s.pool = d.pool
	if s.pool == 0 {
		s.pool = s.suggested
	}
	s.total = s.pool * d.instances
	s.slots = max(0, l.maxConnections-l.superuserReserved-l.reserved)
	s.free = max(0, s.slots-l.inUse)
	s.surge = max(0, d.surge)
	s.reserve = d.reserve
	if s.reserve < 0 {
		s.reserve = defaultReserve(s.slots)
	}
	s.peak = s.pool * (d.instances + s.surge)

	// Every limit the application's connections count against: the first
	// one the fleet exceeds at its peak (during a deploy), and the most
	// connections they leave. The reserve is kept out of the server's free
	// slots, for other clients; the role's and database's limits are the
	// application's own.
	room := max(0, s.free-s.reserve)
	limits := []struct {
		name  string
		value int
	}{{"free slots less the reserve", room}, {"role's connection limit", l.roleLimit}, {"database's connection limit", l.databaseLimit}}
	limit := 0
	for _, lim := range limits {
		if lim.value < 0 {
			continue // no such limit
		}
		room = min(room, lim.value)
		if s.peak > lim.value && s.limitedBy == "" {
			s.limitedBy, limit = lim.name, lim.value
		}
	}
	s.fits = s.limitedBy == ""
	s.maxFit = room / (d.instances + s.surge)

	s.guideMax = s.total + l.inUse + guideHeadroom
	s.guideOK = l.maxConnections >= s.guideMax
	s.memLowMB = s.total * backendMemLowMB
	s.memHighMB = s.total * backendMemHighMB
	s.oversized = s.suggested > 0 && s.pool > oversizeFactor*s.suggested

	if !s.fits {
		s.pooler = append(s.pooler, fmt.Sprintf("pool × (instances + deploy surge) = %d exceeds the %s (%d): the server cannot give every instance its pool",
			s.peak, s.limitedBy, limit))
	}
	if s.memHighMB > poolerMemoryMB {
		s.pooler = append(s.pooler, fmt.Sprintf("%d server processes take about %s of memory (10–20 MB each)",
			s.total, memRange(s.memLowMB, s.memHighMB)))
	}

	s.warmN = d.warm
	if s.warmN <= 0 || s.warmN > s.pool {
		s.warmN = s.pool
	}
	s.atOnce = d.parallelism
	if s.atOnce <= 0 {
		s.atOnce = defaultWarmAtOnce
	}
	s.atOnce = max(1, min(s.atOnce, s.warmN))
	s.oneByOne = time.Duration(s.warmN) * d.connectTime
	sm := d.sample
	if sm.oneMin == 0 {
		sm.oneMin, sm.oneMax = d.connectTime, d.connectTime
	}
	s.perConnLow, s.perConnHi = sm.perConn()
	s.warmLow = warmTime(s.warmN, s.atOnce, sm.oneMin, s.perConnLow)
	s.warmHigh = warmTime(s.warmN, s.atOnce, sm.oneMax, s.perConnHi)
	s.fleetLow = warmTime(s.warmN*d.instances, s.atOnce*d.instances, sm.oneMin, s.perConnLow)
	s.fleetHigh = warmTime(s.warmN*d.instances, s.atOnce*d.instances, sm.oneMax, s.perConnHi)
	return s
}

// perConn is what one more concurrent connect costs the server, from the
// sample: a burst of k connects took one connect's time plus k−1 times
// this. Zero when the sample has no burst, or the burst took no longer
// than one connect (the server had cores to spare).
func (sm connectSample) perConn() (low, high time.Duration) {
	if sm.k < 2 {
		return 0, 0
	}
	f := func(burst, one time.Duration) time.Duration {
		return max(0, (burst-one)/time.Duration(sm.k-1))
	}
	low, high = f(sm.burstMin, sm.oneMax), f(sm.burstMax, sm.oneMin)
	return low, max(low, high)
}

// warmTime estimates how long opening n connections, p at a time, takes:
// the longer of the round trips (n/p waves of one connect each) and the
// server's work (one connect, then perConn for each other one, as the
// server forks and authenticates them one core's worth at a time).
func warmTime(n, p int, one, perConn time.Duration) time.Duration {
	if n <= 0 {
		return 0
	}
	waves := time.Duration((n + p - 1) / p)
	return max(waves*one, one+time.Duration(n-1)*perConn)
}

// memRange formats a memory range in MB or GB: "160–320 MB", "4.0–8.0 GB".
func memRange(lowMB, highMB int) string {
	if highMB < 1024 {
		return fmt.Sprintf("%d–%d MB", lowMB, highMB)
	}
	return fmt.Sprintf("%.1f–%.1f GB", float64(lowMB)/1024, float64(highMB)/1024)
}
