#!/usr/bin/env python3
"""Turns bench/run's raw results into markdown tables and decides pass/fail.

    report.py OUTDIR            print the report for OUTDIR/results.jsonl + OUTDIR/meta.txt;
                                exit 1 when meshlet answered any error or did no work
    report.py oha-json FILE     print oha's --output-format json as this bench's load record
    report.py counters perf|strace FILE
                                print `perf stat -x,` or `strace -c` output as the counter
                                fields of a "proc" record (JSON members, no braces)

A results line is {"mode", "conns", "target", "load": {...}, "proc": {...} | null}:
"load" is what the load tool measured (requests, rps, p50_us, p99_us, errors by kind),
"proc" what bench/run read from /proc for the proxy (RSS in KiB, CPU seconds; in the
fixed-rate runs also ctx_switches, and syscalls, cycles, instructions, cache_misses when
measured, null or absent when not).
"""

import json
import sys
from pathlib import Path

PROXY = "meshlet"
# "hyper" is the floor (bench/hyper_floor.rs): a reference, not a peer meshlet must beat.
TARGET_ORDER = ["direct", "nginx", "haproxy", "envoy", "hyper", "meshlet"]
PEERS = ("nginx", "haproxy", "envoy")


def errors(load):
    keys = ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts", "socket_errors")
    return sum(load.get(k, 0) for k in keys)


def error_detail(load):
    keys = ("non2xx", "connect_errors", "read_errors", "write_errors", "timeouts", "socket_errors")
    parts = [f"{k} {load[k]}" for k in keys if load.get(k)]
    return ", ".join(parts)


def others(row):
    """Share of the machine (all cores) that processes outside the bench used during the run."""
    v = row.get("others_pct")
    return "–" if v is None else f"{v:.0f}"


def lat(us):
    if us is None:
        return "–"
    return f"{us} µs" if us < 1000 else f"{us / 1000:.2f} ms"


def mib(kb):
    return "–" if kb is None else f"{kb / 1024:.1f}"


def ratio(a, b):
    return "–" if not a or not b else f"{a / b:.2f}×"


def rps(load):
    if "rps" in load:  # rate clients: requests over the scheduled time, not the tail
        return load["rps"]
    return load["requests"] / load["duration_s"] if load["duration_s"] else 0.0


def cpu_per_req_us(row):
    proc = row["proc"]
    if not proc or not row["load"]["requests"]:
        return None
    return proc["cpu_s"] * 1e6 / row["load"]["requests"]


def mode_title(mode, conns, meta):
    dur = meta.get("duration", "?")
    threads = min(conns, 2)
    if mode == "keepalive":
        return f"keep-alive, {conns} connection{'s' if conns != 1 else ''} (wrk -t{threads} -c{conns} -d{dur})"
    return (f"close: one request per connection, {conns} connections "
            f"(wrk -t{threads} -c{conns} -d{dur} -H 'Connection: close')")


