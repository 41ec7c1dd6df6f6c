#!/usr/bin/env python3
"""Summarise bench/run.sh results (OUT/results.jsonl) as Markdown.

report.py OUTDIR > summary.md

Every figure is a median over rounds; a ratio is computed per round against
the baseline measured in the same round, and shown as median (min-max).
"""
import json
import os
import statistics
import sys
from collections import defaultdict

out = sys.argv[1]
rows = [json.loads(l) for l in open(os.path.join(out, "results.jsonl")) if l.strip()]
machine = {}
if os.path.exists(os.path.join(out, "machine.json")):
    machine = json.load(open(os.path.join(out, "machine.json")))

by = defaultdict(lambda: defaultdict(dict))  # (part, placement) -> config -> round -> result
for r in rows:
    by[(r["part"], r["placement"])][r["config"]][r["round"]] = r["result"]


def slab_objs(path):
    """{cache: (active objects, object size)} of a /proc/slabinfo copy ({} if absent)."""
    objs = {}
    if not os.path.exists(path):
        return objs
    for line in open(path):
        if line.startswith(("#", "slabinfo")):
            continue
        f = line.split()
        objs[f[0]] = (int(f[1]), int(f[3]))
    return objs


def med(xs):
    return statistics.median(xs) if xs else float("nan")


def ratio_stats(part, pl, cfg, base, metric, invert=False):
    d = by[(part, pl)]
    rs = []
    for rnd, res in d.get(cfg, {}).items():
        b = d.get(base, {}).get(rnd)
        if b and b.get(metric) and res.get(metric):
            rs.append(b[metric] / res[metric] if invert else res[metric] / b[metric])
    if not rs:
        return None
    return med(rs), min(rs), max(rs)


def fmt_ratio(t):
    if t is None:
        return "-"
    return f"{t[0]:.3f} ({t[1]:.3f}-{t[2]:.3f})"


def fmt_num(x, unit=""):
    if x != x:
        return "-"
    if abs(x) >= 1000:
        return f"{x / 1000:.1f}k{unit}"
    return f"{x:.3g}{unit}" if abs(x) < 10 else f"{x:.1f}{unit}"


def placements(part):
    return [pl for pl in ("1cpu", "free") if (part, pl) in by]


def metric_med(part, pl, cfg, metric):
    return med([r[metric] for r in by[(part, pl)].get(cfg, {}).values() if metric in r])


def goal(ok, text):
    return f"{'MET' if ok else 'MISSED'}: {text}"


lines = []
p = lines.append
if machine:
    p(f"Machine: {machine.get('cpus')} vCPU {machine.get('cpu')}, "
      f"{int(machine.get('mem_kib', 0)) // 1024} MiB, kernel {machine.get('kernel')}; "
      f"haproxy {machine.get('haproxy')}, socat {machine.get('socat')}; commit "
      f"{machine.get('commit')}; {machine.get('date')}; rounds {machine.get('rounds')}"
      f"{'; a system call costs ' + str(machine['syscall_ns']) + ' ns' if 'syscall_ns' in machine else ''}"
      f"{' (SMOKE: not figures)' if machine.get('smoke') else ''}.")
    p("")
goals = []

# Part 1
for pl in placements("connect"):
    if pl == placements("connect")[0]:
        p("## 1. Connect path (sequential connect + 1-byte exchange, SO_LINGER 0)")
        p("")
        p("| placement | config | conn/s | p50 µs | p99 µs | ratio to (a) | ratio to (d) |")
        p("|---|---|---|---|---|---|---|")
    for cfg in ("a-no-hooks", "b-loaded-no-match", "c-connredir-proxy", "d-nft-proxy"):
        if cfg not in by[("connect", pl)]:
            continue
        p(f"| {pl} | {cfg} | {fmt_num(metric_med('connect', pl, cfg, 'rate'))} | "
          f"{metric_med('connect', pl, cfg, 'p50_us'):.1f} | "
          f"{metric_med('connect', pl, cfg, 'p99_us'):.1f} | "
          f"{fmt_ratio(ratio_stats('connect', pl, cfg, 'a-no-hooks', 'rate'))} | "
          f"{fmt_ratio(ratio_stats('connect', pl, cfg, 'd-nft-proxy', 'rate'))} |")
    b = ratio_stats("connect", pl, "b-loaded-no-match", "a-no-hooks", "rate")
    c = ratio_stats("connect", pl, "c-connredir-proxy", "d-nft-proxy", "rate")
    if b:
        goals.append(goal(b[0] >= 0.97, f"1 ({pl}) (b) >= 0.97 x (a): {b[0]:.3f}"))
    if c:
        goals.append(goal(c[0] >= 1.3, f"1 ({pl}) (c) >= 1.3 x (d): {c[0]:.3f}"))
