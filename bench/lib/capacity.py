#!/usr/bin/env python3
"""Load and counting helpers of bench/capacity (stdlib only: a small RESP client).

  capacity.py heartbeat  --port P --prefix mesh --services S --pods N --seconds T
                         [--interval 10] [--ttl-ms 30000]
      Every pod's heartbeat as meshlet writes it (docs/registry.md: one MULTI of HSET,
      PEXPIRE, ZADD, ZREMRANGEBYSCORE, SADD, no PUBLISH), spread evenly over --interval,
      for --seconds; meanwhile counts messages on {prefix}:changes. Prints JSON.
  capacity.py churn      --port P --prefix mesh --services S --pods K
      A rolling restart of K pods: drain, deregister, register the replacement (with its
      PUBLISH), as docs/registry.md writes them; counts {prefix}:changes messages. JSON.
  capacity.py post       --api HOST:PORT --type T --events N [--payload 200] [--lines 1000]
      Publishes N events of a fixed payload through meshlet's ndjson batch API, one batch
      of --lines a POST; fails on any answer but 200. Prints JSON (events/s).
  capacity.py fanout     --port P --subscribers K --messages N [--payload 100] [--clients 16]
                         [--pipeline 1]
      K connections SSUBSCRIBE one channel (a room's subscribing meshlets), redis-benchmark
      SPUBLISHes N messages from --clients connections, --pipeline deep; waits until every
      subscriber got all N. Prints JSON with the
      deliveries per second of that one redis-server (one shard).

Every wait is bounded; everything talks to 127.0.0.1 only.
"""
import argparse
import http.client
import json
import selectors
import socket
import subprocess
import sys
import threading
import time


# ------------------------------------------------------------------ RESP
def encode(*args):
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a if isinstance(a, bytes) else str(a).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


