package main

import (
	"strings"
	"testing"
	"time"
)

func TestSuggestPool(t *testing.T) {
	for _, tc := range []struct {
		rps  float64
		qt   time.Duration
		want int
	}{
		{0, 0, 0},
		{100, 0, 0},
		{0, time.Second, 0},
		{200, 50 * time.Millisecond, 15}, // 200 × 0.05 × 1.5
		{1000, 20 * time.Millisecond, 30},
		{100, 20 * time.Millisecond, 3},
		{10, 10 * time.Millisecond, 1},   // 0.15 → at least 1
		{333, 10 * time.Millisecond, 5},  // 4.995 → 5
		{400, 10 * time.Millisecond, 6},  // exactly 6, not 7 from rounding
		{401, 10 * time.Millisecond, 7},  // 6.015 → 7
		{0.5, 100 * time.Millisecond, 1}, // a trickle still needs one
	} {
		if got := suggestPool(tc.rps, tc.qt); got != tc.want {
			t.Errorf("suggestPool(%v, %s) = %d, want %d", tc.rps, tc.qt, got, tc.want)
		}
	}
}

func TestSize(t *testing.T) {
	server := serverLimits{maxConnections: 100, superuserReserved: 3, reserved: 2, roleLimit: -1, databaseLimit: -1, inUse: 15}
	// slots 95, free 80.
	t.Run("fits", func(t *testing.T) {
		s := size(server, demand{instances: 4, pool: 10, connectTime: 20 * time.Millisecond})
		if s.slots != 95 || s.free != 80 || s.total != 40 || !s.fits || s.limitedBy != "" || s.maxFit != 20 {
			t.Errorf("%+v", s)
		}
		// The guide: 40 + 15 in use + 50 = 105 > 100.
		if s.guideMax != 105 || s.guideOK {
			t.Errorf("guide %d ok=%v, want 105 and short", s.guideMax, s.guideOK)
		}
		if s.memLowMB != 400 || s.memHighMB != 800 || len(s.pooler) != 0 {
			t.Errorf("memory %d–%d MB, pooler %q", s.memLowMB, s.memHighMB, s.pooler)
		}
		// 10 one by one: 200 ms; at once (all 10: never more than the
		// pool, whatever pool_warm_parallelism says): one connect, with no
		// sample of what concurrency costs.
		if s.oneByOne != 200*time.Millisecond || s.warmLow != 20*time.Millisecond || s.warmHigh != 20*time.Millisecond || s.atOnce != 10 {
			t.Errorf("warm %s / %s–%s at %d", s.oneByOne, s.warmLow, s.warmHigh, s.atOnce)
		}
	})
	t.Run("exactly full", func(t *testing.T) {
		s := size(server, demand{instances: 8, pool: 10})
		if !s.fits || s.maxFit != 10 {
			t.Errorf("80 of 80 free: %+v", s)
		}
	})
	t.Run("does not fit", func(t *testing.T) {
		s := size(server, demand{instances: 3, pool: 30})
		if s.fits || s.limitedBy != "free slots less the reserve" || s.maxFit != 26 {
			t.Errorf("%+v", s)
		}
		if len(s.pooler) != 1 || !strings.Contains(s.pooler[0], "90 exceeds the free slots less the reserve (80)") {
			t.Errorf("pooler %q", s.pooler)
		}
	})
	t.Run("role and database limits", func(t *testing.T) {
		l := server
		l.roleLimit, l.databaseLimit = 50, 30
		s := size(l, demand{instances: 2, pool: 20})
		if s.fits || s.limitedBy != "database's connection limit" || s.maxFit != 15 {
			t.Errorf("%+v", s)
		}
		s = size(l, demand{instances: 2, pool: 26})
		if s.limitedBy != "role's connection limit" {
			t.Errorf("52 > role limit 50 first: %+v", s)
		}
	})
	t.Run("memory", func(t *testing.T) {
		big := serverLimits{maxConnections: 5000, roleLimit: -1, databaseLimit: -1}
		s := size(big, demand{instances: 10, pool: 21}) // 210 × 20 MB = 4200 MB
		if !s.fits || len(s.pooler) != 1 || !strings.Contains(s.pooler[0], "210 server processes take about 2.1–4.1 GB") {
			t.Errorf("pooler %q", s.pooler)
		}
		if s := size(big, demand{instances: 10, pool: 20}); len(s.pooler) != 0 { // 4000 MB
			t.Errorf("200 connections: pooler %q", s.pooler)
		}
	})
	t.Run("formula", func(t *testing.T) {
		// 1000 rps over 4 instances, 40 ms: 250 × 0.04 × 1.5 = 15 each.
		s := size(server, demand{instances: 4, rps: 1000, queryTime: 40 * time.Millisecond})
		if s.suggested != 15 || s.pool != 15 || s.total != 60 || !s.fits {
			t.Errorf("%+v", s)
		}
		// A pool given wins; 4 × the formula's or more is oversized.
		s = size(server, demand{instances: 4, pool: 61, rps: 1000, queryTime: 40 * time.Millisecond})
		if s.pool != 61 || !s.oversized {
			t.Errorf("%+v", s)
		}
		if s := size(server, demand{instances: 1, pool: 60, rps: 1000, queryTime: 40 * time.Millisecond}); s.oversized {
			t.Errorf("60 is 1× the formula's 60: %+v", s)
		}
	})
	t.Run("warm waves", func(t *testing.T) {
		s := size(serverLimits{maxConnections: 1000, roleLimit: -1, databaseLimit: -1},
			demand{instances: 1, pool: 130, connectTime: 10 * time.Millisecond, parallelism: 64})
		if s.warmLow != 30*time.Millisecond || s.oneByOne != 1300*time.Millisecond || s.atOnce != 64 { // 3 waves of ≤64
			t.Errorf("warm %s / %s", s.warmLow, s.oneByOne)
		}
	})
	t.Run("no pool", func(t *testing.T) {
		s := size(server, demand{instances: 2})
		if s.pool != 0 || s.total != 0 || !s.fits {
			t.Errorf("%+v", s)
		}
	})
	t.Run("more in use than slots", func(t *testing.T) {
		l := server
		l.inUse = 120
		if s := size(l, demand{instances: 1, pool: 1}); s.free != 0 || s.fits || s.maxFit != 0 {
			t.Errorf("%+v", s)
		}
	})
}