if placements("connect"):
    p("")

# Part 2
for pl in placements("classifier"):
    d = by[("classifier", pl)]
    if pl == placements("classifier")[0]:
        p("## 2. Classifier scale (sequential connect + 1 byte to a destination no filter matches)")
        p("")
        p("| placement | config | conn/s | p50 µs | ratio to 1 filter | ratio to no rules |")
        p("|---|---|---|---|---|---|")
    def size_key(c):
        parts = c.split("-")
        return (parts[0], parts[1] if len(parts) > 2 else "", int(parts[-1]) if parts[-1].isdigit() else 0)
    for cfg in sorted(d, key=size_key):
        p(f"| {pl} | {cfg} | {fmt_num(metric_med('classifier', pl, cfg, 'rate'))} | "
          f"{metric_med('classifier', pl, cfg, 'p50_us'):.1f} | "
          f"{fmt_ratio(ratio_stats('classifier', pl, cfg, 'connredir-1', 'rate')) if cfg.startswith('connredir') else '-'} | "
          f"{fmt_ratio(ratio_stats('classifier', pl, cfg, 'none', 'rate'))} |")
    biggest = max((c for c in d if c.startswith("connredir-")), key=lambda c: int(c.split("-")[1]),
                  default=None)
    if biggest and biggest != "connredir-1":
        r = ratio_stats("classifier", pl, biggest, "connredir-1", "rate", invert=True)
        if r:
            goals.append(goal(r[0] <= 1.05, f"2 ({pl}) cost of {biggest.split('-')[1]} filters "
                              f"<= 1.05 x one filter: {r[0]:.3f} x"))
if placements("classifier"):
    p("")
    lt = os.path.join(out, "filter-load-times.jsonl")
    if os.path.exists(lt):
        t = defaultdict(list)
        for l in open(lt):
            j = json.loads(l)
            t[j["filters"]].append(j["load_seconds"])
        p("`connredir filter load --replace` wall time (median): " +
          ", ".join(f"{n} filters {med(v):.2f} s" for n, v in sorted(t.items())) + ".")
        p("")

# Part 3
relay_header_done = False
relay_cfgs = ("direct", "connredir-proxy", "connredir-proxy-offload", "socat", "haproxy",
              "floor-epoll", "floor-uring")
for part, metric, label in (("bulk", "up_gbps", "bulk 1 GiB upload GB/s"),
                            ("bulk", "down_gbps", "bulk 1 GiB download GB/s"),
                            ("rr", "rate", "64 B request/response /s"),
                            ("short", "rate", "short connections conn/s")):
    pls = placements(part)
    if not pls:
        continue
    if not relay_header_done:
        relay_header_done = True
        p("## 3. Relay")
        p("")
        p("| workload | placement | " + " | ".join(relay_cfgs) +
          " | connredir-proxy / haproxy | best floor / haproxy |")
        p("|---|---|" + "---|" * len(relay_cfgs) + "---|---|")
    for pl in pls:
        cells = []
        for cfg in relay_cfgs:
            v = metric_med(part, pl, cfg, metric)
            r = ratio_stats(part, pl, cfg, "direct", metric)
            cells.append("-" if v != v else f"{fmt_num(v)} ({r[0]:.2f})" if r else fmt_num(v))
        h = ratio_stats(part, pl, "connredir-proxy", "haproxy", metric)
        # The cheapest relay's lead over haproxy: no relay on this machine
        # does better, so it bounds what connredir-proxy can reach.
        floors = [f for f in (ratio_stats(part, pl, c, "haproxy", metric)
                              for c in ("floor-epoll", "floor-uring")) if f]
        best = max(floors, key=lambda f: f[0]) if floors else None
        p(f"| {label} | {pl} | " + " | ".join(cells) + f" | {fmt_ratio(h)} | {fmt_ratio(best)} |")
        if h:
            goals.append(goal(h[0] >= 1.2, f"3 ({pl}) {label}: connredir-proxy >= 1.2 x haproxy: "
                              f"{h[0]:.3f}"))
if placements("bulk") or placements("rr"):
    p("")
    p("In parentheses: ratio to direct loopback in the same round.")
    p("")

