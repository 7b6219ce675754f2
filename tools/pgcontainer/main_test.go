package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// fake is a starter that starts nothing and records what run did with it.
type fake struct {
	url     string
	err     error
	started int
	image   string
	closed  int
}

func (f *fake) start(ctx context.Context, image string) (*container, error) {
	f.started++
	f.image = image
	if f.err != nil {
		return nil, f.err
	}
	return &container{URL: f.url, stop: func(context.Context) error { f.closed++; return nil }}, nil
}

func runFake(t *testing.T, f *fake, sig <-chan os.Signal, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errOut bytes.Buffer
	code = run(ctx, args, &out, &errOut, f.start, sig)
	return code, out.String(), errOut.String()
}

// A URL with a single quote in its password, to check the shell quoting.
const fakeURL = "postgres://postgres:it's%20a@127.0.0.1:5999/postgres?sslmode=disable"

// TestRunCommand: the command after -- runs with WARMPG_TEST_DATABASE_URL
// set, its exit code is returned, and the container is removed after it.
func TestRunCommand(t *testing.T) {
	f := &fake{url: fakeURL}
	code, stdout, stderr := runFake(t, f, nil, "-image", "postgres:17", "--",
		"sh", "-c", `printf '%s' "$WARMPG_TEST_DATABASE_URL"; exit 3`)
	if code != 3 {
		t.Errorf("exit code %d, want the command's 3; stderr:\n%s", code, stderr)
	}
	if stdout != fakeURL {
		t.Errorf("the command saw WARMPG_TEST_DATABASE_URL=%q, want %q", stdout, fakeURL)
	}
	if f.image != "postgres:17" || f.started != 1 || f.closed != 1 {
		t.Errorf("image %q, started %d, closed %d; want postgres:17, 1, 1", f.image, f.started, f.closed)
	}

	f = &fake{url: fakeURL}
	if code, _, stderr := runFake(t, f, nil, "--", "true"); code != 0 || f.closed != 1 || f.image != DefaultImage {
		t.Errorf("true: exit %d, closed %d, image %q; stderr:\n%s", code, f.closed, f.image, stderr)
	}
	f = &fake{url: fakeURL}
	if code, _, stderr := runFake(t, f, nil, "--", filepath.Join(t.TempDir(), "no-such-command")); code != 1 || f.closed != 1 {
		t.Errorf("missing command: exit %d, closed %d; stderr:\n%s", code, f.closed, stderr)
	}
}

// TestRunPrint: without a command, the export line is printed, evaluates
// in a shell to the URL, and the container is removed on the signal.
func TestRunPrint(t *testing.T) {
	f := &fake{url: fakeURL}
	sig := make(chan os.Signal, 1)
	sig <- os.Interrupt
	code, stdout, stderr := runFake(t, f, sig)
	if code != 0 || f.closed != 1 {
		t.Fatalf("exit %d, closed %d; stderr:\n%s", code, f.closed, stderr)
	}
	if !strings.HasPrefix(stdout, "export WARMPG_TEST_DATABASE_URL=") || strings.Count(stdout, "\n") != 1 {
		t.Fatalf("stdout = %q, want one export line", stdout)
	}
	out, err := exec.Command("sh", "-c", stdout+`printf '%s' "$WARMPG_TEST_DATABASE_URL"`).Output()
	if err != nil {
		t.Fatal(err)
	}
	if string(out) != fakeURL {
		t.Errorf("the shell read %q from the export line, want %q", out, fakeURL)
	}
	if !strings.Contains(stderr, "container removed") {
		t.Errorf("stderr does not say the container was removed:\n%s", stderr)
	}
}

// TestRunUsage: bad arguments fail with exit 2 before anything starts.
func TestRunUsage(t *testing.T) {
	for _, args := range [][]string{
		{"go", "test", "./..."},     // a command without --
		{"-timeout", "0s"},          // no time to start
		{"-nonsense"},               // unknown flag
		{"-timeout", "ten minutes"}, // not a duration
	} {
		f := &fake{url: fakeURL}
		code, _, stderr := runFake(t, f, nil, args...)
		if code != 2 || f.started != 0 {
			t.Errorf("%q: exit %d, started %d; want 2, 0; stderr:\n%s", args, code, f.started, stderr)
		}
	}
	if code, _, stderr := runFake(t, &fake{}, nil, "-h"); code != 0 || !strings.Contains(stderr, "usage: pgcontainer") {
		t.Errorf("-h: exit %d; stderr:\n%s", code, stderr)
	}
}

// TestRunNoDocker: without Docker the command fails with exit 1 and says
// what to do instead.
func TestRunNoDocker(t *testing.T) {
	f := &fake{err: fmt.Errorf("pgcontainer: %w (no Docker socket found)", ErrNoDocker)}
	code, stdout, stderr := runFake(t, f, nil, "--", "true")
	if code != 1 || stdout != "" {
		t.Errorf("exit %d, stdout %q; want 1 and nothing", code, stdout)
	}
	for _, want := range []string{"no Docker engine answers", "start Docker", "initdb"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("stderr does not say %q:\n%s", want, stderr)
		}
	}
}