// The advice leaves room for a rolling deploy and for other clients: the
// fleet of issue 19, 297 slots for 6 instances, used to be told "49 each"
// (294 of 297), which a 7th instance during a deploy overran.
func TestSizeDeployAndReserve(t *testing.T) {
	l := serverLimits{maxConnections: 300, superuserReserved: 3, roleLimit: -1, databaseLimit: -1}
	s := size(l, demand{instances: 6, pool: 60, surge: 1, reserve: -1})
	// Reserve: a tenth of 297, rounded up: 30. (297 − 30) / 7 = 38.
	if s.slots != 297 || s.reserve != 30 || s.peak != 420 || s.fits || s.maxFit != 38 ||
		s.limitedBy != "free slots less the reserve" {
		t.Errorf("%+v", s)
	}
	if 7*s.maxFit+s.reserve > s.slots {
		t.Errorf("the advice overruns the server during a deploy: 7 × %d + %d > %d", s.maxFit, s.reserve, s.slots)
	}
	// The old arithmetic, asked for explicitly.
	if s := size(l, demand{instances: 6, pool: 60}); s.maxFit != 49 {
		t.Errorf("no surge, no reserve: %d, want 49", s.maxFit)
	}
	// A small server keeps at least 5 free.
	if s := size(serverLimits{maxConnections: 20, roleLimit: -1, databaseLimit: -1}, demand{instances: 1, pool: 5, surge: 1, reserve: -1}); s.reserve != 5 || !s.fits || s.maxFit != 7 {
		t.Errorf("small server: %+v", s)
	}
	// What fits at the peak fits.
	if s := size(l, demand{instances: 6, pool: 38, surge: 1, reserve: -1}); !s.fits {
		t.Errorf("38 each: %+v", s)
	}
	if s := size(l, demand{instances: 6, pool: 39, surge: 1, reserve: -1}); s.fits {
		t.Errorf("39 each: 7 × 39 = 273 > 267: %+v", s)
	}
}

