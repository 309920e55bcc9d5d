#!/usr/bin/env python3
"""bench/limits.py: the wire-level half of bench/limits.sh (issue #16).

Standard library only. Subcommands:

  selftest GOLDEN          encode every request/hello of the golden file and
                           decode every reply there; exit 1 on a mismatch
  client --addr A --out F  the well-behaved client: a paced SET/GET loop
                           through the balancer, one line per request in F
  flood | slowloris | greedy | fence | promote | diskfull | baseline
                           one situation each; appends one JSON line to
                           --results (see limits.sh for the arguments)
  table RESULTS            the markdown table of a results file

Only ever talks to the addresses it is given (127.0.0.1 in limits.sh).
Every wait is bounded.
"""

import argparse
import errno
import json
import os
import resource
import select
import selectors
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

# ---- postcard ---------------------------------------------------------------
# Every integer (u16..u128, enum variant indices, lengths) is an unsigned
# LEB128 varint; byte strings and strings are a varint length and the bytes;
# Option is 0, or 1 and the value; bool one byte; structs their fields in
# order. Message and its nested enums take the variant index of their
# declaration order (protocol/src/message/*.rs).

MAGIC = 0x534B5631
PROTOCOL_VERSION = 7
ROLE_CLIENT, ROLE_BALANCER, ROLE_REPLICA = 0, 1, 2

# Message variants
M_HELLO, M_WELCOME, M_REJECT, M_REQUEST, M_RESPONSE = 0, 1, 2, 3, 4
# Op variants
OP_GET, OP_SET, OP_DELETE, OP_PING, OP_STATUS, OP_PROMOTE, OP_FOLLOW, OP_FENCE = range(8)
# Reply variants
REPLY_NAMES = ["Value", "Written", "Pong", "Node", "Cluster", "Error", "NodeReport", "ClusterReport"]
# ErrorReply variants
ERROR_NAMES = ["NotLeader", "NotEnoughReplicas", "Unavailable", "Indeterminate", "Invalid",
               "StaleEpoch", "Storage", "EpochConflict", "Diverged", "DiskFull", "OutOfMemory"]
# WireError variants
WIRE_NAMES = ["FrameTooLarge", "ChecksumMismatch", "Undecodable", "BadMagic",
              "UnsupportedVersion", "HandshakeRequired", "WrongRole", "Unexpected",
              "TooManyConnections"]
ROLE_NAMES = ["Idle", "Leader", "Follower"]

U64_MAX = (1 << 64) - 1
MAX_TERM = 1 << 62  # protocol/src/ids.rs


def varint(n):
    if n < 0:
        raise ValueError("postcard varints here are unsigned")
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def pbytes(b):
    if isinstance(b, str):
        b = b.encode()
    return varint(len(b)) + b


def pbool(v):
    return b"\x01" if v else b"\x00"


def epoch_raw(term, coordinator):
    return (term << 64) | coordinator


def frame(payload):
    return struct.pack(">II", len(payload), zlib.crc32(payload) & 0xFFFFFFFF) + payload


def hello(role, node=None):
    p = varint(M_HELLO) + varint(MAGIC) + varint(PROTOCOL_VERSION) + varint(role)
    p += b"\x00" if node is None else b"\x01" + varint(node)
    return p


def request(rid, op):
    return varint(M_REQUEST) + varint(rid) + op


def op_get(key):
    return varint(OP_GET) + pbytes(key)


def op_set(key, value):
    return varint(OP_SET) + pbytes(key) + pbytes(value)


def op_delete(key):
    return varint(OP_DELETE) + pbytes(key)


def op_ping():
    return varint(OP_PING)


def op_status():
    return varint(OP_STATUS)


def op_promote(epoch, sync_replicas, sync_timeout_ms, async_fallback):
    return (varint(OP_PROMOTE) + varint(epoch) + varint(sync_replicas)
            + varint(sync_timeout_ms) + pbool(async_fallback))


def op_follow(epoch, leader, addr):
    return varint(OP_FOLLOW) + varint(epoch) + varint(leader) + pbytes(addr)


def op_fence(epoch):
    return varint(OP_FENCE) + varint(epoch)


class Reader:
    def __init__(self, data):
        self.d = data
        self.i = 0

    def varint(self):
        n = shift = 0
        while True:
            if self.i >= len(self.d):
                raise ValueError("truncated varint")
            b = self.d[self.i]
            self.i += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if not b & 0x80:
                return n

    def bytes(self):
        n = self.varint()
        if self.i + n > len(self.d):
            raise ValueError("truncated bytes")
        b = self.d[self.i:self.i + n]
        self.i += n
        return b

    def string(self):
        return self.bytes().decode("utf-8", "replace")

    def option(self, f):
        tag = self.varint()
        return f() if tag == 1 else None


def decode_error(r):
    v = r.varint()
    name = ERROR_NAMES[v] if v < len(ERROR_NAMES) else "Error%d" % v
    f = {}
    if name == "NotLeader":
        f["leader"] = r.option(r.string)
    elif name == "NotEnoughReplicas":
        f["acked"], f["required"] = r.varint(), r.varint()
    elif name == "Unavailable":
        f["retry_after_ms"], f["reason"] = r.varint(), r.string()
    elif name in ("Indeterminate", "Invalid", "Storage", "Diverged", "DiskFull"):
        f["reason"] = r.string()
    elif name == "StaleEpoch":
        f["got"], f["current"] = r.varint(), r.varint()
    elif name == "EpochConflict":
        f["epoch"], f["reason"] = r.varint(), r.string()
    elif name == "OutOfMemory":
        f["used"], f["limit"] = r.varint(), r.varint()
    return name, f


def decode(payload):
    """A message as a dict: {"msg": name, ...}; only what this script reads."""
    r = Reader(payload)
    m = r.varint()
    if m == M_WELCOME:
        return {"msg": "Welcome", "version": r.varint(), "node": r.option(r.varint)}
    if m == M_REJECT:
        v = r.varint()
        name = WIRE_NAMES[v] if v < len(WIRE_NAMES) else "Wire%d" % v
        out = {"msg": "Reject", "error": name}
        if name == "TooManyConnections":
            out["max"] = r.varint()
        elif name == "FrameTooLarge":
            out["len"], out["max"] = r.varint(), r.varint()
        return out
    if m == M_RESPONSE:
        rid = r.varint()
        v = r.varint()
        name = REPLY_NAMES[v] if v < len(REPLY_NAMES) else "Reply%d" % v
        out = {"msg": "Response", "id": rid, "reply": name}
        if name == "Value":
            out["value"] = r.option(r.bytes)
        elif name == "Written":
            out["index"] = r.varint()
        elif name in ("Node", "NodeReport"):
            # NodeStatus starts with id, role, epoch.
            out["node"] = r.varint()
            out["role"] = ROLE_NAMES[r.varint()]
            out["epoch"] = r.varint()
        elif name == "Error":
            out["error"], out["fields"] = decode_error(r)
        return out
    return {"msg": "Message%d" % m}


def describe(m):
    if m is None:
        return "closed"
    if m["msg"] == "Response" and m["reply"] == "Error":
        reason = m["fields"].get("reason")
        return m["error"] + (": " + reason if reason else "")
    if m["msg"] == "Reject":
        return "Reject " + m["error"]
    if m["msg"] == "Response":
        return m["reply"]
    return m["msg"]


