package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// DefaultImage is the image the command runs unless -image names another.
const DefaultImage = "postgres:15-alpine"

// The roles of the container. The image requires password authentication
// over TCP, so the superuser has one too.
const (
	superuser         = "postgres"
	superuserPassword = "warmpg-container-pw"
	// passwordUser and passwordUserPassword are internal/pgtest's
	// PasswordUser and PasswordUserPassword: tests that check how passwords
	// are sent need this role, and find it on a WARMPG_TEST_DATABASE_URL
	// server when it exists.
	passwordUser         = "warmpg_pw"
	passwordUserPassword = "s3cr3t-warmpg-pw"
)

// serverSettings are the -c flags of the container's postgres, the same
// tuning internal/pgtest gives its local clusters: a throwaway server that
// need not survive a crash, with room for the tests' pools.
var serverSettings = []string{
	"fsync=off",
	"synchronous_commit=off",
	"full_page_writes=off",
	"max_connections=500",
	"shared_buffers=64MB",
}

// ErrNoDocker is wrapped by the errors of startContainer when no Docker
// engine answers.
var ErrNoDocker = errors.New("no Docker engine answers")

// container is a running PostgreSQL container.
type container struct {
	URL  string // superuser URL, sslmode=disable
	stop func(context.Context) error
}

// Close stops and removes the container.
func (c *container) Close(ctx context.Context) error { return c.stop(ctx) }

// startContainer starts a PostgreSQL container from image with
// testcontainers-go, creates the role warmpg_pw and returns its superuser
// URL. When no Docker engine answers it returns an error wrapping
// ErrNoDocker quickly, without starting anything; it never panics.
func startContainer(ctx context.Context, image string) (c *container, err error) {
	if err := dockerAvailable(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("pgcontainer: testcontainers panicked: %v", r)
		}
	}()
	args := []string{"postgres"}
	for _, s := range serverSettings {
		args = append(args, "-c", s)
	}
	ctr, err := tcpostgres.Run(ctx, image,
		tcpostgres.WithUsername(superuser),
		tcpostgres.WithPassword(superuserPassword),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithCmd(args...),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			_ = ctr.Terminate(context.Background())
		}
		return nil, fmt.Errorf("pgcontainer: starting container %s: %w", image, err)
	}
	defer func() {
		if r := recover(); r != nil {
			c, err = nil, fmt.Errorf("pgcontainer: testcontainers panicked: %v", r)
		}
		if err != nil {
			_ = ctr.Terminate(context.Background())
		}
	}()
	host, err := ctr.Host(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgcontainer: container host: %w", err)
	}
	port, err := ctr.MappedPort(ctx, "5432/tcp")
	if err != nil {
		return nil, fmt.Errorf("pgcontainer: container port: %w", err)
	}
	u := serverURL(host, port.Port(), superuser, superuserPassword)
	if err := execSQL(ctx, u, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", passwordUser, passwordUserPassword)); err != nil {
		return nil, err
	}
	return &container{URL: u, stop: func(ctx context.Context) error { return ctr.Terminate(ctx) }}, nil
}

// serverURL is the URL of a server at host:port, with sslmode=disable.
func serverURL(host, port, user, password string) string {
	u := url.URL{
		Scheme:   "postgres",
		User:     url.UserPassword(user, password),
		Host:     net.JoinHostPort(host, port),
		Path:     "/postgres",
		RawQuery: "sslmode=disable",
	}
	return u.String()
}

// execSQL runs sql on a short-lived connection to the server at rawURL.
func execSQL(ctx context.Context, rawURL, sql string) error {
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(cctx, rawURL)
	if err != nil {
		return fmt.Errorf("pgcontainer: connect: %w", err)
	}
	defer conn.Close(context.Background())
	if _, err := conn.Exec(cctx, sql); err != nil {
		return fmt.Errorf("pgcontainer: %w", err)
	}
	return nil
}

