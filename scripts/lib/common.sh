# Shared shell helpers for scripts/. Source it; it defines functions only.
# shellcheck shell=bash

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }
warn() { printf '\033[33mwarning:\033[0m %s\n' "$*" >&2; }
die() { printf '\033[31merror:\033[0m %s\n' "$*" >&2; exit 1; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Runs every registered cleanup (newest first) once, at exit.
__cleanups=()
on_exit() { __cleanups+=("$*"); }
__run_cleanups() {
  local i
  for ((i = ${#__cleanups[@]} - 1; i >= 0; i--)); do
    eval "${__cleanups[$i]}" || true
  done
  __cleanups=()
}
trap __run_cleanups EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Prints a TCP port on 127.0.0.1 that nothing listens on right now.
free_port() {
  local port tries=0
  while [ $tries -lt 200 ]; do
    port=$(( (RANDOM % 20000) + 30000 ))
    if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
      echo "$port"
      return 0
    fi
    tries=$((tries + 1))
  done
  die "no free TCP port found on 127.0.0.1"
}

# Waits until something accepts connections on 127.0.0.1:$1 (or the process $2 died).
wait_for_port() {
  local port=$1 pid=${2:-} tries=0
  until (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; do
    if [ -n "$pid" ] && ! kill -0 "$pid" 2>/dev/null; then
      return 1
    fi
    tries=$((tries + 1))
    [ $tries -gt 600 ] && return 1
    sleep 0.1
  done
}

# install_hint PACKAGES...: installs Debian packages when root, else prints the exact command.
install_or_explain() {
  if is_root && command -v apt-get >/dev/null; then
    say "installing $* with apt-get"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null &&
      DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null ||
      die "apt-get install $* failed"
  else
    die "missing $*: install with: sudo apt-get install -y $*"
  fi
}
