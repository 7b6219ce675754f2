package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"github.com/warmpg/warmpg/internal/pgtest"
	"github.com/warmpg/warmpg/internal/warmbench"
)

func TestMain(m *testing.M) {
	code := pgtest.Main(m)
	if code == 0 {
		// Every connection and server the tests used is closed: no
		// goroutine may outlive them.
		if err := goleak.Find(); err != nil {
			fmt.Fprintln(os.Stderr, "goleak:", err)
			code = 1
		}
	}
	os.Exit(code)
}

// The demo against a server it is given: a table with every method, each
// row a time and a ratio.
func TestDemo(t *testing.T) {
	srv := pgtest.Get(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	var out, errb bytes.Buffer
	err := run(ctx, []string{"demo", "-n", "4", "-runs", "1", "-rtt", "1ms", "-dsn", srv.URL()}, &out, &errb)
	if err != nil {
		t.Fatalf("%v\nstderr: %s", err, errb.String())
	}
	t.Log("\n" + out.String())
	if !strings.Contains(out.String(), "warming 4 connections at 1ms") {
		t.Errorf("no heading: %q", out.String())
	}
	for _, m := range warmbench.Methods {
		line := ""
		for _, l := range strings.Split(out.String(), "\n") {
			if strings.Contains(l, string(m)) {
				line = l
			}
		}
		if line == "" || !strings.Contains(line, "×") || !strings.Contains(line, "ms") {
			t.Errorf("no row for %s: %q", m, out.String())
		}
	}
}

func TestDemoRejectsBadFlags(t *testing.T) {
	for _, args := range [][]string{
		{"demo", "-n", "0"},
		{"demo", "-n", "100000"},
		{"demo", "-rtt", "-1ms"},
		{"demo", "-runs", "0"},
		{"demo", "-bogus"},
		{"frobnicate"},
	} {
		var out, errb bytes.Buffer
		if err := run(context.Background(), args, &out, &errb); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	var out bytes.Buffer
	if err := run(context.Background(), nil, &out, &out); err != nil || !strings.Contains(out.String(), "usage") {
		t.Errorf("no args: %v %q", err, out.String())
	}
}
