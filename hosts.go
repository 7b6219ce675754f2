package warmpg

import (
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net"
	"net/netip"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
)

// One pool over several hosts (docs/replicas.md, issue 28).
//
// When a DSN names more than one host, warmpg walks the hosts itself: each
// connect goes to one host at a time (pgx: the config's host and its
// sslmode=prefer fallbacks for that host only, set in BeforeConnect; lib/pq:
// a per-connect config with that host alone), so that it knows which host
// answered, which refused or timed out and which had the wrong role for
// target_session_attrs. What it learns is the connector's host-state cache
// (hostSet):
//
//   - a host whose connect failed at the network (refused, reset, timed out:
//     connect_timeout) is down: no connect goes to it for pool_host_recheck;
//     then one dial, never more at a time, tries it again;
//   - a host of the wrong role (a standby for read-write, a primary for
//     standby, ...) is skipped for pool_host_recheck, then tried again;
//   - a host no connect has reached yet, or one past its recheck, takes one
//     dial at a time until one connects: a black-holed host costs one
//     connect_timeout, not one per dial.
//
// load_balance_hosts=random (libpq 16's key; pgx does not know it and sent it
// to the server, 42704) picks, for each connect, the eligible host that holds
// the fewest of this pool's connections (those open and those being
// dialled), ties broken at random, and falls back through the others in the
// same order: WarmDB, pool_prewarm and keep-warm, which dial through it,
// balance exactly. Without it (disable, libpq's default) hosts are tried in
// the DSN's order, as libpq does: every connection on the first host that is
// up and eligible.

// lbRandom is load_balance_hosts=random.
const (
	lbDisable = "disable"
	lbRandom  = "random"
)

// lbKey is the DSN key; lbEnv is libpq's environment variable for it.
const (
	lbKey = "load_balance_hosts"
	lbEnv = "PGLOADBALANCEHOSTS"
)

func lbError(v string) error {
	return libpqKeyError{fmt.Errorf("warmpg: invalid DSN %s=%q: want disable (the default: the hosts in the DSN's order) or random", lbKey, v)}
}

// takeLoadBalance removes load_balance_hosts from a pgx config's runtime
// parameters (pgx would send it to the server) and returns it, or libpq's
// PGLOADBALANCEHOSTS when the DSN has none.
func takeLoadBalance(settings map[string]string) (string, error) {
	v, inDSN := settings[lbKey]
	if inDSN {
		delete(settings, lbKey)
	} else if v = os.Getenv(lbEnv); v == "" {
		return lbDisable, nil
	}
	switch v {
	case lbDisable, lbRandom:
		return v, nil
	}
	if !inDSN {
		return "", libpqKeyError{fmt.Errorf("warmpg: invalid environment variable %s=%q: want disable (the default: the hosts in the DSN's order) or random", lbEnv, v)}
	}
	return "", lbError(v)
}

// pqLBError matches lib/pq's refusal of a load_balance_hosts value.
var pqLBError = regexp.MustCompile(`"load_balance_hosts": "([^"]*)" is not supported`)

// rewritePQLBError gives lib/pq's refusal of load_balance_hosts warmpg's
// wording (key, value, what is allowed); other errors are returned as they
// are.
func rewritePQLBError(err error) error {
	if m := pqLBError.FindStringSubmatch(err.Error()); m != nil {
		return lbError(m[1])
	}
	return err
}

// hostEntry is one host of a multi-host DSN, with its state; the fields
// below the line are under hostSet.mu.
type hostEntry struct {
	name string // host:port, for logs, Stats and errors
	// pgx: the configs pgx tries for this host, in order (sslmode=prefer
	// makes two: TLS, then plain).
	pgx []*pgconn.FallbackConfig
	// lib/pq: the host's address.
	pqHost string
	pqAddr netip.Addr
	pqPort uint16

	conns, dialing int
	reached        bool      // a connect reached it (up, or of the wrong role)
	downUntil      time.Time // zero: not known down
	down           bool      // found down, not yet back (for the logs)
	wrongUntil     time.Time // known of the wrong role until then
	probing        bool      // a dial to an unproven host is in flight
}