# ---- selftest against the golden file ---------------------------------------

def selftest(path):
    golden = {}
    with open(path) as f:
        for line in f:
            if line.startswith("#") or not line.strip():
                continue
            name, ln, crc, payload = line.split()
            golden[name] = (int(ln, 16), int(crc, 16), bytes.fromhex(payload))
    binary = bytes([0x00, 0xFF, 0x80, 0x0A, 0x7F])
    encoded = {
        "hello_client": hello(ROLE_CLIENT),
        "hello_balancer": hello(ROLE_BALANCER),
        "hello_replica": hello(ROLE_REPLICA, 3),
        "request_get": request(1, op_get(b"k")),
        "request_set": request(U64_MAX, op_set(b"key", binary)),
        "request_delete": request(300, op_delete(binary)),
        "request_ping": request(0, op_ping()),
        "request_status": request(2, op_status()),
        "request_promote": request(3, op_promote(5, 1, 2000, True)),
        "request_follow": request(4, op_follow(5, 1, "127.0.0.1:8081")),
        "request_fence": request(5, op_fence(6)),
    }
    bad = 0
    for name, payload in encoded.items():
        ln, crc, want = golden[name]
        got = frame(payload)
        if got != struct.pack(">II", ln, crc) + want:
            print("selftest: %s encodes as %s, golden %08x %08x %s"
                  % (name, got.hex(), ln, crc, want.hex()), file=sys.stderr)
            bad += 1
    decoded = {
        "welcome_replica": {"msg": "Welcome", "version": PROTOCOL_VERSION, "node": 2},
        "welcome_balancer": {"msg": "Welcome", "version": PROTOCOL_VERSION, "node": None},
        "reject_too_many_conns": {"msg": "Reject", "error": "TooManyConnections", "max": 10000},
        "reject_frame_too_large": {"msg": "Reject", "error": "FrameTooLarge",
                                   "len": 0xFFFFFFFF, "max": 16 << 20},
        "response_value_some": {"msg": "Response", "id": 1, "reply": "Value", "value": binary},
        "response_value_empty": {"msg": "Response", "id": 1, "reply": "Value", "value": b""},
        "response_value_none": {"msg": "Response", "id": 1, "reply": "Value", "value": None},
        "response_written": {"msg": "Response", "id": U64_MAX, "reply": "Written", "index": 1 << 40},
        "response_pong": {"msg": "Response", "id": 0, "reply": "Pong"},
        "response_node_leader": {"msg": "Response", "id": 2, "reply": "Node", "node": 1,
                                 "role": "Leader", "epoch": 7},
        "response_node_report": {"msg": "Response", "id": 2, "reply": "NodeReport", "node": 1,
                                 "role": "Leader", "epoch": 7},
        "error_invalid": {"msg": "Response", "id": 9, "reply": "Error", "error": "Invalid",
                          "fields": {"reason": "empty key"}},
        "error_not_enough_replicas": {"msg": "Response", "id": 9, "reply": "Error",
                                      "error": "NotEnoughReplicas",
                                      "fields": {"acked": 0, "required": 2}},
        "error_unavailable": {"msg": "Response", "id": 9, "reply": "Error", "error": "Unavailable",
                              "fields": {"retry_after_ms": 250, "reason": "failover"}},
        "error_stale_epoch": {"msg": "Response", "id": 9, "reply": "Error", "error": "StaleEpoch",
                              "fields": {"got": 3, "current": 4}},
        "error_epoch_conflict": {"msg": "Response", "id": 9, "reply": "Error",
                                 "error": "EpochConflict",
                                 "fields": {"epoch": (1 << 128) - 1, "reason": "leads it"}},
        "error_disk_full": {"msg": "Response", "id": 9, "reply": "Error", "error": "DiskFull",
                            "fields": {"reason": "appending to wal/1.wal: No space left on device"}},
        "error_out_of_memory": {"msg": "Response", "id": 9, "reply": "Error",
                                "error": "OutOfMemory",
                                "fields": {"used": 1073741000, "limit": 1 << 30}},
    }
    for name, want in decoded.items():
        ln, crc, payload = golden[name]
        if len(payload) != ln or zlib.crc32(payload) & 0xFFFFFFFF != crc:
            print("selftest: %s: the golden line's own header does not match" % name,
                  file=sys.stderr)
            bad += 1
        got = decode(payload)
        if got != want:
            print("selftest: %s decodes as %r, expected %r" % (name, got, want), file=sys.stderr)
            bad += 1
    # Epochs as ballots: term << 64 | coordinator, a u128 varint.
    ln, crc, payload = golden["stream_from"]
    if not payload.startswith(varint(10) + varint(epoch_raw(7, 0x8F3A9C21D4E0B7F6))):
        print("selftest: a ballot epoch encodes differently from stream_from", file=sys.stderr)
        bad += 1
    if bad:
        return 1
    print("selftest: %d golden frames encoded and %d decoded exactly"
          % (len(encoded), len(decoded)), file=sys.stderr)
    return 0


# ---- connections ------------------------------------------------------------

def addr_tuple(addr):
    host, port = addr.rsplit(":", 1)
    return host, int(port)


def recv_exact(sock, n, deadline):
    buf = bytearray()
    while len(buf) < n:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("timed out")
        sock.settimeout(left)
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def recv_frame(sock, timeout):
    """The next message, None on EOF; TimeoutError past timeout."""
    deadline = time.monotonic() + timeout
    head = recv_exact(sock, 8, deadline)
    if head is None:
        return None
    ln, _crc = struct.unpack(">II", head)
    payload = recv_exact(sock, ln, deadline)
    if payload is None:
        return None
    return decode(payload)


