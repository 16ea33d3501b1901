#!/usr/bin/env python3
"""The markdown report of bench/events: the run's header (meta.txt) and one table from
results.jsonl, bare Redis beside meshlet, with the targets of issue 7.

Exit status 1 when a publish through meshlet failed (non-2xx or socket errors in wrk's
counts); a missed target is only marked in the table.
"""

import json
import sys


def ms(us):
    return f"{us / 1000:.2f} ms"


def main(out):
    meta = open(f"{out}/meta.txt").read().strip().splitlines()
    rows = [json.loads(line) for line in open(f"{out}/results.jsonl") if line.strip()]
    by = lambda kind: [r for r in rows if r["kind"] == kind]
    failed = False

    print(f"# Events benchmark — run {out.rstrip('/').rsplit('/', 1)[-1]}\n")
    for line in meta:
        print(f"- {line}")
    print()
    print("| figure | bare Redis | through meshlet | target |")
    print("|---|---|---|---|")

    for r in by("xadd"):
        print(f"| XADD/s, `redis-benchmark` 50 clients, -P {r['pipeline']} "
              f"| {r['rps']:,.0f}/s | | |")

    for r in by("publish"):
        w = r["wrk"]
        secs = w["duration_us"] / 1e6 if w["duration_us"] else 0
        errors = sum(w.get(k, 0) for k in
                     ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts"))
        failed |= errors > 0 or w["requests"] == 0
        events = w["requests"] * r["events_per_request"] / secs if secs else 0
        if r["form"] == "batch":
            what = (f"publish, ndjson batches of {r['events_per_request']} "
                    f"(wrk -c {r['conns']}; request p50 {ms(w['p50_us'])}, p99 {ms(w['p99_us'])})")
            ok = "met" if events >= 20000 else "**missed**"
            target = f"≥ 20,000/s: {ok}"
        else:
            what = (f"publish, one event per POST "
                    f"(wrk -c {r['conns']}; p50 {ms(w['p50_us'])}, p99 {ms(w['p99_us'])})")
            target = ""
        err = f", **{errors} errors**" if errors else ""
        print(f"| {what} | | {events:,.0f} events/s{err} | {target} |")

    for r in by("redis_loop"):
        print(f"| XADD → XREADGROUP BLOCK at {r['rate']:,.0f}/s ({r['events']:,} events): p50 / p99 / max "
              f"| {ms(r['p50_us'])} / {ms(r['p99_us'])} / {ms(r['max_us'])} | | |")

    for r in by("deliver"):
        ok = "met" if r["p99_us"] < 2000 else "**missed**"
        print(f"| publish → deliver at {r['rate']:,.0f}/s ({r['events']:,} events, two meshlets): "
              f"p50 / p99 / max | | {ms(r['p50_us'])} / {ms(r['p99_us'])} / {ms(r['max_us'])} "
              f"| p99 < 2 ms: {ok} |")
        p = r["publish"]
        print(f"| … of which the publish POST (answer 202): p50 / p99 | | "
              f"{ms(p['p50_us'])} / {ms(p['p99_us'])} | |")

    for r in by("memory"):
        print(f"| Redis memory per stored event ({r['payload_bytes']} B payload, "
              f"{r['events']:,} events) | {r['bare_bytes_per_event']:.0f} B (entry alone) "
              f"| {r['meshlet_bytes_per_event']:.0f} B (entry + dedupe key) | ~320 B floor: reported |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
