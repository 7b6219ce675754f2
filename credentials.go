package warmpg

import (
	"bytes"
	"context"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/lib/pq"
)

// Credentials that change while the pool runs (docs/credentials.md): each
// new connect — Connect, keep-warm, prewarm, WarmDB — takes its password
// from WithPasswordFunc's provider (through a cache) or pool_password_file
// (read at each connect). A live connection keeps the session it has; only
// new connects use a new password.

var _ driver.Connector = (*passwordConnector)(nil)

const (
	// PasswordFuncTTL is how long a password the WithPasswordFunc provider
	// returned is used for new connects, counted from the start of the
	// call that returned it. A connect that finds the password older than
	// half of it starts a refresh in the background and does not wait for
	// it; one that finds it older than PasswordFuncTTL waits for a fresh
	// one.
	PasswordFuncTTL = time.Minute
	// PasswordFuncTimeout bounds one call of the WithPasswordFunc provider:
	// its context ends then (and when the Connector closes). A connect
	// waits for a call no longer than its own context allows.
	PasswordFuncTimeout = 30 * time.Second
	// maxPasswordFile: pool_password_file's first line is at most this
	// long (a path to the wrong file, /dev/zero, must not be read forever).
	maxPasswordFile = 64 << 10
)

// WithPasswordFunc makes every new connect (Connect, keep-warm, prewarm,
// WarmDB, database/sql's own opener) take its password from f, on both
// backends, in place of the DSN's password, PGPASSWORD or a passfile (no
// default: the DSN's password). f is called through a cache, at most one
// call at a time:
//
//   - a password f returned is reused for PasswordFuncTTL (1 minute) from
//     the start of the call that returned it;
//   - a connect that finds it older than half of that starts a call in the
//     background and connects with the current one, without waiting;
//   - a connect that finds none usable (the first, one after the TTL, one
//     after the server refused the cached password) waits for the call in
//     flight, or starts one, within its own context; when that context
//     ends first, the connect fails with an error naming the provider
//     ("warmpg: pool password func: ...", wrapping the context's error),
//     and the call goes on for the next connects;
//   - when the server refuses the password (SQLSTATE 28P01), the cached one
//     is dropped, f is called again, and the connect is retried once if f
//     returns a different password;
//   - f's context carries the values of the connect that started the call,
//     ends after PasswordFuncTimeout or when the Connector closes; Close
//     waits for a call in flight to return, so f should honour its context.
//
// An error from f fails the connects waiting for it, as "warmpg: pool
// password func: " and f's error (a failed background refresh is logged at
// Warn, and the current password stays in use until its TTL). An empty
// password is an error. warmpg never shows the password in an error or a
// log record. Not with pool_password_file; not with NewConnector, whose
// inner connector warmpg does not build.
func WithPasswordFunc(f func(ctx context.Context) (string, error)) Option {
	return func(c *config) {
		if f == nil {
			c.errs = append(c.errs, errors.New("warmpg: invalid option WithPasswordFunc(nil): want a function that returns the password"))
			return
		}
		c.passwordFunc = f
	}
}

// WithPasswordFile makes every new connect take its password from the first
// line of the file at path, its line end (\n or \r\n) removed, read again
// at each connect, so that a secret file updated in place (a Kubernetes
// secret volume, a Vault agent's template) takes effect with the next
// connect (pool_password_file; default "": the DSN's password). It takes
// the place of the DSN's password, PGPASSWORD and a passfile. A file that
// cannot be read or whose first line is empty fails the connect with an
// error naming pool_password_file and the path, never the content. Not
// with WithPasswordFunc; not with NewConnector.
func WithPasswordFile(path string) Option {
	return func(c *config) {
		if path == "" {
			optionErr(c, "pool_password_file", `""`, "want the path of a file holding the password")
			return
		}
		c.passwordFile = path
		c.set |= bitPasswordFile
	}
}

func parsePasswordFile(c *config, v string) error {
	if v == "" {
		return errors.New("want the path of a file holding the password")
	}
	c.passwordFile = v
	return nil
}

// validatePassword refuses two sources of the password.
func (c *config) validatePassword() error {
	if c.passwordFunc != nil && c.passwordFile != "" {
		return fmt.Errorf("warmpg: WithPasswordFunc and pool_password_file=%s are both set: a connect takes its password from one source (want one of them)", c.passwordFile)
	}
	return nil
}

// passwordSource gives each connect its password: from a file, read each
// time, or from a provider through a cache. nil: the backend's own
// password.
type passwordSource struct {
	file    string
	fn      func(context.Context) (string, error)
	ttl     time.Duration
	timeout time.Duration
	now     func() time.Time
	cfg     *config // for logging; a copy, read only

	life context.Context // ends at close: cancels a call in flight
	stop context.CancelFunc
	wg   sync.WaitGroup // the call in flight

	mu     sync.Mutex
	closed bool
	value  string        // the last password fn returned; valid when gen > 0
	gen    uint64        // counts passwords fn returned
	at     time.Time     // when the call that returned value started
	stale  bool          // the server refused value
	call   *passwordCall // the call in flight, or nil

	calls atomic.Int64 // calls of fn (tests)
}

