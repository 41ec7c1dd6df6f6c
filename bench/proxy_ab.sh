#!/usr/bin/env bash
# bench/proxy_ab.sh A_PROXY B_PROXY [ROUNDS] — interleaved A/B of two
# connredir-proxy builds (or one build with two sets of arguments) on the
# paths a proxy change can slow: short connections (`connload connect`:
# accept, onward connect, 1 byte each way, close) and 64-byte
# request/response on one connection (`connload rr`: one relay event per
# message). Every round measures A then B, or B then A (alternating), each
# for T seconds, everything pinned to CPU 0 (the stable placement of
# bench/run.sh). Prints every measurement and, per workload, the medians and
# the per-round ratio B/A as median (min-max).
#
#   A_ARGS, B_ARGS   extra arguments for each proxy (e.g. B_ARGS="--metrics 127.0.0.1:9464")
#   T                seconds per measurement (default 2)
#   BUILD            build tree with the connredir CLI and bench/connload (default build)
#
# As root: it creates a network namespace, a cgroup and connredir pins of
# its own (named cab-PID) and removes them on exit.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
A=$(realpath "$1") B=$(realpath "$2") ROUNDS=${3:-5}
T=${T:-2}
BUILD=$(realpath "${BUILD:-$ROOT/build}")
CLI=$BUILD/src/cli/connredir LOAD=$BUILD/bench/connload
[[ $(id -u) -eq 0 ]] || { echo "proxy_ab: needs root" >&2; exit 77; }
for b in "$A" "$B" "$CLI" "$LOAD"; do [[ -x $b ]] || { echo "proxy_ab: $b missing" >&2; exit 1; }; done

ID=cab-$$
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
CG=$CG2/$ID PIN=/sys/fs/bpf/$ID NS=$ID OUT=$(mktemp -d)
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for cg in $(find "$CG" -depth -type d 2>/dev/null); do echo 1 >"$cg/cgroup.kill" 2>/dev/null; done
  sleep 0.2
  "$CLI" --pin-dir "$PIN" down >/dev/null 2>&1
  rm -rf "$PIN"
  for cg in $(find "$CG" -depth -type d 2>/dev/null); do rmdir "$cg" 2>/dev/null; done
  ip netns del "$NS" 2>/dev/null
  rm -rf "$OUT"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$CG/on/app" "$CG/on/proxy" "$CG/off"
ip netns add "$NS"
ip netns exec "$NS" ip link set lo up
ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
ulimit -n "$(ulimit -Hn)"
"$CLI" --pin-dir "$PIN" up --cgroup "$CG/on" --proxies-in "$CG/on/proxy" >/dev/null
"$CLI" --pin-dir "$PIN" callout add v1 --proxy 127.0.0.1:15001 --proxy-uid 4001 >/dev/null
"$CLI" --pin-dir "$PIN" filter add --callout v1 --dst 127.0.0.1/32 --port 7002 >/dev/null

inns() { nsenter --net="/run/netns/$NS" taskset -c 0 "$@"; }
wait_port() {
  for _ in $(seq 200); do
    ip netns exec "$NS" ss -Hltn "sport = :$1" | grep -q . && return 0
    sleep 0.05
  done
  echo "proxy_ab: nothing listens on port $1" >&2
  exit 1
}
inns "$CLI" exec --cgroup "$CG/off" --uid 0 -- "$LOAD" server --listen 127.0.0.1:7002 \
  >"$OUT/server.log" 2>&1 &
PIDS+=($!)
wait_port 7002

