#!/usr/bin/env python3
"""The demo's app (orders, inventory or ledger): stdlib only, talks to its own meshlet.

GET  /health                  200
GET  /items                   {"served_by": INSTANCE}  (what orders calls on inventory)
GET  /call/SERVICE/PATH       calls http://SERVICE/PATH through HTTP_PROXY (its meshlet's
                              outbound listener); answers {"status", "body"}
POST /publish/TYPE            publishes the body as event TYPE through MESHLET_API; answers
                              {"status", "body"} of meshlet's answer
POST /events/...              an event delivery from its meshlet: recorded, 200
GET  /received                {"events": [{event_id, event_type, source, attempt, payload}]}
Env: PORT, INSTANCE, MESHLET_API, HTTP_PROXY.
"""
import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

INSTANCE = os.environ.get("INSTANCE", "app")
API = os.environ.get("MESHLET_API", "")
RECEIVED = []
LOCK = threading.Lock()
# Only calls to other services go through the proxy; the local API is reached directly.
PROXIED = urllib.request.build_opener(urllib.request.ProxyHandler({"http": os.environ.get("HTTP_PROXY", "")}))
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fetch(opener, req):
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"ok": True})
        if self.path == "/items":
            return self.reply(200, {"served_by": INSTANCE, "items": ["widget", "gadget"]})
        if self.path == "/received":
            with LOCK:
                return self.reply(200, {"events": list(RECEIVED)})
        if self.path.startswith("/call/"):
            service, _, rest = self.path[len("/call/"):].partition("/")
            status, body = fetch(PROXIED, f"http://{service}/{rest}")
            return self.reply(200, {"status": status, "body": body})
        self.reply(404, {"error": "not found"})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path.startswith("/publish/"):
            req = urllib.request.Request(f"{API}/v1/events/{self.path[len('/publish/'):]}", data=body,
                                         headers={"content-type": "application/json"})
            status, answer = fetch(DIRECT, req)
            return self.reply(200, {"status": status, "body": answer})
        if self.path.startswith("/events/"):
            event = json.loads(body)
            with LOCK:
                RECEIVED.append({"event_id": event["event_id"], "event_type": event["event_type"],
                                 "source": event["source"], "payload": event["payload"],
                                 "attempt": self.headers.get("x-event-attempt"), "by": INSTANCE})
            return self.reply(200, {"ok": True})
        self.reply(404, {"error": "not found"})

    def reply(self, status, obj):
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt, *args):
        pass


ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
