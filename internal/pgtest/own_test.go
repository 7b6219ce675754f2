package pgtest

import (
	"context"
	"path/filepath"
	"testing"
	"time"
)

// Without local binaries, Own skips (a test that restarts its server cannot
// run on an env server) rather than failing, unless CI=true;
// binaries named (WARMPG_PG_BIN) but missing are a mistake: it fails.
func TestOwnSkipsWithoutLocalBinaries(t *testing.T) {
	// A machine without binaries: nothing on PATH, no Debian directory.
	t.Setenv("PATH", t.TempDir())
	t.Setenv(EnvPGBin, "")
	t.Setenv(EnvCI, "")
	old := debianBinGlob
	debianBinGlob = filepath.Join(t.TempDir(), "*", "bin")
	t.Cleanup(func() { debianBinGlob = old })
	var skipped bool
	t.Run("none found", func(t *testing.T) {
		defer func() { skipped = t.Skipped() }()
		Own(t, context.Background())
	})
	if !skipped {
		t.Error("Own without binaries did not skip")
	}

	t.Setenv(EnvPGBin, t.TempDir()) // named, with no initdb in it
	ft := &fatalRecorder{TB: t}
	func() {
		defer func() { _ = recover() }()
		Own(ft, context.Background())
	}()
	if !ft.fatal {
		t.Error("Own with WARMPG_PG_BIN naming a directory without binaries did not fail")
	}
}

// fatalRecorder records Fatalf instead of failing the test, then stops the
// caller with a panic the test recovers.
type fatalRecorder struct {
	testing.TB
	fatal bool
}

func (f *fatalRecorder) Helper() {}
func (f *fatalRecorder) Fatalf(string, ...any) {
	f.fatal = true
	panic("fatal")
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