# The proxy's CPU time (user + system), in clock ticks: CPU per operation is
# steadier than a rate on a shared machine.
TCK=$(getconf CLK_TCK)
cpu_ticks() { awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"; }

# measure VARIANT ROUND: starts that proxy, runs both workloads, stops it.
measure() {
  local v=$1 r=$2 bin args
  if [[ $v == A ]]; then bin=$A args=${A_ARGS:-}; else bin=$B args=${B_ARGS:-}; fi
  # shellcheck disable=SC2086
  inns "$CLI" exec --cgroup "$CG/on/proxy" --uid 4001 -- "$bin" --listen 127.0.0.1:15001 \
    $args >"$OUT/proxy-$v.log" 2>&1 &
  local pid=$!
  wait_port 15001
  local ppid=""
  for p in $(cat "$CG/on/proxy/cgroup.procs"); do
    [[ $(cat "/proc/$p/comm" 2>/dev/null) == connredir-proxy ]] && ppid=$p
  done
  [[ -n $ppid ]] || { echo "proxy_ab: proxy $v is not running" >&2; cat "$OUT/proxy-$v.log" >&2; exit 1; }
  for w in connect rr; do
    local extra=()
    [[ $w == rr ]] && extra=(--size 64)
    local j c0 c1
    c0=$(cpu_ticks "$ppid")
    j=$(inns "$CLI" exec --cgroup "$CG/on/app" --uid 4100 -- "$LOAD" "$w" --to 127.0.0.1:7002 \
      --seconds "$T" "${extra[@]}")
    c1=$(cpu_ticks "$ppid")
    echo "{\"round\":$r,\"variant\":\"$v\",\"workload\":\"$w\",\"proxy_cpu_s\":$(((c1 - c0) * 1000 / TCK))e-3,\"result\":$j}" |
      tee -a "$OUT/results.jsonl"
  done
  if [[ " $args " == *" --metrics "* ]]; then  # the counters were live: scrape once
    local m=${args#*--metrics }
    m=${m%% *}
    echo "# $v scraped: $(nsenter --net="/run/netns/$NS" curl -sS "http://$m/metrics" |
      grep -E '^connredir_proxy_(flows_total|flow_setup_seconds_count|flows_active) ' | tr '\n' ' ')"
  fi
  # `connredir exec` may fork: stop whatever runs in the proxy's cgroup.
  local procs
  procs=$(cat "$CG/on/proxy/cgroup.procs")
  if [[ -z $procs ]]; then
    echo "proxy_ab: proxy $v exited during the measurement:" >&2
    cat "$OUT/proxy-$v.log" >&2
    exit 1
  fi
  # shellcheck disable=SC2086
  kill $procs
  for _ in $(seq 100); do
    [[ -z $(cat "$CG/on/proxy/cgroup.procs") ]] && break
    sleep 0.05
  done
  [[ -z $(cat "$CG/on/proxy/cgroup.procs") ]] || { echo "proxy_ab: proxy $v did not stop" >&2; exit 1; }
  wait "$pid" || true
}

echo "# A: $A ${A_ARGS:-}"
echo "# B: $B ${B_ARGS:-}"
echo "# $(uname -r), $(nproc) CPUs, T=${T}s, $ROUNDS rounds, $(date -u +%FT%TZ)"
for ((r = 0; r < ROUNDS; r++)); do
  if ((r % 2 == 0)); then measure A "$r"; measure B "$r"; else measure B "$r"; measure A "$r"; fi
done

python3 - "$OUT/results.jsonl" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
def rate(res):
    return res["rate"]
for w in ("connect", "rr"):
    by = {(x["round"], x["variant"]): x["result"] for x in rows if x["workload"] == w}
    rounds = sorted({r for r, _ in by})
    a = [rate(by[(r, "A")]) for r in rounds]
    b = [rate(by[(r, "B")]) for r in rounds]
    ratios = [y / x for x, y in zip(a, b)]
    ops = lambda res: res.get("conns", res.get("exchanges", 1))
    cpu = {v: statistics.median(
        next(x["proxy_cpu_s"] for x in rows if x["workload"] == w and x["round"] == r
             and x["variant"] == v) / ops(by[(r, v)]) * 1e6 for r in rounds) for v in "AB"}
    pa = statistics.median(by[(r, "A")].get("p50_us", 0) for r in rounds)
    pb = statistics.median(by[(r, "B")].get("p50_us", 0) for r in rounds)
    print(f"{w}: A {statistics.median(a):.0f}/s p50 {pa:.1f} us; B {statistics.median(b):.0f}/s "
          f"p50 {pb:.1f} us; B/A {statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f}); "
          f"proxy CPU per op A {cpu['A']:.2f} us, B {cpu['B']:.2f} us")
PY