class Conn:
    """One handshaken connection with one request in flight at a time."""

    def __init__(self, addr, role=ROLE_CLIENT, timeout=5.0):
        self.sock = socket.create_connection(addr_tuple(addr), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.next_id = 1
        self.sock.sendall(frame(hello(role)))
        w = recv_frame(self.sock, timeout)
        if w is None or w["msg"] != "Welcome":
            self.sock.close()
            raise ConnectionError("handshake: " + describe(w))

    def call(self, op, timeout=5.0):
        rid = self.next_id
        self.next_id += 1
        self.sock.sendall(frame(request(rid, op)))
        deadline = time.monotonic() + timeout
        while True:
            m = recv_frame(self.sock, max(0.001, deadline - time.monotonic()))
            if m is None:
                raise ConnectionError("closed")
            if m["msg"] == "Reject":
                raise ConnectionError(describe(m))
            if m["msg"] == "Response" and m["id"] == rid:
                return m

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def node_status(addr, timeout=3.0):
    c = Conn(addr, timeout=timeout)
    try:
        return c.call(op_status(), timeout)
    finally:
        c.close()


def leader_of(replicas, timeout=2.0):
    """(index, epoch) of the replica that reports leading the highest epoch."""
    best = None
    for i, a in enumerate(replicas):
        try:
            s = node_status(a, timeout)
        except (OSError, ConnectionError, TimeoutError, ValueError):
            continue
        if s.get("role") == "Leader" and (best is None or s["epoch"] > best[1]):
            best = (i, s["epoch"])
    return best


def epochs_of(replicas, timeout=2.0):
    out = []
    for a in replicas:
        try:
            s = node_status(a, timeout)
            out.append((s.get("role"), s.get("epoch")))
        except (OSError, ConnectionError, TimeoutError, ValueError) as e:
            out.append(("unreachable", str(e)))
    return out


def fmt_epoch(raw):
    if not isinstance(raw, int):
        return str(raw)
    return "%d.%x" % (raw >> 64, raw & U64_MAX)


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


# ---- the well-behaved client ------------------------------------------------

def run_client(args):
    """SET then GET of one of 100 keys, a request every --interval s, one
    request in flight; every request's start, latency and outcome goes to
    --out as it completes (monotonic clock, shared by every process)."""
    # Every line is written as its request completes: a signal may end the
    # process at once.
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    signal.signal(signal.SIGINT, lambda *_: os._exit(0))
    out = open(args.out, "a", buffering=1)
    pad = b"x" * max(0, args.value_size - 24)
    acked = {}  # key -> highest seq acknowledged
    conn = None
    seq = 0
    next_at = time.monotonic()
    while True:
        now = time.monotonic()
        if next_at > now:
            time.sleep(next_at - now)
        next_at = max(next_at + args.interval, time.monotonic() - args.interval)
        if conn is None:
            t0 = time.monotonic()
            try:
                conn = Conn(args.addr, timeout=args.timeout)
            except (OSError, ConnectionError, TimeoutError, ValueError) as e:
                out.write("%.6f %.6f connect %s\n" % (t0, time.monotonic() - t0,
                                                      "conn:" + str(e).replace(" ", "_")[:60]))
                time.sleep(0.1)
                continue
        seq += 1
        key = b"good-%d" % ((seq // 2) % 100)
        write = seq % 2 == 0
        op = op_set(key, b"%d:" % seq + pad) if write else op_get(key)
        t0 = time.monotonic()
        try:
            m = conn.call(op, args.timeout)
            lat = time.monotonic() - t0
            if m["reply"] == "Error":
                outcome = "err:" + m["error"]
            elif write:
                outcome = "ok"
                acked[key] = seq
            else:
                v = m.get("value")
                want = acked.get(key)
                if v is None:
                    outcome = "nil" if want is not None else "ok"
                else:
                    got = int(v.split(b":", 1)[0])
                    outcome = "ok" if want is None or got >= want else "stale"
        except TimeoutError:
            lat = time.monotonic() - t0
            outcome = "timeout"
            conn.close()
            conn = None
        except (OSError, ConnectionError, ValueError) as e:
            lat = time.monotonic() - t0
            outcome = "conn:" + str(e).replace(" ", "_")[:60]
            conn.close()
            conn = None
        out.write("%.6f %.6f %s %s\n" % (t0, lat, "set" if write else "get", outcome))
    return 0


def client_summary(path, t0, t1, settle=6.0):
    """What the well-behaved client saw for the requests it started in
    [t0, t1]: waits (bounded) until it has started one after t1, so that a
    request stalled across t1 is counted with its full latency."""
    deadline = time.monotonic() + settle
    while time.monotonic() < deadline:
        last = None
        try:
            with open(path) as f:
                for line in f:
                    last = line
        except FileNotFoundError:
            pass
        if last and float(last.split()[0]) > t1:
            break
        time.sleep(0.1)
    ops = []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) != 4:
                continue
            t, lat, op, outcome = float(parts[0]), float(parts[1]), parts[2], parts[3]
            if t0 <= t <= t1:
                ops.append((t, lat, op, outcome))
    s = {"requests": len(ops)}
    # "nil": an acknowledged key read as missing. Only a follower that has
    # not applied the key's first write yet may do that, so the client
    # writes every key once before the first situation (limits.sh waits);
    # later, a nil is a lost or hidden write.
    good = ("ok", "stale")
    lats = sorted(lat for _, lat, op, o in ops if o in good and op != "connect")
    if lats:
        s["p50_ms"] = lats[len(lats) // 2] * 1e3
        s["p99_ms"] = lats[min(len(lats) - 1, int(len(lats) * 0.99))] * 1e3
        s["max_ms"] = lats[-1] * 1e3
    errors = {}
    for _, _, op, o in ops:
        if o not in good:
            k = ("%s %s" % (op, o))
            errors[k] = errors.get(k, 0) + 1
    s["errors"] = errors
    s["stale"] = sum(1 for o in ops if o[3] == "stale")
    s["nil"] = sum(1 for o in ops if o[3] == "nil")
    s["ok"] = sum(1 for o in ops if o[3] in good)
    s["sets_ok"] = sum(1 for o in ops if o[3] == "ok" and o[2] == "set")
    s["gets_ok"] = sum(1 for o in ops if o[3] in good and o[2] == "get")
    # Longest time without a successful write inside the window.
    done = sorted(t + lat for t, lat, op, o in ops if op == "set" and o == "ok")
    edges = [t0] + done + [t1]
    s["write_gap_ms"] = max(b - a for a, b in zip(edges, edges[1:])) * 1e3
    return s


def fmt_client(s):
    if not s["requests"]:
        return "no requests"
    parts = []
    if "p50_ms" in s:
        parts.append("p50/p99/max %.2f/%.2f/%s ms" % (
            s["p50_ms"], s["p99_ms"], ("%.0f" if s["max_ms"] >= 10 else "%.1f") % s["max_ms"]))
    parts.append("%d/%d ok (%d SET, %d GET)" % (s["ok"], s["requests"], s["sets_ok"], s["gets_ok"]))
    if s["errors"]:
        parts.append("errors: " + ", ".join("%d %s" % (n, k) for k, n in sorted(s["errors"].items())))
    else:
        parts.append("no errors")
    if s["stale"]:
        parts.append("%d stale reads" % s["stale"])
    parts.append("longest write gap %.0f ms" % s["write_gap_ms"])
    return "; ".join(parts)


# ---- memory -----------------------------------------------------------------

def proc_status(pid):
    out = {}
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM"):
                    out[k] = int(v.split()[0]) * 1024
                elif k == "State":
                    out[k] = v.split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return None
    if out.get("State") == "Z":
        return None
    return out


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


class Measure:
    """RSS of every process: before the attack, its peak during (VmHWM after
    resetting it with clear_refs, and a 50 ms sampler as a cross-check) and
    a few seconds after; descriptors sampled too."""

    def __init__(self, pids, attacked):
        self.pids = pids  # name -> pid
        self.attacked = attacked  # list of names
        self.before = {}
        self.peak = {}
        self.sampled = {}
        self.fds = {}
        self.after = {}
        self.dead = set()
        self._stop = threading.Event()
        self.hwm_reset = True

    def start(self):
        for name, pid in self.pids.items():
            st = proc_status(pid)
            if st is None:
                self.dead.add(name)
                continue
            self.before[name] = st["VmRSS"]
            self.sampled[name] = st["VmRSS"]
            self.fds[name] = fd_count(pid) or 0
            try:
                with open("/proc/%d/clear_refs" % pid, "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS
            except OSError:
                self.hwm_reset = False
        self.t0 = time.monotonic()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self):
        n = 0
        while not self._stop.wait(0.05):
            n += 1
            for name, pid in self.pids.items():
                st = proc_status(pid)
                if st is None:
                    self.dead.add(name)
                    continue
                self.sampled[name] = max(self.sampled.get(name, 0), st["VmRSS"])
                if n % 4 == 0 and name in self.attacked:
                    self.fds[name] = max(self.fds.get(name, 0), fd_count(pid) or 0)

    def stop(self):
        """The attack is over: read the peaks."""
        self.t1 = time.monotonic()
        self._stop.set()
        self._thread.join(2)
        for name, pid in self.pids.items():
            st = proc_status(pid)
            if st is None:
                self.dead.add(name)
                continue
            self.peak[name] = max(st["VmHWM"] if self.hwm_reset else 0, self.sampled.get(name, 0))

    def settle(self, seconds):
        time.sleep(seconds)
        for name, pid in self.pids.items():
            st = proc_status(pid)
            if st is None:
                self.dead.add(name)
                continue
            self.after[name] = st["VmRSS"]

    def row(self, name):
        mib = lambda b: "%.0f" % (b / 1048576.0) if b is not None else "-"
        return "%s / %s / %s MiB" % (mib(self.before.get(name)), mib(self.peak.get(name)),
                                     mib(self.after.get(name)))

    def others(self):
        """The largest peak growth among the processes not attacked."""
        worst = None
        for name in self.pids:
            if name in self.attacked or name not in self.peak:
                continue
            grew = self.peak[name] - self.before.get(name, self.peak[name])
            if worst is None or grew > worst[1]:
                worst = (name, grew)
        return worst


# ---- situations -------------------------------------------------------------

def parse_pids(spec):
    out = {}
    for part in spec.split(","):
        name, pid = part.split("=")
        out[name] = int(pid)
    return out


def role_map(args):
    """name -> address for r1..r3, lb."""
    reps = args.replicas.split(",")
    m = {"r%d" % (i + 1): a for i, a in enumerate(reps)}
    m["lb"] = args.lb
    return m


def resolve_target(args, leader_idx):
    if args.target == "leader":
        return "r%d" % (leader_idx + 1)
    if args.target == "follower":
        return "r%d" % (((leader_idx + 1) % 3) + 1)
    return args.target


# A request of the well-behaved client slower than this is a stall worth
# flagging (its baseline p99 is about 10-20 ms on a loaded 2-core machine).
STALL_MS = 1000.0


def emit(args, situation, scale, limit, target, m, client, outcome, problems, extra=None,
         stall_ms=STALL_MS):
    if client and client.get("nil"):
        problems.append("%d reads of acknowledged keys answered nil" % client["nil"])
    if client and client.get("max_ms", 0) > stall_ms:
        problems.append("the well-behaved client waited %.0f ms for one request (longest write gap %.0f ms)"
                        % (client["max_ms"], client["write_gap_ms"]))
    if client and any(k.endswith(" timeout") for k in client["errors"]):
        problems.append("the well-behaved client timed out (5 s) on %d request(s)"
                        % sum(n for k, n in client["errors"].items() if k.endswith(" timeout")))
    if m and m.dead:
        problems.append("process(es) died: " + ", ".join(sorted(m.dead)))
    others = m.others() if m else None
    row = {
        "situation": situation,
        "scale": scale,
        "limit": limit,
        "target": target,
        "rss": m.row(target) if m else "-",
        "rss_raw": {k: [m.before.get(k), m.peak.get(k), m.after.get(k)] for k in m.pids} if m else {},
        "others": ("%s +%.0f MiB" % (others[0], others[1] / 1048576.0)) if others else "-",
        "fds_peak": m.fds.get(target) if m else None,
        "client": fmt_client(client) if client else "-",
        "client_raw": client,
        "outcome": outcome,
        "dead": sorted(m.dead) if m else [],
        "problems": problems,
        "hwm_reset": m.hwm_reset if m else None,
    }
    if extra:
        row.update(extra)
    with open(args.results, "a") as f:
        f.write(json.dumps(row, default=str) + "\n")
    print("limits: %s: %s | rss %s | %s | %s%s" % (
        situation, outcome, row["rss"], row["others"], row["client"],
        (" | PROBLEM: " + "; ".join(problems)) if problems else ""), file=sys.stderr)


def common(p):
    p.add_argument("--results", required=True)
    p.add_argument("--lb", required=True)
    p.add_argument("--replicas", required=True)
    p.add_argument("--pids", required=True, help="lb=PID,r1=PID,r2=PID,r3=PID")
    p.add_argument("--client-log", required=True)
    p.add_argument("--settle", type=float, default=3.0)
    p.add_argument("--target", default="leader")


def setup(args):
    addrs = role_map(args)
    pids = parse_pids(args.pids)
    replicas = args.replicas.split(",")
    lead = leader_of(replicas)
    if lead is None:
        raise SystemExit("limits.py: no leader before the situation")
    return addrs, pids, replicas, lead


def still_leader(replicas, before):
    now = leader_of(replicas)
    return now is not None and now[0] == before[0] and now[1] == before[1], now


def run_baseline(args):
    addrs, pids, replicas, lead = setup(args)
    m = Measure(pids, ["lb"])
    m.start()
    time.sleep(args.seconds)
    m.stop()
    m.settle(0)
    client = client_summary(args.client_log, m.t0, m.t1)
    emit(args, "none (baseline, %d s)" % args.seconds, "-", "-", "lb", m, client,
         "leader r%d" % (lead[0] + 1), [])
    return 0


def run_flood(args):
    """N connections that each say Hello as a client and then sit idle;
    1 MiB writes through the balancer meanwhile."""
    hard = raise_nofile()
    addrs, pids, replicas, lead = setup(args)
    target = resolve_target(args, lead[0])
    problems = []
    writer = Conn(args.lb)
    m = Measure(pids, [target])
    m.start()
    socks = []
    connect_errors = {}
    hello_frame = frame(hello(ROLE_CLIENT))
    for _ in range(args.n):
        try:
            s = socket.create_connection(addr_tuple(addrs[target]), timeout=3)
            s.sendall(hello_frame)
            socks.append(s)
        except OSError as e:
            k = errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
            connect_errors[k] = connect_errors.get(k, 0) + 1
            if e.errno == errno.EMFILE:
                break
    # First frame of each: Welcome (admitted) or TooManyConnections.
    sel = selectors.DefaultSelector()
    bufs = {}
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
        bufs[s] = b""
    verdict = {}
    deadline = time.monotonic() + args.verdict_wait
    while len(verdict) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(0.2):
            s = key.fileobj
            try:
                chunk = s.recv(256)
            except OSError:
                chunk = b""
            if not chunk:
                verdict[s] = "closed without a frame"
                sel.unregister(s)
                continue
            bufs[s] += chunk
            if len(bufs[s]) >= 8:
                ln = struct.unpack(">I", bufs[s][:4])[0]
                if len(bufs[s]) >= 8 + ln:
                    d = decode(bufs[s][8:8 + ln])
                    verdict[s] = ("admitted" if d["msg"] == "Welcome" else describe(d)
                                  + (" (max %d)" % d["max"] if "max" in d else ""))
                    sel.unregister(s)
    counts = {}
    for s in socks:
        v = verdict.get(s, "no answer in %.0f s" % args.verdict_wait)
        counts[v] = counts.get(v, 0) + 1
    for s in socks:
        if verdict.get(s) != "admitted":
            try:
                sel.unregister(s)
            except (KeyError, ValueError):
                pass
            s.close()
    held = [s for s in socks if verdict.get(s) == "admitted"]
    # While the admitted ones are held: 1 MiB writes through the balancer,
    # and a new client at the target (refused while full).
    big = b"B" * (1 << 20)
    written = []
    t_hold = time.monotonic()
    for i in range(args.writes):
        t = time.monotonic()
        try:
            r = writer.call(op_set(b"flood-big-%d" % i, big), 10)
            written.append(describe(r))
        except (OSError, ConnectionError, TimeoutError) as e:
            written.append("failed: %s" % e)
            writer.close()
            try:
                writer = Conn(args.lb)
            except (OSError, ConnectionError, TimeoutError) as e2:
                written.append("reconnect failed: %s" % e2)
                break
    try:
        probe = Conn(addrs[target], timeout=3)
        new_client = "admitted"
        probe.close()
    except (OSError, ConnectionError, TimeoutError) as e:
        new_client = str(e)
    rest = args.hold - (time.monotonic() - t_hold)
    if rest > 0:
        time.sleep(rest)
    # Did the target survive? Any descriptor errors in its log?
    for s in held:
        s.close()
    sel.close()
    m.stop()
    # A new client gets in once the flood is gone (bounded wait).
    after_client = "never"
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            c = Conn(addrs[target], timeout=2)
            c.call(op_ping(), 2)
            c.close()
            after_client = "%.1f s after it ended" % (time.monotonic() - m.t1)
            break
        except (OSError, ConnectionError, TimeoutError):
            time.sleep(0.2)
    m.settle(args.settle)
    same, now = still_leader(replicas, lead)
    client = client_summary(args.client_log, m.t0, m.t1)
    oks = sum(1 for w in written if w == "Written")
    outcome = ("%d admitted, %s; %s peaked at %s open descriptors (limit %d); a new client "
               "during the flood: %s, after it: admitted %s; %d/%d 1 MiB writes acknowledged "
               "during the flood; leader %s; no 'Too many open files' in %s's log"
               % (counts.get("admitted", 0),
                  ", ".join("%d %s" % (n, k) for k, n in sorted(counts.items()) if k != "admitted"),
                  target, m.fds.get(target), args.nofile,
                  "refused (%s)" % new_client.replace("handshake: ", "") if new_client != "admitted"
                  else "admitted", after_client, oks, len(written),
                  "unchanged" if same else "CHANGED to %r" % (now,), target))
    if connect_errors:
        outcome += "; connect errors: " + ", ".join("%d %s" % (n, k) for k, n in connect_errors.items())
    if oks < len(written):
        problems.append("1 MiB writes during the flood: %s" % written)
    log = open(args.log_dir + "/" + {"lb": "lb", "r1": "replica-1", "r2": "replica-2",
                                      "r3": "replica-3"}[target] + ".log").read()
    emfile = log.count("Too many open files")
    if emfile:
        outcome = outcome.replace("; no 'Too many open files' in %s's log" % target, "")
        problems.append("%d 'Too many open files' lines in %s's log" % (emfile, target))
    if after_client == "never":
        problems.append("no new client admitted within 15 s of the flood's end")
    writer.close()
    scale = "%d idle connections (each said Hello), held %.0f s; %d x 1 MiB writes" % (
        args.n, args.hold, args.writes)
    emit(args, "connection flood on %s" % ("the leader (%s)" % target if target != "lb" else "the balancer"),
         scale, args.limit, target, m, client, outcome, problems,
         {"fds_note": "peak descriptors of %s: %s (flooder limit %d)" % (target, m.fds.get(target), hard)})
    return 0


def run_slowloris(args):
    """Connections that each say Hello, then a header announcing a large
    frame and only part of it, and stall."""
    raise_nofile()
    addrs, pids, replicas, lead = setup(args)
    target = resolve_target(args, lead[0])
    problems = []
    m = Measure(pids, [target])
    m.start()
    socks = []
    started = {}
    chunk = b"\0" * (1 << 20)
    head = struct.pack(">II", args.declared, 0)
    for _ in range(args.conns):
        try:
            c = Conn(addrs[target], timeout=5)
        except (OSError, ConnectionError, TimeoutError) as e:
            problems.append("connect: %s" % e)
            continue
        s = c.sock
        s.settimeout(10)
        started[s] = time.monotonic()
        try:
            s.sendall(head)
            left = args.send
            while left > 0:
                n = min(left, len(chunk))
                s.sendall(chunk[:n])
                left -= n
        except OSError as e:
            started[s] = (started[s], "send: %s" % e)
        socks.append(s)
    # Now wait for the target to close each one (bounded).
    closed = {}
    sel = selectors.DefaultSelector()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + args.wait
    frames = {}
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(0.5):
            s = key.fileobj
            try:
                data = s.recv(65536)
            except OSError:
                data = b""
            if data:
                frames[s] = frames.get(s, b"") + data
                continue
            t0 = started[s] if not isinstance(started[s], tuple) else started[s][0]
            closed[s] = time.monotonic() - t0
            sel.unregister(s)
    m.stop()
    for s in socks:
        s.close()
    sel.close()
    m.settle(args.settle)
    same, now = still_leader(replicas, lead)
    client = client_summary(args.client_log, m.t0, m.t1)
    told = {}
    for s, data in frames.items():
        if len(data) >= 8:
            ln = struct.unpack(">I", data[:4])[0]
            if len(data) >= 8 + ln:
                k = describe(decode(data[8:8 + ln]))
                told[k] = told.get(k, 0) + 1
    times = sorted(closed.values())
    outcome = "%d/%d closed by %s" % (len(closed), len(socks), target)
    if times:
        outcome += " %.1f-%.1f s after their first byte" % (times[0], times[-1])
    if told:
        outcome += " (told: %s)" % ", ".join("%d %s" % (n, k) for k, n in told.items())
    sent_errors = [v[1] for v in started.values() if isinstance(v, tuple)]
    if sent_errors:
        outcome += "; %d sends cut short (%s)" % (len(sent_errors), sent_errors[0])
    outcome += "; leader %s" % ("unchanged" if same else "CHANGED to %r" % (now,))
    if len(closed) < len(socks):
        problems.append("%d connections still open %.0f s after the stall" % (len(socks) - len(closed), args.wait))
    # The read budget admits this many such frames at once; the others are
    # not read (their time not started) until a round before them closes.
    per_round = max(1, args.budget // max(1, args.declared - (64 << 10)))
    rounds = -(-len(socks) // per_round)
    bound = args.documented * rounds
    if times and times[-1] > bound + 1:
        late = sum(1 for t in times if t > bound + 1)
        problems.append("%d of %d closed later than %.0f s (%d round(s) of %d frames under the read budget, %.0f s each; up to %.1f s after their first byte)"
                        % (late, len(times), bound, rounds, per_round, args.documented, times[-1]))
    elif rounds > 1:
        outcome += "; in %d rounds of %d frames under the read budget" % (rounds, per_round)
    scale = "%d connections x (Hello + header announcing %d MiB + %d MiB sent, then stall)" % (
        args.conns, args.declared >> 20, args.send >> 20)
    emit(args, "partial frames on %s" % ("the leader (%s)" % target if target != "lb" else "the balancer"),
         scale, args.limit, target, m, client, outcome, problems)
    return 0


def run_greedy(args):
    """One client pipelines GETs of a big value and never reads."""
    addrs, pids, replicas, lead = setup(args)
    target = resolve_target(args, lead[0])
    problems = []
    value = b"G" * args.value_size
    setter = Conn(args.lb)
    r = setter.call(op_set(b"greedy-big", value), 30)
    if r["reply"] != "Written":
        raise SystemExit("limits.py: could not write the big value: %s" % describe(r))
    # Every replica holds it before the attack (reads round-robin).
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        vals = []
        for a in replicas:
            try:
                c = Conn(a)
                vals.append(c.call(op_get(b"greedy-big"), 10).get("value"))
                c.close()
            except (OSError, ConnectionError, TimeoutError):
                vals.append(None)
        if all(v is not None and len(v) == len(value) for v in vals):
            break
        time.sleep(0.2)
    setter.close()
    log_path = args.log_dir + "/" + {"lb": "lb", "r1": "replica-1", "r2": "replica-2",
                                     "r3": "replica-3"}[target] + ".log"
    # The balancer logs either: past the output limit, or (its window
    # keeping the client under it) nothing read for the write timeout.
    cutoff_lines = ("past the output limit", "read none of its answers for the write timeout")

    def cutoffs():
        text = open(log_path).read()
        return sum(text.count(line) for line in cutoff_lines)

    logged_before = cutoffs()
    m = Measure(pids, [target])
    pinger = Pinger(args.lb)
    m.start()
    g = Conn(addrs[target])
    g.sock.settimeout(5)
    batch = b"".join(frame(request(i + 1, op_get(b"greedy-big"))) for i in range(args.gets))
    send_note = ""
    try:
        g.sock.sendall(batch)
    except OSError as e:
        send_note = "; its sends failed: %s" % e
    t_sent = time.monotonic()
    # Wait for the disconnect or the hold to pass: the balancer logs it; a
    # close with our requests unread shows as a reset (POLLERR/POLLHUP),
    # one with only answers queued does not (its FIN waits behind them).
    logged_at = closed_at = None
    poller = select.poll()
    poller.register(g.sock, select.POLLERR | select.POLLHUP | select.POLLRDHUP)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline and logged_at is None:
        if cutoffs() > logged_before:
            logged_at = time.monotonic() - t_sent
        if closed_at is None and poller.poll(100):
            closed_at = time.monotonic() - t_sent
        elif closed_at is not None:
            # The log line follows the close: give it a moment.
            if time.monotonic() - t_sent > closed_at + 3:
                break
            time.sleep(0.1)
    # The answers already on their way from the replicas still arrive and
    # are dropped: the attack's cost includes them, so measure on a while.
    time.sleep(min(args.after, max(0.0, deadline - time.monotonic())))
    m.stop()
    pinged = pinger.stop()
    # Now read what it was sent, to the end.
    answered = 0
    got_bytes = 0
    end = "still open after 10 s of reading"
    while True:
        try:
            msg = recv_frame(g.sock, 10)
        except TimeoutError:
            break
        except OSError as e:
            end = "reset (%s)" % e
            break
        if msg is None:
            end = "closed"
            break
        if msg["msg"] == "Response":
            answered += 1
            got_bytes += len(msg.get("value") or b"")
    g.close()
    m.settle(args.settle)
    same, now = still_leader(replicas, lead)
    client = client_summary(args.client_log, m.t0, m.t1)
    if logged_at is not None:
        how = "disconnected %.1f s after its GETs were sent (logged)" % logged_at
    elif closed_at is not None:
        how = "its connection reset %.1f s after its GETs were sent" % closed_at
    else:
        how = "not disconnected within %.0f s" % args.hold
    outcome = ("%s; %d of %d answers (%d MiB) reached it when it read, then %s%s; %s; leader %s"
               % (how,
                  answered, args.gets, got_bytes >> 20, end, send_note, pinged,
                  "unchanged" if same else "CHANGED to %r" % (now,)))
    if target == "lb" and logged_at is None:
        problems.append("the balancer did not disconnect the greedy client within %.0f s" % args.hold)
    scale = "%d pipelined GETs of a %d MiB value (%d MiB of answers), never read" % (
        args.gets, args.value_size >> 20, (args.gets * args.value_size) >> 20)
    emit(args, "greedy reader on %s" % ("the leader (%s)" % target if target != "lb" else "the balancer"),
         scale, args.limit, target, m, client, outcome, problems)
    return 0


class Pinger:
    """Pings the balancer (answered by the balancer itself, no replica
    involved) every 10 ms from a thread of its own: tells a busy balancer
    from a request queued behind others on a replica link."""

    def __init__(self, addr):
        self.conn = Conn(addr)
        self.lats = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.01):
            t = time.monotonic()
            try:
                self.conn.call(op_ping(), 5)
                self.lats.append(time.monotonic() - t)
            except (OSError, ConnectionError, TimeoutError):
                self.errors += 1
                return

    def stop(self):
        self._stop.set()
        self._thread.join(6)
        self.conn.close()
        if not self.lats:
            return "balancer Ping: no answers"
        lats = sorted(self.lats)
        return "balancer's own Ping (no replica involved) p50/max %.2f/%.0f ms%s" % (
            lats[len(lats) // 2] * 1e3, lats[-1] * 1e3,
            ", %d failed" % self.errors if self.errors else "")


def short_answers(answers):
    """'what: Error' for each answer, and each distinct reason once."""
    out, reasons = [], []
    for what, r in answers:
        if r.get("msg") == "Response" and r.get("reply") == "Error":
            out.append("%s: %s" % (what, r["error"]))
            reason = r["fields"].get("reason")
            if reason and reason not in reasons:
                reasons.append(reason)
        elif r.get("msg") == "Response":
            out.append("%s: accepted (%s, role %s)" % (what, r["reply"], r.get("role", "?")))
        else:
            out.append("%s: %s" % (what, describe(r) if "msg" in r and r["msg"] in
                                   ("Welcome", "Reject") else r.get("msg")))
    if reasons:
        out.append("reasons given: " + " / ".join('"%s"' % x for x in reasons))
    return out


def admin_call(addr, op, timeout=5):
    c = Conn(addr, role=ROLE_BALANCER, timeout=timeout)
    try:
        return c.call(op, timeout)
    finally:
        c.close()


def watch_leader(replicas, lead, seconds):
    """Whether the same replica leads the same epoch throughout."""
    changes = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        now = leader_of(replicas)
        if now is None or now[0] != lead[0] or now[1] != lead[1]:
            changes.append(now)
        time.sleep(0.5)
    return changes


def wait_leader(replicas, seconds, not_epoch=None):
    """The first leader seen within `seconds` (and at another epoch than
    not_epoch), with how long it took; None if none."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < seconds:
        now = leader_of(replicas)
        if now is not None and now[1] != not_epoch:
            return now, time.monotonic() - t0
        time.sleep(0.2)
    return None, seconds


def run_fence(args):
    addrs, pids, replicas, lead = setup(args)
    problems = []
    leader = "r%d" % (lead[0] + 1)
    follower = "r%d" % (((lead[0] + 1) % 3) + 1)
    m = Measure(pids, [leader])
    m.start()
    answers = []
    coord = lead[1] & U64_MAX
    if args.term == "absurd":
        probes = [(leader, U64_MAX), (leader, MAX_TERM + 1), (follower, U64_MAX)]
    else:
        probes = [(leader, int(args.term))]
    for who, term in probes:
        try:
            r = admin_call(addrs[who], op_fence(epoch_raw(term, coord)))
            what = "%s at term %s" % (
                "leader" if who == leader else "follower",
                "u64::MAX" if term == U64_MAX else ("2^62+1" if term == MAX_TERM + 1 else
                                                   ("2^62" if term == MAX_TERM else term)))
            answers.append((what, r))
        except (OSError, ConnectionError, TimeoutError) as e:
            answers.append(("%s" % who, {"msg": "failed: %s" % e}))
    answers = short_answers(answers)
    changes = watch_leader(replicas, lead, args.watch)
    m.stop()
    epochs = epochs_of(replicas)
    recovered = ""
    if changes:
        new, took = wait_leader(replicas, args.recover, not_epoch=None)
        recovered = ("; a leader again %s" % ("(r%d at %s) within %.1f s" % (new[0] + 1, fmt_epoch(new[1]), took))
                     if new else "; NO leader %.0f s later" % (args.watch + args.recover))
        if new is None:
            problems.append("no leader %.0f s after a fence the replica accepted; replicas: %s"
                            % (args.watch + args.recover,
                               ", ".join("%s %s" % (r_, fmt_epoch(e)) for r_, e in epochs)))
    m.settle(args.settle)
    client = client_summary(args.client_log, m.t0, time.monotonic() - args.settle)
    outcome = "; ".join(answers) + "; over %.0f s: leader %s%s; epochs now %s" % (
        args.watch, "unchanged (%s)" % fmt_epoch(lead[1]) if not changes else "lost",
        recovered, ", ".join(fmt_epoch(e) for _, e in epochs))
    if args.term == "absurd":
        scale = "Fence at term u64::MAX and 2^62+1 to the leader, u64::MAX to a follower, as a balancer"
        sit = "absurd fence epoch"
    else:
        scale = "one Fence at term %s (the highest accepted) to the leader, as a balancer" % (
            "2^62" if int(args.term) == MAX_TERM else args.term)
        sit = "fence at the highest accepted term (separate cluster)"
    emit(args, sit, scale, args.limit, leader, m, client, outcome, problems)
    return 0


def run_promote(args):
    addrs, pids, replicas, lead = setup(args)
    problems = []
    leader = "r%d" % (lead[0] + 1)
    follower = "r%d" % (((lead[0] + 1) % 3) + 1)
    m = Measure(pids, [leader])
    m.start()
    answers = []
    cur = lead[1]
    nxt = epoch_raw((cur >> 64) + 1, 0x1F2E3D4C5B6A7988)
    if args.mode == "absurd":
        probes = [
            ("leader at its epoch, sync_replicas 1000, timeout u64::MAX", leader, cur, 1000, U64_MAX),
            ("leader, sync_replicas 1000, timeout 2000 ms", leader, cur, 1000, 2000),
            ("leader, sync_replicas 1, timeout u64::MAX", leader, cur, 1, U64_MAX),
            ("follower at the next term, sync_replicas 1000, timeout u64::MAX", follower, nxt, 1000, U64_MAX),
        ]
    else:
        probes = [("leader at its epoch, sync_replicas %d, timeout %d ms" % (args.sync, args.timeout_ms),
                   leader, cur, args.sync, args.timeout_ms)]
    for what, who, epoch, sync, tmo in probes:
        try:
            r = admin_call(addrs[who], op_promote(epoch, sync, tmo, False))
            answers.append((what, r))
        except (OSError, ConnectionError, TimeoutError) as e:
            answers.append((what, {"msg": "failed: %s" % e}))
    answers = short_answers(answers)
    changes = watch_leader(replicas, lead, args.watch)
    m.stop()
    epochs = epochs_of(replicas)
    m.settle(args.settle)
    client = client_summary(args.client_log, m.t0, m.t1)
    outcome = "; ".join(answers) + "; over %.0f s: leader %s; epochs now %s" % (
        args.watch, "unchanged (%s)" % fmt_epoch(cur) if not changes else "changed: %r" % changes[-1:],
        ", ".join(fmt_epoch(e) for _, e in epochs))
    if args.mode == "absurd":
        sit = "absurd Promote"
        scale = "4 Promotes as a balancer (values above)"
    else:
        sit = "Promote within the bounds, above the membership (separate cluster)"
        scale = "one Promote to the leader at its epoch: sync_replicas %d (2 followers exist), timeout %d ms" % (
            args.sync, args.timeout_ms)
        if client["sets_ok"] == 0:
            problems.append("no write succeeded for %.0f s after a Promote the leader accepted "
                            "(%s); the balancer did not replace or re-promote it"
                            % (args.watch, ", ".join(sorted(client["errors"])) or "no answers"))
    emit(args, sit, scale, args.limit, leader, m, client, outcome, problems)
    return 0


def cli_status(cli, lb):
    """The balancer's view through `semikv --json status`, or None."""
    try:
        out = subprocess.run([cli, "--addr", lb, "--json", "status"],
                             capture_output=True, text=True, timeout=10).stdout
        return json.loads(out)
    except (OSError, subprocess.TimeoutExpired, ValueError):
        return None


def fill(path):
    """Writes FILL files into path until the file system refuses; bytes written."""
    n = 0
    fd = os.open(os.path.join(path, "FILL"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (1 << 20, 4096, 1):
            buf = b"\0" * size
            while True:
                try:
                    w = os.write(fd, buf)
                    n += w
                    if w < size:
                        break
                except OSError as e:
                    if e.errno in (errno.ENOSPC, errno.EDQUOT):
                        break
                    raise
    finally:
        os.close(fd)
    return n


def run_diskfull(args):
    addrs, pids, replicas, lead = setup(args)
    problems = []
    leader = "r%d" % (lead[0] + 1)
    dirs = args.data_dirs.split(",")
    if args.which == "leader":
        victims = [lead[0]]
        attacked = [leader]
    else:
        victims = [0, 1, 2]
        attacked = ["r1", "r2", "r3"]
    m = Measure(pids, attacked)
    m.start()
    filled = [fill(dirs[i]) for i in victims]
    t_full = time.monotonic()
    time.sleep(args.hold)
    # What `semikv status` shows meanwhile: replicas whose disk_full is set.
    st = cli_status(args.cli, args.lb)
    if st is None:
        full_in_status = "unreadable"
    else:
        full_in_status = ",".join("r%s" % r["id"] for r in st["replicas"] if r.get("disk_full")) or "none"
    during = client_summary(args.client_log, t_full, time.monotonic())
    for i in victims:
        os.unlink(os.path.join(dirs[i], "FILL"))
    t_free = time.monotonic()
    # First acknowledged write after the space came back (bounded).
    resumed = None
    deadline = t_free + args.recover
    while time.monotonic() < deadline and resumed is None:
        time.sleep(0.2)
        with open(args.client_log) as f:
            for line in f:
                t, lat, op, o = line.split()
                if op == "set" and o == "ok" and float(t) >= t_free:
                    resumed = float(t) + float(lat) - t_free
                    break
    # The replicas that were full are healthy, not full, leading or
    # following, and caught up again, as the balancer sees them (bounded).
    rejoined = None
    deadline = t_free + args.recover
    while time.monotonic() < deadline:
        st = cli_status(args.cli, args.lb)
        if st is not None:
            by_id = {r["id"]: r for r in st["replicas"]}
            if all(by_id.get(i + 1, {}).get("healthy") and not by_id[i + 1].get("disk_full")
                   and by_id[i + 1].get("role") in ("leader", "follower")
                   and by_id[i + 1].get("lag", 1 << 62) <= 50 for i in victims):
                rejoined = time.monotonic() - t_free
                break
        time.sleep(0.2)
    m.stop()
    now = leader_of(replicas)
    m.settle(args.settle)
    client = client_summary(args.client_log, m.t0, m.t1)
    alive = [n for n in ("r1", "r2", "r3") if n not in m.dead]
    if args.which == "leader":
        # Writes moved to another leader while the disk was full: when they
        # resumed after freeing says nothing (the write gap says it).
        freed = "writes had gone on through r%s" % (now[0] + 1 if now else "-")
    elif resumed is not None:
        freed = "first acknowledged write %.2f s later" % resumed
    else:
        freed = "NO acknowledged write within %.0f s" % args.recover
    outcome = ("filled %s (%s MiB written); while full: %s; `semikv status` showed disk_full on: %s; "
               "space freed: %s; %s %s; leader then r%s; %d/3 replicas alive"
               % (", ".join("r%d" % (i + 1) for i in victims),
                  "+".join("%.0f" % (b / 1048576.0) for b in filled), fmt_client(during),
                  full_in_status, freed,
                  ", ".join("r%d" % (i + 1) for i in victims),
                  "healthy, not full and within 50 entries of the leader again %.1f s later" % rejoined
                  if rejoined is not None else "NOT caught up within %.0f s" % args.recover,
                  now[0] + 1 if now else "-", len(alive)))
    if rejoined is None:
        problems.append("the replicas that were full were not caught up within %.0f s of freeing space" % args.recover)
    if resumed is None:
        problems.append("writes did not resume within %.0f s of freeing space" % args.recover)
    if args.which == "leader":
        sit = "the leader's disk full (own cluster, tmpfs)"
        scale = "leader's %s tmpfs filled for %.0f s, then freed" % (args.disk_size, args.hold)
    else:
        sit = "every replica's disk full (own cluster, tmpfs)"
        scale = "all three %s tmpfs filled for %.0f s, then freed" % (args.disk_size, args.hold)
    emit(args, sit, scale, args.limit, attacked[0], m, client, outcome, problems)
    return 0


# ---- table ------------------------------------------------------------------

def run_table(args):
    rows = []
    with open(args.results) as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    head = ["#", "situation (scale)", "limit that applies", "RSS of the attacked process: before / peak / after",
            "what the well-behaved client saw (SET/GET through the balancer)", "outcome"]
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("---" for _ in head) + "|")
    esc = lambda s: str(s).replace("|", "\\|").replace("\n", " ")
    for i, r in enumerate(rows):
        sit = "%s (%s)" % (r["situation"], r["scale"]) if r["scale"] != "-" else r["situation"]
        rss = "%s: %s" % (r["target"], r["rss"])
        if r.get("others") and r["others"] != "-":
            rss += "; others' peak growth at most %s" % r["others"]
        outcome = r["outcome"]
        if r.get("problems"):
            outcome += " **PROBLEM: " + "; ".join(r["problems"]) + "**"
        print("| " + " | ".join(esc(x) for x in [i, sit, r["limit"], rss, r["client"], outcome]) + " |")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("selftest")
    p.add_argument("golden")
    p = sub.add_parser("client")
    p.add_argument("--addr", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--interval", type=float, default=0.005)
    p.add_argument("--timeout", type=float, default=5.0)
    p.add_argument("--value-size", type=int, default=100)
    p = sub.add_parser("baseline")
    common(p)
    p.add_argument("--seconds", type=float, default=5)
    p = sub.add_parser("flood")
    common(p)
    p.add_argument("--n", type=int, default=5000)
    p.add_argument("--hold", type=float, default=8)
    p.add_argument("--writes", type=int, default=8)
    p.add_argument("--verdict-wait", type=float, default=5)
    p.add_argument("--nofile", type=int, required=True, help="the target's open-file limit")
    p.add_argument("--limit", required=True)
    p.add_argument("--log-dir", required=True)
    p = sub.add_parser("slowloris")
    common(p)
    p.add_argument("--conns", type=int, default=100)
    p.add_argument("--declared", type=int, default=16 << 20)
    p.add_argument("--budget", type=int, default=512 << 20,
                   help="the attacked process's --max-buffered-input")
    p.add_argument("--send", type=int, default=4 << 20)
    p.add_argument("--wait", type=float, default=70)
    p.add_argument("--documented", type=float, default=45,
                   help="the README's bound on closing a stalled frame")
    p.add_argument("--limit", required=True)
    p = sub.add_parser("greedy")
    common(p)
    p.add_argument("--gets", type=int, default=1024)
    p.add_argument("--value-size", type=int, default=2 << 20)
    p.add_argument("--hold", type=float, default=20)
    p.add_argument("--after", type=float, default=5)
    p.add_argument("--limit", required=True)
    p.add_argument("--log-dir", required=True)
    p = sub.add_parser("fence")
    common(p)
    p.add_argument("--term", default="absurd")
    p.add_argument("--watch", type=float, default=5)
    p.add_argument("--recover", type=float, default=15)
    p.add_argument("--limit", required=True)
    p = sub.add_parser("promote")
    common(p)
    p.add_argument("--mode", default="absurd")
    p.add_argument("--sync", type=int, default=200)
    p.add_argument("--timeout-ms", type=int, default=3600000)
    p.add_argument("--watch", type=float, default=5)
    p.add_argument("--limit", required=True)
    p = sub.add_parser("diskfull")
    common(p)
    p.add_argument("--which", choices=["leader", "all"], required=True)
    p.add_argument("--data-dirs", required=True)
    p.add_argument("--disk-size", required=True)
    p.add_argument("--hold", type=float, default=6)
    p.add_argument("--recover", type=float, default=15)
    p.add_argument("--cli", required=True)
    p.add_argument("--limit", required=True)
    p = sub.add_parser("table")
    p.add_argument("results")
    args = ap.parse_args()
    return {
        "selftest": lambda: selftest(args.golden),
        "client": lambda: run_client(args),
        "baseline": lambda: run_baseline(args),
        "flood": lambda: run_flood(args),
        "slowloris": lambda: run_slowloris(args),
        "greedy": lambda: run_greedy(args),
        "fence": lambda: run_fence(args),
        "promote": lambda: run_promote(args),
        "diskfull": lambda: run_diskfull(args),
        "table": lambda: run_table(args),
    }[args.cmd]()


if __name__ == "__main__":
    sys.exit(main())
