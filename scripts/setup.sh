#!/usr/bin/env bash
# setup.sh makes sure this machine has what the tests need:
#   - PostgreSQL server binaries (initdb, pg_ctl), found the way
#     internal/pgtest finds them: $WARMPG_PG_BIN, else on PATH, else the
#     highest /usr/lib/postgresql/*/bin;
#   - pgbouncer;
#   - as root, an OS user "postgres" to run the server as (PostgreSQL
#     refuses to run as root).
# Missing pieces are installed with apt-get when we are root. Otherwise the
# script says what to install, and fails only when CI=true.
#
# It never starts a server: the tests start their own throwaway clusters.
# Package scripts are kept from starting services while it installs.
# It is idempotent: with everything present it changes nothing.
set -euo pipefail

say() { printf 'setup: %s\n' "$*"; }

# find_pg_bin prints the directory holding initdb and pg_ctl, if any.
find_pg_bin() {
	if [[ -n "${WARMPG_PG_BIN:-}" ]]; then
		if [[ -x "$WARMPG_PG_BIN/initdb" && -x "$WARMPG_PG_BIN/pg_ctl" ]]; then
			printf '%s\n' "$WARMPG_PG_BIN"
			return 0
		fi
		say "WARMPG_PG_BIN=$WARMPG_PG_BIN has no initdb and pg_ctl" >&2
		return 1
	fi
	local initdb pgctl
	if initdb=$(command -v initdb) && pgctl=$(command -v pg_ctl); then
		printf '%s\n' "$(dirname "$initdb")"
		return 0
	fi
	local dir best="" bestver=""
	for dir in /usr/lib/postgresql/*/bin; do
		[[ -x "$dir/initdb" && -x "$dir/pg_ctl" ]] || continue
		local ver
		ver=$(basename "$(dirname "$dir")")
		if [[ -z "$best" ]] || [[ "$(printf '%s\n%s\n' "$bestver" "$ver" | sort -V | tail -n1)" == "$ver" ]]; then
			best=$dir
			bestver=$ver
		fi
	done
	[[ -n "$best" ]] || return 1
	printf '%s\n' "$best"
}

have_pgbouncer() {
	command -v pgbouncer >/dev/null 2>&1 || [[ -x /usr/sbin/pgbouncer ]]
}

missing=()
if pg_bin=$(find_pg_bin); then
	say "PostgreSQL server binaries: $pg_bin ($("$pg_bin/pg_ctl" --version))"
else
	if [[ -n "${WARMPG_PG_BIN:-}" ]]; then
		say "WARMPG_PG_BIN is set but wrong; not installing anything over it"
		exit 1
	fi
	say "PostgreSQL server binaries: missing"
	missing+=(postgresql)
fi
if have_pgbouncer; then
	say "pgbouncer: $(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
else
	say "pgbouncer: missing"
	missing+=(pgbouncer)
fi

if ((${#missing[@]} > 0)); then
	if [[ $(id -u) -ne 0 ]]; then
		say "not root: install these packages yourself: ${missing[*]}"
		say "  e.g. sudo apt-get install -y --no-install-recommends ${missing[*]}"
		say "  (or set WARMPG_PG_BIN to a directory with initdb and pg_ctl)"
		if [[ "${CI:-}" == "true" ]]; then
			exit 1
		fi
		exit 0
	fi
	if ! command -v apt-get >/dev/null 2>&1; then
		say "no apt-get here: install these packages yourself: ${missing[*]}"
		exit 1
	fi
	# Keep the packages' maintainer scripts from starting services (the
	# Debian postgresql package would start a cluster, pgbouncer a pooler).
	policy=/usr/sbin/policy-rc.d
	if [[ ! -e $policy ]]; then
		say "writing a temporary $policy so that no service starts"
		printf '#!/bin/sh\nexit 101\n' >"$policy"
		chmod 755 "$policy"
		trap 'rm -f "$policy"' EXIT
	fi
	say "running: apt-get update"
	apt-get update
	say "running: apt-get install -y --no-install-recommends ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
	if ! pg_bin=$(find_pg_bin); then
		say "PostgreSQL server binaries still missing after installing"
		exit 1
	fi
	say "PostgreSQL server binaries: $pg_bin"
	if ! have_pgbouncer; then
		say "pgbouncer still missing after installing"
		exit 1
	fi
	say "pgbouncer: $(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
fi

# PostgreSQL refuses to run as root; the tests run it as "postgres".
if [[ $(id -u) -eq 0 ]]; then
	if id postgres >/dev/null 2>&1; then
		say "OS user postgres: present"
	else
		say "running: useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres"
		useradd --system --user-group --home-dir /var/lib/postgresql --shell /bin/bash postgres
	fi
fi

say "ready"
