package pgtest

import (
	"context"
	"os"
	"testing"
)

// Own starts a private local cluster (StartLocal) for a test that stops,
// restarts, freezes or reconfigures its server, and closes it when the test
// ends. A server from WARMPG_TEST_DATABASE_URL (a container, say) cannot be
// used for that, so without local server binaries the test skips, saying
// why — or fails under CI=true. Any other failure to start fails the test.
func Own(t testing.TB, ctx context.Context, opts ...Option) *Server {
	t.Helper()
	NeedLocal(t, opts...)
	srv, err := StartLocal(ctx, opts...)
	if err != nil {
		t.Fatalf("pgtest: own cluster: %v", err)
	}
	t.Cleanup(func() {
		if err := srv.Close(); err != nil {
			t.Errorf("pgtest: closing the test's own cluster: %v", err)
		}
	})
	return srv
}

// NeedLocal skips a test that needs StartLocal when this machine has no
// server binaries (failing it under CI=true, or when WARMPG_PG_BIN or
// WithBinDir names binaries that are not there), as Own does.
func NeedLocal(t testing.TB, opts ...Option) {
	t.Helper()
	cfg := newConfig(opts)
	if _, _, err := findBinaries(cfg.binDir); err != nil {
		if cfg.binDir != "" || os.Getenv(EnvPGBin) != "" {
			// Binaries were named, and are not there: a mistake to
			// report, not a machine to skip on.
			t.Fatalf("pgtest: own cluster: %v", err)
		}
		if os.Getenv(EnvCI) == "true" {
			t.Fatalf("pgtest: this test needs a private local cluster (CI=true makes this fatal): %v", err)
		}
		t.Skipf("pgtest: this test stops, restarts or reconfigures its own server, which needs local PostgreSQL server binaries (a shared or env server will not do; skipping, CI=true would fail): %v", err)
	}
}
