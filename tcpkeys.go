package warmpg

import (
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// libpq's TCP keys (docs/cloud.md): keepalives, keepalives_idle,
// keepalives_interval, keepalives_count and tcp_user_timeout. libpq applies
// them to its socket; pgx and lib/pq know none of them and would send them
// to the server as settings, which it refuses (FATAL 42704, unrecognized
// configuration parameter). warmpg takes them out of the settings the
// backend sends and applies them to the socket it dials for the backend,
// with libpq's units: seconds, and milliseconds for tcp_user_timeout.
//
// With none of them in the DSN nothing changes: the socket keeps Go's
// net.Dialer keep-alive (on, 15 s idle, 15 s between probes, 9 probes), as
// pgx and lib/pq alone have it. With any of them it is libpq's: keep-alive
// on unless keepalives=0, and each of the others the operating system's
// default unless given (or given as 0).

// tcpKeyNames are libpq's TCP keys, in the order errors name them.
var tcpKeyNames = []string{"keepalives", "keepalives_idle", "keepalives_interval", "keepalives_count", "tcp_user_timeout"}

// tcpKeys is what a DSN's TCP keys ask of the socket.
type tcpKeys struct {
	keepalives bool // SO_KEEPALIVE; libpq's default: on
	// 0: the operating system's default.
	idle, interval time.Duration // TCP_KEEPIDLE, TCP_KEEPINTVL
	count          int           // TCP_KEEPCNT
	userTimeout    time.Duration // TCP_USER_TIMEOUT (Linux only)
}

// tcpKeyLimit is each numeric key's largest value: Linux's own limits
// (MAX_TCP_KEEPIDLE, MAX_TCP_KEEPINTVL, MAX_TCP_KEEPCNT, INT_MAX), past
// which libpq's setsockopt fails at connect; warmpg refuses them at open.
var tcpKeyLimit = map[string]int{
	"keepalives_idle":     32767,
	"keepalives_interval": 32767,
	"keepalives_count":    127,
	"tcp_user_timeout":    2147483647,
}

// libpqKeyError is a libpq key warmpg reads itself (the TCP keys,
// load_balance_hosts) that it refused; the message names the key, the
// value and what is allowed, and holds no password.
type libpqKeyError struct{ error }

// takeTCPKeys removes libpq's TCP keys from a backend's runtime settings
// (what pgx or lib/pq would send the server: the DSN's unknown keys, a
// service file's too) and returns them read, or nil when there are none.
// The error names every bad key.
func takeTCPKeys(settings map[string]string) (*tcpKeys, error) {
	var errs []error
	var others []string
	for key := range settings {
		if !slices.Contains(tcpKeyNames, key) && slices.ContainsFunc(tcpKeyNames, func(n string) bool { return strings.EqualFold(n, key) }) {
			others = append(others, key)
		}
	}
	slices.Sort(others)
	for _, key := range others {
		// libpq refuses it as no keyword; the server would refuse it as
		// an unknown setting.
		errs = append(errs, fmt.Errorf("warmpg: unknown DSN key %q: did you mean %s? (libpq's keys are in lower case)", key, strings.ToLower(key)))
	}
	k := &tcpKeys{keepalives: true}
	found := false
	for _, key := range tcpKeyNames {
		v, ok := settings[key]
		if !ok {
			continue
		}
		delete(settings, key)
		found = true
		// libpq reads an integer with white space around it (strtol).
		n, err := strconv.Atoi(strings.Trim(v, asciiSpace))
		if key == "keepalives" {
			if err != nil || n < 0 || n > 1 {
				errs = append(errs, fmt.Errorf("warmpg: invalid DSN keepalives=%q: want 1 (on, the default) or 0 (off)", v))
				continue
			}
			k.keepalives = n == 1
			continue
		}
		if limit := tcpKeyLimit[key]; err != nil || n < 0 || n > limit {
			unit := "seconds"
			switch key {
			case "keepalives_count":
				unit = "probes"
			case "tcp_user_timeout":
				unit = "milliseconds"
			}
			errs = append(errs, fmt.Errorf("warmpg: invalid DSN %s=%q: want a whole number of %s, 0 (the operating system's default) to %d", key, v, unit, limit))
			continue
		}
		switch key {
		case "keepalives_idle":
			k.idle = time.Duration(n) * time.Second
		case "keepalives_interval":
			k.interval = time.Duration(n) * time.Second
		case "keepalives_count":
			k.count = n
		case "tcp_user_timeout":
			k.userTimeout = time.Duration(n) * time.Millisecond
		}
	}
	if len(errs) > 0 {
		return nil, libpqKeyError{errors.Join(errs...)}
	}
	if !found {
		return nil, nil
	}
	return k, nil
}

// netDialer is the dialer of a backend's sockets: Go's default keep-alive
// when k is nil (as before), else k's settings (tcpkeys_linux.go,
// tcpkeys_other.go). timeout bounds the connect (pgx's connect_timeout).
func (k *tcpKeys) netDialer(timeout time.Duration) *net.Dialer {
	d := &net.Dialer{Timeout: timeout}
	if k != nil {
		d.KeepAlive = -1 // not Go's 15 s: k's, or the system's
		k.setDialer(d)
	}
	return d
}

// applyPgxTCPKeys takes the TCP keys out of a pgx config's runtime
// parameters and, when there are any, dials its sockets with them: pgx's
// own dialer (connect_timeout included) with their socket options. pgx's
// CancelRequest connections dial the same way, as libpq's do.
func applyPgxTCPKeys(pc *pgx.ConnConfig) error {
	k, err := takeTCPKeys(pc.RuntimeParams)
	if err != nil || k == nil {
		return err
	}
	pc.DialFunc = k.netDialer(pc.ConnectTimeout).DialContext
	return nil
}
