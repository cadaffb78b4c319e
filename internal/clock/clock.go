// Package clock is the time seam of the loops that wait: production code
// uses Real, tests drive backoff, rate limits and expiry exactly with fakes
// of their own.
package clock

import (
	"math/rand/v2"
	"time"
)

// Clock tells the time and makes timers.
type Clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

// Real is the system clock.
type Real struct{}

// Now returns time.Now().
func (Real) Now() time.Time { return time.Now() }

// NewTimer wraps time.NewTimer.
func (Real) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// RandFloat returns a pseudo-random number in [0, 1); the jitter seam.
func RandFloat() float64 { return rand.Float64() }

// Backoff returns the delay after the given number of earlier consecutive
// failures: base doubled that many times, capped at max, then multiplied by
// 0.8 + 0.4·r, where r in [0, 1) is the caller's jitter (RandFloat, or a
// fixed value in tests). A base above max counts as max.
func Backoff(base, max time.Duration, failures int, r float64) time.Duration {
	d := min(base, max)
	// d < max inside the loop, so it runs at most log2(max/1ns) < 64 times
	// and never overflows.
	for i := 0; i < failures && d < max; i++ {
		d *= 2
	}
	d = min(d, max)
	return d + time.Duration((2*r-1)*0.2*float64(d))
}
