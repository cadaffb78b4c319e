package loadreport

import (
	"math/rand/v2"
	"time"
)

// clock is the time seam of the collector and the recorder, so that tests
// drive expiry, backoff and rates exactly with a fake.
type clock interface {
	Now() time.Time
	// NewTimer returns a channel that receives once d has passed, and a
	// function that stops the timer.
	NewTimer(d time.Duration) (<-chan time.Time, func() bool)
}

type realClock struct{}

func (realClock) Now() time.Time { return time.Now() }

func (realClock) NewTimer(d time.Duration) (<-chan time.Time, func() bool) {
	t := time.NewTimer(d)
	return t.C, t.Stop
}

// randFloat returns a pseudo-random number in [0, 1). It is the jitter seam.
func randFloat() float64 { return rand.Float64() }