// passwordCall is one call of the provider; done closes when it returned.
type passwordCall struct {
	done  chan struct{}
	value string
	gen   uint64
	err   error
}

// passwordError is an error warmpg's password source gave a connect: its
// text is whole (dialErr keeps it).
type passwordError struct{ err error }

func (e *passwordError) Error() string { return e.err.Error() }
func (e *passwordError) Unwrap() error { return e.err }

// newPasswordSource returns the source cfg asks for, or nil.
func newPasswordSource(cfg *config) *passwordSource {
	if cfg.passwordFunc == nil && cfg.passwordFile == "" {
		return nil
	}
	cc := *cfg
	s := &passwordSource{
		file: cfg.passwordFile, fn: cfg.passwordFunc,
		ttl: PasswordFuncTTL, timeout: PasswordFuncTimeout, now: time.Now, cfg: &cc,
	}
	s.life, s.stop = context.WithCancel(context.Background())
	return s
}

// close cancels a call in flight and waits for it to return. Connects
// after it fail.
func (s *passwordSource) close() {
	if s == nil {
		return
	}
	s.mu.Lock()
	s.closed = true
	s.mu.Unlock()
	s.stop()
	s.wg.Wait()
}

// get returns the password for one connect and its generation (0 for a
// file's).
func (s *passwordSource) get(ctx context.Context) (string, uint64, error) {
	if s.fn == nil {
		pw, err := readPasswordFile(s.file)
		return pw, 0, err
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return "", 0, errors.New("warmpg: connector is closed")
	}
	if age := s.now().Sub(s.at); s.gen > 0 && !s.stale && age < s.ttl {
		pw, gen := s.value, s.gen
		if age >= s.ttl/2 && s.call == nil {
			s.start(ctx)
		}
		s.mu.Unlock()
		return pw, gen, nil
	}
	call := s.call
	if call == nil {
		call = s.start(ctx)
	}
	s.mu.Unlock()
	select {
	case <-call.done:
		return call.value, call.gen, call.err
	case <-ctx.Done():
		return "", 0, &passwordError{fmt.Errorf("warmpg: pool password func: no password before the connect's context ended (the call goes on for later connects): %w", ctx.Err())}
	}
}

// start starts a call of the provider. s.mu is held.
func (s *passwordSource) start(ctx context.Context) *passwordCall {
	call := &passwordCall{done: make(chan struct{})}
	s.call = call
	s.wg.Add(1)
	go s.run(context.WithoutCancel(ctx), call)
	return call
}

func (s *passwordSource) run(parent context.Context, call *passwordCall) {
	defer s.wg.Done()
	ctx, cancel := context.WithTimeout(parent, s.timeout)
	defer cancel()
	defer context.AfterFunc(s.life, cancel)()
	started := s.now()
	s.calls.Add(1)
	pw, err := s.fn(ctx)
	switch {
	case err != nil && ctx.Err() != nil && s.life.Err() == nil && errors.Is(err, ctx.Err()):
		err = fmt.Errorf("warmpg: pool password func: no answer within %s: %w", s.timeout, err)
	case err != nil:
		err = fmt.Errorf("warmpg: pool password func: %w", err)
	case pw == "":
		err = errors.New("warmpg: pool password func: it returned an empty password")
	}
	s.mu.Lock()
	refresh := false // a background refresh failed: the current password stays
	if err != nil {
		call.err = &passwordError{err}
		refresh = s.gen > 0 && !s.stale && s.now().Sub(s.at) < s.ttl
	} else {
		s.gen++
		s.value, s.at, s.stale = pw, started, false
		call.value, call.gen = pw, s.gen
	}
	s.call = nil
	s.mu.Unlock()
	close(call.done)
	if refresh {
		s.cfg.logEvent(slog.LevelWarn, "warmpg: pool password func failed; the current password stays in use until it expires", "error", err)
	}
}

// refused records that the server refused the password of generation gen:
// the next get waits for a new one.
func (s *passwordSource) refused(gen uint64) {
	s.mu.Lock()
	if s.gen == gen {
		s.stale = true
	}
	s.mu.Unlock()
}