// The warm-time estimate uses what the sample measured: a pool that the
// server forks faster than the round trips allow is round-trip bound; a
// larger one, or a fleet, is bound by the server's cost per connect.
func TestWarmEstimate(t *testing.T) {
	l := serverLimits{maxConnections: 1000, roleLimit: -1, databaseLimit: -1}
	// One connect 10–12 ms; 8 at once 24–31 ms: each more costs the
	// server (24−12)/7 = 1.71 to (31−10)/7 = 3 ms.
	sm := connectSample{oneMin: 10 * time.Millisecond, oneMax: 12 * time.Millisecond, k: 8, burstMin: 24 * time.Millisecond, burstMax: 31 * time.Millisecond}
	s := size(l, demand{instances: 6, pool: 60, parallelism: 64, connectTime: 11 * time.Millisecond, sample: sm})
	if s.atOnce != 60 {
		t.Errorf("at once %d, want 60 (the pool, not the parallelism 64)", s.atOnce)
	}
	lo, hi := 12*time.Millisecond/7, 3*time.Millisecond
	if s.perConnLow != lo || s.perConnHi != hi {
		t.Errorf("per connect %s–%s, want %s–%s", s.perConnLow, s.perConnHi, lo, hi)
	}
	// 60 at once: one wave (10–12 ms) vs 10 + 59 × 1.71 ms = 111 ms and
	// 12 + 59 × 3 = 189 ms: server bound.
	if want := 10*time.Millisecond + 59*lo; s.warmLow != want {
		t.Errorf("warm low %s, want %s", s.warmLow, want)
	}
	if want := 12*time.Millisecond + 59*hi; s.warmHigh != want {
		t.Errorf("warm high %s, want %s", s.warmHigh, want)
	}
	// Six instances at once: 360 connects on one server.
	if want := 12*time.Millisecond + 359*hi; s.fleetHigh != want || s.fleetLow >= s.fleetHigh {
		t.Errorf("fleet %s–%s, want high %s", s.fleetLow, s.fleetHigh, want)
	}
	// A server with cores to spare (the burst took no longer than one
	// connect) is round-trip bound: waves of one connect each.
	idle := connectSample{oneMin: 10 * time.Millisecond, oneMax: 10 * time.Millisecond, k: 8, burstMin: 9 * time.Millisecond, burstMax: 10 * time.Millisecond}
	s = size(l, demand{instances: 1, pool: 130, parallelism: 64, connectTime: 10 * time.Millisecond, sample: idle})
	if s.warmLow != 30*time.Millisecond || s.warmHigh != 30*time.Millisecond {
		t.Errorf("idle server: %s–%s, want 3 waves of 10 ms", s.warmLow, s.warmHigh)
	}
	// pool_max_idle_conns is what WarmDB warms.
	if s := size(l, demand{instances: 1, pool: 40, warm: 25, connectTime: time.Millisecond}); s.warmN != 25 || s.atOnce != 25 {
		t.Errorf("warm %d at %d, want 25 at 25", s.warmN, s.atOnce)
	}
}

func TestMemRange(t *testing.T) {
	for in, want := range map[[2]int]string{
		{160, 320}:    "160–320 MB",
		{600, 1200}:   "0.6–1.2 GB",
		{4096, 8192}:  "4.0–8.0 GB",
		{10, 20}:      "10–20 MB",
		{1000, 2000}:  "1.0–2.0 GB",
		{5000, 10000}: "4.9–9.8 GB",
	} {
		if got := memRange(in[0], in[1]); got != want {
			t.Errorf("memRange(%d, %d) = %q, want %q", in[0], in[1], got, want)
		}
	}
}
