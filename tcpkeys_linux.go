package warmpg

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"
)

// setDialer sets k's options on each socket before it connects, as libpq
// does: a failed setsockopt fails the connect, with libpq's words.
func (k *tcpKeys) setDialer(d *net.Dialer) { d.Control = k.control }

func (k *tcpKeys) control(network, _ string, rc syscall.RawConn) error {
	if !strings.HasPrefix(network, "tcp") {
		return nil // a Unix socket: libpq sets none of them either
	}
	var serr error
	if err := rc.Control(func(fd uintptr) { serr = k.setsockopt(int(fd)) }); err != nil {
		return err
	}
	return serr
}

func (k *tcpKeys) setsockopt(fd int) error {
	var errs []error
	set := func(level, opt int, name string, v int) {
		if err := unix.SetsockoptInt(fd, level, opt, v); err != nil {
			errs = append(errs, fmt.Errorf("warmpg: setsockopt(%s=%d) failed: %w", name, v, err))
		}
	}
	if !k.keepalives {
		set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 0)
	} else {
		set(unix.SOL_SOCKET, unix.SO_KEEPALIVE, "SO_KEEPALIVE", 1)
		if k.idle > 0 {
			set(unix.IPPROTO_TCP, unix.TCP_KEEPIDLE, "TCP_KEEPIDLE", int(k.idle.Seconds()))
		}
		if k.interval > 0 {
			set(unix.IPPROTO_TCP, unix.TCP_KEEPINTVL, "TCP_KEEPINTVL", int(k.interval.Seconds()))
		}
		if k.count > 0 {
			set(unix.IPPROTO_TCP, unix.TCP_KEEPCNT, "TCP_KEEPCNT", k.count)
		}
	}
	if k.userTimeout > 0 {
		set(unix.IPPROTO_TCP, unix.TCP_USER_TIMEOUT, "TCP_USER_TIMEOUT", int(k.userTimeout.Milliseconds()))
	}
	return errors.Join(errs...)
}
