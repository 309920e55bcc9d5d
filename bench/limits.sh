#!/usr/bin/env bash
# bench/limits.sh: what floods, greedy clients, absurd admin values and full
# disks cost a semikv cluster now (issue #16), against release binaries on
# loopback, in one table.
#
# How to run it (from any directory; about 5-6 minutes on 2 cores; mounting
# the tmpfs disks of the last two rows needs root, and they are skipped with
# a printed reason otherwise):
#
#   bench/limits.sh                       # every situation
#   ONLY="flood greedy" bench/limits.sh   # some of them (names below)
#   KEEP=1 bench/limits.sh                # keep logs, data, results.jsonl
#
# It builds the release binaries, checks its wire encoder against
# protocol/tests/golden/messages.hex, starts 3 replicas and a balancer on
# free 127.0.0.1 ports (each process under `prlimit --nofile=NOFILE`, so
# the default --max-connections is NOFILE - 128; replicas with small
# snapshots, so a flood meets snapshot and segment files being opened),
# runs a well-behaved client through the balancer throughout (one SET or
# GET of 100 bytes every 5 ms, 1 in flight, 5 s timeout), and then for each
# situation prints one markdown row: the limit that applies, the resident
# memory of the attacked process before / at its peak during (VmHWM, reset
# with /proc/PID/clear_refs when the attack starts, and a 50 ms sampler) /
# SETTLE s after the attack, and what the well-behaved client saw while it
# lasted. Situations (ONLY names): baseline, flood (the leader, then the
# balancer), slowloris (partial frames, the balancer then the leader),
# greedy (the balancer, then the leader directly), fence, promote (absurd
# values on the main cluster), fence-max and promote-max (the highest
# values a replica accepts, each on a cluster of its own, because they may
# leave it without a leader), diskfull (own cluster, one tmpfs per replica).
# Every process it starts is killed on every exit path (end, error, Ctrl-C,
# SIGTERM), the tmpfs disks are unmounted, and every wait is bounded.
#
# Knobs (environment): NOFILE (1024), FLOOD_N (10000), SLOW_CONNS (100),
# SLOW_SEND_MIB (4), GREEDY_GETS (1024), GREEDY_MIB (2), DISK_MIB (64),
# SETTLE (3), ONLY, KEEP=1.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NOFILE=${NOFILE:-1024}
FLOOD_N=${FLOOD_N:-10000}
SLOW_CONNS=${SLOW_CONNS:-100}
SLOW_SEND_MIB=${SLOW_SEND_MIB:-4}
GREEDY_GETS=${GREEDY_GETS:-1024}
GREEDY_MIB=${GREEDY_MIB:-2}
DISK_MIB=${DISK_MIB:-64}
SETTLE=${SETTLE:-3}
ONLY=${ONLY:-baseline flood slowloris greedy fence promote fence-max promote-max diskfull}
VALUE_SIZE=100

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-limits.XXXXXX")
LOG_PREFIX=limits
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

# tmpfs disks mounted by this run; unmounted before lib.sh's cleanup
# removes WORK (after every process is stopped: they hold files there).
MOUNTS=()
limits_cleanup() {
    local rc=$? mnt
    trap - EXIT
    stop_all
    for mnt in "${MOUNTS[@]+"${MOUNTS[@]}"}"; do
        umount "$mnt" 2>/dev/null || umount -l "$mnt" 2>/dev/null || log "could not unmount $mnt"
    done
    # lib.sh's cleanup reads the exit status from $?; errexit must not end
    # the trap on that non-zero status before it runs.
    set +e
    (exit "$rc")
    cleanup
}
trap limits_cleanup EXIT

wanted() { [[ " $ONLY " == *" $1 "* ]]; }

PY=(python3 "$ROOT/bench/limits.py")
RESULTS=$WORK/results.jsonl
: >"$RESULTS"
T_START=$SECONDS

build_release semikv-server semikv-lb semikv semikv-bench
run_bg "${PY[@]}" selftest "$ROOT/protocol/tests/golden/messages.hex"

