#!/usr/bin/env bash
# bench/compare.sh: semikv and Redis side by side, on this machine, in one run.
#
# Builds the release binaries, starts a semikv cluster (3 replicas + balancer,
# semi-sync to one follower) once with `--fsync always` and once with
# `--fsync interval:1000`, and Redis (primary + 1 replica, AOF everysec), runs
# SET and GET with 50 clients at pipeline 1 and 16 with 16-byte values, and
# prints one table. Everything it starts is killed on every exit path.
#
# MODE=resp drives semikv through its Redis-protocol door with
# redis-benchmark, the same flags as Redis, next to the semikv door
# (semikv-bench) and Redis, with `--fsync interval:1000` only: what the RESP
# door costs, and semikv against Redis with one load generator.
#
# Knobs (environment): DURATION (seconds per semikv workload, default 5),
# REDIS_N1 / REDIS_N16 (redis-benchmark -n at pipeline 1 / 16, defaults
# 200000 / 1000000), CLIENTS (50), VALUE_SIZE (16), KEEP=1 keeps the temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-5}
REDIS_N1=${REDIS_N1:-200000}
REDIS_N16=${REDIS_N16:-1000000}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-16}
MODE=${MODE:-door}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-compare.XXXXXX")
LOG_PREFIX=compare
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

build_release semikv-server semikv-lb semikv-bench

if ! command -v redis-server >/dev/null || ! command -v redis-benchmark >/dev/null; then
    log "installing Redis (redis-server, redis-tools)"
    if [[ $(id -u) -ne 0 ]]; then
        log "redis-server is missing and this is not root: install redis-server and redis-tools"
        exit 1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y redis-server redis-tools >"$WORK/apt.log" 2>&1
fi

