// Command pgcontainer starts a throwaway PostgreSQL server in Docker for
// warmpg's tests, on a laptop with Docker and no PostgreSQL installed.
//
// warmpg's tests find a server through WARMPG_TEST_DATABASE_URL when this
// machine has no PostgreSQL server binaries (see internal/pgtest). This
// command, a module of its own so that testcontainers-go and the Docker
// client stay out of warmpg's go.mod, provides one:
//
//	make bin/pgcontainer
//	./bin/pgcontainer -- go test ./...            # run a command against it, then remove it
//	./bin/pgcontainer                             # or print the export line and wait for Ctrl-C
//	export WARMPG_TEST_DATABASE_URL='postgres://postgres:…@localhost:32768/postgres?sslmode=disable'
//
// The container runs postgres:15-alpine (-image to choose another) tuned
// like the harness's local clusters (fsync off, max_connections 500), with
// the role warmpg_pw the password tests look for. It is removed when the
// command run after "--" exits, or on Ctrl-C / SIGTERM; if this process is
// killed, testcontainers' reaper removes it.
//
// Tests that stop, restart or freeze their own server still need local
// PostgreSQL server binaries, and skip saying so.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"strings"
	"syscall"
	"time"
)

// EnvDatabaseURL is the variable warmpg's tests read (internal/pgtest).
const EnvDatabaseURL = "WARMPG_TEST_DATABASE_URL"

// starter starts a server; startContainer, or a fake in tests.
type starter func(ctx context.Context, image string) (*container, error)

func main() {
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, syscall.SIGTERM)
	os.Exit(run(context.Background(), os.Args[1:], os.Stdout, os.Stderr, startContainer, sig))
}

// run is the command: it parses args, starts a server with start, then
// either runs the command after "--" with EnvDatabaseURL set and returns its
// exit code, or prints the export line and waits for a signal on sig. The
// server is closed before run returns.
func run(ctx context.Context, args []string, stdout, stderr io.Writer, start starter, sig <-chan os.Signal) int {
	fs := flag.NewFlagSet("pgcontainer", flag.ContinueOnError)
	fs.SetOutput(stderr)
	image := fs.String("image", DefaultImage, "PostgreSQL image to run")
	timeout := fs.Duration("timeout", 5*time.Minute, "how long to wait for Docker to pull and start the image")
	fs.Usage = func() {
		fmt.Fprintf(stderr, "usage: pgcontainer [-image IMAGE] [-timeout D] [-- command [args...]]\n\n"+
			"Starts a throwaway PostgreSQL container for warmpg's tests. With a command, runs it\n"+
			"with %s set and removes the container when it exits; without, prints\n"+
			"the line to export and waits for Ctrl-C.\n\n", EnvDatabaseURL)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	command := fs.Args()
	if len(command) > 0 && !afterDashes(args, len(command)) {
		fmt.Fprintf(stderr, "pgcontainer: unexpected argument %q: put the command to run after --\n", command[0])
		return 2
	}
	if *timeout <= 0 {
		fmt.Fprintf(stderr, "pgcontainer: -timeout=%v: want a positive duration\n", *timeout)
		return 2
	}

	sctx, cancel := context.WithTimeout(ctx, *timeout)
	fmt.Fprintf(stderr, "pgcontainer: starting %s\n", *image)
	c, err := start(sctx, *image)
	cancel()
	if err != nil {
		fmt.Fprintf(stderr, "%v\n", err)
		if errors.Is(err, ErrNoDocker) {
			fmt.Fprintln(stderr, "pgcontainer: start Docker, or install PostgreSQL's server package (initdb, pg_ctl) and run the tests without this command")
		}
		return 1
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		if err := c.Close(cctx); err != nil {
			fmt.Fprintf(stderr, "pgcontainer: removing the container: %v\n", err)
			return
		}
		fmt.Fprintln(stderr, "pgcontainer: container removed")
	}()

	if len(command) == 0 {
		fmt.Fprintf(stdout, "export %s=%s\n", EnvDatabaseURL, shellQuote(c.URL))
		fmt.Fprintln(stderr, "pgcontainer: running; Ctrl-C stops and removes the container")
		select {
		case <-sig:
		case <-ctx.Done():
		}
		return 0
	}

	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	cmd.Env = append(os.Environ(), EnvDatabaseURL+"="+c.URL)
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(stderr, "pgcontainer: %v\n", err)
		return 1
	}
	// A Ctrl-C reaches the command too (same process group); this process
	// waits for it to end, then removes the container.
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	for {
		select {
		case err := <-done:
			var ee *exec.ExitError
			switch {
			case err == nil:
				return 0
			case errors.As(err, &ee) && ee.ExitCode() > 0:
				return ee.ExitCode()
			default:
				fmt.Fprintf(stderr, "pgcontainer: %s: %v\n", command[0], err)
				return 1
			}
		case <-sig:
			fmt.Fprintf(stderr, "pgcontainer: interrupted; waiting for %s to exit\n", command[0])
		}
	}
}

// afterDashes reports whether the last n of args follow a "--".
func afterDashes(args []string, n int) bool {
	i := len(args) - n - 1
	return i >= 0 && args[i] == "--"
}

// shellQuote quotes s for a POSIX shell.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}
