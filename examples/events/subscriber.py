#!/usr/bin/env python3
"""A subscriber (ledger or notifier): its meshlet POSTs each `order.created` event to it.

Idempotent by x-event-id, as docs/events.md advises (delivery is at least once): a repeat
is answered 200 and counted, not handled twice.

POST /events/order-created   the event envelope {"event_id","event_type","timestamp",
                             "source","version","payload"}; answers
                             - the status set by /admin/fail while that lasts (a broken app),
                             - 422 when STRICT and the order has no "email" (notifier only:
                               it cannot notify anyone; a 4xx is never retried),
                             - else 200.
GET  /received               {"handled": [{event_id, attempt, payload, ...}],
                              "answers": {status: count}, "duplicates": [event_id, ...]}
POST /admin/fail             {"status": 500, "seconds": 3}: answer that for a while
POST /admin/strict           {"strict": false}: "deploy a fix" that accepts orders without email
Env: PORT, NAME, STRICT (1 = refuse orders without an email).
"""
import json
import os
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

NAME = os.environ.get("NAME", "subscriber")
STATE = {"strict": os.environ.get("STRICT") == "1", "fail_status": 0, "fail_until": 0.0}
HANDLED = []          # first delivery of each event id that was answered 2xx
SEEN = set()
ANSWERS = {}          # status -> count, every delivery
DUPLICATES = []       # event ids delivered again after they were handled
LOCK = threading.Lock()


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("content-length", 0)))
        if self.path == "/admin/fail":
            cmd = json.loads(body)
            STATE["fail_status"], STATE["fail_until"] = cmd["status"], time.time() + cmd["seconds"]
            return self.reply(200, {"ok": True})
        if self.path == "/admin/strict":
            STATE["strict"] = json.loads(body)["strict"]
            return self.reply(200, {"ok": True})
        if self.path != "/events/order-created":
            return self.reply(404, {"error": "not found"})
        event = json.loads(body)
        status = self.handle_event(event)
        with LOCK:
            ANSWERS[status] = ANSWERS.get(status, 0) + 1
        print(f"{time.strftime('%H:%M:%S')}.{int(time.time() * 1000) % 1000:03d} {NAME}: {event['event_id']} attempt {self.headers['x-event-attempt']} -> {status}",
              flush=True)
        self.reply(status, {"ok": status == 200})

    def handle_event(self, event):
        if time.time() < STATE["fail_until"]:
            return STATE["fail_status"]
        if STATE["strict"] and not event["payload"].get("email"):
            return 422
        with LOCK:
            if event["event_id"] in SEEN:      # a redelivery or a replay: already handled
                DUPLICATES.append(event["event_id"])
                return 200
            SEEN.add(event["event_id"])
            HANDLED.append({
                "event_id": event["event_id"],
                "header_event_id": self.headers["x-event-id"],
                "event_type": event["event_type"],
                "source": event["source"],
                "attempt": int(self.headers["x-event-attempt"]),
                "payload": event["payload"],
            })
        return 200

    def do_GET(self):
        if self.path == "/received":
            with LOCK:
                return self.reply(200, {"handled": HANDLED, "answers": ANSWERS,
                                       "duplicates": DUPLICATES})
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
