"""A WebSocket echo app (Python `websockets`) for the protocol suites. usage: ws_echo.py PORT"""
import asyncio
import sys

from websockets.asyncio.server import serve


async def echo(ws):
    try:
        async for msg in ws:
            await ws.send(msg)
    except Exception:
        pass


async def main(port):
    async with serve(echo, "127.0.0.1", port, max_size=None, compression=None):
        await asyncio.Future()


asyncio.run(main(int(sys.argv[1])))
