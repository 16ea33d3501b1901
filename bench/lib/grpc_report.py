"""bench/grpc's report: the table of one run (bench/out/grpc-<run>/) as Markdown.

Reads meta.txt, results.jsonl (one line per path, mode and concurrency) and h2load.jsonl
(optional). For each mode and concurrency: messages/s and p50/p90/p99/p99.9 of every path,
then what meshlet and Envoy add to the direct path at each percentile, and whether
meshlet adds less. Exit status 1 when any meshlet run had an error or did not run.
"""

import json
import os
import sys

PCTS = [("p50", "p50_us"), ("p90", "p90_us"), ("p99", "p99_us"), ("p99.9", "p999_us")]


def main(out):
    meta = open(os.path.join(out, "meta.txt")).read().strip().splitlines()
    rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
    print("# gRPC through meshlet vs Envoy vs direct\n")
    print("```")
    print("\n".join(meta))
    print("```\n")
    failed = False
    groups = []
    for r in rows:
        key = (r["mode"], r["conc"])
        if key not in groups:
            groups.append(key)
    for mode, conc in groups:
        by = {r["target"]: r for r in rows if r["mode"] == mode and r["conc"] == conc}
        unit = "calls" if mode == "unary" else "messages"
        print(f"## {mode}, concurrency {conc} ({unit} in flight on one h2c connection)\n")
        print(f"| path | {unit}/s | p50 µs | p90 µs | p99 µs | p99.9 µs | > 1 ms | errors | CPU µs/{unit[:-1]} | RSS idle → after MiB |")
        print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
        for t in ("direct", "envoy", "meshlet"):
            if t not in by:
                continue
            r = by[t]
            d = r["load"]
            n = d.get("messages", 0)
            cpu = f"{r['cpu_s'] * 1e6 / n:.1f}" if n else "-"
            if t == "direct":
                cpu += " (origin)"
            rss = f"{r['rss_idle_kb'] / 1024:.1f} → {r['rss_kb'] / 1024:.1f}"
            pct = " | ".join(str(d.get(k, 0)) for _, k in PCTS)
            slow = d.get("over_1ms", "-")
            print(f"| {t} | {d.get('rps', 0):,.0f} | {pct} | {slow} | {d.get('errors', 0)} | {cpu} | {rss} |")
            if t == "meshlet" and (d.get("errors", 0) or not n or d.get("failed")):
                failed = True
        if "direct" in by and "meshlet" in by:
            base = by["direct"]["load"]
            print()
            print("| added to direct | " + " | ".join(f"{p} µs" for p, _ in PCTS) + " |")
            print("|---|" + "---:|" * len(PCTS))
            added = {}
            for t in ("envoy", "meshlet"):
                if t not in by:
                    continue
                d = by[t]["load"]
                added[t] = [d.get(k, 0) - base.get(k, 0) for _, k in PCTS]
                print(f"| {t} | " + " | ".join(f"{a:+d}" for a in added[t]) + " |")
            if "envoy" in added:
                verdict = [
                    "yes" if m < e else "no"
                    for m, e in zip(added["meshlet"], added["envoy"])
                ]
                print("| meshlet adds less | " + " | ".join(verdict) + " |")
        print()
    h2 = os.path.join(out, "h2load.jsonl")
    if os.path.exists(h2):
        hr = [json.loads(l) for l in open(h2) if l.strip()]
        if hr:
            print("## h2load, unary (req/s; one connection, `-m` = concurrency)\n")
            concs = sorted({r["conc"] for r in hr})
            print("| path | " + " | ".join(f"-m {c}" for c in concs) + " | failed |")
            print("|---|" + "---:|" * len(concs) + "---:|")
            for t in ("direct", "envoy", "meshlet"):
                cells = [r for r in hr if r["target"] == t]
                if not cells:
                    continue
                byc = {r["conc"]: r for r in cells}
                vals = " | ".join(f"{byc[c]['rps']:,.0f}" if c in byc else "-" for c in concs)
                print(f"| {t} | {vals} | {sum(r['failed'] for r in cells)} |")
            print()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
