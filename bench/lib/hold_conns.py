#!/usr/bin/env python3
"""Holds N keep-alive connections open to a proxy and checks that every one is answered.

    hold_conns.py HOST:PORT HOSTHEADER N PID[,PID...] [BATCH] [SETTLE_S]

Opens N connections (in batches of BATCH at once), sends one GET on each and reads the
answer, keeps them all open, reads the proxy's VmRSS (PID) while they are held, then sends
a second GET on every connection. Prints one JSON line: connections opened, answered
(first and second round), non-200 answers, and the proxy's RSS in KiB before, while held
and peak. Only 127.0.0.1 is ever dialled. Exits non-zero when any connection was not
answered 200 both times. RSS is summed over the PIDs (nginx: master and workers). The held
reading is taken SETTLE_S seconds (default 0.5) after the last connection was answered.
"""
import asyncio
import json
import sys
import time


def rss_kb(pids, field="VmRSS"):
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    total += int(line.split()[1])
    return total


async def request(reader, writer, host):
    writer.write(f"GET / HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def main():
    target, host, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
    pid = [int(p) for p in sys.argv[4].split(",") if p]
    batch = int(sys.argv[5]) if len(sys.argv) > 5 else 500
    settle = float(sys.argv[6]) if len(sys.argv) > 6 else 0.5
    addr, port = target.rsplit(":", 1)
    assert addr.startswith("127."), "loopback only"
    before = rss_kb(pid)
    conns, statuses = [], []

    async def open_one():
        reader, writer = await asyncio.wait_for(asyncio.open_connection(addr, int(port)), 10)
        status = await asyncio.wait_for(request(reader, writer, host), 10)
        conns.append((reader, writer))
        statuses.append(status)

    started = time.monotonic()
    for i in range(0, n, batch):
        results = await asyncio.gather(*(open_one() for _ in range(min(batch, n - i))),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, Exception)]
        if errors:
            print(f"hold_conns: {len(errors)} connections failed: {errors[0]!r}", file=sys.stderr)
    await asyncio.sleep(settle)  # let the proxy settle (idle pools, freed buffers)
    held = rss_kb(pid)
    second = []
    for i in range(0, len(conns), batch):
        part = conns[i:i + batch]
        results = await asyncio.gather(*(asyncio.wait_for(request(r, w, host), 10) for r, w in part),
                                       return_exceptions=True)
        second.extend(results)
    peak = rss_kb(pid, "VmHWM")
    for _, w in conns:
        w.close()
    ok1 = sum(1 for s in statuses if s == 200)
    ok2 = sum(1 for s in second if s == 200)
    print(json.dumps({
        "connections": n, "opened": len(conns), "answered_first": ok1, "answered_second": ok2,
        "non_200": len(statuses) - ok1 + len(second) - ok2,
        "rss_before_kb": before, "rss_held_kb": held, "rss_peak_kb": peak,
        "seconds": round(time.monotonic() - started, 2),
    }))
    sys.exit(0 if ok1 == n and ok2 == n else 1)


asyncio.run(main())