# Part 4
for pl in placements("chain"):
    if pl == placements("chain")[0]:
        p("## 4. Chain length (vendors the connection passes, sequential connect + 1 byte)")
        p("")
        p("| placement | " + " | ".join(f"{k} hops" for k in range(9)) + " | µs per hop (fit) | R² | worst residual |")
        p("|---|" + "---|" * 9 + "---|---|---|")
    us = []
    for k in range(9):
        r = metric_med("chain", pl, f"hops-{k}", "rate")
        us.append(1e6 / r if r == r and r else float("nan"))
    pts = [(k, u) for k, u in enumerate(us) if k >= 1 and u == u]
    slope = r2 = worst = float("nan")
    if len(pts) >= 3:
        xs, ys = zip(*pts)
        mx, my = statistics.mean(xs), statistics.mean(ys)
        sxx = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in pts) / sxx
        icpt = my - slope * mx
        ss_res = sum((y - (icpt + slope * x)) ** 2 for x, y in pts)
        ss_tot = sum((y - my) ** 2 for y in ys)
        r2 = 1 - ss_res / ss_tot if ss_tot else 1.0
        worst = max(abs(y - (icpt + slope * x)) / (icpt + slope * x) for x, y in pts)
        goals.append(goal(r2 >= 0.98, f"4 ({pl}) per-hop cost linear over 1..8 hops: "
                          f"{slope:.1f} µs/hop, R² {r2:.4f}, worst residual {worst * 100:.1f}%"))
    p(f"| {pl} | " + " | ".join(f"{u:.1f} µs" for u in us) +
      f" | {slope:.1f} | {r2:.4f} | {worst * 100:.1f}% |")
if placements("chain"):
    p("")
    p("Cells: wall time per connection (1 / median rate); on 1cpu that is the CPU cost of a "
      "connection through k proxies.")
    p("")

# Part 5
for pl in placements("sockopt"):
    g = by[("sockopt", pl)]["gbench"][0]
    meds = {}
    for b in g.get("benchmarks", []):
        name = b.get("run_name", b["name"]).split("/")[0]
        if b.get("aggregate_name") == "median" or (b.get("run_type") == "iteration" and name not in meds):
            meds[name] = b["real_time"] if b.get("time_unit", "ns") == "ns" else b["real_time"] * 1000
    if pl == placements("sockopt")[0]:
        p("## 5. Socket options (Google Benchmark, median ns per call)")
        p("")
        p("| placement | " + " | ".join(n.replace("BM_", "") for n in meds) + " |")
        p("|---|" + "---|" * len(meds))
    p(f"| {pl} | " + " | ".join(f"{v:.0f}" for v in meds.values()) + " |")
    base = meds.get("BM_SO_ORIGINAL_DST_nat")
    if base:
        for n in ("BM_query_records", "BM_query_context", "BM_set_records"):
            if n in meds:
                goals.append(goal(meds[n] <= 1.5 * base, f"5 ({pl}) {n[3:]} <= 1.5 x "
                                  f"SO_ORIGINAL_DST(nat): {meds[n]:.0f} ns = {meds[n] / base:.2f} x"))
if placements("sockopt"):
    p("")

# Part 6
if ("memory", "free") in by:
    p("## 6. Memory (concurrent relayed connections, free placement)")
    p("")
    p("| path | conns | kernel slab bytes / conn | process RSS KiB per 10k conns | RSS after churn vs open | slab after churn vs open | churned |")
    p("|---|---|---|---|---|---|---|")
    for cfg, d in by[("memory", "free")].items():
        r = d[0]
        n = r["conns"]
        slab = (r["slab_open"] - r["slab_before"]) / n
        rss = (r["rss_kib_open"] - r["rss_kib_before"]) * 10000 / n
        drss = r["rss_kib_after_churn"] - r["rss_kib_open"]
        dslab = r["slab_after_churn"] - r["slab_open"]
        p(f"| {cfg} | {n} | {slab:.0f} | {rss:.0f} | {drss:+d} KiB (max {r['rss_kib_max']}) | "
          f"{dslab / 1024:+.0f} KiB | {r['churned']} |")
        if cfg == "connredir-proxy" and r["churned"]:
            growth = drss / max(1, r["rss_kib_open"])
            goals.append(goal(growth <= 0.05, f"6 proxy RSS flat under {r['churned']} churned "
                              f"connections: {drss:+d} KiB ({growth * 100:+.1f}%)"))
    p("")
    p("Slab bytes include the three sockets (and pipes) of each relayed flow; see RESULTS.md for "
      "the per-cache breakdown.")
    p("")
    # connredir's own kernel memory: its sk_storage lives in the kmalloc-cg caches (values plus
    # the element header; the 1 KiB class holds a full sk_state, the 192-byte class a brief and
    # each socket's storage header, struct bpf_local_storage). From the slab dumps connload took.
    caches = ("kmalloc-cg-1k", "kmalloc-cg-192")
    snaps = {cfg: {w: slab_objs(os.path.join(out, f"slab-{name}-{w}.txt"))
                   for w in ("before", "open", "after-churn")}
             for cfg, name in (("connredir-proxy", "connredir"), ("nft-proxy", "nft"),
                               ("direct", "direct"))}
    if all(snaps[c]["before"] and snaps[c]["open"] for c in snaps):
        p("| path | " + " | ".join(f"{c} objects / conn (bytes)" for c in caches) +
          " | sum, bytes / conn | sum after churn vs open |")
        p("|---|" + "---|" * (len(caches) + 2))
        for cfg, d in by[("memory", "free")].items():
            sn = snaps.get(cfg)
            if not sn:
                continue
            n = d[0]["conns"]
            cells, total, churn = [], 0, ""
            for c in caches:
                objs = sn["open"].get(c, (0, 0))[0] - sn["before"].get(c, (0, 0))[0]
                size = sn["open"].get(c, (0, 0))[1]
                cells.append(f"{objs / n:.2f} ({objs * size / n:.0f})")
                total += objs * size / n
            if sn["after-churn"]:
                dchurn = sum((sn["after-churn"].get(c, (0, 0))[0] - sn["open"].get(c, (0, 0))[0]) *
                             sn["open"].get(c, (0, 0))[1] for c in caches)
                churn = f"{dchurn / 1024:+.0f} KiB"
            p(f"| {cfg} | " + " | ".join(cells) + f" | {total:.0f} | {churn or '-'} |")
        p("")

