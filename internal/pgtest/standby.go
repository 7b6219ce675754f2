package pgtest

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// Hot standbys
//
// StartStandby builds a streaming hot standby of a cluster StartLocal
// started: pg_basebackup -R -X stream (as the server's OS user when we run
// as root) into a new temporary directory, its own port and Unix socket,
// hot_standby=on, started with pg_ctl and returned once it answers, is in
// recovery and streams from the primary. It is a Server like any other
// managed one (URL, KeyValue, Exec, Stop, Start, Restart, Close, closed by
// Main if a test forgets), plus Promote and WaitReplayed.
//
// The primary must allow replication, as every StartLocal cluster does:
// wal_level=replica and max_wal_senders (PostgreSQL's defaults), and the
// "replication" trust lines for 127.0.0.1 and the Unix socket that
// StartLocal writes into pg_hba.conf.

// ErrNoBaseBackup is wrapped by StartStandby's error when no pg_basebackup
// can be found (next to pg_ctl, in WARMPG_PG_BIN, on PATH).
var ErrNoBaseBackup = errors.New("pgtest: no pg_basebackup")

// standbyWait bounds how long StartStandby, Promote and WaitReplayed wait
// for the server when ctx has no earlier deadline.
const standbyWait = 60 * time.Second

// standbyPoll is how often those waits ask again.
const standbyPoll = 10 * time.Millisecond

// StandbyName returns the application_name the standby's WAL receiver
// uses on the primary (pg_stat_replication.application_name), which is also
// its cluster_name: "pgtest_standby_<port>".
func (s *Server) StandbyName() string {
	return "pgtest_standby_" + strconv.Itoa(s.Port)
}

