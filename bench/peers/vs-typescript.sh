#!/usr/bin/env bash
# Interleaved rounds of durably (Rust) against the TypeScript library it ports, @coji/durably
# 0.15.0 (durably-ts.mjs), on PostgreSQL: throughput-1step at each concurrency, and
# multi-worker (4 worker processes, concurrency 1 each); prints the medians and the ratios
# Rust / TypeScript (ratios.mjs).
#
#   bench/peers/vs-typescript.sh [--rounds R] [--first-round F] [--jobs 2000] [--concurrency 1,8] \
#     [--multi-worker yes|no] [--local-queue RUNS] [--db postgres://postgres@127.0.0.1:5432/peers_bench?sslmode=disable] \
#     [--durably target/release/durably] [--out results.jsonl]
#
# Every round runs, for each concurrency and then for multi-worker, the Rust and the TypeScript
# run one after the other, the Rust one first in odd rounds and second in even rounds. All JSON
# lines (plus `round` and `label`) go to --out (default: a file under /tmp); to add rounds to an
# earlier series, pass its file and the next round's number as --first-round. With
# --local-queue RUNS, every case also runs durably:batched, the Rust bench with a local queue
# of RUNS (each of multi-worker's processes keeps RUNS runs in progress).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds=2
first=1
jobs=2000
concurrency=1,8
multi=yes
local_queue=""
db='postgres://postgres@127.0.0.1:5432/peers_bench?sslmode=disable'
durably="${DURABLY:-$here/../../target/release/durably}"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2" ;;
    --first-round) first="$2" ;;
    --jobs) jobs="$2" ;;
    --concurrency) concurrency="$2" ;;
    --multi-worker) multi="$2" ;;
    --local-queue) local_queue="$2" ;;
    --db) db="$2" ;;
    --durably) durably="$2" ;;
    --out) out="$2" ;;
    *) echo "unknown option $1" >&2; exit 2 ;;
  esac
  shift 2
done
node="$here/node_modules/.bin/node"
[ -x "$node" ] || { echo "run 'npm ci' in $here first" >&2; exit 2; }
[ -x "$durably" ] || { echo "no durably binary at $durably (cargo build --release -p durably-cli, or --durably)" >&2; exit 2; }
out="${out:-$(mktemp /tmp/peers-vs-typescript.XXXXXX.jsonl)}"
echo "results: $out" >&2

run_one() { # system workload concurrency
  case "$1:$2" in
    durably:throughput-1step)
      "$durably" bench --backend postgres --db "$db" --workload throughput-1step \
        --concurrency "$3" --jobs "$jobs" ;;
    durably:multi-worker)
      "$durably" bench --backend postgres --db "$db" --workload multi-worker --jobs "$jobs" ;;
    durably:batched:throughput-1step)
      "$durably" bench --backend postgres --db "$db" --workload throughput-1step \
        --concurrency "$3" --jobs "$jobs" --local-queue "$local_queue" ;;
    durably:batched:multi-worker)
      "$durably" bench --backend postgres --db "$db" --workload multi-worker --jobs "$jobs" \
        --local-queue "$local_queue" ;;
    durably-ts:throughput-1step)
      "$node" "$here/durably-ts.mjs" --jobs "$jobs" --concurrency "$3" --db "$db" ;;
    durably-ts:multi-worker)
      "$node" "$here/durably-ts.mjs" --jobs "$jobs" --processes 4 --db "$db" ;;
  esac
}

# Appends the last line of a run's output, with its round and label, to $out.
record() { # round system
  "$node" -e '
    let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
      const line = JSON.parse(s.trim().split("\n").pop());
      line.round = Number(process.argv[1]); line.label = process.argv[2];
      console.log(JSON.stringify(line));
    });' "$1" "$2" >> "$out"
}

cases=()
for c in ${concurrency//,/ }; do cases+=("throughput-1step:$c"); done
[ "$multi" = yes ] && cases+=("multi-worker:1")
for round in $(seq "$first" $((first + rounds - 1))); do
  if [ $((round % 2)) -eq 1 ]; then systems=(durably durably-ts); else systems=(durably-ts durably); fi
  [ -n "$local_queue" ] && systems+=(durably:batched)
  for case in "${cases[@]}"; do
    workload="${case%%:*}"
    c="${case##*:}"
    for system in "${systems[@]}"; do
      echo "round $round: $system $workload, $jobs jobs, c=$c" >&2
      if line="$(run_one "$system" "$workload" "$c")"; then
        echo "$line" | record "$round" "$system"
      else
        echo "round $round: $system $workload c=$c failed" >&2
      fi
    done
  done
done
"$node" "$here/ratios.mjs" "$out"
