package clock

import (
	"testing"
	"time"
)

func TestBackoff(t *testing.T) {
	tests := []struct {
		base, max time.Duration
		failures  int
		r         float64
		want      time.Duration
	}{
		{250 * time.Millisecond, 30 * time.Second, 0, 0.5, 250 * time.Millisecond},
		{250 * time.Millisecond, 30 * time.Second, 1, 0.5, 500 * time.Millisecond},
		{250 * time.Millisecond, 30 * time.Second, 3, 0.5, 2 * time.Second},
		{250 * time.Millisecond, 30 * time.Second, 1 << 20, 0.5, 30 * time.Second},
		{250 * time.Millisecond, 30 * time.Second, 0, 0, 200 * time.Millisecond},
		{250 * time.Millisecond, 30 * time.Second, 0, 1, 300 * time.Millisecond},
		{time.Minute, time.Second, 0, 0.5, time.Second},
	}
	for _, tc := range tests {
		if got := Backoff(tc.base, tc.max, tc.failures, tc.r); got != tc.want {
			t.Errorf("Backoff(%v, %v, %d, %v) = %v, want %v", tc.base, tc.max, tc.failures, tc.r, got, tc.want)
		}
	}
}
