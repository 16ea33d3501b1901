# Sourced by the examples' run scripts: a temp dir, processes on 127.0.0.1 that are all
# stopped on exit, free ports, a private redis-server, the meshlet release binary.
# Not a framework: each function is a few lines, read them.

set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
EX_TMP=$(mktemp -d "${TMPDIR:-/tmp}/meshlet-example.XXXXXX")
declare -A PID_OF=()

cleanup() {
  local status=$?
  trap - EXIT INT TERM
  for name in "${!PID_OF[@]}"; do kill "${PID_OF[$name]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" -ne 0 ] && [ -z "${EX_QUIET_FAIL:-}" ]; then
    echo "--- failed (exit $status); last log lines in $EX_TMP:" >&2
    for f in "$EX_TMP"/*.log; do [ -f "$f" ] && { echo "== $f" >&2; tail -n 5 "$f" >&2; }; done
  fi
  if [ -n "${KEEP_TMP:-}" ]; then echo "logs kept in $EX_TMP"; else rm -rf "$EX_TMP"; fi
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say() { printf '\n\033[1m%s\033[0m\n' "$*"; }
note() { printf '  %s\n' "$*"; }

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start NAME CMD...: runs CMD in the background, output in $EX_TMP/NAME.log.
start() {
  local name=$1; shift
  "$@" >"$EX_TMP/$name.log" 2>&1 &
  PID_OF[$name]=$!
}

# stop NAME [SIGNAL]: SIGTERM by default; KILL to simulate a crash.
stop() {
  local pid=${PID_OF[$1]:-}
  [ -n "$pid" ] || return 0
  kill "-${2:-TERM}" "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  unset "PID_OF[$1]"
}

# wait_http URL [SECONDS]: until URL answers 2xx.
wait_http() {
  local url=$1 deadline=$((SECONDS + ${2:-15}))
  until curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "timed out waiting for $url" >&2; return 1; }
    sleep 0.1
  done
}

# MESHLET: $MESHLET_BIN when set (CI can pass target/debug/meshlet), else the release
# binary ${CARGO_TARGET_DIR:-target}/release/meshlet, built if missing.
meshlet_binary() {
  if [ -n "${MESHLET_BIN:-}" ]; then MESHLET=$MESHLET_BIN; return; fi
  local dir=${CARGO_TARGET_DIR:-target}
  case $dir in /*) ;; *) dir="$ROOT/$dir" ;; esac
  MESHLET="$dir/release/meshlet"
  if ! [ -x "$MESHLET" ]; then
    say "Building meshlet (cargo build --release, once; a few minutes)"
    (cd "$ROOT" && cargo build --release --locked)
  fi
}

# start_redis: a private redis-server on a free port, no persistence; sets REDIS_URL.
start_redis() {
  command -v redis-server >/dev/null || {
    echo "redis-server is needed: apt-get install redis-server (or run bash .ci/run once)" >&2
    exit 1
  }
  local port
  port=$(free_port)
  start redis redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$EX_TMP"
  REDIS_URL="redis://127.0.0.1:$port/0"
  local deadline=$((SECONDS + 10))
  until redis-cli -p "$port" ping >/dev/null 2>&1; do
    ((SECONDS < deadline)) || { echo "redis-server did not start" >&2; return 1; }
    sleep 0.1
  done
}
