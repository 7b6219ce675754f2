// Command warmpg shows what warmpg does on a real PostgreSQL server.
//
//	warmpg demo [-n 100] [-rtt 5ms] [-runs 3] [-dsn postgres://...]
//
// demo warms N connections one at a time (what a cold database/sql pool
// pays), with warmpg.WarmDB, and with pgxpool's MinConns fill, through a
// proxy that injects the round-trip time, and prints a table. Without -dsn
// (or WARMPG_DEMO_DSN) it starts a throwaway local PostgreSQL cluster in a
// temp dir and removes it afterwards.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/warmpg/warmpg/internal/pgproxy"
	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		fmt.Fprintln(os.Stderr, "warmpg:", err)
		os.Exit(1)
	}
}

const usage = `usage: warmpg demo [flags]

demo    warm N connections one at a time, with warmpg.WarmDB and with
        pgxpool MinConns at an injected round-trip time; print a table
`

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	switch args[0] {
	case "demo":
		return demo(ctx, args[1:], stdout, stderr)
	}
	return fmt.Errorf("unknown command %q\n%s", args[0], usage)
}

func demo(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	n := fs.Int("n", 100, "connections to warm (1 to 400 with the local server)")
	rtt := fs.Duration("rtt", 5*time.Millisecond, "round-trip time the proxy injects (0 to 1s)")
	runs := fs.Int("runs", 3, "runs of each method; the table shows the median (1 to 20)")
	dsn := fs.String("dsn", os.Getenv("WARMPG_DEMO_DSN"), "an existing server's URL (default: a throwaway local cluster)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	switch {
	case *n < 1 || *n > 400:
		return fmt.Errorf("-n %d: want 1 to 400", *n)
	case *rtt < 0 || *rtt > time.Second:
		return fmt.Errorf("-rtt %s: want 0 to 1s", *rtt)
	case *runs < 1 || *runs > 20:
		return fmt.Errorf("-runs %d: want 1 to 20", *runs)
	}

	var srv *pgtest.Server
	where := "throwaway local cluster"
	if *dsn == "" {
		fmt.Fprintln(stderr, "starting a throwaway PostgreSQL cluster...")
		s, err := pgtest.StartLocal(ctx)
		if err != nil {
			return fmt.Errorf("no -dsn given and no local cluster could be started (run `make demo`, which installs PostgreSQL): %w", err)
		}
		defer s.Close()
		srv = s
	} else {
		s, err := pgtest.FromURL(*dsn)
		if err != nil {
			return err
		}
		srv = s
		where = "server at " + srv.Addr()
	}
	proxy, err := pgproxy.New(srv.Addr(), pgproxy.WithLatency(*rtt), pgproxy.WithSpin(0))
	if err != nil {
		return err
	}
	defer proxy.Close()
	app := fmt.Sprintf("warmpg_demo_%d", os.Getpid())
	// Connect as production does: scram-sha-256 password auth (PostgreSQL's
	// default) and sslmode=prefer (pgx's and libpq's default, one more round
	// trip when the server has no TLS): 4 round trips per connect.
	user := srv
	if srv.HasPasswordUser() {
		user = srv.WithUser(pgtest.PasswordUser, pgtest.PasswordUserPassword)
	}
	viaProxy := strings.Replace(user.URL("application_name="+app, "sslmode=prefer"), srv.Addr(), proxy.Addr(), 1)

	version := "?"
	if conn, err := srv.Connect(ctx); err == nil {
		version = conn.PgConn().ParameterStatus("server_version")
		conn.Close(ctx)
	}
	fmt.Fprintf(stdout, "warming %d connections at %s injected round-trip time (PostgreSQL %s, %s), median of %d runs\n\n",
		*n, *rtt, version, where, *runs)

	times := map[warmbench.Method][]time.Duration{}
	for r := 0; r < *runs; r++ {
		for _, m := range warmbench.Methods {
			fctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
			d, err := warmbench.Fill(fctx, m, viaProxy, *n)
			if err == nil {
				_, err = srv.WaitBackendCount(fctx, app, 0)
			}
			cancel()
			if err != nil {
				return fmt.Errorf("%s: %w", m, err)
			}
			times[m] = append(times[m], d)
		}
	}
	base := median(times[warmbench.OneByOne])
	tw := tabwriter.NewWriter(stdout, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "method\ttime\tper connection\tvs one-by-one\t")
	for _, m := range warmbench.Methods {
		d := median(times[m])
		fmt.Fprintf(tw, "%s\t%s\t%s\t%.1f×\t\n", m, d.Round(time.Millisecond), (d / time.Duration(*n)).Round(10*time.Microsecond),
			float64(base)/float64(d))
	}
	return tw.Flush()
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
