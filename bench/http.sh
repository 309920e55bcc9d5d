#!/usr/bin/env bash
# bench/http.sh: what metrics cost, and what the HTTP door serves.
#
# 1. Scrape overhead (#20's target: at most 2%). GET-only and SET-only
#    semikv-bench runs at pipeline 16 (50 clients) through the semikv door,
#    in two modes interleaved round by round: "quiet" (metrics counted,
#    never scraped) and "scraped" (a Prometheus-style scrape of the
#    balancer's and every replica's /metrics each second, by one Python
#    process on keep-alive connections, as a Prometheus server would: a
#    curl per target per second costs the shared 2 cores more in fork and
#    exec than the scrape itself). Prints one row per run and the median of
#    each mode; then what one scrape costs each process (1,000 scrapes back
#    to back, timed).
# 2. The HTTP door under a keep-alive load tool (wrk, installed from the
#    distribution if missing): GET /v1/kv/KEY and PUT /v1/kv/KEY at 50
#    connections for DURATION s, beside semikv-bench through the semikv door
#    at pipeline 1 (one request in flight per connection, as HTTP/1.1 has).
#
# Usage: bench/http.sh
# Knobs (environment): DURATION (seconds per run, default 10), ROUNDS (3),
# CLIENTS (50), VALUE_SIZE (16), FSYNC (interval:1000), KEEP=1 keeps the
# temp dir.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
CLIENTS=${CLIENTS:-50}
VALUE_SIZE=${VALUE_SIZE:-16}
FSYNC=${FSYNC:-interval:1000}

WORK=$(mktemp -d "${TMPDIR:-/tmp}/semikv-http.XXXXXX")
LOG_PREFIX=http
# shellcheck source=SCRIPTDIR/lib.sh
source "$ROOT/bench/lib.sh"

if ! command -v wrk >/dev/null 2>&1; then
    log "installing wrk"
    apt-get install -y wrk >/dev/null
fi
command -v curl >/dev/null 2>&1 || apt-get install -y curl >/dev/null

build_release semikv-server semikv-lb semikv-bench semikv
REPLICA_ARGS=(--http 127.0.0.1:0)
LB_ARGS=(--http 127.0.0.1:0)
log "starting 3 replicas (--fsync $FSYNC) and a balancer, all with --http"
start_cluster "$WORK" "$FSYNC"
SCRAPE_URLS=("http://$HTTP_ADDR/metrics")
for id in 1 2 3; do
    SCRAPE_URLS+=("http://$(sed -n 's/^http //p' "$WORK/replica-$id.addr")/metrics")
done

# scraper [COUNT]: every second, every target, until killed; with COUNT,
# COUNT scrapes of each target back to back, printing the time per scrape.
cat >"$WORK/scrape.py" <<'PY'
import http.client, sys, time, urllib.parse
count = int(sys.argv[1]) if len(sys.argv) > 1 and sys.argv[1].isdigit() else 0
urls = [a for a in sys.argv[1:] if not a.isdigit()]
conns = {}
def scrape(url):
    u = urllib.parse.urlsplit(url)
    for _ in range(2):
        c = conns.get(url) or http.client.HTTPConnection(u.hostname, u.port, timeout=10)
        conns[url] = c
        try:
            c.request("GET", u.path)
            r = c.getresponse()
            body = r.read()
            return len(body)
        except Exception:
            c.close()
            conns.pop(url, None)
    return 0
if count:
    for url in urls:
        scrape(url)
        t = time.perf_counter()
        size = sum(scrape(url) for _ in range(count))
        per = (time.perf_counter() - t) / count
        print(f"scrape {url}: {per * 1e6:.0f} us each, {size // count} bytes")
else:
    while True:
        t = time.monotonic()
        for url in urls:
            scrape(url)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - t)))
PY
scraper() {
    exec python3 "$WORK/scrape.py" "${SCRAPE_URLS[@]}"
}

