package main

import "syscall"

// sysProcAttr puts a child in its own process group, so that a Ctrl-C meant
// for the bench reaches the bench, which stops its children in order; and
// makes the kernel kill the child if the bench dies without stopping it.
func sysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
}
