package pgtest

import (
	"context"
	"testing"
	"time"
)

// Without local binaries, Own skips (a test that restarts its server cannot
// run on an env or container server) rather than failing, unless CI=true.
func TestOwnSkipsWithoutLocalBinaries(t *testing.T) {
	t.Setenv(EnvPGBin, t.TempDir()) // a directory with no initdb
	t.Setenv(EnvCI, "")
	var skipped bool
	var got *Server
	t.Run("own", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		got = Own(t, context.Background())
	})
	if !skipped || got != nil {
		t.Fatalf("Own without binaries: skipped=%v server=%v, want a skip", skipped, got)
	}
}

func TestOwnStartsAndCloses(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var srv *Server
	t.Run("own", func(t *testing.T) {
		srv = Own(t, ctx)
		if err := srv.Exec(ctx, "select 1"); err != nil {
			t.Fatal(err)
		}
	})
	if srv == nil {
		t.Skip("no local cluster here")
	}
	if err := srv.Exec(ctx, "select 1"); err == nil {
		t.Error("the cluster still answers after its test ended")
	}
}
