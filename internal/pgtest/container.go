package pgtest

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

	"github.com/testcontainers/testcontainers-go"
	tcpostgres "github.com/testcontainers/testcontainers-go/modules/postgres"
)

// DefaultImage is the image StartContainer runs.
const DefaultImage = "postgres:15-alpine"

// containerPassword is the superuser's password in a container (the image
// requires password authentication over TCP).
const containerPassword = "warmpg-container-pw"

// ErrNoDocker is wrapped by the errors of StartContainer and Open when no
// Docker engine answers.
var ErrNoDocker = errors.New("no Docker engine answers")

// containerHandle is what Close needs of a container.
type containerHandle interface {
	Terminate(ctx context.Context, opts ...testcontainers.TerminateOption) error
}

// StartContainer starts a new PostgreSQL container (DefaultImage, or the
// one WithImage names) with testcontainers-go, tuned like StartLocal's
// cluster, with the role PasswordUser. The caller must Close it. When no
// Docker engine answers it returns an error wrapping ErrNoDocker quickly,
// without starting anything; it never panics.
func StartContainer(ctx context.Context, opts ...Option) (srv *Server, err error) {
	cfg := newConfig(opts)
	if err := dockerAvailable(ctx); err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil {
			srv, err = nil, fmt.Errorf("pgtest: testcontainers panicked: %v", r)
		}
	}()

	args := []string{"postgres"}
	for _, p := range append([]param{
		{"fsync", "off"},
		{"synchronous_commit", "off"},
		{"full_page_writes", "off"},
		{"max_connections", "500"},
		{"shared_buffers", "64MB"},
	}, cfg.settings...) {
		args = append(args, "-c", p.key+"="+p.value)
	}
	ctr, err := tcpostgres.Run(ctx, cfg.image,
		tcpostgres.WithUsername("postgres"),
		tcpostgres.WithPassword(containerPassword),
		tcpostgres.WithDatabase("postgres"),
		testcontainers.WithCmd(args...),
		tcpostgres.BasicWaitStrategies(),
	)
	if err != nil {
		if ctr != nil {
			_ = ctr.Terminate(context.Background())
		}
		return nil, fmt.Errorf("pgtest: starting container %s: %w", cfg.image, err)
	}
	defer func() {
		if r := recover(); r != nil {
			srv, err = nil, fmt.Errorf("pgtest: testcontainers panicked: %v", r)
		}
		if err != nil {
			_ = ctr.Terminate(context.Background())
		}
	}()
	host, err := ctr.Host(ctx)
	if err != nil {
		return nil, fmt.Errorf("pgtest: container host: %w", err)
	}
	port, err := ctr.MappedPort(ctx, "5432/tcp")
	if err != nil {
		return nil, fmt.Errorf("pgtest: container port: %w", err)
	}
	srv = &Server{
		Kind:     KindContainer,
		Host:     host,
		Port:     int(port.Num()),
		User:     "postgres",
		Password: containerPassword,
		Database: "postgres",
		ctr:      ctr,
		owner:    true,
	}
	err = srv.Exec(ctx, fmt.Sprintf("CREATE ROLE %s LOGIN PASSWORD '%s'", PasswordUser, PasswordUserPassword))
	if err != nil {
		return nil, err
	}
	srv.hasPW = true
	register(srv)
	return srv, nil
}

// dockerAvailable checks, with short timeouts, that a Docker engine answers:
// first by pinging the sockets it knows of itself (DOCKER_HOST, else the
// usual Unix sockets), then through testcontainers' provider health check.
// The error wraps ErrNoDocker.
func dockerAvailable(ctx context.Context) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("pgtest: %w (testcontainers panicked: %v)", ErrNoDocker, r)
		}
	}()
	hosts := dockerHosts()
	var tried []string
	answered := false
	for _, h := range hosts {
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
		return fmt.Errorf("pgtest: %w (%s)", ErrNoDocker, strings.Join(tried, "; "))
	}

	hctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	p, err := testcontainers.NewDockerProvider()
	if err != nil {
		return fmt.Errorf("pgtest: %w (testcontainers: %v)", ErrNoDocker, err)
	}
	defer p.Close()
	if err := p.Health(hctx); err != nil {
		return fmt.Errorf("pgtest: %w (testcontainers health check: %v)", ErrNoDocker, err)
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
