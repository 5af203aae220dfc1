#!/usr/bin/env bash
# The project's one test command: lint, then all tests against a real ClickHouse engine.
#
#   scripts/test.sh            cargo fmt --check, cargo clippy -D warnings, cargo test --all-targets
#   scripts/test.sh --no-lint  only cargo test --all-targets (quick local runs)
#
# ClickHouse comes from chDB (the ClickHouse engine as a Python module) behind the
# project's HTTP front, tools/ch_front.py. The script creates (or reuses) a venv outside
# the repository, starts one front on a free loopback port with DeepFlow's ClickHouse
# configuration (tools/chdb-deepflow.xml) and a fresh data directory, and exports for
# the tests:
#   CLICKHOUSE_URL    base URL of that front, e.g. http://127.0.0.1:41234
#   CH_FRONT_PYTHON   the venv's python, so tests can start fronts of their own
#   CH_FRONT_SCRIPT   absolute path of tools/ch_front.py
#   CH_FRONT_CONFIG   absolute path of tools/chdb-deepflow.xml
# Environment: CHDB_VENV overrides the venv location (default
# ~/.cache/deepflow-tempo/chdb-venv, about 565 MB; never inside the repository).
set -euo pipefail

LINT=1
for arg in "$@"; do
  case "$arg" in
    --no-lint) LINT=0 ;;
    -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument: $arg (try --help)" >&2; exit 2 ;;
  esac
done

cd "$(dirname "$0")/.."
ROOT=$PWD
VENV="${CHDB_VENV:-$HOME/.cache/deepflow-tempo/chdb-venv}"
START=$SECONDS

note() { printf '\n==> %s\n' "$*"; }
die() { printf '\ntest.sh: FAILED: %s\n' "$*" >&2; exit 1; }

# --- 1. The chDB venv (pinned; --no-deps skips pandas/pyarrow/numpy, which the front never imports)
if ! "$VENV/bin/python" -c 'import chdb, lz4' 2>/dev/null; then
  note "creating the chDB venv at $VENV"
  if [ -e "$VENV" ] && [ ! -f "$VENV/pyvenv.cfg" ]; then
    die "$VENV exists but is not a venv; remove it or set CHDB_VENV"
  fi
  command -v python3 >/dev/null || die "python3 (>= 3.9) is needed to create the chDB venv"
  rm -rf "$VENV"
  mkdir -p "$(dirname "$VENV")"
  python3 -m venv "$VENV" || die "python3 -m venv failed (on Debian: apt-get install python3-venv)"
  "$VENV/bin/pip" install -q --disable-pip-version-check --no-deps \
      'chdb-core==26.9.0' 'lz4==4.4.5' 'clickhouse-cityhash==1.0.2.6' \
    || die "pip install of chdb-core/lz4/clickhouse-cityhash failed"
  "$VENV/bin/python" -c 'import chdb, lz4' || die "the new venv cannot import chdb and lz4"
fi

# --- 2. The Rust lint tools
if [ "$LINT" = 1 ]; then
  cargo fmt --version >/dev/null 2>&1 || rustup component add rustfmt
  cargo clippy --version >/dev/null 2>&1 || rustup component add clippy
fi

# --- 3. The ClickHouse front, stopped on exit
command -v curl >/dev/null || die "curl is needed to check the ClickHouse front"
TMPDIR_CH=$(mktemp -d "${TMPDIR:-/tmp}/deepflow-tempo-ch.XXXXXX")
FRONT_PID=""
cleanup() {
  local rc=$?
  if [ -n "$FRONT_PID" ]; then
    kill "$FRONT_PID" 2>/dev/null || true
    wait "$FRONT_PID" 2>/dev/null || true
  fi
  if [ "$rc" != 0 ]; then
    printf '\ntest.sh: exit status %s after %ss; last lines of the ClickHouse front log:\n' \
      "$rc" "$((SECONDS - START))" >&2
    tail -n 30 "$TMPDIR_CH/front.log" "$TMPDIR_CH/front.err" >&2 2>/dev/null || true
  fi
  rm -rf "$TMPDIR_CH"
  exit "$rc"
}
trap cleanup EXIT

note "starting the ClickHouse front (chDB)"
TZ=UTC "$VENV/bin/python" tools/ch_front.py --port 0 --path "$TMPDIR_CH/data" \
    --config tools/chdb-deepflow.xml --log "$TMPDIR_CH/front.log" \
    </dev/null >"$TMPDIR_CH/front.out" 2>"$TMPDIR_CH/front.err" &
FRONT_PID=$!
CLICKHOUSE_URL=""
for _ in $(seq 150); do  # up to ~15 s
  kill -0 "$FRONT_PID" 2>/dev/null || die "the ClickHouse front exited during startup"
  [ -n "$CLICKHOUSE_URL" ] || CLICKHOUSE_URL=$(head -n 1 "$TMPDIR_CH/front.out")
  if [ -n "$CLICKHOUSE_URL" ] && curl -sf --max-time 2 "$CLICKHOUSE_URL/ping" >/dev/null; then
    break
  fi
  sleep 0.1
done
[ -n "$CLICKHOUSE_URL" ] && curl -sf --max-time 2 "$CLICKHOUSE_URL/ping" >/dev/null \
  || die "the ClickHouse front did not answer /ping within 15 s"
export CLICKHOUSE_URL
export CH_FRONT_PYTHON="$VENV/bin/python"
export CH_FRONT_SCRIPT="$ROOT/tools/ch_front.py"
export CH_FRONT_CONFIG="$ROOT/tools/chdb-deepflow.xml"
echo "ClickHouse front at $CLICKHOUSE_URL (pid $FRONT_PID, $(curl -sf --data-binary 'SELECT version()' "$CLICKHOUSE_URL/"))"

# --- 4. Lint and test
if [ "$LINT" = 1 ]; then
  note "cargo fmt --all -- --check"
  cargo fmt --all -- --check || die "cargo fmt: code is not formatted (run: cargo fmt --all)"
  note "cargo clippy --all-targets -- -D warnings"
  cargo clippy --all-targets -- -D warnings || die "cargo clippy reported warnings or errors"
fi
note "cargo test --all-targets"
cargo test --all-targets || die "cargo test failed"

note "all checks passed in $((SECONDS - START)) s"
