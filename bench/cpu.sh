#!/usr/bin/env bash
# bench/cpu.sh: CPU time per request in every process of a semikv cluster.
#
# Builds the release binaries, starts 3 replicas (`--fsync interval:1000`) and
# a balancer (`--sync-replicas 1`) on free loopback ports, waits for a leader,
# then ROUNDS times runs SET and GET with 50 clients at pipeline 16 and 16-byte
# values for DURATION s each (keyspace 16 * PIPELINE keys per client, filled by
# semikv-bench --prefill before its timed run, as compare.sh does), and prints
# one row per run: ops/s, then microseconds of CPU (user + system) per
# completed request in semikv-bench, the balancer, the leader and each
# follower. Everything it starts is killed on every exit path.
#
# Method: utime + stime of the balancer and of each replica are read from
# /proc/PID/stat (clock ticks, `getconf CLK_TCK`) just before semikv-bench
# starts and just after it exits; semikv-bench's own CPU is the growth of this
# shell's cutime + cstime over the same window (it is the only child reaped in
# it: the snapshots use shell builtins, no forks). Each delta is divided by the
# requests semikv-bench completed ("ok" in its JSON). The window also holds the
# bench's connection set-up and untimed prefill (12,800 writes at the defaults,
# well under 1% of a run). "others" is the CPU the rest of the machine used in
# the window, in cores (/proc/stat busy minus ours): the machine is shared.
# The leader is read from the balancer (`semikv --json status`) before and
# after each run; a run during which it changed is marked "LEADER CHANGED".
#
# DOOR=resp drives the balancer's Redis-protocol door with redis-benchmark
# instead (the same clients, pipeline, value size and number of distinct
# keys; REQUESTS per run, default 200000, since redis-benchmark counts
# requests, not seconds); the "bench" column is then redis-benchmark's CPU.
# The semikv door's figures against these are what the RESP door costs.
#
# Usage: bench/cpu.sh
# Knobs (environment): DURATION (seconds per run, default 10), ROUNDS (3),
# PIPELINE (16), CLIENTS (50), VALUE_SIZE (16), FSYNC (interval:1000),
# DOOR (semikv or resp), REQUESTS (200000, DOOR=resp only), KEYSPACE (keys
# per client, default 16 * PIPELINE, filled before the timed run; a larger
# one with PREFILL=0 makes most SETs create a key), KEEP=1 keeps the temp
# dir (logs, data, every run's JSON).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-3}
PIPELINE=${PIPELINE:-16}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-16}
FSYNC=${FSYNC:-interval:1000}
DOOR=${DOOR:-semikv}
REQUESTS=${REQUESTS:-200000}
KEYSPACE=${KEYSPACE:-$((16 * PIPELINE))}
PREFILL=${PREFILL:-1}
PREFILL_FLAG=()
[[ $PREFILL == 1 ]] && PREFILL_FLAG=(--prefill)
HZ=$(getconf CLK_TCK)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-cpu.XXXXXX")
LOG_PREFIX=cpu
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

build_release semikv-server semikv-lb semikv-bench semikv

if [[ $DOOR == resp ]]; then
    command -v redis-benchmark >/dev/null || { log "DOOR=resp needs redis-benchmark (redis-tools)"; exit 1; }
    LB_ARGS=(--resp 127.0.0.1:0)
fi
log "starting 3 replicas (--fsync $FSYNC) and a balancer (--sync-replicas 1)"
start_cluster "$WORK" "$FSYNC"

# snap NAME: NAME=(balancer, replica 1, 2, 3 utime+stime; this shell's
# cutime+cstime; machine busy ticks; wall clock). Builtins only: no child is
# forked (and so none reaped) while taking it.
snap() {
    local -n out=$1
    local pid line f
    out=()
    for pid in "$LB_PID" "${REPLICA_PIDS[@]}"; do
        read -r line <"/proc/$pid/stat"
        read -r -a f <<<"${line##*) }" # fields from 3 (state) on: utime is [11]
        out+=($((f[11] + f[12])))
    done
    read -r line <"/proc/$$/stat"
    read -r -a f <<<"${line##*) }"
    out+=($((f[13] + f[14])))
    read -r -a f </proc/stat # cpu user nice system idle iowait irq softirq steal
    out+=($((f[1] + f[2] + f[3] + f[6] + f[7] + f[8])))
    out+=("$EPOCHREALTIME")
}

