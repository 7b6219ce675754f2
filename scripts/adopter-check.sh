#!/usr/bin/env bash
# adopter-check.sh builds a new module whose only import is warmpg (this
# checkout, through a replace directive) and counts the modules in its graph
# (`go list -m all`): every one of them takes part in the adopter's version
# selection, linked or not. It fails above the limit, listing them, so that
# a test-only dependency (a container library, say) cannot slip into the
# root go.mod again. Needs only the Go module proxy.
#
#   scripts/adopter-check.sh            # limit 22
#   ADOPTER_MAX_MODULES=30 scripts/adopter-check.sh
set -euo pipefail

max=${ADOPTER_MAX_MODULES:-22}
go=${GO:-go}
root=$(cd "$(dirname "$0")/.." && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# The adopter declares the Go version warmpg declares, as a new module on
# the oldest supported toolchain would.
gover=$(awk '$1 == "go" { print $2; exit }' "$root/go.mod")
cat >"$tmp/go.mod" <<MOD
module example.com/adopter

go $gover

require github.com/warmpg/warmpg v0.0.0-00010101000000-000000000000

replace github.com/warmpg/warmpg => $root
MOD
cat >"$tmp/main.go" <<'SRC'
package main

import (
	"database/sql"
	"fmt"

	_ "github.com/warmpg/warmpg"
)

func main() { fmt.Println(sql.Drivers()) }
SRC

export GOWORK=off GOFLAGS="${GOFLAGS:-} -mod=mod"
(cd "$tmp" && "$go" mod tidy && "$go" build -o /dev/null .)
mods=$(cd "$tmp" && "$go" list -m all)
n=$(printf '%s\n' "$mods" | wc -l)
sums=$(wc -l <"$tmp/go.sum")
echo "adopter-check: a module importing only warmpg has $n modules in its graph (limit $max), $sums go.sum lines"
if ((n > max)); then
	echo "adopter-check: FAIL: $n modules > $max; warmpg's go.mod pulls in:" >&2
	printf '%s\n' "$mods" | sed 's/^/  /' >&2
	echo "adopter-check: test-only tools with heavy dependencies belong in a module of their own (see tools/pgcontainer)" >&2
	exit 1
fi
