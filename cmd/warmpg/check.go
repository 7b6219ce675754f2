package main

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/warmpg/warmpg"
)

const checkUsage = `usage: warmpg check <dsn> [flags]

Connects to the server of <dsn> (a postgres:// URL or libpq key=value pairs,
pool_* keys allowed), reads its connection limits and what is in use now,
and says whether a pool of -pool connections in each of -instances fits,
the pool size the formula suggests for -rps and -query-time
(pool ≈ peak requests/s × average query seconds × 1.5), whether a pooler
such as PgBouncer is advisable, how long warming will take, and a DSN with
pool_* keys to use.

Its advice leaves room for -deploy-surge more instances (a rolling deploy
opens the new pools before the old ones close) and keeps -reserve slots free
for other clients of the server (psql, migrations, other services; by default
a tenth of the slots ordinary roles may use, at least 5). The warm-time
estimate comes from connects it times, one at a time and a few at once.

It opens a few connections (at most 8 at once) and only reads; the password is
never printed.
`

// checkConfig is check's flags.
type checkConfig struct {
	dsn       string
	instances int
	rps       float64
	queryTime time.Duration
	pool      int
	surge     int
	reserve   int
	timeout   time.Duration
}

func check(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("check", checkUsage, stderr)
	var c checkConfig
	fs.intIn(&c.instances, "instances", 1, 1, 10000, "instances (processes) of the application, each with its own pool")
	fs.Float64Var(&c.rps, "rps", 0, "peak requests per second over all instances, one query each (with -query-time)")
	fs.DurationVar(&c.queryTime, "query-time", 0, "average query time, e.g. 20ms (with -rps)")
	fs.intIn(&c.pool, "pool", 0, 0, warmpg.MaxPoolSize, "connections per instance (0: the DSN's pool_max_conns, else the formula's)")
	fs.intIn(&c.surge, "deploy-surge", 1, 0, 10000, "extra instances running during a rolling deploy, whose pools the server must also hold")
	fs.intIn(&c.reserve, "reserve", -1, -1, warmpg.MaxPoolSize*10, "slots to leave free for other clients (-1: a tenth of the slots, at least 5)")
	fs.durationIn(&c.timeout, "timeout", 10*time.Second, time.Millisecond, 5*time.Minute, "how long to wait for the server")
	pos, err := fs.parse(args)
	if err != nil {
		return err
	}
	switch len(pos) {
	case 0:
		return badInput("check: no DSN given (usage: warmpg check <dsn> [flags])")
	case 1:
		c.dsn = pos[0]
	default:
		return badInput("check: one DSN expected, got %d arguments (quote a key=value DSN: 'host=db user=app')", len(pos))
	}
	if err := c.validate(); err != nil {
		return err
	}

	// warmpg's parser first: it refuses the DSNs whose password the parsers
	// would read differently, and its errors show no password.
	// Read only; open nothing in the background, fail at once on a refused
	// connection (the timeout bounds the rest).
	conn, err := warmpg.OpenConnector(c.dsn, warmpg.WithPrewarm(false), warmpg.WithMinIdleConns(0),
		warmpg.WithConnectRetryTimeout(0), warmpg.WithLogger(slog.New(slog.DiscardHandler)))
	if err != nil {
		return badInput("check: bad DSN: %v", err)
	}
	d, err := parseDSN(c.dsn)
	if err == nil {
		err = checkPoolKeys(d)
	}
	if err != nil {
		conn.Close()
		return badInput("check: bad DSN: %v", err)
	}
	pool, poolFrom := c.pool, "-pool"
	if pool == 0 {
		pool, poolFrom = dsnPool(d)
	}
	parallelism, warmN := 0, 0
	if v, ok := d.get("pool_warm_parallelism"); ok {
		parallelism, _ = strconv.Atoi(strings.TrimSpace(v))
	}
	if v, ok := d.get("pool_max_idle_conns"); ok {
		warmN, _ = strconv.Atoi(strings.TrimSpace(v))
	}
	db := sql.OpenDB(conn)
	defer db.Close()
	db.SetMaxOpenConns(1)
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	info, err := readServer(ctx, db)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	// The burst stays within the slots free now, leaving one.
	l := info.limits
	k := min(sampleBurst, max(1, l.maxConnections-l.superuserReserved-l.reserved-l.inUse-1))
	sample, connectTime, err := measureConnects(ctx, conn, 3, k, 2)
	if err != nil {
		return fmt.Errorf("check: %w", err)
	}
	s := size(info.limits, demand{
		instances: c.instances, pool: pool, rps: c.rps, queryTime: c.queryTime,
		connectTime: connectTime, parallelism: parallelism, surge: c.surge, reserve: c.reserve,
		warm: warmN, sample: sample,
	})
	if poolFrom == "" && s.suggested > 0 {
		poolFrom = "the formula"
	}
	db.SetMaxIdleConns(0) // the sample's connections are all spreadHosts's
	info.hosts, info.balance = spreadHosts(ctx, conn, d)
	report(stdout, c, d, info, s, poolFrom)
	return nil
}

