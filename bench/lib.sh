# shellcheck shell=bash
# bench/lib.sh: the shell machinery the bench scripts share; sourced, not run.
#
# Provides:
#   log MSG...            one line on stderr, prefixed with "$LOG_PREFIX: "
#   run_bg CMD...         runs CMD as a child that a signal can interrupt
#   stop_all              kills and reaps every process in PIDS
#   wait_for_file FILE S  waits up to S seconds for FILE to be non-empty
#   build_release BIN...  builds those release binaries of the workspace and
#                         sets BIN to the directory that holds them
#   leader_id             the id (1-3) of the replica the balancer calls
#                         leader, or 0 (after start_cluster)
#   start_cluster DIR FSYNC
#                         3 replicas (`--fsync FSYNC`) and a balancer
#                         (`--sync-replicas 1`) on free loopback ports, data,
#                         logs and ready files in DIR; returns once a write
#                         commits through the balancer. Sets ADDRS (replica
#                         1-3 addresses), REPLICA_PIDS, LB_PID, LB_ADDR and
#                         RESP_ADDR (the RESP door, when LB_ARGS has --resp)
#                         and HTTP_ADDR (the HTTP door, with --http).
#                         Optional arrays, unset by default: REPLICA_ARGS and
#                         LB_ARGS (more flags for each replica / the
#                         balancer), RUN_PREFIX (a command each process is
#                         started under, e.g. `prlimit --nofile=1024:1024`,
#                         which must exec it so that its pid is the
#                         process's), CLIENT_ARGS (flags for the readiness
#                         check's semikv-bench and for leader_id's semikv,
#                         e.g. `--tls-ca FILE` or `--user NAME`).
# and, once sourced, PIDS=() (every process started in the background goes
# in it) and traps that on every exit path (normal end, error, SIGINT,
# SIGTERM) stop everything in PIDS and remove WORK, unless KEEP=1 or the
# script failed.
#
# The caller sets before sourcing: `set -euo pipefail`, ROOT (the workspace),
# WORK (a fresh temp dir), LOG_PREFIX, and VALUE_SIZE (the readiness write's
# value size).
: "${ROOT:?}" "${WORK:?}" "${LOG_PREFIX:?}" "${VALUE_SIZE:?}"

PIDS=()

# The script's stderr, kept: cleanup may run while a benchmark's stderr is
# redirected into a log file, and what it says must still reach the user.
exec {LOG_FD}>&2
log() { echo "$LOG_PREFIX: $*" >&"$LOG_FD"; }

stop_all() {
    local pid
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]+"${PIDS[@]}"}"; do
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
}

# run_bg CMD...: runs CMD in the background and waits for it, so that a
# signal to this script interrupts the wait at once (bash defers traps while a
# foreground child runs, and ignores SIGINT if that child does not die of it).
run_bg() {
    "$@" &
    local pid=$! rc=0 p kept=()
    PIDS+=("$pid")
    wait "$pid" || rc=$?
    # Forget it once reaped: its pid may be reused by someone else's process.
    for p in "${PIDS[@]}"; do
        [[ $p == "$pid" ]] || kept+=("$p")
    done
    PIDS=("${kept[@]+"${kept[@]}"}")
    return "$rc"
}

cleanup() {
    local rc=$?
    trap - EXIT INT TERM
    stop_all
    if [[ "${KEEP:-0}" == 1 || $rc -ne 0 ]]; then
        log "logs and data kept in $WORK"
    else
        rm -rf "$WORK"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# wait_for_file FILE SECONDS
wait_for_file() {
    local deadline=$((SECONDS + $2))
    until [[ -s "$1" ]]; do
        ((SECONDS < deadline)) || { log "timed out waiting for $1"; return 1; }
        sleep 0.1
    done
}

# build_release BIN...: sets BIN.
build_release() {
    local bins=() name target
    for name in "$@"; do bins+=(--bin "$name"); done
    log "building release binaries"
    run_bg cargo build --manifest-path "$ROOT/Cargo.toml" --release --quiet "${bins[@]}"
    target=$(cargo metadata --manifest-path "$ROOT/Cargo.toml" --format-version 1 --no-deps |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')
    BIN="$target/release"
}

# start_cluster DIR FSYNC: see the header.
start_cluster() {
    local dir=$1 fsync=$2 id
    mkdir -p "$dir"
    ADDRS=()
    REPLICA_PIDS=()
    for id in 1 2 3; do
        "${RUN_PREFIX[@]+"${RUN_PREFIX[@]}"}" \
            "$BIN/semikv-server" "$id" --listen 127.0.0.1:0 --data-dir "$dir/data-$id" \
            --fsync "$fsync" --ready-file "$dir/replica-$id.addr" \
            "${REPLICA_ARGS[@]+"${REPLICA_ARGS[@]}"}" 2>"$dir/replica-$id.log" &
        PIDS+=($!)
        REPLICA_PIDS+=($!)
    done
    for id in 1 2 3; do
        wait_for_file "$dir/replica-$id.addr" 30
        # The first line; `http ADDR` follows with --http.
        ADDRS+=("$(head -n 1 "$dir/replica-$id.addr")")
    done
    "${RUN_PREFIX[@]+"${RUN_PREFIX[@]}"}" \
        "$BIN/semikv-lb" 127.0.0.1:0 "${ADDRS[@]}" --sync-replicas 1 \
        --ready-file "$dir/lb.addr" "${LB_ARGS[@]+"${LB_ARGS[@]}"}" 2>"$dir/lb.log" &
    PIDS+=($!)
    # shellcheck disable=SC2034 # for the caller (cpu.sh reads its CPU time)
    LB_PID=$!
    wait_for_file "$dir/lb.addr" 30
    # The first line is the semikv door; with `--resp`, a `resp ADDR` line
    # follows.
    LB_ADDR=$(head -n 1 "$dir/lb.addr")
    # shellcheck disable=SC2034 # for the caller (compare.sh MODE=resp)
    RESP_ADDR=$(sed -n 's/^resp //p' "$dir/lb.addr")
    # shellcheck disable=SC2034 # for the caller (http.sh)
    HTTP_ADDR=$(sed -n 's/^http //p' "$dir/lb.addr")
    # Ready once a leader is elected and a write commits through the balancer.
    local deadline=$((SECONDS + 30))
    until "$BIN/semikv-bench" --addr "$LB_ADDR" --clients 1 --requests 5 --ratio 1:0 \
        --value-size "$VALUE_SIZE" --timeout-ms 1000 --json \
        "${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"}" 2>/dev/null |
        python3 -c 'import json, sys; sys.exit(0 if json.load(sys.stdin)["failed"] == 0 else 1)' 2>/dev/null; do
        ((SECONDS < deadline)) || { log "no leader after 30 s (logs in $dir)"; return 1; }
        sleep 0.2
    done
}

# leader_id: prints the id (1-3) of the replica the balancer calls leader, or 0.
leader_id() {
    local addr i
    addr=$("$BIN/semikv" --addr "$LB_ADDR" --json "${CLIENT_ARGS[@]+"${CLIENT_ARGS[@]}"}" status |
        python3 -c 'import json, sys; print(json.load(sys.stdin).get("leader") or "")')
    for i in 0 1 2; do
        [[ ${ADDRS[$i]} == "$addr" ]] && { echo $((i + 1)); return; }
    done
    echo 0
}