# ---- runs ----------------------------------------------------------------------
echo "machine: $(nproc) cores, CLK_TCK $HZ; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "semikv at $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'), $DOOR door: 3 replicas --fsync $FSYNC + balancer --sync-replicas 1;" \
    "$CLIENTS clients, pipeline $PIPELINE, $VALUE_SIZE-byte values, $DURATION s per run"
echo "CPU per request in us (user + system); others = CPU of the rest of the machine, in cores"
echo
FMT="%-5s %-8s %9s %8s %9s %11s %11s %11s %7s  %s\n"
printf "$FMT" round workload ops/s bench balancer leader follower follower others note
declare -a A B
# us TICKS: microseconds of CPU per request of the run ($ok requests).
us() { awk -v t="$1" -v hz="$HZ" -v n="$ok" 'BEGIN { printf "%.2f", t / hz / n * 1e6 }'; }
for round in $(seq 1 "$ROUNDS"); do
    for op in SET GET; do
        ratio=1:0
        [[ $op == GET ]] && ratio=0:1
        lead=$(leader_id)
        snap A
        if [[ $DOOR == resp ]]; then
            # -r: as many distinct keys as semikv-bench uses (16 per lane).
            run_bg redis-benchmark -h 127.0.0.1 -p "${RESP_ADDR##*:}" -t "${op,,}" -c "$CLIENTS" \
                -P "$PIPELINE" -d "$VALUE_SIZE" -r "$((CLIENTS * KEYSPACE))" -n "$REQUESTS" \
                --csv >"$WORK/run.csv" 2>>"$WORK/bench.log"
        else
            run_bg "$BIN/semikv-bench" --addr "$LB_ADDR" --clients "$CLIENTS" --pipeline "$PIPELINE" \
                --ratio "$ratio" --keyspace "$KEYSPACE" --value-size "$VALUE_SIZE" "${PREFILL_FLAG[@]}" \
                --duration "$DURATION" --json >"$WORK/run.json" 2>>"$WORK/bench.log"
        fi
        snap B
        lead_after=$(leader_id)
        if [[ $DOOR == resp ]]; then
            cat "$WORK/run.csv" >>"$WORK/bench.csv"
            # redis-benchmark stops at the first error; it prints no row then.
            read -r ok ops bad < <(python3 -c '
import csv, sys
rows = [r for r in csv.reader(open(sys.argv[1])) if r and r[0] == sys.argv[2]]
print(sys.argv[3], "%.0f" % float(rows[0][1]), 0) if rows else print(1, 0, 1)' \
                "$WORK/run.csv" "$op" "$REQUESTS")
        else
            cat "$WORK/run.json" >>"$WORK/bench.json"
            read -r ok ops bad < <(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
print(r["ok"], "%.0f" % r["ops_per_sec"], r["failed"] + r["wrong_values"])' "$WORK/run.json")
        fi
        note=""
        ((bad == 0)) || note="$bad failed or wrong (see $WORK/bench.json) "
        [[ $lead == "$lead_after" && $lead != 0 ]] || note+="LEADER CHANGED ($lead -> $lead_after)"
        # Columns: bench, balancer, leader, the two followers (ids in labels).
        cols=("$op" "$ops")
        cols+=("$(us $((B[4] - A[4])))" "$(us $((B[0] - A[0])))")
        cols+=("$(us $((B[lead] - A[lead])))[$lead]")
        for id in 1 2 3; do
            ((id == lead)) || cols+=("$(us $((B[id] - A[id])))[$id]")
        done
        ours=$((B[0] - A[0] + B[1] - A[1] + B[2] - A[2] + B[3] - A[3] + B[4] - A[4]))
        cols+=("$(awk -v t="$((B[5] - A[5] - ours))" -v hz="$HZ" -v a="${A[6]}" -v b="${B[6]}" \
            'BEGIN { printf "%.2f", t / hz / (b - a) }')")
        printf "$FMT" "$round" "${cols[@]}" "$note"
    done
done
echo
echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
