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
)

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
	connectTime time.Duration // one connect, measured
	parallelism int           // pool_warm_parallelism; 0: the default
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
	warmDB    time.Duration // a lower bound: ceil(pool / parallelism) connects
	atOnce    int
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

	// Every limit the application's connections count against: the first
	// one pool × instances exceeds, and the most connections they leave.
	room := s.free
	limits := []struct {
		name  string
		value int
	}{{"free slots", s.free}, {"role's connection limit", l.roleLimit}, {"database's connection limit", l.databaseLimit}}
	limit := 0
	for _, lim := range limits {
		if lim.value < 0 {
			continue // no such limit
		}
		room = min(room, lim.value)
		if s.total > lim.value && s.limitedBy == "" {
			s.limitedBy, limit = lim.name, lim.value
		}
	}
	s.fits = s.limitedBy == ""
	s.maxFit = room / d.instances

	s.guideMax = s.total + l.inUse + guideHeadroom
	s.guideOK = l.maxConnections >= s.guideMax
	s.memLowMB = s.total * backendMemLowMB
	s.memHighMB = s.total * backendMemHighMB
	s.oversized = s.suggested > 0 && s.pool > oversizeFactor*s.suggested

	if !s.fits {
		s.pooler = append(s.pooler, fmt.Sprintf("pool × instances = %d exceeds the %s (%d): the server cannot give every instance its pool",
			s.total, s.limitedBy, limit))
	}
	if s.memHighMB > poolerMemoryMB {
		s.pooler = append(s.pooler, fmt.Sprintf("%d server processes take about %s of memory (10–20 MB each)",
			s.total, memRange(s.memLowMB, s.memHighMB)))
	}

	s.atOnce = d.parallelism
	if s.atOnce <= 0 {
		s.atOnce = defaultWarmAtOnce
	}
	s.oneByOne = time.Duration(s.pool) * d.connectTime
	waves := (s.pool + s.atOnce - 1) / s.atOnce
	s.warmDB = time.Duration(waves) * d.connectTime
	return s
}

// memRange formats a memory range in MB or GB: "160–320 MB", "4.0–8.0 GB".
func memRange(lowMB, highMB int) string {
	if highMB < 1024 {
		return fmt.Sprintf("%d–%d MB", lowMB, highMB)
	}
	return fmt.Sprintf("%.1f–%.1f GB", float64(lowMB)/1024, float64(highMB)/1024)
}
