//go:build !linux

package backend

import "time"

// threadCPUTime reports that the thread's CPU time is unknown here:
// spinCPU then spins for wall time.
func threadCPUTime() (time.Duration, bool) { return 0, false }
