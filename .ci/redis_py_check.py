"""redis-py (RESP3) against the balancer's RESP door (#18): a pipeline, a
binary value, a missing key. Run by .ci/third-party-clients with the door's
port; exits non-zero naming what went wrong."""

import sys
import time

import redis

# Bound on every socket operation, and on waiting for replicas to apply.
TIMEOUT_SECS = 10
# Reads may go to a follower that has not applied a write yet: how often a
# read is retried until it shows it.
POLL_SECS = 0.05


def fail(message):
    print(f"redis_py_check: FAILED: {message}", file=sys.stderr)
    sys.exit(1)


def read_back(r, key, want):
    """GETs `key` until it holds `want`, at most TIMEOUT_SECS."""
    deadline = time.monotonic() + TIMEOUT_SECS
    while True:
        got = r.get(key)
        if got == want:
            return
        if time.monotonic() > deadline:
            fail(f"GET {key!r} answered {got!r}, not {want!r}")
        time.sleep(POLL_SECS)


def main():
    port = int(sys.argv[1])
    r = redis.Redis(
        host="127.0.0.1",
        port=port,
        protocol=3,
        socket_timeout=TIMEOUT_SECS,
        socket_connect_timeout=TIMEOUT_SECS,
    )
    hello = r.execute_command("HELLO", "3")
    if hello.get(b"proto", hello.get("proto")) != 3:
        fail(f"HELLO 3 answered {hello!r}")

    pipe = r.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"py:{i}", f"value {i}")
    answers = pipe.execute()
    if answers != [True] * 100:
        fail(f"a pipeline of 100 SETs answered {answers!r}")
    want = [f"value {i}".encode() for i in range(100)]
    deadline = time.monotonic() + TIMEOUT_SECS
    while True:
        pipe = r.pipeline(transaction=False)
        for i in range(100):
            pipe.get(f"py:{i}")
        answers = pipe.execute()
        # A lagging follower may still answer None; another key's value
        # means the answers came back out of order.
        for i, (got, value) in enumerate(zip(answers, want)):
            if got not in (value, None):
                fail(f"pipelined GET {i} answered {got!r}, not {value!r}")
        if answers == want:
            break
        if time.monotonic() > deadline:
            fail(f"pipelined GETs still miss values: {answers!r}")
        time.sleep(POLL_SECS)

    binary = b"a\r\nb\x00c\r\n\x00"
    if r.set("py:binary", binary) is not True:
        fail("SET of a binary value not acknowledged")
    read_back(r, "py:binary", binary)

    missing = r.get("py:no-such-key")
    if missing is not None:
        fail(f"GET of a missing key answered {missing!r}, not None")
    print("redis_py_check: pipeline, binary value and missing key ok (RESP3)")


if __name__ == "__main__":
    main()
