//go:build !linux

package warmpg

import (
	"net"
	"time"
)

// setDialer sets what Go's net.KeepAliveConfig can set on this system;
// tcp_user_timeout, which only Linux has, is ignored (docs/cloud.md).
// Go sets it after the connect, on TCP sockets only.
func (k *tcpKeys) setDialer(d *net.Dialer) {
	d.KeepAliveConfig = net.KeepAliveConfig{
		Enable:   k.keepalives,
		Idle:     orUnchanged(k.idle),
		Interval: orUnchanged(k.interval),
		Count:    int(orUnchanged(time.Duration(k.count))),
	}
}

// orUnchanged maps 0 (the system's default) to KeepAliveConfig's -1: leave
// the socket's option as it is.
func orUnchanged(d time.Duration) time.Duration {
	if d == 0 {
		return -1
	}
	return d
}
