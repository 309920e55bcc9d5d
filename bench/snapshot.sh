#!/usr/bin/env bash
# bench/snapshot.sh: what a full snapshot transfer costs the leader and the
# follower in memory and time.
#
# Builds the release binaries (or uses BIN=DIR), starts 3 replicas
# (`--fsync interval:1000`) and a balancer, writes KEYS keys of VALUE_SIZE
# bytes through the balancer, then kills one follower, wipes its data
# directory and starts it again on the same address: with the leader's log
# compacted behind its snapshot, the follower can only rejoin by a full
# snapshot transfer. Prints, for the leader and the follower: resident memory
# before the transfer, the peak during it (VmHWM, reset just before through
# /proc/PID/clear_refs) and after it; and how long until the follower had
# applied everything. Everything it starts is killed on every exit path.
#
# Usage: bench/snapshot.sh
# Knobs (environment): KEYS (2000), VALUE_SIZE (131072: 250 MiB of values),
# BIN (a directory holding semikv-server, semikv-lb, semikv-bench and
# semikv: skips the build, e.g. to compare with an older build), KEEP=1
# keeps the temp dir (logs, data).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
KEYS=${KEYS:-2000}
VALUE_SIZE=${VALUE_SIZE:-131072}
WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-snapshot.XXXXXX")
LOG_PREFIX=snapshot
PRESET_BIN=${BIN:-}
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

if [[ -n $PRESET_BIN ]]; then
    BIN=$PRESET_BIN
else
    build_release semikv-server semikv-lb semikv-bench semikv
fi

log "starting 3 replicas and a balancer"
start_cluster "$WORK" interval:1000

# status_field ID FIELD: FIELD of replica ID in the balancer's status.
status_field() {
    "$BIN/semikv" --addr "$LB_ADDR" --json status |
        python3 -c "import json, sys; print(json.load(sys.stdin)['replicas'][$1 - 1]['$2'])"
}

# kib PID FIELD: FIELD (VmRSS, VmHWM) of PID in KiB.
kib() { awk -v f="$2:" '$1 == f { print $2 }' "/proc/$1/status"; }
mib() { echo $(($1 / 1024)); }

log "writing $KEYS keys of $VALUE_SIZE bytes"
"$BIN/semikv-bench" --addr "$LB_ADDR" --clients 4 --requests "$KEYS" --keyspace "$KEYS" \
    --ratio 1:0 --value-size "$VALUE_SIZE" --timeout-ms 10000 --json >"$WORK/load.json"

leader=$(leader_id)
((leader > 0)) || { log "no leader"; exit 1; }
follower=$((leader % 3 + 1))
leader_pid=${REPLICA_PIDS[$((leader - 1))]}
# The leader writes a snapshot every 64 MiB of log by default; wait for the
# one that covers the load (its log is then compacted behind it).
deadline=$((SECONDS + 60))
until [[ -n $(ls "$WORK/data-$leader/snapshot/" 2>/dev/null | grep snap-) ]]; do
    ((SECONDS < deadline)) || { log "the leader wrote no snapshot"; exit 1; }
    sleep 0.2
done
sleep 2
target=$(status_field "$leader" commit_index)
snapshot_bytes=$(du -b "$WORK/data-$leader/snapshot/"snap-* | awk '{ s += $1 } END { print s }')

log "restarting replica $follower with an empty data directory"
follower_pid=${REPLICA_PIDS[$((follower - 1))]}
kill -9 "$follower_pid"
wait "$follower_pid" 2>/dev/null || true
rm -rf "$WORK/data-$follower"
leader_before=$(kib "$leader_pid" VmRSS)
echo 5 >"/proc/$leader_pid/clear_refs"
start=$EPOCHREALTIME
"$BIN/semikv-server" "$follower" --listen "${ADDRS[$((follower - 1))]}" \
    --data-dir "$WORK/data-$follower" --fsync interval:1000 \
    --ready-file "$WORK/replica-$follower.again" 2>"$WORK/replica-$follower.again.log" &
PIDS+=($!)
follower_pid=$!
wait_for_file "$WORK/replica-$follower.again" 30
follower_before=$(kib "$follower_pid" VmRSS)
deadline=$((SECONDS + 300))
until (($(status_field "$follower" applied_index) >= target)); do
    ((SECONDS < deadline)) || { log "the follower did not catch up"; exit 1; }
    sleep 0.1
done
elapsed=$(python3 -c "print(f'{$EPOCHREALTIME - $start:.2f}')")
leader_peak=$(kib "$leader_pid" VmHWM)
follower_peak=$(kib "$follower_pid" VmHWM)
sleep 2
leader_after=$(kib "$leader_pid" VmRSS)
follower_after=$(kib "$follower_pid" VmRSS)

echo "snapshot of $KEYS keys x $VALUE_SIZE B: $(mib $((snapshot_bytes / 1024))) MiB on disk; follower caught up in ${elapsed} s"
printf '| process | before (MiB) | peak during (MiB) | after (MiB) |\n| --- | --- | --- | --- |\n'
printf '| leader (sending) | %s | %s | %s |\n' "$(mib "$leader_before")" "$(mib "$leader_peak")" "$(mib "$leader_after")"
printf '| follower (receiving) | %s | %s | %s |\n' "$(mib "$follower_before")" "$(mib "$follower_peak")" "$(mib "$follower_after")"
