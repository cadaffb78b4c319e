//go:build linux

package backend

import (
	"context"
	"syscall"
	"testing"
	"time"

	userpb "github.com/lookaside-lb/lookaside/proto/user/v1"
	"google.golang.org/grpc/codes"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"
)

// TestCallCPU: every User call spins for CallCPU of CPU time, after the
// latency; SetCallCPU changes it; health checks do not spin; a deadline
// stops the spin.
func TestCallCPU(t *testing.T) {
	const cpu = 60 * time.Millisecond
	cfg := testConfig(t)
	cfg.CallCPU = cpu
	r := serve(t, cfg)
	ctx, cancel := context.WithTimeout(t.Context(), testTimeout)
	defer cancel()
	cc := dial(t, r.Addr())
	c := userpb.NewUserClient(cc)

	// timed returns a call's wall time and the CPU time the process used
	// meanwhile (client and server share it; the client's share is small).
	timed := func(c func() error) (wall, used time.Duration, err error) {
		cpu0 := processCPU(t)
		start := time.Now()
		err = c()
		return time.Since(start), processCPU(t) - cpu0, err
	}
	call := func() error { _, err := c.GetUserList(ctx, &userpb.PageInfo{}); return err }
	if wall, used, err := timed(call); err != nil || wall < cpu || used < cpu*9/10 {
		t.Errorf("call with %v call CPU: wall %v, CPU %v, err %v; want both at least %v", cpu, wall, used, err, cpu)
	}
	health := func() error {
		_, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
		return err
	}
	// No spin is told by the CPU used, not by the wall time, which a busy
	// machine stretches (CI saw 70 ms of wall time for 5 ms of CPU).
	if wall, used, err := timed(health); err != nil || used >= cpu {
		t.Errorf("health check: wall %v, CPU %v, err %v; want no spin", wall, used, err)
	}
	dctx, dcancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer dcancel()
	r.SetCallCPU(10 * time.Second)
	start := time.Now()
	if _, err := c.GetUserList(dctx, &userpb.PageInfo{}); status.Code(err) != codes.DeadlineExceeded || time.Since(start) > 5*time.Second {
		t.Errorf("call with a 20ms deadline and 10s call CPU: %v after %v, want DeadlineExceeded at once", err, time.Since(start))
	}
	r.SetCallCPU(0)
	if wall, used, err := timed(call); err != nil || used >= cpu {
		t.Errorf("call after SetCallCPU(0): wall %v, CPU %v, err %v; want CPU well under %v", wall, used, err, cpu)
	}
	// Latency first, then the spin.
	r.SetLatency(cpu)
	r.SetCallCPU(cpu)
	if wall, used, err := timed(call); err != nil || wall < 2*cpu || used < cpu*9/10 {
		t.Errorf("call with %v latency and %v call CPU: wall %v, CPU %v, err %v", cpu, cpu, wall, used, err)
	}
}

// processCPU returns the CPU time the test process has used.
func processCPU(t *testing.T) time.Duration {
	t.Helper()
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		t.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
