#!/usr/bin/env python3
"""inventory: a tiny stock service. Knows nothing about meshlet; its meshlet forwards to it.

GET /items/<name>  ->  {"item": name, "stock": N, "served_by": INSTANCE}
GET /health        ->  {"status": "ok"}
Env: PORT (listen on 127.0.0.1:PORT), INSTANCE (a name to tell the copies apart).
"""
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

STOCK = {"widget": 42, "gadget": 7, "gizmo": 0}
INSTANCE = os.environ.get("INSTANCE", "inventory")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path == "/health":
            return self.reply(200, {"status": "ok"})
        if self.path.startswith("/items/"):
            name = self.path[len("/items/"):]
            if name in STOCK:
                return self.reply(200, {"item": name, "stock": STOCK[name], "served_by": INSTANCE})
            return self.reply(404, {"error": "unknown item", "item": name})
        self.reply(404, {"error": "not found"})

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):  # quiet: the run script prints what matters
        pass


if __name__ == "__main__":
    ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