// noDockerEnv makes this process see no Docker engine configuration but
// DOCKER_HOST=host.
func noDockerEnv(t *testing.T, host string) {
	t.Setenv("HOME", t.TempDir())
	t.Setenv("XDG_RUNTIME_DIR", t.TempDir())
	t.Setenv("DOCKER_HOST", host)
	t.Setenv("DOCKER_CONTEXT", "")
	t.Setenv("TESTCONTAINERS_HOST_OVERRIDE", "")
}

// TestDockerAvailableNoEngine: a Docker endpoint that does not answer is
// found out quickly, with an error wrapping ErrNoDocker that names it.
func TestDockerAvailableNoEngine(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "docker.sock")
	noDockerEnv(t, "unix://"+sock)
	start := time.Now()
	err := dockerAvailable(context.Background())
	if !errors.Is(err, ErrNoDocker) || !strings.Contains(err.Error(), sock) {
		t.Fatalf("dockerAvailable = %v, want ErrNoDocker naming %s", err, sock)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("finding out that there is no Docker took %v", d)
	}
}

// serveOnce answers every connection on ln with status, after reading the
// request line.
func serve(t *testing.T, ln net.Listener, status string) {
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 512)
			_, _ = c.Read(buf)
			fmt.Fprintf(c, "%s\r\nContent-Length: 2\r\n\r\nOK", status)
			c.Close()
		}
	}()
}

// TestPingDocker: /_ping over a Unix socket and TCP; only a 200 answers.
func TestPingDocker(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	for _, tc := range []struct {
		status string
		ok     bool
	}{{"HTTP/1.0 200 OK", true}, {"HTTP/1.0 500 Internal Server Error", false}} {
		sock := filepath.Join(dir, strings.Fields(tc.status)[1]+".sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		serve(t, ln, tc.status)
		if err := pingDocker(ctx, "unix://"+sock); (err == nil) != tc.ok {
			t.Errorf("unix %s: pingDocker = %v", tc.status, err)
		}
		tl, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		serve(t, tl, tc.status)
		if err := pingDocker(ctx, "tcp://"+tl.Addr().String()); (err == nil) != tc.ok {
			t.Errorf("tcp %s: pingDocker = %v", tc.status, err)
		}
	}
	if err := pingDocker(ctx, "unix://"+filepath.Join(dir, "none.sock")); err == nil {
		t.Error("pingDocker of a missing socket succeeded")
	}
}

// TestDockerHosts: DOCKER_HOST alone when set; else the sockets that exist.
func TestDockerHosts(t *testing.T) {
	t.Setenv("DOCKER_HOST", "tcp://127.0.0.1:2375")
	if h := dockerHosts(); len(h) != 1 || h[0] != "tcp://127.0.0.1:2375" {
		t.Errorf("with DOCKER_HOST: %q", h)
	}
	run := t.TempDir()
	if err := os.WriteFile(filepath.Join(run, "docker.sock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_HOST", "")
	t.Setenv("XDG_RUNTIME_DIR", run)
	t.Setenv("HOME", t.TempDir())
	h := dockerHosts()
	if len(h) == 0 || h[0] != "unix://"+filepath.Join(run, "docker.sock") {
		t.Errorf("without DOCKER_HOST: %q, want the XDG_RUNTIME_DIR socket first", h)
	}
}

// TestServerURL: the URL escapes what it must and parses back.
func TestServerURL(t *testing.T) {
	raw := serverURL("::1", "5432", "postgres", "p@ss/w'rd")
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	pw, _ := u.User.Password()
	if u.Host != "[::1]:5432" || pw != "p@ss/w'rd" || u.Path != "/postgres" || u.Query().Get("sslmode") != "disable" {
		t.Errorf("serverURL = %s", raw)
	}
}

// TestContainer starts a real container when a Docker engine answers:
// the superuser and warmpg_pw can connect, and the settings took. No
// Docker engine runs on the machines this project is built on, so there it
// skips, saying why — also under CI=true, since the harness's own local
// clusters are the CI path.
func TestContainer(t *testing.T) {
	if testing.Short() {
		t.Skip("-short: not pulling an image")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	c, err := startContainer(ctx, DefaultImage)
	if errors.Is(err, ErrNoDocker) {
		t.Skipf("no Docker engine on this machine, so no container to start (CI runs the tests on local clusters): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := c.Close(context.Background()); err != nil {
			t.Error(err)
		}
	}()
	u, err := url.Parse(c.URL)
	if err != nil {
		t.Fatal(err)
	}
	pwURL := *u
	pwURL.User = url.UserPassword(passwordUser, passwordUserPassword)
	for _, raw := range []string{c.URL, pwURL.String()} {
		conn, err := pgx.Connect(ctx, raw)
		if err != nil {
			t.Fatal(err)
		}
		var maxConns string
		err = conn.QueryRow(ctx, "show max_connections").Scan(&maxConns)
		conn.Close(ctx)
		if err != nil || maxConns != "500" {
			t.Errorf("max_connections = %q, %v; want 500", maxConns, err)
		}
	}
}
