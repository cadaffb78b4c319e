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
