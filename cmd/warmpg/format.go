package main

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// msec formats a duration in milliseconds with three significant digits or
// more: 2619, 334, 10.7, 1.13, 0.052.
func msec(d time.Duration) string { return num(float64(d) / 1e6) }

// num formats a positive quantity with about three significant digits.
func num(v float64) string {
	switch {
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3f", v)
}

// times formats a ratio: "7.8×", "0.99×".
func times(r float64) string {
	if r >= 10 {
		return fmt.Sprintf("%.1f×", r)
	}
	return fmt.Sprintf("%.2f×", r)
}

// spread is the minimum, median and maximum of a sample.
type spread struct{ min, med, max float64 }

// spreadOf summarises a sample; the median of an even count is the mean of
// the middle two.
func spreadOf(xs []float64) spread {
	s := slices.Clone(xs)
	slices.Sort(s)
	m := len(s) / 2
	med := s[m]
	if len(s)%2 == 0 {
		med = (s[m-1] + s[m]) / 2
	}
	return spread{s[0], med, s[len(s)-1]}
}

func spreadOfDurations(ds []time.Duration) spread {
	xs := make([]float64, len(ds))
	for i, d := range ds {
		xs[i] = float64(d) / 1e6
	}
	return spreadOf(xs)
}

// ratios formats min/median/max ratios: "0.98 / 1.00 / 1.03×".
func (s spread) ratios() string {
	return fmt.Sprintf("%.2f / %.2f / %.2f×", s.min, s.med, s.max)
}

// isNumber reports whether a table cell is a number, possibly a ratio
// ("7.8×") or ratios ("0.98 / 1.00 / 1.03×").
func isNumber(cell string) bool {
	for _, f := range strings.Split(strings.TrimSuffix(cell, "×"), " / ") {
		if _, err := strconv.ParseFloat(f, 64); err != nil {
			return false
		}
	}
	return true
}
