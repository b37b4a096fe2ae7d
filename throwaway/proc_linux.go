package throwaway

import "syscall"

// sysProcAttr puts a server in its own process group, runs it as cred (if
// not nil), and has the kernel send it deathSig when the calling process dies.
//
// The kernel ties the death signal to the OS thread that started the server:
// it fires early if that thread exits, which the Go runtime does only for a
// goroutine that exits while locked to its thread (runtime.LockOSThread).
func sysProcAttr(cred *syscall.Credential, deathSig syscall.Signal) *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Setpgid: true, Credential: cred, Pdeathsig: deathSig}
}
