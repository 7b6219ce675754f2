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
		// 10 one by one: 200 ms; at once (64 at a time): one connect.
		if s.oneByOne != 200*time.Millisecond || s.warmDB != 20*time.Millisecond || s.atOnce != 64 {
			t.Errorf("warm %s / %s at %d", s.oneByOne, s.warmDB, s.atOnce)
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
		if s.fits || s.limitedBy != "free slots" || s.maxFit != 26 {
			t.Errorf("%+v", s)
		}
		if len(s.pooler) != 1 || !strings.Contains(s.pooler[0], "90 exceeds the free slots (80)") {
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
		if s.warmDB != 30*time.Millisecond || s.oneByOne != 1300*time.Millisecond { // 3 waves of ≤64
			t.Errorf("warm %s / %s", s.warmDB, s.oneByOne)
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
