//go:build unix && !linux

package throwaway

import "syscall"

// sysProcAttr puts a server in its own process group and runs it as cred (if
// not nil). Only Linux can signal it when the calling process dies.
func sysProcAttr(cred *syscall.Credential, _ syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred}
}
