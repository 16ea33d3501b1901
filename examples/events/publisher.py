#!/usr/bin/env python3
"""orders: takes orders and publishes `order.created` events through its own meshlet.

No Redis client, no event library: one POST to meshlet's local API per event.

POST /orders  body {"id": "...", ...}  ->  publishes the body as event `order.created` with
              the natural id `order-<id>:created` (so a retried publish is stored once),
              answers {"status": <meshlet's status>, "meshlet": <meshlet's answer>}
GET  /published  ->  [{"event_id", "payload"}] what was published, for the run script
Env: PORT, MESHLET_API (e.g. http://127.0.0.1:15000).
"""
import json
import os
import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

API = os.environ["MESHLET_API"]
PUBLISHED = []
LOCK = threading.Lock()


def publish(event_type, event_id, body):
    req = urllib.request.Request(
        f"{API}/v1/events/{event_type}", data=body, method="POST",
        headers={"content-type": "application/json", "x-event-id": event_id})
    try:
        with urllib.request.urlopen(req, timeout=5) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:  # 400 / 413 / 503 events_unavailable: JSON too
        return e.code, json.load(e)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        if self.path != "/orders":
            return self.reply(404, {"error": "not found"})
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        order = json.loads(body)
        event_id = f"order-{order['id']}:created"
        status, answer = publish("order.created", event_id, body)
        if status in (200, 202):
            with LOCK:
                PUBLISHED.append({"event_id": answer["event_id"], "payload": body.decode()})
        self.reply(200 if status in (200, 202) else 502, {"status": status, "meshlet": answer})

    def do_GET(self):
        if self.path == "/published":
            with LOCK:
                return self.reply(200, PUBLISHED)
        self.reply(404, {"error": "not found"})

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
