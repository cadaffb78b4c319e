//go:build !linux

package main

import "syscall"

// sysProcAttr: elsewhere than on Linux the children share the bench's
// process group and are stopped by the bench only.
func sysProcAttr() *syscall.SysProcAttr { return nil }