# cluster NAME: starts 3 replicas + balancer in $WORK/NAME under the
# descriptor limit, and the well-behaved client; sets DIR, CLIENT_LOG and
# ARGS (what every situation of limits.py takes).
cluster() {
    DIR=$WORK/$1
    log "starting cluster '$1' (open-file limit $NOFILE per process)"
    RUN_PREFIX=(prlimit "--nofile=$NOFILE:$NOFILE")
    REPLICA_ARGS=(--snapshot-bytes 4194304)
    start_cluster "$DIR" always
    CLIENT_LOG=$DIR/client.log
    : >"$CLIENT_LOG"
    "${PY[@]}" client --addr "$LB_ADDR" --out "$CLIENT_LOG" &
    PIDS+=($!)
    # Every key written once before any situation: from then on a read
    # that answers nil is a lost or hidden write, not a lagging follower.
    local deadline=$((SECONDS + 20))
    until (($(wc -l <"$CLIENT_LOG") >= 400)); do
        ((SECONDS < deadline)) || { log "the well-behaved client made no progress (see $CLIENT_LOG)"; return 1; }
        sleep 0.2
    done
    ARGS=(--results "$RESULTS" --lb "$LB_ADDR" --client-log "$CLIENT_LOG" --settle "$SETTLE"
        --replicas "$(IFS=,; echo "${ADDRS[*]}")"
        --pids "lb=$LB_PID,r1=${REPLICA_PIDS[0]},r2=${REPLICA_PIDS[1]},r3=${REPLICA_PIDS[2]}")
}

MAXCONN=$((NOFILE - 128))
(( MAXCONN > 10000 )) && MAXCONN=10000

# ---- the main cluster ---------------------------------------------------------
if wanted baseline || wanted flood || wanted slowloris || wanted greedy || wanted fence || wanted promote; then
    cluster main
    if wanted baseline; then
        log "baseline: 5 s with no attack"
        run_bg "${PY[@]}" baseline "${ARGS[@]}" --seconds 5
    fi
    if wanted flood; then
        for target in leader lb; do
            log "flood: $FLOOD_N connections to the $target"
            run_bg "${PY[@]}" flood "${ARGS[@]}" --target "$target" --n "$FLOOD_N" --nofile "$NOFILE" --hold 8 \
                --writes 8 --log-dir "$DIR" \
                --limit "--max-connections default: open-file limit $NOFILE - 128 = $MAXCONN$(
                    [[ $target == leader ]] && echo ', of which the last 16 only for peers (a client landing there is refused after its Hello)'
                ); 128 descriptors kept for the WAL, snapshots, links; past the limit: a TooManyConnections frame and close"
        done
    fi
    if wanted slowloris; then
        for target in lb leader; do
            log "slowloris: $SLOW_CONNS partial 16 MiB frames to the $target (up to 200 s: the read budget admits 32 at a time)"
            run_bg "${PY[@]}" slowloris "${ARGS[@]}" --target "$target" --conns "$SLOW_CONNS" \
                --declared $((16 << 20)) --send $((SLOW_SEND_MIB << 20)) --wait 200 \
                --limit "frame <= 16 MiB (--max-frame on replicas); its buffer grows with the bytes received, reserving at most 64 KiB ahead; a frame must arrive whole within 30 s of its first byte (checked twice a period: closed within 45 s); frames over 64 KiB wait for the process-wide read budget (--max-buffered-input, default 512 MiB) before more of them is read"
        done
    fi
    if wanted greedy; then
        log "greedy: $GREEDY_GETS GETs of a $GREEDY_MIB MiB value, never read, to the balancer"
        run_bg "${PY[@]}" greedy "${ARGS[@]}" --target lb --gets "$GREEDY_GETS" \
            --value-size $((GREEDY_MIB << 20)) --hold 20 --log-dir "$DIR" \
            --limit "a window of 64 MiB of answers in flight per client (twice --max-client-output if lower); a client that reads nothing for the 10 s write timeout, or leaves more than --max-client-output (256 MiB) unread, is disconnected + log line"
        log "greedy: the same, to the leader directly (up to 40 s)"
        run_bg "${PY[@]}" greedy "${ARGS[@]}" --target leader --gets "$GREEDY_GETS" \
            --value-size $((GREEDY_MIB << 20)) --hold 35 --log-dir "$DIR" \
            --limit "replica: at most 1,024 requests in flight per connection (it stops reading past that); a response batch that cannot be written for 30 s closes the connection"
    fi
    if wanted fence; then
        log "fence: absurd epochs, as a balancer"
        run_bg "${PY[@]}" fence "${ARGS[@]}" --term absurd --watch 5 \
            --limit "epoch term <= 2^62 (MAX_TERM), or past it <= 2^32 above the replica's own, else Invalid and nothing persisted"
    fi
    if wanted promote; then
        log "promote: absurd settings, as a balancer"
        run_bg "${PY[@]}" promote "${ARGS[@]}" --mode absurd --watch 5 \
            --limit "Promote: sync_replicas <= 255 and sync timeout <= 3,600,000 ms, else Invalid (checked before the epoch is persisted)"
    fi
    stop_all