def table(rows):
    out = ["| target | req/s | p50 | p99 | errors | RSS idle MiB | RSS peak MiB | CPU s | CPU µs/req | new origin conns | others % |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        load, proc = r["load"], r["proc"] or {}
        cpr = cpu_per_req_us(r)
        out.append("| {} | {:,.0f} | {} | {} | {} | {} | {} | {} | {} | {} | {} |".format(
            r["target"], rps(load), lat(load["p50_us"]), lat(load["p99_us"]), errors(load),
            mib(proc.get("rss_idle_kb")), mib(proc.get("rss_peak_kb")),
            "–" if not proc else f"{proc['cpu_s']:.2f}", "–" if cpr is None else f"{cpr:.1f}",
            f"{r['origin_accepts']:,}" if "origin_accepts" in r else "–", others(r)))
    return out


def ratios(rows):
    by = {r["target"]: r for r in rows}
    me = by.get(PROXY)
    if not me:
        return []
    out = [f"{PROXY} vs | req/s ratio | p99 ratio | p50 added | CPU/req ratio",
           "|---|---:|---:|---:|---:|"]
    out[0] = "| " + out[0] + " |"
    for name in TARGET_ORDER:
        if name == PROXY or name not in by:
            continue
        peer = by[name]
        p50_delta = me["load"]["p50_us"] - peer["load"]["p50_us"]
        cpu_ratio = ratio(cpu_per_req_us(me), cpu_per_req_us(peer))
        out.append("| {} | {} | {} | {:+d} µs | {} |".format(
            name, ratio(rps(me["load"]), rps(peer["load"])),
            ratio(me["load"]["p99_us"], peer["load"]["p99_us"]), p50_delta, cpu_ratio))
    return out


def per_req(row, key):
    """A counter of the run divided by the requests answered; None when not measured."""
    v = (row["proc"] or {}).get(key)
    n = row["load"]["requests"]
    return None if v is None or not n else v / n


def fmt(v, spec):
    return "–" if v is None else format(v, spec)


def rate_table(rows, meta):
    seconds = float(meta.get("rate_seconds") or 0)
    hw = any((r["proc"] or {}).get("instructions") is not None for r in rows)
    head = ("| proxy | achieved req/s | p50 | p99 | errors | CPU s | vCPU | CPU µs/req | syscalls/req "
            "| ctx sw/req |" + (" IPC | cache misses/req |" if hw else "")
            + " RSS idle MiB | RSS peak MiB | others % |")
    out = [head, "|---|" + "---:|" * (head.count("|") - 2)]
    for r in rows:
        load, proc = r["load"], r["proc"]
        vcpu = proc["cpu_s"] / seconds if seconds else 0
        cpr = cpu_per_req_us(r)
        ipc = None
        if proc.get("instructions") is not None and proc.get("cycles"):
            ipc = proc["instructions"] / proc["cycles"]
        cells = [r["target"], f"{rps(load):,.0f}", lat(load["p50_us"]), lat(load["p99_us"]),
                 str(errors(load)), f"{proc['cpu_s']:.2f}", f"{vcpu:.3f}", fmt(cpr, ".1f"),
                 fmt(per_req(r, "syscalls"), ".1f"), fmt(per_req(r, "ctx_switches"), ".2f")]
        if hw:
            cells += [fmt(ipc, ".2f"), fmt(per_req(r, "cache_misses"), ".0f")]
        cells += [mib(proc["rss_idle_kb"]), mib(proc["rss_peak_kb"]), others(r)]
        out.append("| " + " | ".join(cells) + " |")
    return out


def rate_ratios(rows):
    """meshlet's CPU per request over the best peer's, and over the hyper floor's."""
    by = {r["target"]: r for r in rows}
    me = by.get(PROXY)
    mine = cpu_per_req_us(me) if me else None
    if not mine:
        return []
    peers = [(cpu_per_req_us(by[p]), p) for p in PEERS if p in by and cpu_per_req_us(by[p])]
    parts = []
    if peers:
        best, name = min(peers)
        parts.append(f"meshlet / best peer ({name}) CPU per request: **{mine / best:.2f}×**")
    floor = cpu_per_req_us(by["hyper"]) if "hyper" in by else None
    if floor:
        parts.append(f"meshlet / hyper floor: {mine / floor:.2f}×")
    return ["; ".join(parts) + ".", ""] if parts else []


def memory_table(results):
    """RSS of each proxy after every run, in run order: growth shows up as a rising row."""
    runs = [r for r in results if r["proc"]]
    targets = [t for t in TARGET_ORDER if any(r["target"] == t for r in runs)]
    cols = []
    for r in runs:
        label = f"{r['mode']}/{r['conns']}"
        if label not in cols:
            cols.append(label)
    out = ["| proxy | idle | " + " | ".join(cols) + " |",
           "|---|" + "---:|" * (len(cols) + 1)]
    for t in targets:
        mine = {f"{r['mode']}/{r['conns']}": r for r in runs if r["target"] == t}
        idle = next(iter(mine.values()))["proc"]["rss_idle_kb"]
        cells = [mib(mine[c]["proc"]["rss_after_kb"]) if c in mine else "–" for c in cols]
        out.append(f"| {t} | {mib(idle)} | " + " | ".join(cells) + " |")
    return out


def held_table(rows):
    """N keep-alive connections held open at once: answered, and what holding them costs."""
    out = ["| target | answered (1st / 2nd round) | RSS before | RSS holding them | RSS peak | "
           "KiB per held connection |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        h = r["held"]
        n = h.get("connections", 0)
        if h.get("failed"):
            out.append(f"| {r['target']} | failed (see raw/hold-{r['target']}.txt) | – | – | – | – |")
            continue
        per = (h["rss_held_kb"] - h["rss_before_kb"]) / n if n else 0
        out.append(f"| {r['target']} | {h['answered_first']:,} / {h['answered_second']:,} of {n:,} | "
                   f"{mib(h['rss_before_kb'])} | {mib(h['rss_held_kb'])} | {mib(h['rss_peak_kb'])} | "
                   f"{per:.1f} |")
    return out


def read_meta(outdir):
    meta = {}
    path = outdir / "meta.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "note":
                meta.setdefault("notes", []).append(value.strip())
            elif value:
                meta[key.strip()] = value.strip()
    return meta


def report(outdir):
    meta = read_meta(outdir)
    results = [json.loads(l) for l in (outdir / "results.jsonl").read_text().splitlines() if l.strip()]
    held = [r for r in results if r["mode"] == "held"]
    results = [r for r in results if r["mode"] != "held"]
    for r in results:  # wrk's summary.lua gives µs, the rate clients give seconds
        load = r["load"]
        if "duration_s" not in load:
            load["duration_s"] = load.get("duration_us", 0) / 1e6
    order = {t: i for i, t in enumerate(TARGET_ORDER)}
    lines = [f"## meshlet benchmark: {meta.get('workers', '?')} worker(s) per proxy", ""]
    for key in ("date", "machine", "cpu", "kernel", "meshlet", "tools", "command", "priority", "peak RSS",
                "floor", "counters"):
        if key in meta:
            lines.append(f"- {key}: {meta[key]}")
    lines += ["- access logging off everywhere: nginx `access_log off`, HAProxy without `log`, "
              "Envoy without access_log, meshlet with `RUST_LOG=warn` (its access lines are info)",
              "- meshlet: static registry (no Redis), policy on: timeout 5s, retry attempts 3, "
              "breaker failures 5 / open_for 30s; requests carry `Host: origin`",
              "- hyper: the floor, not a peer (bench/hyper_floor.rs): one current_thread runtime, "
              "hyper's http1 server, one hyper http1 client connection to the origin per client "
              "connection, no policy, no logging",
              "- errors = non-2xx/3xx + socket errors (connect, read, write, timeout)",
              "- new origin conns = connections the origin accepted during the run (nginx "
              "stub_status): for a proxy, the upstream connections it opened; 0 = all reused",
              "- CPU s = utime+stime of the proxy's processes (all threads) during the run; "
              "others % = CPU used by processes outside the bench during the run, as a share of "
              "the whole machine (noise: anything above a few % skews that row)", ""]
    for n in meta.get("notes", []):
        lines.append(f"Note: {n}")
    if meta.get("notes"):
        lines.append("")

    failures, warnings = [], []
    groups = []
    for r in results:
        key = (r["mode"], r["conns"])
        if r["mode"] != "rate" and key not in groups:
            groups.append(key)
    for mode, conns in groups:
        rows = sorted((r for r in results if (r["mode"], r["conns"]) == (mode, conns)),
                      key=lambda r: order.get(r["target"], 99))
        lines += [f"### {mode_title(mode, conns, meta)}", ""] + table(rows) + [""]
        rat = ratios(rows)
        if rat:
            lines += rat + [""]
    rate_rows = sorted((r for r in results if r["mode"] == "rate"), key=lambda r: order.get(r["target"], 99))
    rate_conns = sorted({r["conns"] for r in rate_rows})
    for conns in rate_conns:
        rows = [r for r in rate_rows if r["conns"] == conns]
        lines += [f"### fixed rate: {meta.get('rate', '1000')} req/s, {conns} connection"
                  f"{'s' if conns != 1 else ''}, {meta.get('rate_seconds', '?')}s ({meta.get('rate_tool', '?')})", ""]
        lines += rate_table(rows, meta) + [""]
        lines += rate_ratios(rows)
    if rate_rows:
        lines += ["vCPU = the proxy's CPU seconds over the run / its scheduled seconds (1.000 = one "
                  "core busy): the share of a core it takes to serve this rate. RSS peak: VmHWM "
                  "of the run. syscalls/req: `perf stat -e raw_syscalls:sys_enter -p` (or "
                  "`strace -c -f`) over the run, on the threads the proxy had when it began; ctx "
                  "sw/req: voluntary + non-voluntary context switches of every thread "
                  "(/proc/PID/task/*/status), delta over the run; IPC and cache misses from "
                  f"`perf stat -e cycles,instructions,cache-misses` where the CPU exposes them "
                  f"(counters here: {meta.get('counters', 'none')}). All divided by the requests "
                  "answered.", ""]
    if any(r["proc"] for r in results):
        lines += ["### RSS (MiB) of each proxy at idle and after each run", ""] + memory_table(results) + [""]
    held = sorted(held, key=lambda r: order.get(r["target"], 99))
    if held:
        lines += [f"### {held[0]['conns']:,} keep-alive connections held open at once", ""]
        lines += held_table(held) + [""]
        lines += ["Each connection opened (100 at a time) and answered once, all held open, then "
                  "answered again. RSS summed over the target's processes (for `direct`: the "
                  "origin's). KiB per held connection = (holding − before) / connections.", ""]

    metrics = outdir / "meshlet-metrics.txt"
    if metrics.exists():
        wanted = ("meshlet_requests_total", "meshlet_errors_total", "meshlet_retries_total",
                  "meshlet_upstream_connect_errors_total", "meshlet_breaker_transitions_total",
                  "meshlet_retry_budget_exhausted_total", "meshlet_breaker_state")
        found = [l for l in metrics.read_text().splitlines() if l.startswith(wanted)]
        lines += ["### meshlet's own counters at the end (/metrics, warm-up included)", "", "```"]
        lines += found or ["(none of the request, error, retry or breaker counters is present)"]
        lines += ["```", ""]

    for r in results:
        n = errors(r["load"])
        where = f"{r['target']} {r['mode']}/{r['conns']}"
        if r["target"] == PROXY and (n or not r["load"]["requests"]):
            failures.append(f"{where}: {n} errors ({error_detail(r['load']) or 'no requests done'})")
        elif n:
            warnings.append(f"{where}: {n} errors ({error_detail(r['load'])})")
    for r in held:
        h = r["held"]
        n = h.get("connections", 0)
        incomplete = h.get("failed") or h.get("answered_first") != n or h.get("answered_second") != n
        if incomplete:
            where = f"{r['target']} held/{n}"
            detail = f"{h.get('answered_first', 0)} / {h.get('answered_second', 0)} of {n} answered"
            (failures if r["target"] == PROXY else warnings).append(f"{where}: {detail}")
    for w in warnings:
        lines.append(f"WARNING (peer, not meshlet): {w}")
    for f in failures:
        lines.append(f"FAIL: {f}")
    if not failures:
        lines.append(f"OK: {PROXY} answered every request of every run without error.")
    print("\n".join(lines))
    return 1 if failures else 0


def oha_json(path):
    """oha's JSON → this bench's load record (seconds → µs)."""
    d = json.loads(Path(path).read_text())
    s = d["summary"]
    pct = d.get("latencyPercentiles", {})
    codes = d.get("statusCodeDistribution", {})
    non2xx = sum(v for k, v in codes.items() if not 200 <= int(k) < 400)
    # oha cuts the requests still in flight when -z runs out: not an answer, not an error.
    errs = dict(d.get("errorDistribution", {}))
    cut = errs.pop("aborted due to deadline", 0)
    socket_errors = sum(errs.values())
    ok = sum(codes.values())
    total = s.get("total", 0)
    rec = {
        "requests": ok,
        "duration_s": round(total, 3),
        "rps": round(s.get("requestsPerSec", 0), 1),
        "p50_us": round((pct.get("p50") or 0) * 1e6),
        "p99_us": round((pct.get("p99") or 0) * 1e6),
        "max_us": round((s.get("slowest") or 0) * 1e6),
        "non2xx": non2xx,
        "socket_errors": socket_errors,
        "cut_at_end": cut,
    }
    print(json.dumps(rec))
    return 0


def counters(tool, path):
    """`perf stat -x,` (count,unit,event,...) or `strace -c` output → counter members."""
    text = Path(path).read_text()
    rec = {"syscalls": None, "cycles": None, "instructions": None, "cache_misses": None}
    if tool == "perf":
        names = {"raw_syscalls:sys_enter": "syscalls", "cycles": "cycles",
                 "instructions": "instructions", "cache-misses": "cache_misses"}
        for line in text.splitlines():
            f = line.split(",")
            if len(f) < 3 or line.startswith("#"):
                continue
            # Hybrid CPUs name them cpu_core/cycles/: match on the bare event name.
            event = f[2].strip("/").split("/")[-1]
            if event in names and f[0].strip().isdigit():  # "<not counted>" stays None
                rec[names[event]] = int(f[0])
    else:
        for line in text.splitlines():
            f = line.split()
            if f and f[-1] == "total" and len(f) >= 5 and f[3].isdigit():
                rec["syscalls"] = int(f[3])
    print(json.dumps(rec)[1:-1])
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "counters":
        sys.exit(counters(sys.argv[2], sys.argv[3]))
    if len(sys.argv) == 3 and sys.argv[1] == "oha-json":
        sys.exit(oha_json(sys.argv[2]))
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    sys.exit(report(Path(sys.argv[1])))