// hostSet is a connector's hosts and their state.
type hostSet struct {
	hosts   []*hostEntry
	pq      bool // lib/pq's: errors worded as lib/pq words them
	random  bool
	tsa     string // target_session_attrs
	recheck time.Duration
	cfg     *config

	mu      sync.Mutex
	changed chan struct{} // closed and replaced when a probe ends
	now     func() time.Time

	// probe dials h in the background once its recheck is due, so that
	// no connect waits on a host that was down (set by the connector);
	// ctx ends with the connector.
	probe  func(ctx context.Context, h *hostEntry, strict bool)
	ctx    context.Context
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// close stops the background probes and waits for them.
func (hs *hostSet) close() {
	if hs == nil {
		return
	}
	hs.cancel()
	hs.wg.Wait()
}

func newHostSet(cfg *config, lb, tsa string, hosts []*hostEntry) *hostSet {
	if len(hosts) < 2 {
		return nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &hostSet{hosts: hosts, random: lb == lbRandom, tsa: tsa, recheck: cfg.hostRecheck,
		changed: make(chan struct{}), now: time.Now, ctx: ctx, cancel: cancel}
}

// pgxHosts groups a pgx config's host and fallbacks by host:port.
func pgxHosts(pc *pgx.ConnConfig) []*hostEntry {
	all := append([]*pgconn.FallbackConfig{{Host: pc.Host, Port: pc.Port, TLSConfig: pc.TLSConfig}}, pc.Fallbacks...)
	var out []*hostEntry
	byName := map[string]*hostEntry{}
	for _, fc := range all {
		name := hostPort(fc.Host, fc.Port)
		h := byName[name]
		if h == nil {
			h = &hostEntry{name: name}
			byName[name] = h
			out = append(out, h)
		}
		h.pgx = append(h.pgx, fc)
	}
	return out
}

// pqHosts lists a lib/pq config's hosts.
func pqHosts(pcfg *pq.Config) []*hostEntry {
	var out []*hostEntry
	seen := map[string]bool{}
	add := func(host string, addr netip.Addr, port uint16) {
		h := host
		if addr.IsValid() {
			h = addr.String()
		}
		name := h + ":" + strconv.Itoa(int(port)) // as lib/pq names it
		if seen[name] {
			return
		}
		seen[name] = true
		out = append(out, &hostEntry{name: name, pqHost: host, pqAddr: addr, pqPort: port})
	}
	add(pcfg.Host, pcfg.Hostaddr, pcfg.Port)
	for _, m := range pcfg.Multi {
		add(m.Host, m.Hostaddr, m.Port)
	}
	return out
}

func hostPort(host string, port uint16) string {
	if strings.HasPrefix(host, "/") {
		return host + ":" + strconv.Itoa(int(port)) // a Unix socket directory
	}
	return net.JoinHostPort(host, strconv.Itoa(int(port)))
}

// warmingKey marks the context of a warming dial (WarmDB, pool_prewarm,
// keep-warm), which balances exactly (see pick).
type warmingKey struct{}

// hostKey carries a connect's host to the backend (pgxBeforeConnect,
// pqConnectOne); strictKey says prefer-standby's first pass, which takes a
// standby only.
type (
	hostKey   struct{}
	strictKey struct{}
)

// applyPgxHost points a pgx config at ctx's host alone.
func applyPgxHost(ctx context.Context, cc *pgx.ConnConfig) {
	h, ok := ctx.Value(hostKey{}).(*hostEntry)
	if !ok || len(h.pgx) == 0 {
		return
	}
	cc.Host, cc.Port, cc.TLSConfig = h.pgx[0].Host, h.pgx[0].Port, h.pgx[0].TLSConfig
	cc.Fallbacks = h.pgx[1:]
}

// applyPQHost points a lib/pq config at ctx's host alone.
func applyPQHost(ctx context.Context, cfg *pq.Config) {
	h, ok := ctx.Value(hostKey{}).(*hostEntry)
	if !ok {
		return
	}
	cfg.Host, cfg.Hostaddr, cfg.Port = h.pqHost, h.pqAddr, h.pqPort
	cfg.Multi = nil
	cfg.LoadBalanceHosts = pq.LoadBalanceHostsDisable
}

// errWrongRole marks a connect refused because the server's role does not
// match target_session_attrs.
var errWrongRole = errors.New("wrong role for target_session_attrs")

type wrongRoleError struct{ err error }

func (e *wrongRoleError) Error() string { return e.err.Error() }
func (e *wrongRoleError) Unwrap() []error {
	return []error{e.err, errWrongRole}
}

// pgxValidator wraps pgx's target_session_attrs check so that warmpg knows a
// refusal for the role: the host is skipped for pool_host_recheck. With
// prefer-standby a primary is refused in the first pass (strictKey) and
// taken in the second, with no second connect (pgx alone connects again to
// a host it had refused as not preferred).
func pgxValidator(next pgconn.ValidateConnectFunc) pgconn.ValidateConnectFunc {
	if next == nil {
		return nil
	}
	return func(ctx context.Context, pg *pgconn.PgConn) error {
		err := next(ctx, pg)
		if err == nil {
			return nil
		}
		var np *pgconn.NotPreferredError
		if errors.As(err, &np) {
			if ctx.Value(strictKey{}) != nil {
				return &wrongRoleError{errors.New("server is not in hot standby mode")}
			}
			return nil
		}
		if errors.Is(err, pgconn.ErrReadOnlyConnection) || errors.Is(err, pgconn.ErrReadWriteConnection) ||
			errors.Is(err, pgconn.ErrPrimaryConnection) || errors.Is(err, pgconn.ErrStandbyConnection) {
			return &wrongRoleError{err}
		}
		return err
	}
}

// pqRoleErrors are lib/pq's target_session_attrs refusals.
var pqRoleErrors = []string{"session is not read-only", "session is read-only", "server is in hot standby mode", "server is not in hot standby mode"}

// hostFailure is how a connect to one host failed.
type hostFailure int

const (
	failOther hostFailure = iota // the server refused the session (auth, database, ...): next host
	failDown                     // network: refused, reset, timed out
	failRole                     // wrong role for target_session_attrs
	failStop                     // the caller's context ended, or a refusal every host would repeat
)

func classifyHostError(ctx context.Context, err error) hostFailure {
	if ctx.Err() != nil {
		return failStop
	}
	if errors.Is(err, errWrongRole) || slices.Contains(pqRoleErrors, err.Error()) {
		return failRole
	}
	switch sqlState(err) {
	case "":
	case "57P03":
		return failDown // starting up, shutting down
	case "28P01", "3D000", "42501":
		return failStop // as pgx: the same everywhere
	default:
		return failOther
	}
	var ne net.Error
	if transientConnectError(err) || errors.As(err, &ne) || errors.Is(err, context.DeadlineExceeded) {
		return failDown
	}
	var oe *net.OpError
	var de *net.DNSError
	if errors.As(err, &oe) || errors.As(err, &de) {
		return failDown
	}
	return failOther
}

// hostsError is a connect that no host took: every host's error, worded
// as the backend alone words it (lib/pq: "pq: could not connect to any of
// the hosts:", a line per host; pgx's errors name their host).
type hostsError struct {
	errs []error
	pq   bool
}

func (e *hostsError) Error() string {
	if len(e.errs) == 1 {
		return errors.Unwrap(e.errs[0]).Error()
	}
	var b strings.Builder
	if e.pq {
		b.WriteString("pq: could not connect to any of the hosts:")
	} else {
		b.WriteString("warmpg: no host of the DSN took the connect:")
	}
	for _, err := range e.errs {
		b.WriteString("\n\t")
		b.WriteString(err.Error())
	}
	return b.String()
}

func (e *hostsError) Unwrap() []error { return e.errs }

// hostErr names the host an error came from (pgx's errors name it
// already).
type hostErr struct {
	host string
	err  error
	pq   bool
}

func (e *hostErr) Error() string {
	if e.pq {
		return "connecting to " + e.host + ": " + e.err.Error()
	}
	return e.err.Error()
}
func (e *hostErr) Unwrap() error { return e.err }

// connect opens a connection through connect on the hosts in the order the
// state and load_balance_hosts ask for, and returns it with its host.
func (hs *hostSet) connect(ctx context.Context, connect func(context.Context) (driver.Conn, error)) (driver.Conn, *hostEntry, error) {
	tried := map[*hostEntry]bool{}
	var errs []error
	exact := ctx.Value(warmingKey{}) != nil
	passes := 1
	if hs.tsa == "prefer-standby" {
		passes = 2
	}
	for pass := 0; pass < passes; pass++ {
		strict := passes == 2 && pass == 0
		if pass == 1 {
			clear(tried) // the primaries refused as not preferred are taken now
		}
		for {
			h, wait := hs.pick(tried, strict, len(errs) == 0 && pass == 0, exact)
			if h == nil && wait != nil {
				select {
				case <-wait:
					continue
				case <-ctx.Done():
					return nil, nil, fmt.Errorf("%w (waiting for a host's first connect)", ctx.Err())
				}
			}
			if h == nil {
				break
			}
			tried[h] = true
			hctx := context.WithValue(ctx, hostKey{}, h)
			if strict {
				hctx = context.WithValue(hctx, strictKey{}, true)
			}
			ic, err := connect(hctx)
			kind := hs.done(h, ctx, err, strict)
			if err == nil {
				return ic, h, nil
			}
			errs = append(errs, &hostErr{h.name, err, hs.pq})
			if kind == failStop {
				return nil, nil, &hostsError{errs, hs.pq}
			}
		}
	}
	if len(errs) == 0 {
		return nil, nil, fmt.Errorf("warmpg: no host of the DSN is eligible: each was found of the wrong role for target_session_attrs=%s in the last pool_host_recheck (%s)", hs.tsa, hs.recheck)
	}
	return nil, nil, &hostsError{errs, hs.pq}
}

// pick chooses the next host to try, reserving a dial on it, or returns a
// channel to wait on when the host(s) to try next are being probed, or nil,
// nil when none is left. first: nothing was tried yet in this connect, so
// with every eligible host known down they are tried anyway, in order, as
// the driver alone would. exact: a warming dial (WarmDB, pool_prewarm,
// keep-warm), which waits for a host's first connect rather than go to a
// host holding more; an application's connect goes on to the others.
func (hs *hostSet) pick(tried map[*hostEntry]bool, strict, first, exact bool) (*hostEntry, <-chan struct{}) {
	hs.mu.Lock()
	defer hs.mu.Unlock()
	now := hs.now()
	var cands, down []*hostEntry
	waitable := false
	minProbing := -1 // the least load of a host being reached for the first time
	for _, h := range hs.hosts {
		if tried[h] {
			continue
		}
		roleMatters := strict || hs.tsa != "prefer-standby"
		if now.Before(h.wrongUntil) && roleMatters {
			continue // of the wrong role, within its recheck
		}
		if now.Before(h.downUntil) {
			down = append(down, h)
			continue
		}
		if !h.probing && hs.probe != nil && (!h.downUntil.IsZero() || (!h.wrongUntil.IsZero() && roleMatters)) {
			// Its recheck is due: one dial in the background tries it;
			// connects go on to the others meanwhile.
			h.probing = true
			h.dialing++
			hs.wg.Add(1)
			go func() {
				defer hs.wg.Done()
				hs.probe(hs.ctx, h, strict)
			}()
			down = append(down, h)
			continue
		}
		if h.probing && !h.downUntil.IsZero() {
			down = append(down, h) // being rechecked in the background
			continue
		}
		if h.probing && !h.wrongUntil.IsZero() && roleMatters {
			continue // its role is being rechecked in the background
		}
		if h.probing {
			// One dial at a time to a host no connect has reached yet:
			// wait for it rather than send another.
			waitable = true
			if n := h.conns + h.dialing; minProbing < 0 || n < minProbing {
				minProbing = n
			}
			if !hs.random && len(cands) == 0 {
				break // in the DSN's order, the next host is this one
			}
			continue
		}
		cands = append(cands, h)
		if !hs.random {
			break
		}
	}
	if len(cands) == 0 {
		if waitable {
			return nil, hs.changed
		}
		if !first || len(down) == 0 {
			return nil, nil
		}
		// Every eligible host is known down: try the first anyway, as the
		// driver alone would, one dial at a time.
		cands = down[:1]
	}
	h := cands[0]
	if hs.random && len(cands) > 1 {
		// The fewest connections (open and being dialled), ties at random.
		var best []*hostEntry
		least := -1
		for _, c := range cands {
			n := c.conns + c.dialing
			switch {
			case least < 0 || n < least:
				least, best = n, append(best[:0], c)
			case n == least:
				best = append(best, c)
			}
		}
		h = best[rand.IntN(len(best))]
	}
	if exact && hs.random && minProbing >= 0 && minProbing < h.conns+h.dialing {
		// A host being reached for the first time holds fewer: wait for
		// its first connect (no host known down is waited on), so that
		// warming balances exactly from the start.
		return nil, hs.changed
	}
	h.dialing++
	if !h.reached || !h.downUntil.IsZero() || (!h.wrongUntil.IsZero() && (strict || hs.tsa != "prefer-standby")) {
		h.probing = true
	}
	return h, nil
}

// done records how a dial to h ended.
func (hs *hostSet) done(h *hostEntry, ctx context.Context, err error, strict bool) hostFailure {
	kind := failOther
	if err != nil {
		kind = classifyHostError(ctx, err)
	}
	hs.mu.Lock()
	h.dialing--
	if h.probing {
		h.probing = false
		close(hs.changed)
		hs.changed = make(chan struct{})
	}
	now := hs.now()
	var logDown, logBack, logRole bool
	switch {
	case err == nil:
		h.conns++
		logBack = h.down
		h.reached, h.down, h.downUntil = true, false, time.Time{}
		if strict || hs.tsa != "prefer-standby" {
			// (A primary prefer-standby took in its second pass stays
			// known as one.)
			h.wrongUntil = time.Time{}
		}
	case kind == failDown:
		logDown = !h.down
		h.down, h.downUntil = true, now.Add(hs.recheck)
	case kind == failRole:
		logBack = h.down
		logRole = h.wrongUntil.IsZero()
		h.reached, h.down, h.downUntil = true, false, time.Time{}
		h.wrongUntil = now.Add(hs.recheck)
	case kind == failOther:
		// It answered.
		logBack = h.down
		h.reached, h.down, h.downUntil = true, false, time.Time{}
	}
	hs.mu.Unlock()
	cfg := hs.cfg
	switch {
	case logDown:
		cfg.logEvent(slog.LevelWarn, "warmpg: host down; connects skip it until it is rechecked", "host", h.name, "recheck", hs.recheck, "error", err)
	case logBack:
		cfg.logEvent(slog.LevelInfo, "warmpg: host back up", "host", h.name)
	}
	if logRole {
		cfg.logEvent(slog.LevelInfo, "warmpg: host has the wrong role for target_session_attrs; connects skip it until it is rechecked", "host", h.name, "target_session_attrs", hs.tsa, "recheck", hs.recheck, "error", err)
	}
	return kind
}

// release notes that a connection to h closed.
func (hs *hostSet) release(h *hostEntry) {
	hs.mu.Lock()
	h.conns--
	hs.mu.Unlock()
}

// HostStats is one host of a multi-host DSN as Stats sees it.
type HostStats struct {
	Host  string // host:port, as the DSN names it
	Conns int    // this pool's connections to it now (in use, idle and ready)
	// Down: a connect found it down (refused, timed out) and no connect
	// reached it since; WrongRole: it was last found of the wrong role for
	// target_session_attrs, within pool_host_recheck.
	Down, WrongRole bool
}

// stats returns every host's state, in the DSN's order.
func (hs *hostSet) stats() []HostStats {
	if hs == nil {
		return nil
	}
	hs.mu.Lock()
	defer hs.mu.Unlock()
	now := hs.now()
	out := make([]HostStats, len(hs.hosts))
	for i, h := range hs.hosts {
		out[i] = HostStats{Host: h.name, Conns: h.conns, Down: h.down, WrongRole: now.Before(h.wrongUntil)}
	}
	return out
}

// probeHost is the connector's background recheck of h: one connect, closed
// at once; its outcome is h's new state. It is bounded by pool_warm_timeout
// (and the DSN's connect_timeout, which the backend applies).
func (c *Connector) probeHost(ctx context.Context, h *hostEntry, strict bool) {
	hs := c.cfg.hosts
	ctx, cancel := context.WithTimeout(ctx, c.cfg.warmTimeout)
	defer cancel()
	hctx := context.WithValue(context.WithValue(ctx, socketSlotKey{}, &socketSlot{}), hostKey{}, h)
	if strict && hs.tsa == "prefer-standby" {
		hctx = context.WithValue(hctx, strictKey{}, true)
	}
	ic, err := c.inner.Connect(hctx)
	if ctx.Err() != nil && err != nil && hs.ctx.Err() != nil {
		// The connector closed.
		hs.mu.Lock()
		h.dialing--
		h.probing = false
		hs.mu.Unlock()
		return
	}
	hs.done(h, ctx, err, strict || hs.tsa != "prefer-standby")
	if err == nil {
		ic.Close()
		hs.release(h)
	}
}