fi

# ---- the highest values a replica accepts, each on a cluster of its own -----------
if wanted fence-max; then
    cluster fence-max
    log "fence-max: a fence at term 2^62 (accepted) to the leader; watching 20 s"
    run_bg "${PY[@]}" fence "${ARGS[@]}" --term $((1 << 62)) --watch 5 --recover 15 \
        --limit "epoch term <= 2^62 accepted (then 2^32 at a time); the balancer passes over a replica pushed there alone and elects among the others"
    stop_all
fi
if wanted promote-max; then
    cluster promote-max
    log "promote-max: sync_replicas 200, timeout 1 h to the leader at its epoch; watching 15 s"
    run_bg "${PY[@]}" promote "${ARGS[@]}" --mode max --sync 200 --timeout-ms 3600000 --watch 15 \
        --limit "sync_replicas <= 255 and timeout <= 3,600,000 ms accepted; not checked against the followers that exist"
    stop_all
fi

# ---- full disks ---------------------------------------------------------------
if wanted diskfull; then
    skip=""
    if [[ $(id -u) -ne 0 ]]; then
        skip="not root: cannot mount tmpfs"
    else
        for id in 1 2 3; do
            mkdir -p "$WORK/diskfull/data-$id"
            if ! mount -t tmpfs -o "size=${DISK_MIB}m" tmpfs "$WORK/diskfull/data-$id" 2>"$WORK/mount.err"; then
                skip="mount -t tmpfs failed: $(cat "$WORK/mount.err")"
                break
            fi
            MOUNTS+=("$WORK/diskfull/data-$id")
        done
    fi
    if [[ -n $skip ]]; then
        log "SKIPPED diskfull: $skip"
        echo "{\"situation\": \"disk full\", \"scale\": \"-\", \"limit\": \"-\", \"target\": \"-\", \"rss\": \"-\", \"client\": \"-\", \"outcome\": \"SKIPPED: $skip\", \"problems\": []}" >>"$RESULTS"
    else
        cluster diskfull
        dirs="$WORK/diskfull/data-1,$WORK/diskfull/data-2,$WORK/diskfull/data-3"
        log "diskfull: the leader's disk full for 6 s"
        run_bg "${PY[@]}" diskfull "${ARGS[@]}" --which leader --data-dirs "$dirs" \
            --disk-size "${DISK_MIB} MiB" --hold 6 --recover 15 --cli "$BIN/semikv" \
            --limit "ENOSPC: writes refused with DiskFull, reads served, retried every 250 ms; a full leader is replaced like a stalled one"
        # Let the cluster settle on a leader with room (bounded).
        sleep 3
        log "diskfull: every replica's disk full for 6 s"
        run_bg "${PY[@]}" diskfull "${ARGS[@]}" --which all --data-dirs "$dirs" \
            --disk-size "${DISK_MIB} MiB" --hold 6 --recover 15 --cli "$BIN/semikv" \
            --limit "ENOSPC on every replica: the cluster stays up read-only (DiskFull), resumes within ~250 ms of space returning"
        stop_all
    fi
fi

# ---- table --------------------------------------------------------------------
echo
echo "machine: $(nproc) cores, $(free -g | awk '/^Mem:/ {print $2}') GiB RAM; load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "commit $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'); each process under an open-file limit of $NOFILE; run took $((SECONDS - T_START)) s"
echo "RSS: before the attack / peak during it / ${SETTLE} s after it ended"
echo
"${PY[@]}" table "$RESULTS"
if grep -q '"problems": \[[^]]' "$RESULTS"; then
    log "some situations showed a problem (PROBLEM in the table)"
fi