bench_run() { # MODE OP ROUND
    local mode=$1 op=$2 round=$3 ratio scrape_pid=""
    [[ $op == get ]] && ratio=0:1 || ratio=1:0
    local out="$WORK/$mode-$op-$round.json"
    if [[ $mode == scraped ]]; then
        scraper &
        scrape_pid=$!
        PIDS+=("$scrape_pid")
    fi
    "$BIN/semikv-bench" --addr "$LB_ADDR" --clients "$CLIENTS" --pipeline 16 \
        --duration "$DURATION" --ratio "$ratio" --keyspace 256 --value-size "$VALUE_SIZE" \
        --prefill --json --no-progress >"$out"
    if [[ -n $scrape_pid ]]; then
        kill "$scrape_pid" 2>/dev/null || true
        wait "$scrape_pid" 2>/dev/null || true
    fi
    python3 - "$out" "$mode" "$op" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
print(f"{sys.argv[2]:<8} {sys.argv[3]:<4} {r['throughput_ops']:>10.0f}"
      + ("" if r["failed"] == 0 else f"  FAILED {r['failed']} {r['errors']}"))
PY
}

log "1. scrape overhead: pipeline 16, $CLIENTS clients, $DURATION s per run"
printf '%-8s %-4s %10s\n' mode op ops/s | tee "$WORK/overhead.txt"
for round in $(seq 1 "$ROUNDS"); do
    for op in get set; do
        # Alternate which mode goes first, so drift favours neither.
        if ((round % 2)); then modes="quiet scraped"; else modes="scraped quiet"; fi
        for mode in $modes; do
            bench_run "$mode" "$op" "$round" | tee -a "$WORK/overhead.txt"
        done
    done
done
python3 - "$WORK/overhead.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]).read().splitlines()[1:] if l.strip()]
for op in ("get", "set"):
    q = statistics.median(float(r[2]) for r in rows if r[0] == "quiet" and r[1] == op)
    s = statistics.median(float(r[2]) for r in rows if r[0] == "scraped" and r[1] == op)
    print(f"median {op}: quiet {q:.0f} ops/s, scraped {s:.0f} ops/s, difference {100 * (s - q) / q:+.1f}%")
PY
python3 "$WORK/scrape.py" 1000 "${SCRAPE_URLS[@]}"

log "2. the HTTP door: wrk, $CLIENTS keep-alive connections, $DURATION s"
curl -sS -f -XPUT "http://$HTTP_ADDR/v1/kv/bench" --data-binary "$(head -c "$VALUE_SIZE" /dev/zero | tr '\0' x)" >/dev/null
cat >"$WORK/put.lua" <<LUA
wrk.method = "PUT"
wrk.body = string.rep("x", $VALUE_SIZE)
counter = 0
request = function()
    counter = counter + 1
    return wrk.format(nil, "/v1/kv/k" .. (counter % 256))
end
LUA
for round in $(seq 1 "$ROUNDS"); do
    wrk -t 2 -c "$CLIENTS" -d "${DURATION}s" --latency "http://$HTTP_ADDR/v1/kv/bench" \
        >"$WORK/wrk-get-$round.txt"
    wrk -t 2 -c "$CLIENTS" -d "${DURATION}s" --latency -s "$WORK/put.lua" "http://$HTTP_ADDR" \
        >"$WORK/wrk-put-$round.txt"
    for op in get put; do
        f="$WORK/wrk-$op-$round.txt"
        rps=$(awk '/Requests\/sec/ {print $2}' "$f")
        p50=$(awk '$1 == "50%" {print $2}' "$f")
        p99=$(awk '$1 == "99%" {print $2}' "$f")
        non2xx=$(awk '/Non-2xx/ {print $NF}' "$f")
        echo "http $op round $round: $rps req/s, p50 $p50, p99 $p99${non2xx:+, non-2xx $non2xx}"
    done
    for op in get set; do
        [[ $op == get ]] && ratio=0:1 || ratio=1:0
        "$BIN/semikv-bench" --addr "$LB_ADDR" --clients "$CLIENTS" --pipeline 1 \
            --duration "$DURATION" --ratio "$ratio" --keyspace 256 --value-size "$VALUE_SIZE" \
            --prefill --json --no-progress >"$WORK/semikv-$op-$round.json"
        python3 - "$WORK/semikv-$op-$round.json" "$op" "$round" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
lat = r["latency_us"][sys.argv[2]]
print(f"semikv {sys.argv[2]} round {sys.argv[3]}: {r['throughput_ops']:.0f} ops/s, "
      f"p50 {lat['p50']} us, p99 {lat['p99']} us")
PY
    done
done