// dockerAvailable checks, with short timeouts, that a Docker engine answers:
// first by pinging the sockets it knows of itself (DOCKER_HOST, else the
// usual Unix sockets), then through testcontainers' provider health check.
// The error wraps ErrNoDocker.
func dockerAvailable(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pgcontainer: %w (testcontainers panicked: %v)", ErrNoDocker, r)
		}
	}()
	var tried []string
	answered := false
	for _, h := range dockerHosts() {
		perr := pingDocker(ctx, h)
		if perr == nil {
			answered = true
			break
		}
		tried = append(tried, fmt.Sprintf("%s: %v", h, perr))
	}
	if !answered && !otherDockerConfig() {
		if len(tried) == 0 {
			tried = append(tried, "no Docker socket found")
		}
		return fmt.Errorf("pgcontainer: %w (%s)", ErrNoDocker, strings.Join(tried, "; "))
	}

	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("pgcontainer: %w (testcontainers: %v)", ErrNoDocker, err)
	}
	defer p.Close()
	if err := p.Health(hctx); err != nil {
		return fmt.Errorf("pgcontainer: %w (testcontainers health check: %v)", ErrNoDocker, err)
	}
	return nil
}

// dockerHosts returns the Docker endpoints to ping: DOCKER_HOST if set,
// else the usual Unix sockets that exist.
func dockerHosts() []string {
	if h := os.Getenv("DOCKER_HOST"); h != "" {
		return []string{h}
	}
	var socks []string
	if d := os.Getenv("XDG_RUNTIME_DIR"); d != "" {
		socks = append(socks, filepath.Join(d, "docker.sock"))
	}
	socks = append(socks, "/var/run/docker.sock", fmt.Sprintf("/run/user/%d/docker.sock", os.Getuid()))
	if home, err := os.UserHomeDir(); err == nil {
		socks = append(socks,
			filepath.Join(home, ".docker", "run", "docker.sock"),
			filepath.Join(home, ".docker", "desktop", "docker.sock"))
	}
	var hosts []string
	seen := map[string]bool{}
	for _, s := range socks {
		if seen[s] {
			continue
		}
		seen[s] = true
		if _, err := os.Stat(s); err == nil {
			hosts = append(hosts, "unix://"+s)
		}
	}
	return hosts
}

// otherDockerConfig reports whether Docker may be configured in a way
// dockerHosts does not follow (a Docker context, a testcontainers
// properties file), so that testcontainers must be asked.
func otherDockerConfig() bool {
	if os.Getenv("DOCKER_CONTEXT") != "" || os.Getenv("TESTCONTAINERS_HOST_OVERRIDE") != "" {
		return true
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return false
	}
	if _, err := os.Stat(filepath.Join(home, ".testcontainers.properties")); err == nil {
		return true
	}
	b, err := os.ReadFile(filepath.Join(home, ".docker", "config.json"))
	return err == nil && strings.Contains(string(b), `"currentContext"`)
}

// pingDocker sends GET /_ping to a unix:// or tcp:// Docker endpoint. For
// other schemes (ssh://…) and TLS endpoints it only reports that they
// cannot be checked here, and testcontainers decides.
func pingDocker(ctx context.Context, host string) error {
	u, err := url.Parse(host)
	if err != nil {
		return err
	}
	var network, addr string
	switch u.Scheme {
	case "unix":
		network, addr = "unix", u.Path
	case "tcp", "http":
		network, addr = "tcp", u.Host
	default:
		return nil // cannot check it here; let testcontainers try
	}
	dctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	var d net.Dialer
	conn, err := d.DialContext(dctx, network, addr)
	if err != nil {
		return err
	}
	defer conn.Close()
	if network == "tcp" && os.Getenv("DOCKER_TLS_VERIFY") != "" {
		return nil // it speaks TLS; it answered the dial
	}
	deadline, _ := dctx.Deadline()
	_ = conn.SetDeadline(deadline)
	if _, err := fmt.Fprint(conn, "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n"); err != nil {
		return err
	}
	status, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return err
	}
	if f := strings.Fields(status); len(f) < 2 || f[1] != "200" {
		return fmt.Errorf("ping answered %q", strings.TrimSpace(status))
	}
	return nil
}
