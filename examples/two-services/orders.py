#!/usr/bin/env python3
"""orders: calls inventory *by name* through its own meshlet, with plain HTTP.

The only mesh-specific thing is the environment: HTTP_PROXY points at meshlet's outbound
listener, so urllib sends `GET http://inventory/items/widget` there, and meshlet finds the
inventory instances in the registry, retries, ejects and breaks circuits.

GET /orders/<item>  ->  {"item", "ok", "inventory_status", "inventory": <its JSON>,
                         "attempts": x-mesh-attempts, "mesh_error": x-mesh-error,
                         "fault": x-mesh-fault, "app_retries": 0 or 1}
Env: PORT, HTTP_PROXY.

Like a well-behaved client, orders retries a 503 once itself, unless the answer asks it to
wait (`Retry-After`, as an open breaker's does). meshlet's fault injection
(docs/policy.md) exists to prove that such app-level handling works: an injected abort is
never retried by meshlet, so it shows up in `app_retries`.
"""
import json
import os
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

# urllib reads HTTP_PROXY itself; an explicit handler makes the dependency visible.
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ["HTTP_PROXY"]}))


def ask_inventory(item):
    req = urllib.request.Request(f"http://inventory/items/{item}")
    try:
        with OPENER.open(req, timeout=10) as r:
            return r.status, dict(r.headers), json.load(r)
    except urllib.error.HTTPError as e:  # meshlet's own errors are JSON too
        return e.code, dict(e.headers), json.load(e)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if not self.path.startswith("/orders/"):
            return self.reply(404, {"error": "not found"})
        item = self.path[len("/orders/"):]
        status, headers, body = ask_inventory(item)
        headers = {k.lower(): v for k, v in headers.items()}
        app_retries = 0
        if status == 503 and "retry-after" not in headers:
            app_retries = 1
            status, headers, body = ask_inventory(item)
            headers = {k.lower(): v for k, v in headers.items()}
        self.reply(200 if status == 200 else 502, {
            "item": item,
            "ok": status == 200,
            "inventory_status": status,
            "inventory": body,
            "attempts": headers.get("x-mesh-attempts"),
            "mesh_error": headers.get("x-mesh-error"),
            "retry_after": headers.get("retry-after"),
            "fault": headers.get("x-mesh-fault"),
            "app_retries": app_retries,
        })

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
