#!/usr/bin/env python3
"""bench/capacity's report: reads OUT/results.jsonl and OUT/meta.txt, prints markdown tables
(the figures docs/scaling.md's capacity model uses). Exit 1 when a publish run had errors
or non-2xx answers."""
import json
import os
import sys

out = sys.argv[1]
rows = [json.loads(line) for line in open(os.path.join(out, "results.jsonl")) if line.strip()]
meta = open(os.path.join(out, "meta.txt")).read()


def of(kind):
    return [r for r in rows if r["kind"] == kind]


def n(x):
    return f"{x:,.0f}" if isinstance(x, (int, float)) else str(x)


print(f"# bench/capacity — {os.path.basename(out)}\n")
print("```\n" + meta.strip() + "\n```\n")

reg, hb, watch, churn = of("registry"), of("heartbeat"), of("watch"), of("churn")
if reg:
    r = reg[0]
    per1k = 1000 / r["pods"]
    print("## Registry (one redis-server; the layout is the same on Sentinel and Cluster)\n")
    print("| figure | measured | per 1,000 pods |")
    print("|---|---:|---:|")
    print(f"| pods registered (`meshlet registry register`) over {r['services']} services | {n(r['pods'])} in {r['register_seconds']} s | |")
    print(f"| keys | {n(r['keys'])} | {n(r['keys'] * per1k)} |")
    print(f"| Redis used_memory | {n(r['used_memory_bytes'])} B | {r['used_memory_bytes'] * per1k / 2**20:.2f} MiB |")
    print(f"| bytes per pod | {n(r['bytes_per_pod'])} B | |")
    if hb:
        h = hb[0]
        per1k = 1000 / h["pods"]
        print(f"| heartbeats/s at {h['interval_s']:.0f} s (over {h['seconds']} s) | {h['heartbeats_per_s']} | {h['heartbeats_per_s'] * per1k:.0f} |")
        print(f"| Redis commands/s from heartbeats | {n(h['redis_commands_per_s'])} | {n(h['redis_commands_per_s'] * per1k)} |")
        print(f"| Redis input bytes/s from heartbeats | {n(h['redis_in_bytes_per_s'])} | {n(h['redis_in_bytes_per_s'] * per1k)} |")
        print(f"| `mesh:changes` messages/s from heartbeats | {h['changes_per_s']} | {h['changes_per_s'] * per1k} |")
    if churn:
        c = churn[0]
        print(f"| `mesh:changes` messages per replaced pod (drain, deregister, register; {c['replaced_pods']} pods) | {c['messages_per_replaced_pod']} | |")
    if watch and watch[0]["bytes_per_resync"]:
        w = watch[0]
        per1k = 1000 / w["pods"]
        print(f"| bytes one watcher's resync reads ({w['pods']} pods, {w['resyncs']} resyncs in {w['seconds']:.0f} s) | {n(w['bytes_per_resync'])} B | {n(w['bytes_per_resync'] * per1k)} B |")
        print(f"| per pod per resync | {w['bytes_per_pod_per_resync']} B | |")
        print(f"| one watcher at the default resync (5 s) | {n(w['bytes_per_resync'] / 5)} B/s | {n(w['bytes_per_resync'] * per1k / 5)} B/s |")
    print()

mem = of("memory")
if mem:
    print("## Redis memory per event (200 B payload, stream entry + dedupe key)\n")
    print("| store | events | used_memory delta | bytes/event | MiB per million events |")
    print("|---|---:|---:|---:|---:|")
    for m in mem:
        extra = f" (all six nodes: {m['all_nodes_mib_per_million']})" if "all_nodes_mib_per_million" in m else ""
        store = "one redis-server" if m["store"] == "single" else "Cluster, sum of the 3 masters"
        print(f"| {store} | {n(m['events'])} | {n(m['used_memory_bytes'])} B | {n(m['bytes_per_event'])} | {m['mib_per_million']}{extra} |")
    print()

fan = of("fanout")
if fan:
    print("## Hub fan-out on one shard (one redis-server, SPUBLISH of 256 B, 16 unpipelined publishers)\n")
    print("| subscribing meshlets (connections) | publishes/s | deliveries/s | all delivered |")
    print("|---:|---:|---:|---|")
    for f in fan:
        print(f"| {f['subscribers']} | {n(f['publishes_per_s'])} | {n(f['deliveries_per_s'])} | {'yes' if f['complete'] else 'NO'} |")
    print()

pub = of("publish")
bad = False
if pub:
    print("## Events/s through one meshlet, per broker (200 B payload)\n")
    print("| broker | form | connections | events/s | p50 ms | p99 ms | errors / non-2xx |")
    print("|---|---|---:|---:|---:|---:|---|")
    names = {"redis": "Redis, one server", "cluster": "Redis Cluster, replicas: 1 (WAIT)",
             "cluster-replicas0": "Redis Cluster, replicas: 0", "rabbitmq": "RabbitMQ (confirms)"}
    for p in pub:
        form = "one event a POST" if p["form"] == "single" else f"ndjson, {p['events_per_request']} a POST"
        errs = f"{p['errors']} / {p['non2xx']}"
        bad |= bool(p["errors"] or p["non2xx"])
        print(f"| {names.get(p['broker'], p['broker'])} | {form} | {p['conns']} | {n(p['events_per_s'])} | {p['p50_ms']:.2f} | {p['p99_ms']:.2f} | {errs} |")
    print()
if bad:
    print("**A publish run had errors or non-2xx answers: see the wrk-*.txt files.**")
sys.exit(1 if bad else 0)
