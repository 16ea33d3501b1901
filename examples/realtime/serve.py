#!/usr/bin/env python3
"""The realtime example's helper: mints client tokens and serves the web page.

meshlet's hub accepts a WebSocket client only with an HS256 JWT signed with
`realtime.auth.secret` (docs/realtime.md): `sub` = the user, `exp` = expiry, and an
optional `rooms` claim. In a real service the app's login does this; here it is a dozen
lines of hmac/hashlib/base64.

  serve.py token USER [ROOM ...]   print a token for USER (valid 1 h; rooms claim if given)
  serve.py serve                   serve index.html on 127.0.0.1:$PORT and
                                   GET /token?user=alice -> {"token": "...", "ws": "$WS_URL"}
Env: REALTIME_JWT_SECRET (the secret meshlet has), PORT, WS_URL (ws://127.0.0.1:<inbound>/ws).
"""
import base64
import hashlib
import hmac
import json
import os
import sys
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HERE = os.path.dirname(os.path.abspath(__file__))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(user, rooms=None, ttl=3600):
    header = {"alg": "HS256", "typ": "JWT"}
    claims = {"sub": user, "exp": int(time.time()) + ttl}
    if rooms:
        claims["rooms"] = rooms  # exact names, or prefixes ending in "*"
    signing_input = b64url(json.dumps(header).encode()) + "." + b64url(json.dumps(claims).encode())
    secret = os.environ["REALTIME_JWT_SECRET"].encode()
    sig = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        url = urllib.parse.urlsplit(self.path)
        if url.path in ("/", "/index.html"):
            with open(os.path.join(HERE, "index.html"), "rb") as f:
                return self.send(200, "text/html; charset=utf-8", f.read())
        if url.path == "/token":
            q = urllib.parse.parse_qs(url.query)
            user = q.get("user", ["guest"])[0][:64] or "guest"
            body = {"token": mint(user), "ws": os.environ["WS_URL"], "user": user}
            return self.send(200, "application/json", json.dumps(body).encode())
        self.send(404, "application/json", b'{"error":"not found"}')

    def send(self, status, ctype, data):
        self.send_response(status)
        self.send_header("content-type", ctype)
        self.send_header("content-length", str(len(data)))
        self.send_header("cache-control", "no-store")
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "token":
        print(mint(sys.argv[2], sys.argv[3:] or None))
    elif sys.argv[1:] == ["serve"]:
        ThreadingHTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
    else:
        sys.exit(__doc__)
