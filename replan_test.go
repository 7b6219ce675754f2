package warmpg

import (
	"errors"
	"fmt"
	"testing"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/lib/pq"
)

// The replan error is recognized by SQLSTATE and routine, never by the
// message, which the server localizes (lc_messages).
func TestIsReplanErr(t *testing.T) {
	pgErr := func(code, routine, msg string) error {
		return &pgconn.PgError{Severity: "ERROR", Code: code, Routine: routine, Message: msg}
	}
	pqErr := func(code, routine, msg string) error {
		return &pq.Error{Severity: "ERROR", Code: pq.ErrorCode(code), Routine: routine, Message: msg}
	}
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"nil", nil, false},
		{"pgx", pgErr("0A000", "RevalidateCachedQuery", "cached plan must not change result type"), true},
		{"pgx localized", pgErr("0A000", "RevalidateCachedQuery", "le plan en cache ne doit pas modifier le type en résultat"), true},
		{"pgx wrapped", fmt.Errorf("query: %w", pgErr("0A000", "RevalidateCachedQuery", "")), true},
		{"pgx other 0A000", pgErr("0A000", "transformLockingClause", "FOR UPDATE is not allowed with aggregate functions"), false},
		{"pgx message only", pgErr("XX000", "", "cached plan must not change result type"), false},
		{"pgx other code", pgErr("42P01", "RevalidateCachedQuery", ""), false},
		{"pq", pqErr("0A000", "RevalidateCachedQuery", "cached plan must not change result type"), true},
		{"pq other routine", pqErr("0A000", "ExecCheckPlanOutput", ""), false},
		{"plain text", errors.New("ERROR: cached plan must not change result type (SQLSTATE 0A000)"), false},
	} {
		if got := isReplanErr(tc.err); got != tc.want {
			t.Errorf("%s: isReplanErr(%v) = %v, want %v", tc.name, tc.err, got, tc.want)
		}
	}
}