# semikv_ops ADDR PIPELINE RATIO: sets OPS to the ops/s of one semikv-bench
# run against the balancer at ADDR.
semikv_ops() {
    local addr=$1
    shift
    run_bg "$BIN/semikv-bench" --addr "$addr" --clients "$CLIENTS" --pipeline "$1" \
        --ratio "$2" --keyspace "$((16 * $1))" --value-size "$VALUE_SIZE" --prefill \
        --duration "$DURATION" --json >"$WORK/run.json" 2>>"$WORK/bench.log"
    cat "$WORK/run.json" >>"$WORK/bench.json"
    OPS=$(python3 -c '
import json, sys
r = json.load(open(sys.argv[1]))
if r["failed"] or r["wrong_values"]:
    print("semikv-bench: %d failed, %d wrong values: %s" % (r["failed"], r["wrong_values"], r["errors"]), file=sys.stderr)
print("%.0f" % r["ops_per_sec"])' "$WORK/run.json")
}

# Both clusters and Redis run for the whole measurement (idle ones cost
# only heartbeats), so that the three columns of one row are measured
# minutes apart at most and a change in the machine's load skews them less.
declare -A RESULT LB RESP
FSYNCS=(always interval:1000)
if [[ $MODE == resp ]]; then
    FSYNCS=(interval:1000)
    LB_ARGS=(--resp 127.0.0.1:0)
fi
for fsync in "${FSYNCS[@]}"; do
    log "starting semikv with --fsync $fsync"
    start_cluster "$WORK/semikv-${fsync//[:]/-}" "$fsync"
    LB[$fsync]=$LB_ADDR
    RESP[$fsync]=${RESP_ADDR:-}
done

log "starting Redis primary + replica, appendonly yes, appendfsync everysec"
RP=$(free_port)
RR=$(free_port)
for role in primary replica; do
    mkdir -p "$WORK/redis-$role"
done
redis-server --bind 127.0.0.1 --port "$RP" --dir "$WORK/redis-primary" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no \
    --logfile "$WORK/redis-primary/redis.log" &
PIDS+=($!)
redis-server --bind 127.0.0.1 --port "$RR" --dir "$WORK/redis-replica" --save "" \
    --appendonly yes --appendfsync everysec --daemonize no --replicaof 127.0.0.1 "$RP" \
    --logfile "$WORK/redis-replica/redis.log" &
PIDS+=($!)
deadline=$((SECONDS + 30))
until redis-cli -p "$RR" info replication 2>/dev/null | grep -q 'master_link_status:up'; do
    ((SECONDS < deadline)) || { log "Redis replica never connected"; exit 1; }
    sleep 0.2
done

# redis_ops TEST PIPELINE [PORT]: sets OPS to redis-benchmark's requests/s
# against Redis (or the server on PORT: semikv's RESP door).
redis_ops() {
    local n=$REDIS_N1 port=${3:-$RP}
    [[ $2 == 16 ]] && n=$REDIS_N16
    # -r: as many distinct keys as semikv-bench uses (16 per lane, a lane per
    # pipeline slot of each client); without it every request hits one key,
    # which stays in the CPU's cache.
    run_bg redis-benchmark -h 127.0.0.1 -p "$port" -t "${1,,}" -c "$CLIENTS" -P "$2" -d "$VALUE_SIZE" \
        -r "$((CLIENTS * 16 * $2))" -n "$n" --csv >"$WORK/redis.csv" 2>>"$WORK/redis-bench.log"
    cat "$WORK/redis.csv" >>"$WORK/redis-all.csv"
    OPS=$(python3 -c '
import csv, sys
for row in csv.reader(open(sys.argv[1])):
    if row and row[0] == sys.argv[2].upper():
        print("%.0f" % float(row[1]))' "$WORK/redis.csv" "$1")
}

for p in 1 16; do
    for op in SET GET; do
        ratio=1:0
        [[ $op == GET ]] && ratio=0:1
        for fsync in "${FSYNCS[@]}"; do
            semikv_ops "${LB[$fsync]}" "$p" "$ratio"
            RESULT[semikv-$fsync-$op-$p]=$OPS
            log "$op -P $p semikv --fsync $fsync: $OPS ops/s"
            if [[ $MODE == resp ]]; then
                redis_ops "$op" "$p" "${RESP[$fsync]##*:}"
                RESULT[resp-$op-$p]=$OPS
                log "$op -P $p semikv RESP door --fsync $fsync: $OPS ops/s"
            fi
        done
        redis_ops "$op" "$p"
        RESULT[redis-$op-$p]=$OPS
        log "$op -P $p Redis: $OPS ops/s"
    done
done
stop_all

# ---- table -------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "semikv: 3 replicas + balancer, semi-sync to 1 follower; Redis: primary + 1 replica, AOF everysec"
echo "$CLIENTS clients, $VALUE_SIZE-byte values, semikv $DURATION s per workload"
echo
python3 - "$MODE" "$(for k in "${!RESULT[@]}"; do echo "$k=${RESULT[$k]}"; done)" <<'EOF'
import sys
mode = sys.argv[1]
r = dict(line.split("=", 1) for line in sys.argv[2].splitlines() if "=" in line)
def num(key):
    try:
        return float(r[key])
    except (KeyError, ValueError):
        return None
def ratio(a, b):
    return "%.2f" % (a / b) if a is not None and b else "-"
def fmt(x):
    return "%.0f" % x if x is not None else "-"
rows = []
if mode == "resp":
    head = ["workload", "semikv door (semikv-bench)", "RESP door (redis-benchmark)",
            "redis everysec", "resp/door", "resp/redis"]
    for op in ("SET", "GET"):
        for p in ("1", "16"):
            i = num("semikv-interval:1000-%s-%s" % (op, p))
            s = num("resp-%s-%s" % (op, p))
            d = num("redis-%s-%s" % (op, p))
            rows.append(["%s -P %s" % (op, p), fmt(i), fmt(s), fmt(d), ratio(s, i), ratio(s, d)])
else:
    head = ["workload", "semikv always", "semikv interval:1000", "redis everysec",
            "always/redis", "interval/redis"]
    for op in ("SET", "GET"):
        for p in ("1", "16"):
            a = num("semikv-always-%s-%s" % (op, p))
            i = num("semikv-interval:1000-%s-%s" % (op, p))
            d = num("redis-%s-%s" % (op, p))
            rows.append(["%s -P %s" % (op, p), fmt(a), fmt(i), fmt(d), ratio(a, d), ratio(i, d)])
widths = [max(len(x[c]) for x in [head] + rows) for c in range(len(head))]
print("| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |")
print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
for row in rows:
    print("| " + " | ".join(c.rjust(w) if k else c.ljust(w) for k, (c, w) in enumerate(zip(row, widths))) + " |")
EOF
