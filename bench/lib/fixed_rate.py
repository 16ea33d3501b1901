#!/usr/bin/env python3
"""Fixed-rate HTTP/1.1 load: RATE requests/s over CONNS keep-alive connections for SECONDS.

wrk only has a closed loop (as fast as possible), and a cost-per-1000-rps figure needs an
open loop at a steady rate. This client keeps an absolute schedule: connection i sends its
n-th request at start + i*interval/CONNS + n*interval (interval = CONNS/RATE), so a slow
answer delays the next send but never lowers the average rate (it catches up). Standard
library only, so it runs wherever python3 does.

Latency is measured from the moment a request is written to the end of its response. It
includes this client's own event-loop overhead (tens of µs), so read it as an upper bound;
the point of this run is the proxy's CPU and memory at a known rate.

Prints one JSON object: requests, duration_s (wall time of the whole run), rps (answers per
second from the first scheduled send to the last answer), p50_us, p99_us, max_us, non2xx,
socket_errors.
"""

import argparse
import asyncio
import json
import sys
import time


async def read_response(reader):
    """Reads one response; returns its status. Handles Content-Length and chunked bodies."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    length = None
    chunked = False
    close = False
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        value = value.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "transfer-encoding" and "chunked" in value:
            chunked = True
        elif name == "connection" and value == "close":
            close = True
    if chunked:
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status, close


async def connection(i, args, start, end, stats):
    interval = args.conns / args.rate
    request = f"GET {args.path} HTTP/1.1\r\nHost: {args.host_header}\r\n\r\n".encode()
    loop = asyncio.get_running_loop()
    reader = writer = None
    n = 0
    while True:
        due = start + i * interval / args.conns + n * interval
        if due >= end:
            break
        n += 1
        wait = due - loop.time()
        if wait > 0:
            await asyncio.sleep(wait)
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(args.host, args.port)
            sent = time.perf_counter()
            writer.write(request)
            status, close = await asyncio.wait_for(read_response(reader), args.timeout)
            stats["lat"].append(time.perf_counter() - sent)
            stats["last"] = loop.time()
            if not 200 <= status < 400:
                stats["non2xx"] += 1
            if close:
                writer.close()
                writer = None
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError):
            stats["socket_errors"] += 1
            if writer is not None:
                writer.close()
            writer = None
    if writer is not None:
        writer.close()


def percentile(sorted_values, p):
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, round(p / 100 * len(sorted_values)) - 1))
    return sorted_values[k]


async def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--host-header", default=None)
    ap.add_argument("--path", default="/")
    ap.add_argument("--rate", type=float, default=1000)
    ap.add_argument("--conns", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--timeout", type=float, default=2)
    args = ap.parse_args()
    args.host_header = args.host_header or f"{args.host}:{args.port}"

    stats = {"lat": [], "non2xx": 0, "socket_errors": 0, "last": 0.0}
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.05
    end = start + args.seconds
    t0 = time.perf_counter()
    await asyncio.gather(*(connection(i, args, start, end, stats) for i in range(args.conns)))
    wall = time.perf_counter() - t0
    lat = sorted(stats["lat"])
    done = len(lat)
    json.dump(
        {
            "requests": done,
            "duration_s": round(wall, 3),
            # Over the span from the first due time to the last answer: a client or proxy
            # that fell behind shows up as less than the asked rate.
            "rps": round(done / max(args.seconds, stats["last"] - start), 1),
            "p50_us": round(percentile(lat, 50) * 1e6),
            "p99_us": round(percentile(lat, 99) * 1e6),
            "max_us": round(lat[-1] * 1e6) if lat else 0,
            "non2xx": stats["non2xx"],
            "socket_errors": stats["socket_errors"],
        },
        sys.stdout,
    )
    print()


if __name__ == "__main__":
    asyncio.run(main())