// hostsSample is how many connections per host check holds at once over a
// multi-host DSN, to show where a pool's connections go.
const hostsSample = 2

// spreadHosts holds, over a DSN that names several hosts, hostsSample
// connections per host at once and returns each host's share of them and
// state (warmpg.Stats), then closes them; nil for one host.
func spreadHosts(ctx context.Context, conn *warmpg.Connector, d *dsn) ([]warmpg.HostStats, string) {
	hosts := conn.Stats().Hosts
	if len(hosts) < 2 {
		return nil, ""
	}
	balance := "disable"
	if v, ok := d.get("load_balance_hosts"); ok {
		balance = strings.TrimSpace(v)
	}
	var held []driver.Conn
	for range hostsSample * len(hosts) {
		cn, err := conn.Connect(ctx)
		if err != nil {
			break // the hosts' states say why
		}
		held = append(held, cn)
	}
	hosts = conn.Stats().Hosts
	for _, cn := range held {
		cn.Close()
	}
	return hosts, balance
}

func (c *checkConfig) validate() error {
	switch {
	case c.rps < 0 || math.IsNaN(c.rps) || math.IsInf(c.rps, 0):
		return badInput("-rps %v: want a number of requests per second, 0 or more", c.rps)
	case c.queryTime < 0:
		return badInput("-query-time %s: want a positive duration such as 20ms", c.queryTime)
	case c.queryTime > time.Hour:
		return badInput("-query-time %s: want at most 1h", c.queryTime)
	case (c.rps > 0) != (c.queryTime > 0):
		return badInput("-rps and -query-time go together: the formula needs both (got -rps %v, -query-time %s)", c.rps, c.queryTime)
	}
	if n := suggestPool(c.rps/float64(c.instances), c.queryTime); n > warmpg.MaxPoolSize {
		return badInput("-rps %v / -instances %d × -query-time %s × 1.5 = %d connections per instance: more than any one server can give; check the units (-query-time 20ms, not 20s)",
			c.rps, c.instances, c.queryTime, n)
	}
	return nil
}

// checkPoolKeys rejects pool_* values check reads itself; warmpg's own
// parser checks the rest.
func checkPoolKeys(d *dsn) error {
	for _, k := range []string{"pool_max_conns", "pool_max_idle_conns", "pool_warm_parallelism"} {
		if v, ok := d.get(k); ok {
			if _, err := strconv.Atoi(strings.TrimSpace(v)); err != nil {
				return fmt.Errorf("%s=%q: want a whole number", k, v)
			}
		}
	}
	return nil
}

// dsnPool is the pool size a DSN asks for: pool_max_conns, else
// pool_max_idle_conns; 0 and "" when it names none.
func dsnPool(d *dsn) (int, string) {
	for _, k := range []string{"pool_max_conns", "pool_max_idle_conns"} {
		if v, ok := d.get(k); ok {
			if n, _ := strconv.Atoi(strings.TrimSpace(v)); n > 0 {
				return n, "the DSN's " + k
			}
		}
	}
	return 0, ""
}

// serverInfo is what check reads from the server.
type serverInfo struct {
	version, addr, user, database string
	superuser                     bool
	hasReserved                   bool // the server has reserved_connections (16+)
	limits                        serverLimits
	states                        []stateCount
	// hosts: a multi-host DSN's hosts, with the connections check held on
	// each (spreadHosts); balance: its load_balance_hosts.
	hosts   []warmpg.HostStats
	balance string
}

