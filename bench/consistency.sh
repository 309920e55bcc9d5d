#!/usr/bin/env bash
# bench/consistency.sh: GET throughput and latency at each read consistency
# level, side by side, through one balancer in front of 3 replicas.
#
# Builds the release binaries, starts 3 replicas (`--fsync interval:1000`) and
# a balancer on free loopback ports, waits for a leader, then for each
# pipeline depth in PIPELINES and each level in LEVELS runs semikv-bench
# GET-only (`--ratio 0:1`, 50 clients, 16-byte values, every key written
# once before the timed run by --prefill) for DURATION s, ROUNDS times, the
# levels interleaved round by round so that drift in the shared machine hits
# them alike. Prints one row per run: level, pipeline, ops/s, p50 and p99 of
# the GETs in microseconds, and the stale reads semikv-bench counted (a get
# older than that client's own last write for the key: none here, as no run
# writes after its prefill). Everything it starts is killed on every exit
# path.
#
# Usage: bench/consistency.sh
# Knobs (environment): DURATION (seconds per run, default 10), ROUNDS (3),
# PIPELINES ("1 16"), LEVELS ("stale session linearizable bounded:500"),
# CLIENTS (50), VALUE_SIZE (16), FSYNC (interval:1000), KEEP=1 keeps the
# temp dir (logs, data, every run's JSON).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PIPELINES=${PIPELINES:-"1 16"}
LEVELS=${LEVELS:-"stale session linearizable bounded:500"}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-16}
FSYNC=${FSYNC:-interval:1000}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-consistency.XXXXXX")
LOG_PREFIX=consistency
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

build_release semikv-server semikv-lb semikv-bench semikv
log "starting 3 replicas (--fsync $FSYNC) and a balancer"
start_cluster "$WORK" "$FSYNC"

printf '%-14s %8s %10s %8s %8s %6s\n' level pipeline ops/s p50_us p99_us stale
for round in $(seq 1 "$ROUNDS"); do
    for pipeline in $PIPELINES; do
        for level in $LEVELS; do
            out="$WORK/run-$round-$pipeline-${level//:/_}.json"
            "$BIN/semikv-bench" --addr "$LB_ADDR" --clients "$CLIENTS" \
                --pipeline "$pipeline" --duration "$DURATION" --ratio 0:1 \
                --keyspace $((16 * pipeline)) --value-size "$VALUE_SIZE" --prefill \
                --consistency "$level" --json --no-progress >"$out"
            python3 - "$out" "$level" "$pipeline" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
get = r["latency_us"]["get"]
print(f"{sys.argv[2]:<14} {sys.argv[3]:>8} {r['throughput_ops']:>10.0f} "
      f"{get['p50']:>8} {get['p99']:>8} {r['stale_reads']:>6}"
      + ("" if r["failed"] == 0 else f"  FAILED {r['failed']} {r['errors']}"))
PY
        done
    done
done