class Conn:
    """One Redis connection: pipelined writes, replies read one by one."""

    def __init__(self, port, timeout=10.0):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.file = self.sock.makefile("rb")

    def send(self, payload):
        self.sock.sendall(payload)

    def reply(self):
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind in (b"+", b":"):
            return rest
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.file.read(n + 2)[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.reply() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")

    def call(self, *args):
        self.send(encode(*args))
        return self.reply()


def now_ms():
    return int(time.time() * 1000)


def pod(i, services):
    """Pod i: its service, instance id and address (as many pods per service as fit)."""
    service = f"svc-{i % services:03d}"
    return service, f"{service}-pod{i:05d}", f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def register_tx(prefix, service, ident, host, ttl_ms, announce):
    """The register/heartbeat transaction of docs/registry.md, as meshlet sends it."""
    now = now_ms()
    inst = f"{prefix}:inst:{service}:{ident}"
    cmds = [
        ("MULTI",),
        ("HSET", inst, "host", host, "port", 8080, "version", "1.0.0", "status", "up",
         "protocol", "http1", "metadata", "{}", "registered_at", now, "last_heartbeat", now),
        ("PEXPIRE", inst, ttl_ms),
        ("ZADD", f"{prefix}:svc:{service}", now + ttl_ms, ident),
        ("ZREMRANGEBYSCORE", f"{prefix}:svc:{service}", "-inf", f"({now - ttl_ms}"),
        ("SADD", f"{prefix}:services", service),
    ]
    if announce:
        cmds.append(("PUBLISH", f"{prefix}:changes", service))
    cmds.append(("EXEC",))
    return b"".join(encode(*c) for c in cmds), len(cmds)


class ChangesCounter(threading.Thread):
    """Counts messages on {prefix}:changes until stopped."""

    def __init__(self, port, prefix):
        super().__init__(daemon=True)
        self.conn = Conn(port)
        self.conn.call("SUBSCRIBE", f"{prefix}:changes")
        # Blocking reads: stop() ends them by shutting the socket down.
        self.conn.sock.settimeout(None)
        self.count = 0

    def run(self):
        while True:
            try:
                msg = self.conn.reply()
            except (ConnectionError, OSError, ValueError):
                return
            if isinstance(msg, list) and msg and msg[0] == b"message":
                self.count += 1

    def stop(self):
        # A last message may still be in flight: give it a moment, bounded.
        time.sleep(0.3)
        count = self.count
        self.conn.sock.shutdown(socket.SHUT_RDWR)
        self.join(2)
        return count


def stats(conn):
    info = conn.call("INFO", "stats").decode()
    vals = dict(line.split(":", 1) for line in info.splitlines() if ":" in line)
    return int(vals["total_commands_processed"]), int(vals["total_net_input_bytes"])


def cmd_heartbeat(a):
    counter = ChangesCounter(a.port, a.prefix)
    counter.start()
    conn = Conn(a.port)
    cmds0, in0 = stats(conn)
    gap = a.interval / a.pods
    start = time.monotonic()
    sent = 0
    while True:
        due = start + sent * gap
        if due - start >= a.seconds:
            break
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        service, ident, host = pod(sent % a.pods, a.services)
        payload, n = register_tx(a.prefix, service, ident, host, a.ttl_ms, announce=False)
        conn.send(payload)
        for _ in range(n):
            conn.reply()
        sent += 1
    elapsed = time.monotonic() - start
    cmds1, in1 = stats(conn)
    messages = counter.stop()
    print(json.dumps({
        "pods": a.pods, "interval_s": a.interval, "seconds": round(elapsed, 2),
        "heartbeats": sent, "heartbeats_per_s": round(sent / elapsed, 1),
        # Minus the INFO call itself (1 command).
        "redis_commands_per_s": round((cmds1 - cmds0 - 1) / elapsed, 1),
        "redis_in_bytes_per_s": round((in1 - in0) / elapsed),
        "changes_messages": messages, "changes_per_s": round(messages / elapsed, 3),
    }))


def cmd_churn(a):
    counter = ChangesCounter(a.port, a.prefix)
    counter.start()
    conn = Conn(a.port)
    for i in range(a.pods):
        service, ident, host = pod(i, a.services)
        inst = f"{a.prefix}:inst:{service}:{ident}"
        drain = [("MULTI",), ("HSET", inst, "status", "draining"),
                 ("PUBLISH", f"{a.prefix}:changes", service), ("EXEC",)]
        dereg = [("MULTI",), ("ZREM", f"{a.prefix}:svc:{service}", ident), ("DEL", inst),
                 ("PUBLISH", f"{a.prefix}:changes", service), ("EXEC",)]
        for tx in (drain, dereg):
            conn.send(b"".join(encode(*c) for c in tx))
            for _ in tx:
                conn.reply()
        payload, n = register_tx(a.prefix, service, ident + "r", host, a.ttl_ms, announce=True)
        conn.send(payload)
        for _ in range(n):
            conn.reply()
    messages = counter.stop()
    print(json.dumps({"replaced_pods": a.pods, "changes_messages": messages,
                      "messages_per_replaced_pod": round(messages / a.pods, 2)}))


def cmd_post(a):
    host, port = a.api.rsplit(":", 1)
    head = '{"n":%d,"pad":"'
    line = (head % 0) + "x" * (a.payload - len(head % 0) - 2) + '"}'
    assert len(line) == a.payload, len(line)
    body = ("\n".join([line] * a.lines) + "\n").encode()
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    sent, start = 0, time.monotonic()
    while sent < a.events:
        n = min(a.lines, a.events - sent)
        data = body if n == a.lines else ("\n".join([line] * n) + "\n").encode()
        conn.request("POST", f"/v1/events/{a.type}", body=data,
                     headers={"content-type": "application/x-ndjson", "host": "localhost"})
        r = conn.getresponse()
        answer = r.read()
        if r.status != 200:
            sys.exit(f"publish answered {r.status}: {answer[:300]!r}")
        sent += n
    elapsed = time.monotonic() - start
    print(json.dumps({"events": sent, "payload_bytes": a.payload, "lines_per_post": a.lines,
                      "seconds": round(elapsed, 2), "events_per_s": round(sent / elapsed)}))


def cmd_fanout(a):
    channel = b"bench:rt:room:{lobby}"
    marker = b"$8\r\nsmessage\r\n"
    sel = selectors.DefaultSelector()
    counts, tails = {}, {}
    for _ in range(a.subscribers):
        c = Conn(a.port)
        c.call("SSUBSCRIBE", channel)
        c.sock.setblocking(False)
        sel.register(c.sock, selectors.EVENT_READ)
        counts[c.sock] = 0
        tails[c.sock] = b""
    want = a.messages
    payload = "x" * a.payload
    start = time.monotonic()
    bench = subprocess.Popen(
        ["redis-benchmark", "-h", "127.0.0.1", "-p", str(a.port), "-n", str(want), "-c",
         str(a.clients), "-P", str(a.pipeline), "-q", "SPUBLISH", channel.decode(), payload],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = start + a.timeout
    while min(counts.values()) < want and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.5):
            data = key.fileobj.recv(1 << 20)
            if not data:
                sys.exit("a subscriber connection closed")
            # Count markers, also one split across two reads.
            joined = tails[key.fileobj] + data
            counts[key.fileobj] += joined.count(marker)
            tails[key.fileobj] = joined[-(len(marker) - 1):]
    elapsed = time.monotonic() - start
    out, _ = bench.communicate(timeout=60)
    got = sum(counts.values())
    ok = min(counts.values()) == want
    print(json.dumps({
        "subscribers": a.subscribers, "messages": want, "payload_bytes": a.payload,
        "seconds": round(elapsed, 3), "delivered": got, "complete": ok,
        "publishes_per_s": round(want / elapsed), "deliveries_per_s": round(got / elapsed),
        # redis-benchmark's own summary, without the command (it repeats the payload).
        "redis_benchmark": out.decode(errors="replace").strip().splitlines()[-1].rsplit(": ", 1)[-1]
        if out.strip() else "",
    }))
    if not ok:
        sys.exit("not every subscriber got every message in time")


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("heartbeat", "churn"):
        s = sub.add_parser(name)
        s.add_argument("--port", type=int, required=True)
        s.add_argument("--prefix", default="mesh")
        s.add_argument("--services", type=int, required=True)
        s.add_argument("--pods", type=int, required=True)
        s.add_argument("--ttl-ms", type=int, default=30000)
        if name == "heartbeat":
            s.add_argument("--seconds", type=float, required=True)
            s.add_argument("--interval", type=float, default=10.0)
    s = sub.add_parser("post")
    s.add_argument("--api", required=True)
    s.add_argument("--type", required=True)
    s.add_argument("--events", type=int, required=True)
    s.add_argument("--payload", type=int, default=200)
    s.add_argument("--lines", type=int, default=1000)
    s = sub.add_parser("fanout")
    s.add_argument("--port", type=int, required=True)
    s.add_argument("--subscribers", type=int, required=True)
    s.add_argument("--messages", type=int, required=True)
    s.add_argument("--payload", type=int, default=100)
    s.add_argument("--clients", type=int, default=16)
    s.add_argument("--pipeline", type=int, default=1)
    s.add_argument("--timeout", type=float, default=120)
    a = p.parse_args()
    {"heartbeat": cmd_heartbeat, "churn": cmd_churn, "post": cmd_post, "fanout": cmd_fanout}[a.cmd](a)


if __name__ == "__main__":
    main()
