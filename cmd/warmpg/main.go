// Command warmpg shows, measures and sizes what warmpg does on a real
// PostgreSQL server.
//
//	warmpg demo  [-dsn URL] [-rtt 5ms] [-n 100] [-runs 3] ...
//	warmpg bench [-dsn URL] [-rtt 5ms] [-clients 32] [-conns 16] [-reps 5] [-svg file] ...
//	warmpg check <dsn> [-instances N] [-rps R] [-query-time T] [-pool N]
//
// demo and bench run through a proxy that injects a round-trip time; with no
// -dsn (or WARMPG_DEMO_DSN) they start a throwaway local PostgreSQL cluster
// in a temp dir and remove it afterwards. check only reads from the server
// it is given. Progress goes to stderr, results to stdout; flags take one
// dash or two.
//
// This is its own Go module (cmd/warmpg/go.mod, built against the checkout
// it sits in) so that the charting library it uses stays out of the
// library's go.mod.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"time"
	"unicode/utf8"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	defer stop()
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	switch {
	case err == nil:
	case errors.Is(err, flag.ErrHelp):
	default:
		fmt.Fprintln(os.Stderr, "warmpg:", err)
		os.Exit(exitCode(err))
	}
}

const usage = `usage: warmpg <command> [flags]

  demo    cold vs warmed pool, reset modes and read-only transactions at an
          injected round-trip time, on a throwaway local server (or -dsn)
  bench   warmpg's reset modes vs pgx, lib/pq and pgxpool, and warm-up times,
          interleaved over repetitions; ratios against the best peer; -svg chart
  check   read a server's connection limits and current use, and say whether
          a pool size fits, what the sizing formula suggests, whether to put
          PgBouncer in front, and how long warming will take

warmpg <command> -h shows the command's flags.
`

// usageError is bad input: a flag, an argument or a value. It exits 2, like
// the flag package; everything else exits 1.
type usageError struct{ msg string }

func (e *usageError) Error() string { return e.msg }

func badInput(format string, args ...any) error { return &usageError{fmt.Sprintf(format, args...)} }

func exitCode(err error) int {
	var ue *usageError
	if errors.As(err, &ue) {
		return 2
	}
	return 1
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 || args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		fmt.Fprint(stdout, usage)
		return nil
	}
	switch args[0] {
	case "demo":
		return demo(ctx, args[1:], stdout, stderr)
	case "bench":
		return bench(ctx, args[1:], stdout, stderr)
	case "check":
		return check(ctx, args[1:], stdout, stderr)
	}
	return badInput("unknown command %q\n%s", args[0], usage)
}

// flags is a command's flag set, with ranges checked after parsing. It is
// flag.ContinueOnError; -h prints usage (the command's text) and the flags'
// defaults on stderr.
type flags struct {
	*flag.FlagSet
	checks []func() error
}

func newFlags(name, usage string, stderr io.Writer) *flags {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() { fmt.Fprint(fs.Output(), usage, "\nFlags:\n"); fs.PrintDefaults() }
	return &flags{FlagSet: fs}
}

// intIn declares an integer flag that must be from lo to hi.
func (f *flags) intIn(p *int, name string, def, lo, hi int, usage string) {
	f.IntVar(p, name, def, fmt.Sprintf("%s (%d to %d)", usage, lo, hi))
	f.checks = append(f.checks, func() error {
		if *p < lo || *p > hi {
			return badInput("-%s %d: want a whole number from %d to %d", name, *p, lo, hi)
		}
		return nil
	})
}

// durationIn declares a duration flag that must be from lo to hi.
func (f *flags) durationIn(p *time.Duration, name string, def, lo, hi time.Duration, usage string) {
	f.DurationVar(p, name, def, fmt.Sprintf("%s (%s to %s)", usage, lo, hi))
	f.checks = append(f.checks, func() error {
		if *p < lo || *p > hi {
			return badInput("-%s %s: want a duration from %s to %s", name, *p, lo, hi)
		}
		return nil
	})
}

// parse parses args, allowing positional arguments before, between and
// after the flags (warmpg check <dsn> -pool 20), checks the ranges in the
// order the flags were declared, and returns the positional arguments. A
// flag error is a usageError.
func (f *flags) parse(args []string) ([]string, error) {
	var pos []string
	for {
		if err := f.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, err
			}
			return nil, badInput("%s: %v", f.Name(), err)
		}
		args = f.Args()
		if len(args) == 0 {
			break
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
	for _, check := range f.checks {
		if err := check(); err != nil {
			return nil, err
		}
	}
	return pos, nil
}

// parseNoArgs is parse for a command that takes no positional arguments.
func (f *flags) parseNoArgs(args []string) error {
	pos, err := f.parse(args)
	if err == nil && len(pos) > 0 {
		err = badInput("%s takes no arguments, got %q (a server goes in -dsn)", f.Name(), pos[0])
	}
	return err
}

// loadConfig is what demo and bench share: the server, the injected
// round-trip time and the shape of the throughput runs.
type loadConfig struct {
	dsn                     string
	rtt                     time.Duration
	clients, conns, queries int
}

// newLoadFlags is newFlags for demo and bench, with c's flags declared;
// queries is -queries' default.
func newLoadFlags(name, usage string, stderr io.Writer, c *loadConfig, queries int) *flags {
	f := newFlags(name, usage, stderr)
	f.StringVar(&c.dsn, "dsn", os.Getenv("WARMPG_DEMO_DSN"),
		"an existing server's postgres:// URL (default: a throwaway local cluster; env WARMPG_DEMO_DSN)")
	f.durationIn(&c.rtt, "rtt", 5*time.Millisecond, 0, time.Second, "round-trip time the proxy injects")
	f.intIn(&c.clients, "clients", 32, 1, 1000, "concurrent clients in the throughput runs")
	f.intIn(&c.conns, "conns", 16, 1, 100, "connections per pool in the throughput runs")
	f.intIn(&c.queries, "queries", queries, 2, 1_000_000, "select 1 queries per variant per run")
	return f
}

// progress writes a line of progress to stderr.
type progress struct{ w io.Writer }

func (p progress) printf(format string, args ...any) {
	fmt.Fprintf(p.w, format+"\n", args...)
}

// table is a titled table: each column as wide as its widest cell, numbers
// right-aligned, text left-aligned.
type table struct {
	title string
	head  []string
	rows  [][]string
	notes []string
}

func (t *table) add(cells ...string) { t.rows = append(t.rows, cells) }

func (t *table) print(w io.Writer) {
	width := make([]int, len(t.head))
	numeric := make([]bool, len(t.head))
	for i := range numeric {
		numeric[i] = i > 0 && len(t.rows) > 0
	}
	for _, r := range append([][]string{t.head}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], utf8.RuneCountInString(c))
		}
	}
	for _, r := range t.rows {
		for i, c := range r {
			numeric[i] = numeric[i] && isNumber(c)
		}
	}
	line := func(r []string) {
		var b strings.Builder
		for i, c := range r {
			pad := strings.Repeat(" ", width[i]-utf8.RuneCountInString(c))
			if i > 0 {
				b.WriteString("  ")
			}
			if numeric[i] {
				b.WriteString(pad + c)
			} else {
				b.WriteString(c + pad)
			}
		}
		fmt.Fprintln(w, strings.TrimRight(b.String(), " "))
	}
	if t.title != "" {
		fmt.Fprintln(w, t.title)
	}
	line(t.head)
	for _, r := range t.rows {
		line(r)
	}
	for _, n := range t.notes {
		fmt.Fprintln(w, "  "+n)
	}
	fmt.Fprintln(w)
}
