#!/usr/bin/env python3
"""Filter sets for the classifier-scale benchmark (bench/run.sh part 2).

gen_filters.py N OUTDIR --callouts a,b --app-cgroup DIR [--seed S]

Writes, for the same N filters:
  OUTDIR/filters-N.txt   `connredir filter load` input (KEY=VALUE lines)
  OUTDIR/nft-linear-N.nft  one nftables rule per filter (inet table, output chain)
  OUTDIR/nft-set-N.nft     one rule per family looking the destination up in an
                           interval set holding every filter's prefix

The set mixes IPv4 prefixes of every length 1..32 and IPv6 prefixes of every
length 1..128 (no prefix twice, so at most CONNREDIR_CANDIDATES_MAX overlap),
port ranges and single ports, tcp and any protocol, app-uid and app-cgroup
conditions and weights. Filter 1 is always the same one: it covers the
benchmark's destination 127.0.0.1 but asks for ports 1-2, so every connect
walks one candidate and matches nothing. No other filter covers 127.0.0.0/8,
so the sizes differ only in how many filters the index holds.
"""
import argparse
import ipaddress
import os
import random

BENCH_NET = ipaddress.ip_network("127.0.0.0/8")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("n", type=int)
    ap.add_argument("outdir")
    ap.add_argument("--callouts", default="v1")
    ap.add_argument("--app-cgroup", default="")
    ap.add_argument("--seed", type=int, default=5)
    a = ap.parse_args()
    rng = random.Random(a.seed)
    callouts = a.callouts.split(",")
    n = a.n
    nets = [BENCH_NET]
    seen = {BENCH_NET}
    if n > 1:
        v4 = (n - 1) * 6 // 10
        v6 = n - 1 - v4
        for fam_bits, count, ver in ((32, v4, 4), (128, v6, 6)):
            # Spread over every length; short lengths are capped at a quarter of
            # their prefixes (keeps nesting far below 32), the rest moves on.
            left = count
            lengths = list(range(1, fam_bits + 1))
            for i, length in enumerate(lengths):
                share = left // (len(lengths) - i)
                cap = max(0, (2 ** length) // 4)
                want = min(share, cap)
                made = 0
                tries = 0
                while made < want and tries < want * 20 + 100:
                    tries += 1
                    addr = rng.getrandbits(fam_bits)
                    net = (ipaddress.IPv4Network if ver == 4 else ipaddress.IPv6Network)(
                        (addr >> (fam_bits - length) << (fam_bits - length), length))
                    if net in seen or (ver == 4 and net.overlaps(BENCH_NET)):
                        continue
                    seen.add(net)
                    nets.append(net)
                    made += 1
                left -= made
    lines, linear = [], []
    for i, net in enumerate(nets):
        callout = callouts[i % len(callouts)]
        if i == 0:
            f = {"callout": callout, "dst": str(net), "port": "1-2", "proto": "tcp", "weight": "0"}
        else:
            f = {"callout": callout, "dst": str(net), "weight": str(rng.randrange(0, 1000))}
            r = rng.random()
            if r < 0.3:
                p = rng.randrange(1, 65000)
                f["port"] = f"{p}-{p + rng.randrange(1, 500)}"
            elif r < 0.6:
                f["port"] = str(rng.choice([22, 25, 53, 80, 443, 993, 3306, 5432, 8080, 8443]))
            f["proto"] = "tcp" if rng.random() < 0.7 else "any"
            r = rng.random()
            if r < 0.3:
                f["app_uid"] = str(rng.randrange(20000, 30000))
            elif r < 0.4 and a.app_cgroup:
                f["app_cgroup"] = a.app_cgroup
        lines.append(" ".join(f"{k}={v}" for k, v in f.items()))
        fam = "ip" if net.version == 4 else "ip6"
        rule = f"{fam} daddr {net}"
        if "port" in f:
            proto = "tcp" if f["proto"] == "tcp" else "th"
            if proto == "th":
                rule += " meta l4proto { tcp, udp }"
            rule += f" {proto} dport {f['port']}"
        elif f["proto"] == "tcp":
            rule += " meta l4proto tcp"
        if "app_uid" in f:
            rule += f" meta skuid {f['app_uid']}"
        # The nftables counterpart of "redirect this flow": a mark a nat
        # chain would act on; the packet is accepted either way.
        linear.append(f"add rule inet cbench out {rule} meta mark set 0x100")
    os.makedirs(a.outdir, exist_ok=True)
    with open(os.path.join(a.outdir, f"filters-{n}.txt"), "w") as fh:
        fh.write("\n".join(lines) + "\n")
    head = ("table inet cbench\ndelete table inet cbench\ntable inet cbench {\n"
            "  chain out { type filter hook output priority 0; policy accept; }\n}\n")
    with open(os.path.join(a.outdir, f"nft-linear-{n}.nft"), "w") as fh:
        fh.write(head + "\n".join(linear) + "\n")
    v4 = [str(x) for x in nets if x.version == 4]
    v6 = [str(x) for x in nets if x.version == 6]
    with open(os.path.join(a.outdir, f"nft-set-{n}.nft"), "w") as fh:
        fh.write(head)
        fh.write("add set inet cbench d4 { type ipv4_addr; flags interval; auto-merge; }\n")
        fh.write("add set inet cbench d6 { type ipv6_addr; flags interval; auto-merge; }\n")
        for name, elems in (("d4", v4), ("d6", v6)):
            for i in range(0, len(elems), 5000):
                fh.write(f"add element inet cbench {name} {{ {', '.join(elems[i:i + 5000])} }}\n")
        fh.write("add rule inet cbench out ip daddr @d4 meta mark set 0x100\n")
        fh.write("add rule inet cbench out ip6 daddr @d6 meta mark set 0x100\n")


if __name__ == "__main__":
    main()
