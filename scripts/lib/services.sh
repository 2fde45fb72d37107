# Find or start PostgreSQL and Redis for the main job and the tests.
#
#   ensure_postgres  exports DATABASE_URL_BASE (postgres://root@127.0.0.1:PORT) and PG_BIN_DIR
#   ensure_redis     exports REDIS_URL (redis://127.0.0.1:PORT)
#
# Each first looks for a running server on the standard port (PostgreSQL 5432 accepting the
# `root` role with trust auth, Redis 6379); if there is none, it starts a throwaway instance from
# the installed binaries in a temp dir on a free port and stops it at exit. Missing binaries are
# installed with apt-get when running as root, otherwise the exact command is printed.
# A server this script did not start is never stopped.
# shellcheck shell=bash

: "${PAYMENTS_TMP:=${TMPDIR:-/tmp}}"

# Finds initdb/pg_ctl/postgres: PATH first, then Debian's versioned directories.
pg_bin_dir() {
  local d
  if command -v pg_ctl >/dev/null && command -v initdb >/dev/null; then
    dirname "$(command -v pg_ctl)"
    return 0
  fi
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    if [ -x "$d/pg_ctl" ] && [ -x "$d/initdb" ]; then
      echo "$d"
      return 0
    fi
  done
  return 1
}

need_pg_binaries() {
  PG_BIN_DIR=$(pg_bin_dir) || { install_or_explain postgresql postgresql-client; PG_BIN_DIR=$(pg_bin_dir) || die "PostgreSQL binaries still not found after install"; }
  export PG_BIN_DIR
  command -v psql >/dev/null || [ -x "$PG_BIN_DIR/psql" ] || install_or_explain postgresql-client
}

need_redis_binaries() {
  command -v redis-server >/dev/null && command -v redis-cli >/dev/null || install_or_explain redis-server redis-tools
}

psql_cmd() { if command -v psql >/dev/null; then psql "$@"; else "$PG_BIN_DIR/psql" "$@"; fi; }

# start_throwaway_postgres: initdb + pg_ctl in a temp dir on a free port; stopped at exit.
# initdb refuses to run as root, so as root the cluster belongs to the `postgres` user.
start_throwaway_postgres() {
  need_pg_binaries
  local dir port owner=""
  dir=$(mktemp -d "$PAYMENTS_TMP/payments-pg.XXXXXX")
  port=$(free_port)
  if is_root; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql --shell /bin/bash postgres
    chown postgres "$dir"
    owner="runuser -u postgres --"
  fi
  $owner "$PG_BIN_DIR/initdb" -D "$dir/data" -U root --auth=trust --no-sync -E UTF8 >"$dir/initdb.log" 2>&1 ||
    { cat "$dir/initdb.log" >&2; die "initdb failed"; }
  $owner "$PG_BIN_DIR/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p $port -k $dir -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=300" start >/dev/null ||
    { cat "$dir/postgres.log" >&2; die "pg_ctl start failed"; }
  on_exit "$owner '$PG_BIN_DIR/pg_ctl' -D '$dir/data' -m immediate stop >/dev/null 2>&1; rm -rf '$dir'"
  say "started a throwaway PostgreSQL on 127.0.0.1:$port ($dir)"
  export DATABASE_URL_BASE="postgres://root@127.0.0.1:$port"
}

ensure_postgres() {
  if [ -n "${DATABASE_URL_BASE:-}" ]; then return 0; fi
  if (exec 3<>/dev/tcp/127.0.0.1/5432) 2>/dev/null &&
    command -v psql >/dev/null &&
    psql_cmd "postgres://root@127.0.0.1:5432/postgres" -Atqc 'select 1' >/dev/null 2>&1; then
    export DATABASE_URL_BASE="postgres://root@127.0.0.1:5432"
    say "using the PostgreSQL running on 127.0.0.1:5432"
  else
    start_throwaway_postgres
  fi
}

# start_throwaway_redis: redis-server on a free port, nothing kept on disk; stopped at exit.
start_throwaway_redis() {
  need_redis_binaries
  local dir port
  dir=$(mktemp -d "$PAYMENTS_TMP/payments-redis.XXXXXX")
  port=$(free_port)
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$dir" \
    --daemonize yes --pidfile "$dir/redis.pid" --logfile "$dir/redis.log" >/dev/null ||
    die "redis-server failed to start"
  wait_for_port "$port" || { cat "$dir/redis.log" >&2; die "redis-server did not come up"; }
  on_exit "redis-cli -p $port shutdown nosave >/dev/null 2>&1 || kill \$(cat '$dir/redis.pid' 2>/dev/null) 2>/dev/null; rm -rf '$dir'"
  say "started a throwaway Redis on 127.0.0.1:$port"
  export REDIS_URL="redis://127.0.0.1:$port"
}

ensure_redis() {
  if [ -n "${REDIS_URL:-}" ]; then return 0; fi
  if command -v redis-cli >/dev/null && [ "$(redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null)" = "PONG" ]; then
    export REDIS_URL="redis://127.0.0.1:6379"
    say "using the Redis running on 127.0.0.1:6379"
  else
    start_throwaway_redis
  fi
}

# ensure_chromium: Chromium and ChromeDriver for the console's browser tests
# (tests/tests/console_browser.rs). Installed with apt-get when running as root; otherwise a
# warning with the exact command, and those tests skip saying why. Never fatal: every other test
# runs without a browser.
ensure_chromium() {
  if command -v chromium >/dev/null && command -v chromedriver >/dev/null; then
    return 0
  fi
  if is_root && command -v apt-get >/dev/null; then
    say "installing chromium chromium-driver with apt-get (the console's browser tests)"
    if DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; then
      return 0
    fi
    warn "apt-get install chromium chromium-driver failed: the browser tests will be skipped"
  else
    warn "chromium or chromedriver missing: the browser tests will be skipped (install with: sudo apt-get install -y chromium chromium-driver)"
  fi
}
