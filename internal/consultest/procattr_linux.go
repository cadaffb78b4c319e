package consultest

import "syscall"

// sysProcAttr makes the kernel kill the agent if the process that started it
// dies without stopping it (a test binary that panics or times out).
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