type stateCount struct {
	state string
	n     int
}

func readServer(ctx context.Context, db *sql.DB) (*serverInfo, error) {
	info := &serverInfo{}
	var addr sql.NullString
	var port sql.NullInt64
	err := db.QueryRowContext(ctx, `select current_setting('server_version'), inet_server_addr()::text, inet_server_port(),
		current_user, current_database(), (select rolsuper from pg_roles where rolname = current_user)`).
		Scan(&info.version, &addr, &port, &info.user, &info.database, &info.superuser)
	if err != nil {
		return nil, connectError(err)
	}
	info.addr = "a Unix socket"
	if addr.Valid {
		info.addr = strings.TrimSuffix(addr.String, "/32") + ":" + strconv.FormatInt(port.Int64, 10)
	}
	rows, err := db.QueryContext(ctx, `select name, setting from pg_settings
		where name in ('max_connections', 'superuser_reserved_connections', 'reserved_connections')`)
	if err != nil {
		return nil, fmt.Errorf("reading pg_settings: %w", err)
	}
	settings := map[string]int{}
	for rows.Next() {
		var name, v string
		if err := rows.Scan(&name, &v); err != nil {
			rows.Close()
			return nil, err
		}
		settings[name], _ = strconv.Atoi(v)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("reading pg_settings: %w", err)
	}
	_, info.hasReserved = settings["reserved_connections"]
	info.limits = serverLimits{
		maxConnections:    settings["max_connections"],
		superuserReserved: settings["superuser_reserved_connections"],
		reserved:          settings["reserved_connections"],
	}
	err = db.QueryRowContext(ctx, `select (select rolconnlimit from pg_roles where rolname = current_user),
		(select datconnlimit from pg_database where datname = current_database())`).
		Scan(&info.limits.roleLimit, &info.limits.databaseLimit)
	if err != nil {
		return nil, fmt.Errorf("reading connection limits: %w", err)
	}
	// Without pg_read_all_stats, other roles' sessions show no state.
	rows, err = db.QueryContext(ctx, `select coalesce(state, ''), count(*) from pg_stat_activity
		where backend_type = 'client backend' and pid <> pg_backend_pid() group by 1 order by 2 desc, 1`)
	if err != nil {
		return nil, fmt.Errorf("reading pg_stat_activity: %w", err)
	}
	for rows.Next() {
		var sc stateCount
		if err := rows.Scan(&sc.state, &sc.n); err != nil {
			rows.Close()
			return nil, err
		}
		if sc.state == "" {
			sc.state = "(not visible to this role)"
		}
		info.states = append(info.states, sc)
		info.limits.inUse += sc.n
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		return nil, fmt.Errorf("reading pg_stat_activity: %w", err)
	}
	return info, nil
}

// connectError explains a failed first query: usually the server could not
// be reached or refused us.
func connectError(err error) error {
	if errors.Is(err, context.DeadlineExceeded) {
		return fmt.Errorf("cannot connect: no answer within -timeout: %w", err)
	}
	return fmt.Errorf("cannot connect: %w", err)
}

// measureConnects times n connects one after another, each a full connect
// (TCP, TLS if asked, authentication, backend start), then bursts of k
// connects at once; it returns what it saw and the median single connect.
func measureConnects(ctx context.Context, c driver.Connector, n, k, bursts int) (connectSample, time.Duration, error) {
	var ones, burstTimes []time.Duration
	for range n {
		start := time.Now()
		dc, err := c.Connect(ctx)
		if err != nil {
			return connectSample{}, 0, connectError(err)
		}
		ones = append(ones, time.Since(start))
		dc.Close()
	}
	sm := connectSample{oneMin: slices.Min(ones), oneMax: slices.Max(ones)}
	if k < 2 {
		return sm, medianDuration(ones), nil
	}
	for range bursts {
		d, err := connectBurst(ctx, c, k)
		if err != nil {
			return connectSample{}, 0, err
		}
		burstTimes = append(burstTimes, d)
	}
	sm.k, sm.burstMin, sm.burstMax = k, slices.Min(burstTimes), slices.Max(burstTimes)
	return sm, medianDuration(ones), nil
}

