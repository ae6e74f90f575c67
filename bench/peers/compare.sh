#!/usr/bin/env bash
# Interleaved rounds of durably bench's throughput-1step against graphile-worker and pg-boss,
# each peer in its default and its batched mode (issue 27); prints a table of medians.
#
#   bench/peers/compare.sh [--rounds R] [--first-round F] [--jobs 2000,20000] [--concurrency 1,8] \
#     [--db postgres://postgres@127.0.0.1:5432/durably_bench?sslmode=disable] \
#     [--durably target/release/durably] [--out results.jsonl]
#
# Every round runs, for each jobs x concurrency, the five systems one after the other, starting
# with a different one each round. All JSON lines go to --out (default: a file under /tmp); to
# add rounds to an earlier series, pass its file and the next round's number as --first-round.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
rounds=2
first=1
jobs=2000,20000
concurrency=1,8
db='postgres://postgres@127.0.0.1:5432/durably_bench?sslmode=disable'
durably="${DURABLY:-$here/../../target/release/durably}"
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --rounds) rounds="$2" ;;
    --first-round) first="$2" ;;
    --jobs) jobs="$2" ;;
    --concurrency) concurrency="$2" ;;
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
out="${out:-$(mktemp /tmp/peers-compare.XXXXXX.jsonl)}"
echo "results: $out" >&2

# durably:batched is durably with a local queue of 512 runs (`--local-queue`), the counterpart of
# the peers' batched modes (graphile-worker's preset holds 500): `--concurrency` runs execute job
# code at once, 512 are in progress.
systems=(durably durably:batched graphile:default graphile:batched pgboss:default pgboss:batched)
run_one() { # system jobs concurrency
  case "$1" in
    durably)
      "$durably" bench --backend postgres --db "$db" --workload throughput-1step \
        --concurrency "$3" --jobs "$2" ;;
    durably:batched)
      "$durably" bench --backend postgres --db "$db" --workload throughput-1step \
        --concurrency "$3" --jobs "$2" --local-queue 512 ;;
    *)
      "$node" "$here/peer.mjs" --system "${1%%:*}" --mode "${1##*:}" --jobs "$2" \
        --concurrency "$3" --db "$db" ;;
  esac
}

for round in $(seq "$first" $((first + rounds - 1))); do
  for n in ${jobs//,/ }; do
    for c in ${concurrency//,/ }; do
      count=${#systems[@]}
      for i in $(seq 0 $((count - 1))); do
        system="${systems[$(((i + round - 1) % count))]}"
        echo "round $round: $system, $n jobs, c=$c" >&2
        if line="$(run_one "$system" "$n" "$c")"; then
          echo "$line" | "$node" -e '
            let s = ""; process.stdin.on("data", d => s += d).on("end", () => {
              const line = JSON.parse(s.trim().split("\n").pop());
              line.round = Number(process.argv[1]); line.label = process.argv[2];
              console.log(JSON.stringify(line));
            });' "$round" "$system" >> "$out"
        else
          echo "round $round: $system failed" >&2
        fi
      done
    done
  done
done
"$node" "$here/medians.mjs" "$out"
