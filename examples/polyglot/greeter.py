#!/usr/bin/env python3
"""greeter: a service with no meshlet beside it that joins the mesh by itself.

It follows the registry contract (docs/registry.md) with nothing but the
standard library: a dozen lines of RESP over a socket, and four Redis commands.

  register   MULTI; HSET {p}:inst:{svc}:{id} host port version status=up metadata
             registered_at last_heartbeat protocol; PEXPIRE (ttl); ZADD {p}:svc:{svc}
             <now+ttl ms> {id}; SADD {p}:services {svc}; PUBLISH {p}:changes {svc}; EXEC
  heartbeat  the same ZADD / PEXPIRE / HSET last_heartbeat, every ttl/3
  shutdown   HSET status=draining + PUBLISH, then ZREM + DEL + PUBLISH

Callers' meshlets then dial it directly at host:port (plain HTTP/1.1).

GET /hello[?name=x]  ->  {"greeting": "hello, x", "from": "greeter (python, no meshlet)"}
Env: PORT, REDIS (host:port), PREFIX (default mesh), TTL_SECONDS (default 10).
"""
import json
import os
import signal
import socket
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

SERVICE = "greeter"
PORT = int(os.environ["PORT"])
REDIS_HOST, REDIS_PORT = os.environ.get("REDIS", "127.0.0.1:6379").rsplit(":", 1)
PREFIX = os.environ.get("PREFIX", "mesh")
TTL_MS = int(float(os.environ.get("TTL_SECONDS", "10")) * 1000)
INSTANCE = f"{SERVICE}-py-{os.getpid()}"
LOCK = threading.Lock()  # one connection, used by the heartbeat thread and shutdown


class Redis:
    """Just enough RESP2 for the registry: send a command, read one reply."""

    def __init__(self, host, port):
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.rfile = self.sock.makefile("rb")

    def __call__(self, *args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        self.sock.sendall(b"".join(out))
        return self.read()

    def read(self):
        line = self.rfile.readline()[:-2]
        kind, rest = line[:1], line[1:]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        if kind in (b"+", b":"):
            return rest.decode()
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.rfile.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RuntimeError(f"unexpected reply {line!r}")


def key(*parts):
    return ":".join((PREFIX,) + parts)


def register(r, first):
    with LOCK:
        _register(r, first)


def _register(r, first):
    now = int(time.time() * 1000)
    inst = key("inst", SERVICE, INSTANCE)
    r("MULTI")
    if first:
        r("HSET", inst, "host", "127.0.0.1", "port", PORT, "version", "0.1.0", "status", "up",
          "metadata", json.dumps({"lang": "python"}), "registered_at", now,
          "last_heartbeat", now, "protocol", "http1")
        r("SADD", key("services"), SERVICE)
    else:
        r("HSET", inst, "last_heartbeat", now)
    r("PEXPIRE", inst, TTL_MS)
    r("ZADD", key("svc", SERVICE), now + TTL_MS, INSTANCE)
    if first:
        r("PUBLISH", key("changes"), SERVICE)
    r("EXEC")


def deregister(r):
    with LOCK:
        _deregister(r)


def _deregister(r):
    inst = key("inst", SERVICE, INSTANCE)
    r("HSET", inst, "status", "draining")       # callers stop picking it at once
    r("PUBLISH", key("changes"), SERVICE)
    r("MULTI")
    r("ZREM", key("svc", SERVICE), INSTANCE)
    r("DEL", inst)
    r("PUBLISH", key("changes"), SERVICE)
    r("EXEC")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path != "/hello":
            return self.reply(404, {"error": "not found"})
        name = urllib.parse.parse_qs(url.query).get("name", ["world"])[0]
        self.reply(200, {"greeting": f"hello, {name}", "from": "greeter (python, no meshlet)",
                         "caller": self.headers.get("x-mesh-caller"),
                         "request_id": self.headers.get("x-request-id")})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def main():
    server = ThreadingHTTPServer(("127.0.0.1", PORT), Handler)
    r = Redis(REDIS_HOST, REDIS_PORT)
    register(r, first=True)
    print(f"registered {SERVICE}/{INSTANCE} at 127.0.0.1:{PORT}", flush=True)
    stop = threading.Event()

    def heartbeat():
        while not stop.wait(TTL_MS / 3000):
            register(r, first=False)

    threading.Thread(target=heartbeat, daemon=True).start()
    signal.signal(signal.SIGTERM, lambda *_: threading.Thread(target=server.shutdown).start())
    try:
        server.serve_forever()
    finally:
        stop.set()
        deregister(r)
        print(f"deregistered {SERVICE}/{INSTANCE}", flush=True)


if __name__ == "__main__":
    main()
