#!/usr/bin/env bash
# Makes sure the machine has what pgshield's tests and demo need: python3 with venv, a Postgres
# server, pgTAP + pg_cron + plpgsql_check for the server's major version, pg_prove, and Node.js
# with npm (for the pinned Supabase CLI). Installs with apt-get when root (Debian/Ubuntu);
# otherwise names the packages to install and fails. Optional extras (for `make bench`): pass
# --bench to also install redis-server and valgrind (the instruction counts).
set -euo pipefail

want_bench=0
[[ "${1:-}" == "--bench" ]] && want_bench=1

missing=()
apt_updated=0
as_root() { [[ "$(id -u)" == "0" ]]; }

apt_install() {
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "pgshield: please install: $*" >&2
    return 1
  fi
  if ! as_root; then
    echo "pgshield: missing system packages; run: sudo apt-get install -y $*" >&2
    return 1
  fi
  if [[ "$apt_updated" == 0 ]]; then
    echo "pgshield: apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    apt_updated=1
  fi
  echo "pgshield: apt-get install $*" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

find_bindir() {
  if [[ -n "${PGSHIELD_PG_BINDIR:-}" && -x "${PGSHIELD_PG_BINDIR}/initdb" ]]; then
    echo "$PGSHIELD_PG_BINDIR"; return
  fi
  if command -v pg_config >/dev/null 2>&1; then
    local d; d="$(pg_config --bindir)"
    if [[ -x "$d/initdb" ]]; then echo "$d"; return; fi
  fi
  local newest
  newest="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)"
  if [[ -n "$newest" && -x "$newest/initdb" ]]; then echo "$newest"; return; fi
}

# -- python3 with venv ---------------------------------------------------------
if ! python3 -c 'import venv, ensurepip' >/dev/null 2>&1; then
  missing+=(python3-venv)
fi

# -- Postgres server -------------------------------------------------------------
bindir="$(find_bindir || true)"
if [[ -z "$bindir" ]]; then
  apt_install postgresql || exit 1
  bindir="$(find_bindir || true)"
  [[ -z "$bindir" ]] && { echo "pgshield: no Postgres server binaries found" >&2; exit 1; }
fi
major="$("$bindir/pg_config" --version 2>/dev/null | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')"
sharedir="$("$bindir/pg_config" --sharedir)"
pkglibdir="$("$bindir/pg_config" --pkglibdir)"

# -- pgTAP, pg_cron, plpgsql_check (and pg_prove) ----------------------------------
[[ -f "$sharedir/extension/pgtap.control" ]] || missing+=("postgresql-$major-pgtap")
[[ -f "$pkglibdir/pg_cron.so" ]] || missing+=("postgresql-$major-cron")
[[ -f "$sharedir/extension/plpgsql_check.control" ]] || missing+=("postgresql-$major-plpgsql-check")
# pg_prove runs tests/pgtap the way `supabase test db` does (tests/test_pgtap.py).
command -v pg_prove >/dev/null 2>&1 || missing+=(libtap-parser-sourcehandler-pgtap-perl)

# -- Node.js and npm (the Supabase CLI round-trip test) ---------------------------
command -v node >/dev/null 2>&1 || missing+=(nodejs)
command -v npm >/dev/null 2>&1 || missing+=(npm)

if [[ "$want_bench" == 1 ]] && ! command -v redis-server >/dev/null 2>&1; then
  missing+=(redis-server)
fi
if [[ "$want_bench" == 1 ]] && ! command -v valgrind >/dev/null 2>&1; then
  missing+=(valgrind)
fi

if ((${#missing[@]})); then
  apt_install "${missing[@]}" || exit 1
fi
echo "pgshield: system ready (Postgres $major in $bindir)" >&2
