//go:build !unix

package warmpg

import "syscall"

// peekSocket cannot look at a socket on this platform: check mode pings.
func peekSocket(syscall.RawConn) peekState { return peekUnknown }
