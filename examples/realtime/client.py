#!/usr/bin/env python3
"""The run script's stand-in for the browser (needs the `websockets` package).

Does what index.html does: gets a token from the helper, connects to meshlet's hub, joins a
room; prints `joined` and then waits for a broadcast whose data is EXPECT (the run script
POSTs it to /v1/broadcast once it sees `joined`). Then publishes a frame to the room itself
and waits for it to come back (client_publish: room). Exit 0 when both arrived, 1 otherwise.

  client.py HELPER_URL USER ROOM EXPECT_JSON
"""
import asyncio
import json
import sys
import urllib.request

import websockets

HELPER, USER, ROOM, EXPECT = sys.argv[1], sys.argv[2], sys.argv[3], json.loads(sys.argv[4])


async def next_frame(ws, want):
    while True:
        frame = json.loads(await ws.recv())
        print("<-", json.dumps(frame), flush=True)
        if frame["type"] == "error":
            raise SystemExit(f"error frame: {frame}")
        if want(frame):
            return frame


async def main():
    with urllib.request.urlopen(f"{HELPER}/token?user={USER}", timeout=5) as r:
        t = json.load(r)
    async with websockets.connect(f"{t['ws']}?token={t['token']}", open_timeout=5) as ws:
        welcome = await next_frame(ws, lambda f: True)
        assert welcome["type"] == "welcome" and welcome["user"] == USER, welcome
        await ws.send(json.dumps({"type": "join", "room": ROOM}))
        await next_frame(ws, lambda f: f["type"] == "joined" and f["room"] == ROOM)
        print("joined", flush=True)
        await next_frame(ws, lambda f: f["type"] == "message" and f["room"] == ROOM
                         and f["data"] == EXPECT)
        print("broadcast received", flush=True)
        mine = {"from": USER, "text": "hello from the client"}
        await ws.send(json.dumps({"type": "publish", "room": ROOM, "event": "chat", "data": mine}))
        await next_frame(ws, lambda f: f["type"] == "message" and f["event"] == "chat"
                         and f["data"] == mine)
        print("own publish received", flush=True)


try:
    asyncio.run(asyncio.wait_for(main(), 15))
except (asyncio.TimeoutError, TimeoutError):
    sys.exit("timed out")
