package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/warmpg/warmpg/internal/pgtest"
)

// check with pool_password_file: it connects with the file's password and
// shows none of it, neither when the server takes it nor when it refuses
// it.
func TestCheckPasswordFile(t *testing.T) {
	srv := pgtest.Get(t).WithPasswordUser(t)
	ctx := ctxT(t, time.Minute)
	file := filepath.Join(t.TempDir(), "pw")
	dsn := srv.WithUser(pgtest.PasswordUser, "").URL("pool_password_file=" + file)
	for _, tc := range []struct {
		pw string
		ok bool
	}{{pgtest.PasswordUserPassword, true}, {"Zq9-wr0ng-pw", false}} {
		if err := os.WriteFile(file, []byte(tc.pw+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		var out, errb bytes.Buffer
		err := run(ctx, []string{"check", dsn, "--timeout", "10s"}, &out, &errb)
		all := fmtErr(err) + "\n" + errb.String() + out.String()
		if (err == nil) != tc.ok {
			t.Errorf("check with the file's password %s: %s", map[bool]string{true: "right", false: "wrong"}[tc.ok], all)
		}
		if strings.Contains(all, tc.pw) || strings.Contains(all, "wr0ng") {
			t.Errorf("check shows the file's password:\n%s", all)
		}
		if !tc.ok && !strings.Contains(all, "28P01") {
			t.Errorf("a wrong password: want the server's 28P01, got:\n%s", all)
		}
	}
}

func fmtErr(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}
