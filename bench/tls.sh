#!/usr/bin/env bash
# bench/tls.sh: what TLS and logins cost. Runs the same load through the
# balancer of a 3-replica cluster in three set-ups and prints one table:
#
#   plain   no TLS, no users (the baseline)
#   users   a users file on the balancer: every connection logs in
#   tls     TLS on every hop (clients to the balancer, the balancer to each
#           replica, followers to their leader), mutual TLS inside the
#           cluster, one throwaway CA made with openssl
#
# For each: SET and GET with CLIENTS clients at pipeline 1 and 16, VALUE_SIZE
# byte values, DURATION s each (GETs after a --prefill), fsync interval:1000.
# Prints ops/s, p50 and p99 (microseconds) and the failures of each run, and
# each set-up's mean ops/s as a share of plain's. ROUNDS rounds, each with
# the set-ups in a rotated order: on a shared machine the cluster started
# second or third was measured up to 30% slower than the first for no
# reason of its own, so a fixed order would charge that to one set-up.
#
# Usage: bench/tls.sh
# Knobs (environment): DURATION (10), CLIENTS (50), VALUE_SIZE (16),
# ROUNDS (2), ONLY="plain tls" (a subset of the set-ups), KEEP=1 keeps the
# temp dir.
# Needs openssl and python3.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-16}
ONLY=${ONLY:-plain users tls}
ROUNDS=${ROUNDS:-2}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-tls.XXXXXX")
LOG_PREFIX=tls
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

build_release semikv-server semikv-lb semikv-bench semikv

# One CA and one certificate for 127.0.0.1, shared by every process.
log "making a CA and a certificate with openssl"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj "/CN=semikv bench CA" -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=semikv" \
    -keyout "$WORK/node.key" -out "$WORK/node.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\n' >"$WORK/san.ext"
openssl x509 -req -in "$WORK/node.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -days 2 -extfile "$WORK/san.ext" -out "$WORK/node.pem" 2>/dev/null
chmod 600 "$WORK/node.key" "$WORK/ca.key"
TLS=(--tls-cert "$WORK/node.pem" --tls-key "$WORK/node.key" --tls-ca "$WORK/ca.pem")

export SEMIKV_PASSWORD=bench-password
"$BIN/semikv" passwd bench write >"$WORK/users"
chmod 600 "$WORK/users"

# run SETUP RATIO PIPELINE: one semikv-bench run; prints a table row and
# records ops/s in OPS[SETUP/RATIO/PIPELINE].
declare -A OPS
run() {
    local setup=$1 ratio=$2 pipeline=$3 json
    json="$WORK/$setup-$ratio-$pipeline-$ROUND.json"
    run_bg "$BIN/semikv-bench" --addr "$LB_ADDR" --clients "$CLIENTS" --pipeline "$pipeline" \
        --ratio "$ratio" --keyspace "$((16 * pipeline))" --value-size "$VALUE_SIZE" --prefill \
        --duration "$DURATION" --json --no-progress "${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"}" \
        >"$json" 2>>"$WORK/bench.log"
    OPS[$setup/$ratio/$pipeline]+="$(python3 -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["ops_per_sec"]))' "$json") "
    python3 - "$json" "$setup" "$ratio" "$pipeline" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
op = "SET" if sys.argv[3] == "1:0" else "GET"
lat = r["latency_us"]["all"]
print("| %-5s | %s | %2s | %8.0f | %6d | %6d | %d |" % (
    sys.argv[2], op, sys.argv[4], r["ops_per_sec"], lat["p50"], lat["p99"], r["failed"]))
PY
}

echo "| setup | op | pipeline | ops/s | p50 us | p99 us | failed |"
echo "|---|---|---|---|---|---|---|"
read -r -a SETUPS <<<"$ONLY"
for ((ROUND = 0; ROUND < ROUNDS; ROUND++)); do
  for ((k = 0; k < ${#SETUPS[@]}; k++)); do
    setup=${SETUPS[$(((k + ROUND) % ${#SETUPS[@]}))]}
    REPLICA_ARGS=()
    LB_ARGS=()
    CLIENT_ARGS=()
    case $setup in
    plain) ;;
    users)
        LB_ARGS=(--users-file "$WORK/users")
        CLIENT_ARGS=(--user bench)
        ;;
    tls)
        REPLICA_ARGS=("${TLS[@]}")
        LB_ARGS=("${TLS[@]}")
        CLIENT_ARGS=(--tls-ca "$WORK/ca.pem")
        ;;
    *) log "unknown set-up $setup"; exit 2 ;;
    esac
    log "round $((ROUND + 1)): $setup: starting the cluster"
    start_cluster "$WORK/cluster-$setup-$ROUND" interval:1000
    for pipeline in 1 16; do
        run "$setup" 1:0 "$pipeline"
        run "$setup" 0:1 "$pipeline"
    done
    stop_all
  done
done

if [[ " $ONLY " == *" plain "* ]]; then
    echo
    echo "mean ops/s as a share of plain's:"
    for setup in $ONLY; do
        [[ $setup == plain ]] && continue
        line="  $setup:"
        for key in 1:0/1 0:1/1 1:0/16 0:1/16; do
            base=${OPS[plain/$key]}
            line+=$(python3 -c 'import sys
mean = lambda s: sum(map(float, s.split())) / len(s.split())
b, v = mean(sys.argv[1]), mean(sys.argv[2])
print(" %s %s %.0f%%" % ("SET" if sys.argv[3].startswith("1:0") else "GET", "p" + sys.argv[3].split("/")[1], 100 * v / b if b else 0))' "$base" "${OPS[$setup/$key]}" "$key")
        done
        echo "$line"
    done
fi
