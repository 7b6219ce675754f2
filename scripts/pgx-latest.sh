#!/usr/bin/env bash
# pgx-latest.sh runs the tests most tied to pgx's internals against the
# newest pgx/v5 the module proxy serves, in a temporary copy of the module
# (`go get github.com/jackc/pgx/v5@latest` there; this tree's go.mod is not
# touched). warmpg depends on pgx behaviour pgx does not promise; when a new
# pgx changes it, this fails, naming the assumption that broke. When the
# proxy has nothing newer than go.mod's pgx, it runs against that version
# all the same, and says so.
#
# The assumptions, each with the tests that pin it:
#   statement warming: an oversized batch prepares every statement and
#     executes none (no Bind, no Execute; docs/statements.md)
#   lazy BEGIN: pgx's writes and reads through pool_lazy_begin's wire layer
#     are what lazywire.go expects (docs/lazy-begin.md)
#   replan: pgx forgets a cached statement after 0A000, and a resent
#     statement runs once (docs/replan.md)
#   retry classification: a statement the server may have run is never
#     retried by database/sql (pgx's SafeToRetry), across a restart
#   cancellation: pgx's ctxwatch handler, CancelRequest and DialFunc work
#     as cancelpgx.go uses them (docs/reuse.md)
#   pgx's own stdlib tests through warmpg (scripts/pgx-suite.sh)
#
# PGX_REPLACE=/path/to/a/pgx/v5/tree runs the same checks against that tree
# instead (a go.mod replace in the copy): to check the check, with a pgx
# changed on purpose.
set -euo pipefail
go=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

required=$(cd "$root" && $go list -m -f '{{.Version}}' github.com/jackc/pgx/v5)
latest=$(cd "$root" && $go list -m -f '{{.Version}}' github.com/jackc/pgx/v5@latest)
if [ "$latest" = "$required" ]; then
	echo "pgx-latest: the module proxy's newest pgx/v5 is $latest, the version go.mod requires: running against it all the same"
else
	echo "pgx-latest: go.mod requires pgx/v5 $required; running against the module proxy's newest, $latest"
fi

# The module's files (git's list when there is one), without bin/ or .git.
if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
	(cd "$root" && git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf -) | tar -xf - -C "$tmp"
else
	(cd "$root" && tar --exclude=./.git --exclude=./bin -cf - .) | tar -xf - -C "$tmp"
fi
cd "$tmp"
$go get github.com/jackc/pgx/v5@"$latest" >/dev/null
$go -C tools/pgxsuite get github.com/jackc/pgx/v5@"$latest" >/dev/null
if [ -n "${PGX_REPLACE:-}" ]; then
	echo "pgx-latest: PGX_REPLACE: pgx/v5 $latest replaced by $PGX_REPLACE"
	$go mod edit -replace github.com/jackc/pgx/v5="$PGX_REPLACE"
	$go -C tools/pgxsuite mod edit -replace github.com/jackc/pgx/v5="$PGX_REPLACE"
	latest="$latest (replaced by $PGX_REPLACE)"
fi
got=$($go list -m -f '{{.Version}}' github.com/jackc/pgx/v5)
if [ "$got" != "${latest%% *}" ]; then
	echo "pgx-latest: the copy resolved pgx/v5 $got, not $latest" >&2
	exit 1
fi

broke=()
check() { # check "assumption" 'go test -run regexp'
	local what=$1 re=$2
	echo "== pgx $latest: $what (go test -run '$re')"
	$go test -race -count=1 -timeout 15m -run "$re" . >"$tmp/out.txt" 2>&1 || true
	grep -E '^(--- FAIL|FAIL|ok|panic)' "$tmp/out.txt" || true
	if grep -q 'no tests to run' "$tmp/out.txt"; then
		echo "pgx-latest: no test matches -run '$re': the tests that pin \"$what\" were renamed; update scripts/pgx-latest.sh" >&2
		broke+=("$what (no tests ran)")
	elif ! grep -q '^ok' "$tmp/out.txt"; then
		grep -E '^\s+\S+_test\.go:[0-9]+:' "$tmp/out.txt" | head -20 || true
		echo "pgx-latest: with pgx $latest the assumption broke: $what (go test -run '$re' in a copy with that pgx; output above)" >&2
		broke+=("$what")
	fi
}
check "statement warming: an oversized batch prepares without Bind or Execute" '^(TestWarmStatements|TestWarmList|TestHotStmts)'
check "lazy BEGIN: pgx's writes and reads through the wire layer" '^(TestBeginConn|TestLazyBegin)'
check "replan: pgx forgets a cached statement after 0A000; a resend runs once" '^(TestIsReplanErr|TestReplan)'
check "retry classification: no statement the server may have run is retried" '^TestFaultWritesAcrossRestart$'
check "cancellation: ctxwatch handler, CancelRequest and DialFunc as cancelpgx.go uses them" '^(TestCancelPgx|TestPgxCancel)'
echo "== pgx $latest: pgx's own stdlib tests through warmpg"
if ! GO=$go bash scripts/pgx-suite.sh; then
	echo "pgx-latest: with pgx $latest the assumption broke: pgx's stdlib tests pass through warmpg but the known differences (scripts/pgx-suite.sh; output above)" >&2
	broke+=("pgx's stdlib suite")
fi
if [ ${#broke[@]} -gt 0 ]; then
	printf 'pgx-latest: pgx %s breaks %d assumption(s):\n' "$latest" "${#broke[@]}" >&2
	printf '  - %s\n' "${broke[@]}" >&2
	exit 1
fi
echo "pgx-latest: every assumption holds with pgx $latest (go.mod: $required)"