// StartStandby builds and starts a hot standby of primary, which must be the
// Server StartLocal returned (not the shared server of Get, nor a copy made
// by WithUser or WithHost). opts apply to the standby: WithSetting adds postgresql.conf lines
// after the primary's (copied by pg_basebackup) and the standby's own,
// WithStartTimeout bounds pg_ctl. The caller must Close it (Main closes
// forgotten ones); closing the primary first leaves the standby running,
// disconnected.
//
// The error wraps ErrNotManaged when primary is not a managed server, and
// ErrNoBaseBackup when pg_basebackup is missing.
func StartStandby(ctx context.Context, primary *Server, opts ...Option) (srv *Server, err error) {
	if primary == nil || primary.local == nil {
		kind := "nil"
		if primary != nil {
			kind = primary.Kind
		}
		return nil, fmt.Errorf("pgtest: a standby needs a primary StartLocal started (got kind %s): %w", kind, ErrNotManaged)
	}
	if !primary.owner {
		// The shared server of Get, or a WithUser/WithHost copy: only the
		// Server StartLocal returned says the cluster is the caller's.
		return nil, errors.New("pgtest: a standby needs the Server StartLocal returned, not the shared server of Get nor a copy made by WithUser or WithHost")
	}
	pc := primary.local
	cfg := newConfig(opts)
	basebackup, err := findBaseBackup(pc.pgctl)
	if err != nil {
		return nil, err
	}
	if err := checkReplication(ctx, primary); err != nil {
		return nil, err
	}

	base, err := os.MkdirTemp("", tempPrefix)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &cluster{
		initdb:  pc.initdb,
		pgctl:   pc.pgctl,
		baseDir: base,
		dataDir: filepath.Join(base, "data"),
		logPath: filepath.Join(base, "server.log"),
		cred:    pc.cred,
		timeout: cfg.startTimeout,
	}
	defer func() {
		if err != nil {
			if derr := c.destroy(context.Background()); derr != nil {
				err = fmt.Errorf("%w; cleaning up: %v", err, derr)
			}
		}
	}()
	if err := os.WriteFile(filepath.Join(base, "owner.pid"), []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	if err := c.chown(base); err != nil {
		return nil, err
	}

	// -c fast: do not wait for a spread checkpoint; -N: this data is
	// thrown away, as the primary's is (fsync=off).
	out, err := c.run(ctx, basebackup, "-D", c.dataDir, "-R", "-X", "stream", "-c", "fast", "-N", "-w",
		"-h", primary.Host, "-p", strconv.Itoa(primary.Port), "-U", "postgres")
	if err != nil {
		return nil, fmt.Errorf("pgtest: pg_basebackup (%s) of %s: %w\n%s\nlast lines of the primary's log:\n%s",
			basebackup, primary.Addr(), err, lastLines(out, logTailLines), tailFile(pc.logPath, logTailLines))
	}
	if err := c.standbyTLS(pc); err != nil {
		return nil, err
	}
	confPath := filepath.Join(c.dataDir, "postgresql.conf")
	origConf, err := os.ReadFile(confPath)
	if err != nil {
		return nil, fmt.Errorf("pgtest: %w", err)
	}

	port, err := c.startOnFreePort(ctx, confPath, origConf, func(port int) string { return c.standbySettings(port, cfg.settings) })
	if err != nil {
		return nil, err
	}

	srv = &Server{
		Kind:     KindLocal,
		Host:     "127.0.0.1",
		Port:     port,
		User:     "postgres",
		Database: "postgres",
		params:   primary.params,
		local:    c,
		owner:    true,
		hasPW:    primary.hasPW, // the role is replicated
	}
	if err := srv.waitStreaming(ctx, primary); err != nil {
		return nil, fmt.Errorf("%w\nstandby's server.log:\n%s", err, tailFile(c.logPath, logTailLines))
	}
	register(srv)
	return srv, nil
}

// NewStandby is StartStandby for a test: it skips the test (fails it when
// CI=true) when primary is not a managed server or pg_basebackup is
// missing, fails it on any other error, and closes the standby when the
// test ends.
func NewStandby(t testing.TB, ctx context.Context, primary *Server, opts ...Option) *Server {
	t.Helper()
	start := time.Now()
	srv, err := StartStandby(ctx, primary, opts...)
	if err != nil {
		if errors.Is(err, ErrNotManaged) || errors.Is(err, ErrNoBaseBackup) {
			unavailable(t, err)
		}
		t.Fatalf("pgtest: standby: %v", err)
	}
	t.Logf("pgtest: standby of %s at %s streaming after %v", primary.Addr(), srv.Addr(), time.Since(start).Round(time.Millisecond))
	t.Cleanup(func() { srv.Close() })
	return srv
}

// findBaseBackup finds pg_basebackup of the same installation as pg_ctl:
// next to it, next to what it links to, in WARMPG_PG_BIN, on PATH, in the
// highest /usr/lib/postgresql/*/bin.
func findBaseBackup(pgctl string) (string, error) {
	var dirs []string
	dirs = append(dirs, filepath.Dir(pgctl))
	if target, err := filepath.EvalSymlinks(pgctl); err == nil {
		dirs = append(dirs, filepath.Dir(target))
	}
	if d := os.Getenv(EnvPGBin); d != "" {
		dirs = append(dirs, d)
	}
	for _, d := range dirs {
		if p := filepath.Join(d, "pg_basebackup"); isExecutable(p) {
			return p, nil
		}
	}
	if p, err := exec.LookPath("pg_basebackup"); err == nil {
		return p, nil
	}
	for _, d := range debianBinDirs() {
		if p := filepath.Join(d, "pg_basebackup"); isExecutable(p) {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w next to %s, in %s or on PATH", ErrNoBaseBackup, pgctl, EnvPGBin)
}

// checkReplication tells, before pg_basebackup does less clearly, why a
// primary cannot stream to a standby.
func checkReplication(ctx context.Context, primary *Server) error {
	conn, err := primary.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	var walLevel string
	var senders int
	if err := conn.QueryRow(ctx, "select current_setting('wal_level'), current_setting('max_wal_senders')::int").Scan(&walLevel, &senders); err != nil {
		return fmt.Errorf("pgtest: reading the primary's replication settings: %w", err)
	}
	if walLevel == "minimal" || senders < 1 {
		return fmt.Errorf("pgtest: primary %s cannot stream to a standby: wal_level=%s max_wal_senders=%d (want replica or logical, and at least 1)",
			primary.Addr(), walLevel, senders)
	}
	return nil
}

// standbySettings returns the lines appended to the postgresql.conf
// pg_basebackup copied from the primary (which keeps the primary's tuning,
// max_connections among it, which a hot standby must not lower): its own
// address and socket, hot standby, a cluster_name its WAL receiver reports
// to the primary, and extra last.
func (c *cluster) standbySettings(port int, extra []param) string {
	var b strings.Builder
	b.WriteString("\n# Added by internal/pgtest for the standby.\n")
	set := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	set("listen_addresses", "'127.0.0.1'")
	set("port", strconv.Itoa(port))
	set("unix_socket_directories", quoteConf(c.baseDir))
	set("hot_standby", "on")
	set("cluster_name", quoteConf("pgtest_standby_"+strconv.Itoa(port)))
	if c.tls != nil {
		set("ssl_cert_file", quoteConf(filepath.Join(c.dataDir, "server.crt")))
		set("ssl_key_file", quoteConf(filepath.Join(c.dataDir, "server.key")))
	}
	for _, p := range extra {
		set(p.key, p.value)
	}
	return b.String()
}

// standbyTLS gives a standby of a TLS primary its own copies of the CA
// files (the certificate and key come with the data directory), so that it
// outlives the primary's files.
func (c *cluster) standbyTLS(pc *cluster) error {
	if pc.tls == nil {
		return nil
	}
	files := &tlsFiles{
		caFile:      filepath.Join(c.baseDir, "ca.crt"),
		wrongCAFile: filepath.Join(c.baseDir, "wrong-ca.crt"),
	}
	for src, dst := range map[string]string{pc.tls.caFile: files.caFile, pc.tls.wrongCAFile: files.wrongCAFile} {
		b, err := os.ReadFile(src)
		if err != nil {
			return fmt.Errorf("pgtest: tls: %w", err)
		}
		if err := os.WriteFile(dst, b, 0o644); err != nil {
			return fmt.Errorf("pgtest: tls: %w", err)
		}
	}
	c.tls = files
	return nil
}

// standbyContext bounds ctx by standbyWait.
func standbyContext(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(ctx, standbyWait)
}

// pollStandby calls f every standbyPoll until it reports done, fails, or ctx ends;
// then it returns f's error, or ctx's with the last state f described.
func pollStandby(ctx context.Context, what string, f func() (done bool, state string, err error)) error {
	tick := time.NewTicker(standbyPoll)
	defer tick.Stop()
	state := "not asked yet"
	for {
		done, st, err := f()
		if err != nil {
			return err
		}
		if done {
			return nil
		}
		state = st
		select {
		case <-ctx.Done():
			return fmt.Errorf("pgtest: waiting until %s: %w (last: %s)", what, ctx.Err(), state)
		case <-tick.C:
		}
	}
}

// waitStreaming waits until the standby answers, is in recovery, and its
// WAL receiver streams from primary (pg_stat_wal_receiver on the standby,
// pg_stat_replication on the primary).
func (s *Server) waitStreaming(ctx context.Context, primary *Server) error {
	ctx, cancel := standbyContext(ctx)
	defer cancel()
	conn, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	pconn, err := primary.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(pconn)
	return pollStandby(ctx, "the standby streams", func() (bool, string, error) {
		var inRecovery bool
		var status string
		err := conn.QueryRow(ctx, `select pg_is_in_recovery(),
			coalesce((select status from pg_stat_wal_receiver), 'no wal receiver')`).Scan(&inRecovery, &status)
		if err != nil {
			return false, "", fmt.Errorf("pgtest: asking the standby: %w", err)
		}
		if !inRecovery {
			return false, "", fmt.Errorf("pgtest: the standby at %s is not in recovery", s.Addr())
		}
		var senders int
		if err := pconn.QueryRow(ctx, `select count(*) from pg_stat_replication
			where application_name = $1 and state = 'streaming'`, s.StandbyName()).Scan(&senders); err != nil {
			return false, "", fmt.Errorf("pgtest: asking the primary: %w", err)
		}
		return status == "streaming" && senders == 1,
			fmt.Sprintf("wal receiver %s, %d streaming senders on the primary", status, senders), nil
	})
}

// Promote promotes a managed standby (pg_ctl promote) and waits until it
// is out of recovery and accepts writes. PostgreSQL 14 and later then tell
// every open session in_hot_standby=off (ParameterStatus).
func (s *Server) Promote(ctx context.Context) error {
	if s.local == nil {
		return ErrNotManaged
	}
	ctx, cancel := standbyContext(ctx)
	defer cancel()
	if err := s.local.promote(ctx); err != nil {
		return err
	}
	conn, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	return pollStandby(ctx, "the promoted server leaves recovery", func() (bool, string, error) {
		var inRecovery bool
		if err := conn.QueryRow(ctx, "select pg_is_in_recovery()").Scan(&inRecovery); err != nil {
			return false, "", fmt.Errorf("pgtest: asking the promoted server: %w", err)
		}
		return !inRecovery, "in recovery", nil
	})
}

func (c *cluster) promote(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	out, err := c.run(ctx, c.pgctl, "promote", "-D", c.dataDir, "-w", "-t", c.pgctlTimeout())
	if err != nil {
		return c.failure("pg_ctl promote", out, err)
	}
	return nil
}

// WaitReplayed waits until the standby s has replayed everything primary
// had written when it was called, so that a test reads on the standby what
// it wrote on the primary. It makes the primary flush its WAL first (its
// commits are asynchronous: synchronous_commit=off).
func (s *Server) WaitReplayed(ctx context.Context, primary *Server) error {
	ctx, cancel := standbyContext(ctx)
	defer cancel()
	pconn, err := primary.Connect(ctx)
	if err != nil {
		return err
	}
	var lsn string
	// A transaction that writes WAL and commits synchronously flushes the
	// WAL up to its commit record, which follows every record written
	// before. (One that only takes a transaction id commits
	// asynchronously all the same: it wrote nothing before its commit
	// record.) A transactional logical message is the smallest such write.
	_, err = pconn.Exec(ctx, "set synchronous_commit = on")
	if err == nil {
		_, err = pconn.Exec(ctx, "select pg_logical_emit_message(true, 'pgtest', 'wait replayed')")
	}
	if err == nil {
		err = pconn.QueryRow(ctx, "select pg_current_wal_flush_lsn()::text").Scan(&lsn)
	}
	closeConn(pconn)
	if err != nil {
		return fmt.Errorf("pgtest: reading the primary's WAL position: %w", err)
	}
	conn, err := s.Connect(ctx)
	if err != nil {
		return err
	}
	defer closeConn(conn)
	return pollStandby(ctx, "the standby replays "+lsn, func() (bool, string, error) {
		var replayed, inRecovery bool
		var at string
		err := conn.QueryRow(ctx, `select coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false),
			coalesce(pg_last_wal_replay_lsn()::text, 'none'), pg_is_in_recovery()`, lsn).Scan(&replayed, &at, &inRecovery)
		if err != nil {
			return false, "", fmt.Errorf("pgtest: asking the standby: %w", err)
		}
		if !inRecovery {
			return false, "", fmt.Errorf("pgtest: %s is not a standby (not in recovery)", s.Addr())
		}
		return replayed, "replayed up to " + at, nil
	})
}