// connectBurst opens k connections at once and returns the time until the
// last one was open; it closes them all.
func connectBurst(ctx context.Context, c driver.Connector, k int) (time.Duration, error) {
	conns := make([]driver.Conn, k)
	errs := make([]error, k)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range k {
		wg.Add(1)
		go func() {
			defer wg.Done()
			conns[i], errs[i] = c.Connect(ctx)
		}()
	}
	wg.Wait()
	d := time.Since(start)
	for _, dc := range conns {
		if dc != nil {
			dc.Close()
		}
	}
	if err := errors.Join(errs...); err != nil {
		return 0, fmt.Errorf("%d connects at once: %w", k, err)
	}
	return d, nil
}

func medianDuration(ds []time.Duration) time.Duration {
	return time.Duration(spreadOfDurations(ds).med * 1e6)
}

// report prints check's findings.
func report(w io.Writer, c checkConfig, d *dsn, info *serverInfo, s sizing, poolFrom string) {
	l := info.limits
	fmt.Fprintf(w, "warmpg check: PostgreSQL %s at %s, as %s, database %s\n\n", info.version, info.addr, info.user, info.database)

	limit := func(n int) string {
		if n < 0 {
			return "none"
		}
		return strconv.Itoa(n)
	}
	srv := table{title: "Server", head: []string{"setting", "value"}}
	srv.add("max_connections", strconv.Itoa(l.maxConnections))
	srv.add("superuser_reserved_connections", strconv.Itoa(l.superuserReserved))
	if info.hasReserved {
		srv.add("reserved_connections", strconv.Itoa(l.reserved))
	} else {
		srv.add("reserved_connections", "n/a (PostgreSQL 16+)")
	}
	srv.add("slots for ordinary roles", strconv.Itoa(s.slots))
	srv.add("role "+info.user+" connection limit", limit(l.roleLimit))
	srv.add("database "+info.database+" connection limit", limit(l.databaseLimit))
	if info.superuser {
		srv.notes = append(srv.notes, "you connected as a superuser, which may also use the reserved slots; an application should not")
	}
	srv.print(w)

	use := table{title: "In use now (client backends, this check's own not counted)", head: []string{"state", "connections"}}
	for _, sc := range info.states {
		use.add(sc.state, strconv.Itoa(sc.n))
	}
	use.add("total", strconv.Itoa(l.inUse))
	use.add("free slots", strconv.Itoa(s.free))
	use.notes = append(use.notes, "the sizing below counts these as other services; if some are this application's own, it errs on the safe side")
	use.print(w)

	if len(info.hosts) > 0 {
		held := 0
		for _, h := range info.hosts {
			held += h.Conns
		}
		ht := table{title: fmt.Sprintf("Hosts (load_balance_hosts=%s; %d connections held at once)", info.balance, held), head: []string{"host", "connections", "state"}}
		for _, h := range info.hosts {
			state := "up"
			switch {
			case h.Down:
				state = "down (skipped until pool_host_recheck)"
			case h.WrongRole:
				state = "wrong role for target_session_attrs"
			}
			ht.add(h.Host, strconv.Itoa(h.Conns), state)
		}
		if info.balance != "random" {
			ht.notes = append(ht.notes, "without load_balance_hosts=random every connection goes to the first host that is up and eligible, as libpq does")
		}
		ht.notes = append(ht.notes, "the Server and Sizing tables describe the host this check's first connection reached")
		ht.print(w)
	}

	sz := table{title: "Sizing", head: []string{"item", "value"}}
	if s.suggested > 0 {
		sz.add("formula pool per instance", fmt.Sprintf("%d = ceil(%v rps / %d instances × %s × 1.5)", s.suggested, c.rps, c.instances, c.queryTime))
	} else {
		sz.add("formula pool per instance", "- (give -rps and -query-time)")
	}
	if s.pool == 0 {
		sz.add("pool per instance", "- (give -pool, a DSN with pool_max_conns, or -rps and -query-time)")
		sz.print(w)
		return
	}
	sz.add("pool per instance", fmt.Sprintf("%d (from %s)", s.pool, poolFrom))
	sz.add("instances", strconv.Itoa(c.instances))
	sz.add("pool × instances", strconv.Itoa(s.total))
	sz.add("instances during a deploy", fmt.Sprintf("%d = %d + %d (-deploy-surge)", c.instances+s.surge, c.instances, s.surge))
	sz.add("peak during a deploy", strconv.Itoa(s.peak))
	reserveFrom := "-reserve"
	if c.reserve < 0 {
		reserveFrom = fmt.Sprintf("%d%% of the slots, at least %d; -reserve to change", defaultReservePct, defaultReserveMin)
	}
	sz.add("left for other clients", fmt.Sprintf("%d (%s)", s.reserve, reserveFrom))
	if s.fits {
		sz.add("fits", fmt.Sprintf("yes: a peak of %d in %d free slots, %d left for other clients", s.peak, s.free, s.free-s.peak))
	} else {
		sz.add("fits", fmt.Sprintf("NO: the peak exceeds the %s; at most %d per instance fit", s.limitedBy, s.maxFit))
	}
	verdict := "ok"
	if !s.guideOK {
		verdict = fmt.Sprintf("short by %d", s.guideMax-l.maxConnections)
	}
	sz.add("max_connections the guide asks", fmt.Sprintf("%d = %d + %d in use + %d: %s", s.guideMax, s.total, l.inUse, guideHeadroom, verdict))
	sz.add("server memory for them", memRange(s.memLowMB, s.memHighMB)+" (10–20 MB per connection)")
	if len(s.pooler) == 0 {
		sz.add("pooler (PgBouncer)", "not needed")
	} else {
		sz.add("pooler (PgBouncer)", "advisable")
		for _, why := range s.pooler {
			sz.notes = append(sz.notes, "pooler: "+why)
		}
		sz.notes = append(sz.notes, "pooler: in transaction mode it multiplexes many client connections on few server ones; with pgx add default_query_exec_mode=exec to the DSN")
	}
	if s.oversized {
		sz.notes = append(sz.notes, fmt.Sprintf("the pool is over %d× what the formula needs (%d): most of its connections would sit idle", oversizeFactor, s.suggested))
	}
	sz.print(w)

	warm := table{title: "Warming", head: []string{"step", "time ms"}}
	warm.add("one connect (median of 3, measured)", msec(s.connect))
	if s.perConnHi > 0 {
		warm.add("server's cost of each more connect at once (measured)", msRange(s.perConnLow, s.perConnHi))
	}
	warm.add(fmt.Sprintf("%d connections one by one", s.warmN), msec(s.oneByOne))
	warm.add(fmt.Sprintf("%d with warmpg.WarmDB, %d at once (estimate)", s.warmN, s.atOnce), msRange(s.warmLow, s.warmHigh))
	if c.instances > 1 {
		warm.add(fmt.Sprintf("%d instances warming at once (estimate)", c.instances), msRange(s.fleetLow, s.fleetHigh))
	}
	warm.notes = append(warm.notes,
		"estimate: the longer of ceil(connections / at once) connects in a row, and one connect plus the server's cost of each other one",
		"a server busy with other work takes longer: it forks a process and checks a password per connection")
	warm.print(w)

	rec := s.pool
	if !s.fits && s.maxFit > 0 {
		rec = s.maxFit
	}
	if rec > 0 {
		d.set("pool_max_conns", strconv.Itoa(rec))
		d.set("pool_max_idle_conns", strconv.Itoa(rec))
		d.set("pool_prewarm", "true")
	}
	fmt.Fprintln(w, "Recommended DSN (password redacted)")
	fmt.Fprintln(w, d.String())
	if !s.fits && s.maxFit > 0 {
		fmt.Fprintf(w, "  pool cut to %d per instance to fit %d instances during a deploy and leave %d slots for other clients; better: a pooler, or raise max_connections\n",
			rec, c.instances+s.surge, s.reserve)
	}
}

// msRange formats a range of durations in ms, "12.1–15.3", or one number
// when both ends print the same.
func msRange(lo, hi time.Duration) string {
	a, b := msec(lo), msec(hi)
	if a == b {
		return a
	}
	return a + "–" + b
}
