#!/usr/bin/env bash
# Proves the throwaway-service helpers work on this machine: starts a private PostgreSQL and a
# private Redis on free ports (ignoring any running ones), talks to each, lets the exit hook stop
# them, and checks that they are gone. Run by scripts/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib/common.sh

ports_file=$(mktemp)
on_exit "rm -f '$ports_file'"

# A subshell so its exit hook (stopping both servers) runs before we check they are gone.
bash -c '
  set -euo pipefail
  . scripts/lib/common.sh
  . scripts/lib/services.sh
  start_throwaway_postgres
  start_throwaway_redis
  [ "$(psql_cmd "$DATABASE_URL_BASE/postgres" -Atqc "select 40 + 2")" = 42 ] || die "throwaway PostgreSQL did not answer"
  [ "$(redis-cli -u "$REDIS_URL" ping)" = PONG ] || die "throwaway Redis did not answer"
  echo "${DATABASE_URL_BASE##*:} ${REDIS_URL##*:}" >"$1"
' _ "$ports_file"

read -r pg_port redis_port <"$ports_file"
if (exec 3<>"/dev/tcp/127.0.0.1/$pg_port") 2>/dev/null; then die "throwaway PostgreSQL on $pg_port still runs after exit"; fi
if (exec 3<>"/dev/tcp/127.0.0.1/$redis_port") 2>/dev/null; then die "throwaway Redis on $redis_port still runs after exit"; fi
say "throwaway PostgreSQL ($pg_port) and Redis ($redis_port) started, answered and stopped"
