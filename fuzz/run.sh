#!/usr/bin/env bash
# Fuzzes the HTTP API with Schemathesis (pinned in fuzz/requirements.txt): `durably demo` on
# SQLite, then on PostgreSQL, each for a bounded time with every phase (examples, coverage,
# fuzzing, stateful) and every check but those fuzz/schemathesis.toml turns off with a reason.
# Any failure (a 5xx, a response the OpenAPI document does not describe, ...) fails the script.
# See docs/fuzzing.md.
#
# Environment:
#   FUZZ_MAX_TIME   seconds of testing per backend (default 100)
#   FUZZ_SEED       the seed (default 19005; the same seed replays the same requests)
#   FUZZ_BACKENDS   "sqlite postgres" (default), or one of them
#   FUZZ_POSTGRES_URL  the PostgreSQL database (default: DURABLY_TEST_POSTGRES_URL, else
#                   postgres://postgres@127.0.0.1:5432/durably_test); a fresh schema is used
#                   and dropped afterwards
#   CI=true         a missing Python, PyPI or PostgreSQL fails the script instead of skipping
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
VENV=$TARGET_DIR/fuzz-venv
MAX_TIME=${FUZZ_MAX_TIME:-100}
SEED=${FUZZ_SEED:-19005}
BACKENDS=${FUZZ_BACKENDS:-sqlite postgres}
POSTGRES_URL=${FUZZ_POSTGRES_URL:-${DURABLY_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/durably_test}}
REPORTS=$TARGET_DIR/fuzz-reports

# In CI a missing prerequisite fails; a developer without it gets a message and a skip.
unavailable() {
  if [ "${CI:-}" = "true" ]; then
    echo "fuzz: FAILED: $1" >&2
    exit 1
  fi
  echo "fuzz: SKIPPED: $1 (CI=true makes this an error)" >&2
  exit 0
}

command -v python3 >/dev/null 2>&1 || unavailable "python3 is not installed"
python3 -c 'import sys, venv, ensurepip; sys.exit(sys.version_info < (3, 10))' 2>/dev/null \
  || unavailable "python3 >= 3.10 with the venv module is needed (Debian: python3-venv)"

# The pinned Schemathesis, installed from PyPI once per requirements file.
stamp=$VENV/.requirements.sha256
wanted=$(sha256sum fuzz/requirements.txt | cut -d' ' -f1)
if [ ! -x "$VENV/bin/schemathesis" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
  echo "fuzz: installing fuzz/requirements.txt into $VENV"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || unavailable "cannot create a virtualenv in $VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check -r fuzz/requirements.txt \
    || unavailable "cannot install fuzz/requirements.txt from PyPI"
  echo "$wanted" >"$stamp"
fi
"$VENV/bin/schemathesis" --version

echo "fuzz: building the durably command"
cargo build -q -p durably-cli --bin durably
DURABLY=$TARGET_DIR/debug/durably

WORK=$(mktemp -d)
SERVER_PID=""
SCHEMA=""
cleanup() {
  if [ -n "$SERVER_PID" ] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    # a demo waits up to --shutdown-timeout for its runs; then it is killed
    for _ in $(seq 1 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
    wait "$SERVER_PID" 2>/dev/null || true
  fi
  SERVER_PID=""
  if [ -n "$SCHEMA" ] && command -v psql >/dev/null 2>&1; then
    psql -q "$POSTGRES_URL" -c "DROP SCHEMA IF EXISTS $SCHEMA CASCADE" >/dev/null 2>&1 || true
  fi
  SCHEMA=""
}
trap 'cleanup; rm -rf "$WORK"' EXIT
trap 'exit 130' INT TERM

# start_demo LOG ARGS...: starts `durably demo --port 0 ARGS` and sets API to its URL.
start_demo() {
  local log=$1
  shift
  "$DURABLY" demo --port 0 --shutdown-timeout 2 "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  API=""
  for _ in $(seq 1 100); do
    API=$(grep -o 'http://[^ ]*/api/durably' "$log" | head -n 1 || true)
    [ -n "$API" ] && break
    kill -0 "$SERVER_PID" 2>/dev/null || break
    sleep 0.1
  done
  if [ -z "$API" ]; then
    echo "fuzz: durably demo did not start:" >&2
    cat "$log" >&2
    exit 1
  fi
}

failed=""
for backend in $BACKENDS; do
  log=$WORK/demo-$backend.log
  case $backend in
    sqlite) start_demo "$log" --db "$WORK/demo.sqlite" ;;
    postgres)
      command -v pg_isready >/dev/null 2>&1 && pg_isready -q -d "$POSTGRES_URL" \
        || unavailable "no PostgreSQL server answers at $POSTGRES_URL"
      SCHEMA=durably_fuzz_$$_$(date +%s)
      start_demo "$log" --db "$POSTGRES_URL" --schema "$SCHEMA"
      ;;
    *) echo "fuzz: unknown backend $backend" >&2; exit 2 ;;
  esac
  echo "== fuzz: $backend: $API (seed $SEED, $MAX_TIME s)"
  started=$(date +%s)
  status=0
  # `--checks` is not given: fuzz/schemathesis.toml enables every check but the ones it names.
  SCHEMATHESIS_HOOKS=fuzz/hooks.py "$VENV/bin/schemathesis" --config-file fuzz/schemathesis.toml \
    run "$API/openapi.json" --url "$API" \
    --phases examples,coverage,fuzzing,stateful \
    --max-time "$MAX_TIME" --seed "$SEED" --generation-database none \
    --no-color --report junit,ndjson --report-dir "$REPORTS/$backend" \
    || status=$?
  echo "fuzz: $backend: exit status $status after $(($(date +%s) - started)) s"
  # The server must still be up and must not have logged a panic.
  if ! kill -0 "$SERVER_PID" 2>/dev/null; then
    echo "fuzz: $backend: the server died:" >&2
    status=1
  fi
  if grep -n "panicked" "$log" >&2; then
    echo "fuzz: $backend: the server panicked (above)" >&2
    status=1
  fi
  cleanup
  [ "$status" -eq 0 ] || failed="$failed $backend"
done

if [ -n "$failed" ]; then
  echo "fuzz: FAILED on:$failed (reports in $REPORTS)" >&2
  exit 1
fi
echo "fuzz: passed on: $BACKENDS"
