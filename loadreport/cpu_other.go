//go:build !unix

package loadreport

import (
	"errors"
	"time"
)

// processCPUTime is not available on this platform: CPU utilization is
// reported as 0.
func processCPUTime() (time.Duration, error) {
	return 0, errors.New("loadreport: process CPU time is not available on this platform")
}