// readPasswordFile returns the first line of the file at path, without its
// line end. Its errors name the key and the path, never the content.
func readPasswordFile(path string) (string, error) {
	fail := func(format string, args ...any) error {
		return &passwordError{fmt.Errorf("warmpg: pool_password_file=%s: "+format, append([]any{path}, args...)...)}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", fail("%w", err)
	}
	defer f.Close()
	buf := make([]byte, maxPasswordFile+2) // the line, \r\n
	n, err := io.ReadFull(f, buf)
	if err != nil && err != io.EOF && err != io.ErrUnexpectedEOF { //nolint:errorlint // ReadFull returns them unwrapped
		var pe *os.PathError
		if errors.As(err, &pe) {
			err = pe.Err // "read PATH: ...": the path is said once
		}
		return "", fail("cannot read it: %w", err)
	}
	line, _, found := bytes.Cut(buf[:n], []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	switch {
	case !found && n == len(buf) || len(line) > maxPasswordFile:
		return "", fail("its first line is longer than %d bytes (want the password on the first line)", maxPasswordFile)
	case len(line) == 0:
		return "", fail("its first line is empty (want the password on the first line)")
	}
	return string(line), nil
}

// authRefused reports whether a connect failed because the server refused
// the password (SQLSTATE 28P01, invalid_password; pgx and lib/pq alike).
func authRefused(err error) bool {
	return sqlState(err) == "28P01"
}

// passwordConnector is the inner connector of a pool with a password
// source: each Connect gets the source's password and passes it to the
// backend (connect), retrying once with a fresh one from a provider when
// the server refused a cached one.
type passwordConnector struct {
	src     *passwordSource
	base    driver.Connector // the backend's own connector: Driver, and pgx's Connect
	connect func(ctx context.Context, pw string) (driver.Conn, error)
	pq      bool
}

func (p *passwordConnector) Driver() driver.Driver { return p.base.Driver() }

func (p *passwordConnector) Connect(ctx context.Context) (driver.Conn, error) {
	pw, gen, err := p.src.get(ctx)
	if err != nil {
		return nil, err
	}
	ic, err := p.connect(ctx, pw)
	if err == nil || gen == 0 || !authRefused(err) {
		return ic, err
	}
	// The password may have changed since it was cached.
	p.src.refused(gen)
	pw2, _, err2 := p.src.get(ctx)
	if err2 != nil || pw2 == pw {
		return nil, err // the server's refusal is the answer
	}
	return p.connect(ctx, pw2)
}

// passwordKey carries a connect's password from passwordConnector to
// pgxBeforeConnect.
type passwordKey struct{}

func pgxBeforeConnect(ctx context.Context, cc *pgx.ConnConfig) error {
	if pw, ok := ctx.Value(passwordKey{}).(string); ok {
		cc.Password = pw
	}
	applyPgxHost(ctx, cc) // the host of a multi-host DSN this attempt is for (hosts.go)
	return nil
}

// pgxConnector returns pgx's stdlib connector for pc with opts, and, with a
// source, pgx's BeforeConnect hook setting each connect's password.
func (s *passwordSource) pgxConnector(pc pgx.ConnConfig, opts ...stdlib.OptionOpenDB) driver.Connector {
	if s == nil {
		return stdlib.GetConnector(pc, append(opts, stdlib.OptionBeforeConnect(pgxBeforeConnect))...)
	}
	base := stdlib.GetConnector(pc, append(opts, stdlib.OptionBeforeConnect(pgxBeforeConnect))...)
	return &passwordConnector{src: s, base: base, connect: func(ctx context.Context, pw string) (driver.Conn, error) {
		return base.Connect(context.WithValue(ctx, passwordKey{}, pw))
	}}
}

// pqConnector returns pc, or, with a source, a connector that builds a
// lib/pq connector for each connect from pcfg with its password set and
// dialer d (lib/pq's Config is fixed per connector; building one is a copy).
// With hosts (a multi-host DSN, hosts.go) it builds one per connect
// attempt too, for the host the attempt is for.
func (s *passwordSource) pqConnector(pc *pq.Connector, pcfg pq.Config, d pq.Dialer, hosts bool) driver.Connector {
	if s == nil && !hosts {
		return pc
	}
	one := func(ctx context.Context, pw *string) (driver.Conn, error) {
		cfg := pcfg
		if pw != nil {
			cfg.Password = *pw
		}
		applyPQHost(ctx, &cfg)
		one, err := pq.NewConnectorConfig(cfg)
		if err != nil {
			return nil, err
		}
		one.Dialer(d)
		return one.Connect(ctx)
	}
	if s == nil {
		return &pqHostConnector{base: pc, one: one}
	}
	return &passwordConnector{src: s, base: pc, pq: true, connect: func(ctx context.Context, pw string) (driver.Conn, error) {
		return one(ctx, &pw)
	}}
}

// pqHostConnector is lib/pq's connector for a multi-host DSN: a lib/pq
// connector per connect, for the connect's host.
type pqHostConnector struct {
	base *pq.Connector
	one  func(ctx context.Context, pw *string) (driver.Conn, error)
}

func (p *pqHostConnector) Driver() driver.Driver { return p.base.Driver() }
func (p *pqHostConnector) Connect(ctx context.Context) (driver.Conn, error) {
	return p.one(ctx, nil)
}

// pqInner reports whether ic is lib/pq's, directly or under a password source.
func pqInner(ic driver.Connector) bool {
	switch ic := ic.(type) {
	case *pq.Connector, *pqHostConnector:
		return true
	case *passwordConnector:
		return ic.pq
	}
	return false
}

// keepWholeError reports whether a connect's error is the password
// source's, which names the provider or file, and so stays whole even
// when the context caused it (see dialErr).
func keepWholeError(err error) bool {
	var pe *passwordError
	return errors.As(err, &pe)
}
