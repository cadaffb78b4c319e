//go:build unix

package loadreport

import (
	"syscall"
	"time"
)

// processCPUTime returns the CPU time (user and system) the process has
// used since it started.
func processCPUTime() (time.Duration, error) {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0, err
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
}
