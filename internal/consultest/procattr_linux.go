package consultest

import "syscall"

// sysProcAttr makes the kernel kill the agent if the process that started it
// dies without stopping it (a test binary that panics or times out).
func sysProcAttr() *syscall.SysProcAttr {
	// Its own process group, so that a Ctrl-C meant for the program (the
	// demo) does not stop Consul before the program has deregistered its
	// backends; the program stops it. Pdeathsig kills it if the program
	// dies first.
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