# `connredir flows` while part 6 held its flows
if ("flows", "free") in by:
    p("## 6b. Listing live flows (`connredir flows --json`, sock_diag)")
    p("")
    p("| flows held | sockets listed | seconds per listing (3 runs) |")
    p("|---|---|---|")
    for cfg, d in by[("flows", "free")].items():
        r = d[0]
        p(f"| {r['held']} | {r['sockets_listed']} | {', '.join(f'{x:.3f}' for x in r['seconds'])} |")
    p("")

# Part 8: UDP
udp_kinds = (("rr", "64 B request/response, unconnected socket (sendto)"),
             ("rr-connected", "64 B request/response, connected socket"),
             ("flows", "one exchange per new socket (new flow each)"))
for pl in placements("udp"):
    d = by[("udp", pl)]
    if pl == placements("udp")[0]:
        p("## 8. UDP (every reply checked to come from the destination the client sent to)")
        p("")
        p("| placement | workload | config | /s | p50 µs | p99 µs | lost | ratio to (a) | ratio to (d) |")
        p("|---|---|---|---|---|---|---|---|---|")
    for kind, label in udp_kinds:
        for c in ("a-no-hooks", "b-loaded-no-match", "c-connredir-proxy", "d-nft-proxy"):
            cfg = f"{c}.{kind}"
            if cfg not in d:
                continue
            lost = sum(r.get("lost", 0) for r in d[cfg].values())
            p(f"| {pl} | {label} | {c} | {fmt_num(metric_med('udp', pl, cfg, 'rate'))} | "
              f"{metric_med('udp', pl, cfg, 'p50_us'):.1f} | "
              f"{metric_med('udp', pl, cfg, 'p99_us'):.1f} | {lost} | "
              f"{fmt_ratio(ratio_stats('udp', pl, cfg, f'a-no-hooks.{kind}', 'rate'))} | "
              f"{fmt_ratio(ratio_stats('udp', pl, cfg, f'd-nft-proxy.{kind}', 'rate'))} |")
        r = ratio_stats("udp", pl, f"c-connredir-proxy.{kind}", f"d-nft-proxy.{kind}", "rate")
        if r:
            goals.append(goal(r[0] >= 1.0, f"8 ({pl}) UDP {kind}: connredir-proxy >= nftables "
                              f"REDIRECT driving the same proxy: {r[0]:.3f}"))
if placements("udp"):
    p("")

# Profile (--profile): connredir's BPF programs per connection
bpf_path = os.path.join(out, "profile-bpf.jsonl")
if os.path.exists(bpf_path):
    p("## Kernel-side cost per connection (--profile, 1cpu, kernel.bpf_stats_enabled)")
    p("")
    p("| config | program | runs / conn | ns / run | ns / conn |")
    p("|---|---|---|---|---|")
    for l in open(bpf_path):
        if not l.strip():
            continue
        r = json.loads(l)
        n = max(1, r["conns"])
        total = 0
        for name, (runs, ns) in sorted(r["progs"].items(), key=lambda kv: -kv[1][1]):
            total += ns
            p(f"| {r['config']} | {name} | {runs / n:.2f} | {ns / max(1, runs):.0f} | {ns / n:.0f} |")
        p(f"| {r['config']} | **all** | | | **{total / n:.0f}** |")
    p("")
    p("bpf_stats adds about 20 ns to every run; the run times include it.")
    p("")

if goals:
    p("## Goals")
    p("")
    for g in goals:
        p(f"- {g}")
print("\n".join(lines))
