#!/usr/bin/env bash
# connredir benchmark suite (issue 5). See bench/README.md.
#
#   bench/run.sh                 every part, both placements (~15 min)
#   bench/run.sh PART [PART...]  some parts: connect classifier relay chain sockopt memory trace udp
#   bench/run.sh --smoke         seconds-long version of every part (CI)
# Options: --build-dir DIR (default build-bench), --out DIR (default bench/out),
#          --placements "1cpu free", --rounds N,
#          --profile (connect part: syscalls per connection of each proxy and a
#          system-wide perf profile of (c) and (d) on 1cpu, and, when the free
#          placement is measured, scheduler events per connection and wake-up
#          latencies of (c) and (d) unpinned; trace part: BPF run time per
#          connection of each config, 1cpu; in OUT/profile-*).
#
# (Programs enter a namespace with nsenter --net, not `ip netns exec`, which
# remounts /sys and would hide the cgroup2 mount.)
# Everything runs inside network namespaces and cgroups this script creates,
# as root; traffic stays on their loopback. All of it (namespaces, cgroups,
# pinned BPF objects, processes) is removed on exit, also on errors/Ctrl-C.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
BUILD=$ROOT/build-bench
OUT=$HERE/out
SMOKE=0
PARTS=()
PLACEMENTS=""
ROUNDS=""
PROFILE=0
while (($#)); do
  case $1 in
    --smoke) SMOKE=1 ;;
    --build-dir) BUILD=$2; shift ;;
    --out) OUT=$2; shift ;;
    --placements) PLACEMENTS=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --profile) PROFILE=1 ;;
    -h|--help) sed -n 2,13p "$0"; exit 0 ;;
    connect|classifier|relay|chain|sockopt|memory|trace|udp) PARTS+=("$1") ;;
    *) echo "run.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
((${#PARTS[@]})) || PARTS=(connect classifier relay chain sockopt memory trace udp)

if [[ $(id -u) -ne 0 ]]; then
  echo "run.sh: needs root (namespaces, cgroups, BPF); skipped" >&2
  exit 77
fi
for tool in nft socat haproxy python3 taskset ip nsenter; do
  command -v "$tool" >/dev/null || { echo "run.sh: $tool missing: run scripts/install-deps.sh" >&2; exit 1; }
done

CLI=$BUILD/src/cli/connredir
PROXY=$BUILD/src/proxy/connredir-proxy
LOAD=$BUILD/bench/connload
SOCKOPT=$BUILD/bench/sockopt_bench
SOMARK=$BUILD/bench/somark_preload.so
FLOOR=$BUILD/bench/relay_floor  # optional (liburing-dev): part 3's floor-* configs
for b in "$CLI" "$PROXY" "$LOAD" "$SOMARK"; do
  [[ -x $b || -f $b ]] || { echo "run.sh: $b not built (cmake --build $BUILD)" >&2; exit 1; }
done

# ---- sizes ------------------------------------------------------------------
if ((SMOKE)); then
  : "${PLACEMENTS:=free}"; : "${ROUNDS:=1}"
  T=0.25 RR_T=0.25 BULK=$((16 << 20)) SHORT=200 CHAIN_T=0.2 SIZES="1 1000"
  HOLD=200 CHURN_S=2 SOCKOPT_ARGS="--benchmark_min_time=0.01 --benchmark_repetitions=1"
  NFT_LINEAR_MAX=1000
else
  : "${PLACEMENTS:=1cpu free}"; : "${ROUNDS:=5}"
  T=2 RR_T=2 BULK=$((1 << 30)) SHORT=10000 CHAIN_T=1.5 SIZES="1 1000 10000 100000"
  HOLD=10000 CHURN_S=60 SOCKOPT_ARGS="--benchmark_min_time=0.3 --benchmark_repetitions=9"
  NFT_LINEAR_MAX=100000
fi
HEAVY_ROUNDS=$(( ROUNDS > 3 ? 3 : ROUNDS ))   # bulk, short connections, chain

ID=cbench-$$
CG2=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
[[ -n $CG2 ]] || { echo "run.sh: no cgroup2 mount" >&2; exit 1; }
CG=$CG2/$ID
CG_ON=$CG/on     # connredir is attached here
CG_OFF=$CG/off   # no hooks: baselines, socat, haproxy, the nftables proxy
PIN=/sys/fs/bpf/$ID
NS=$ID-plain     # connredir configurations
NS_NAT=$ID-nat   # nftables REDIRECT + SO_MARK
APP_UID=4100
MARK=0x539
mkdir -p "$OUT/logs"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
PIDS=()
NSLIST=()

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  sleep 0.3
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
  for cg in $(find "$CG" -depth -type d 2>/dev/null); do
    [[ -e $cg/cgroup.kill ]] && echo 1 >"$cg/cgroup.kill" 2>/dev/null
  done
  sleep 0.2
  [[ -d $PIN ]] && "$CLI" --pin-dir "$PIN" down >/dev/null 2>&1
  rm -rf "$PIN" 2>/dev/null
  for cg in $(find "$CG" -depth -type d 2>/dev/null); do rmdir "$cg" 2>/dev/null; done
  for n in "${NSLIST[@]}"; do ip netns del "$n" 2>/dev/null; done
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkns() {
  ip netns add "$1"
  NSLIST+=("$1")
  ip netns exec "$1" ip link set lo up
  ip netns exec "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65000" net.ipv4.tcp_tw_reuse=1
}

# bg NAME NS CGROUP UID CMD...: a long-running process; its pid in PIDS.
bg() {
  local name=$1 ns=$2 cg=$3 uid=$4
  shift 4
  nsenter --net="/run/netns/$ns" "$CLI" exec --cgroup "$cg" --uid "$uid" -- "$@" \
    >"$OUT/logs/$name.log" 2>&1 &
  PIDS+=($!)
  eval "PID_${name//-/_}=$!"
}

wait_port() {  # NS PORT
  for _ in $(seq 200); do
    ip netns exec "$1" ss -Hltn "sport = :$2" | grep -q . && return 0
    sleep 0.05
  done
  echo "run.sh: nothing listens on port $2 in $1 (see $OUT/logs)" >&2
  exit 1
}

# Placement of the long-running processes: all on CPU 0, or anywhere.
place() {
  local cpus=0
  [[ $1 == free ]] && cpus=0-$(($(nproc) - 1))
  for p in "${PIDS[@]}"; do
    taskset -a -p -c "$cpus" "$p" >/dev/null 2>&1 || true
    for c in $(pgrep -P "$p" 2>/dev/null); do taskset -a -p -c "$cpus" "$c" >/dev/null 2>&1 || true; done
  done
}

# run_client PLACEMENT NS CGROUP CMD...: a measurement; prints its JSON line.
run_client() {
  local placement=$1 ns=$2 cg=$3
  shift 3
  local pin=()
  [[ $placement == 1cpu ]] && pin=(taskset -c 0)
  nsenter --net="/run/netns/$ns" "${pin[@]}" "$CLI" exec --cgroup "$cg" --uid "${CLIENT_UID:-$APP_UID}" -- "$@"
}

# record PART PLACEMENT ROUND CONFIG JSON
record() {
  printf '{"part":"%s","placement":"%s","round":%s,"config":"%s","result":%s}\n' \
    "$1" "$2" "$3" "$4" "$5" >>"$RESULTS"
}

# rounds PART PLACEMENT NROUNDS CONFIG...: calls measure_<PART> PLACEMENT CONFIG
# for every config in every round, order rotated each round.
rounds() {
  local part=$1 placement=$2 n=$3
  shift 3
  local configs=("$@") k=${#configs[@]}
  place "$placement"
  for ((r = 0; r < n; r++)); do
    for ((i = 0; i < k; i++)); do
      local c=${configs[$(((i + r) % k))]}
      local j
      if ! j=$("measure_$part" "$placement" "$c"); then
        log "  $part/$c failed (round $r): ${j:-no output}"
        continue
      fi
      record "$part" "$placement" "$r" "$c" "$j"
      log "  $part $placement r$r $c: $j"
    done
  done
}

# ---- environment ------------------------------------------------------------
log "setting up $ID (cgroups under $CG, pins $PIN, namespaces $NS $NS_NAT)"
mkdir -p "$CG_ON/app" "$CG_ON/sockopt" "$CG_OFF"
for i in 1 2 3 4 5 6 7 8 9 10; do mkdir -p "$CG_ON/proxy$i"; done
mkns "$NS"
mkns "$NS_NAT"
ulimit -n "$(ulimit -Hn)"
# Concurrent connections for part 6: the proxy holds 2 descriptors per relayed
# flow (6 with --splice: two splice pipes), so the descriptor limit caps it.
FD_PER_FLOW=2
[[ " ${PROXY_ARGS:-} " == *" --splice "* ]] && FD_PER_FLOW=6
FD_CAP=$(( ($(ulimit -n) - 200) / FD_PER_FLOW ))
((HOLD > FD_CAP)) && HOLD=$FD_CAP
# The recommended layout (README): the proxies' socket-option hooks only in
# the proxies' cgroups, so applications (config b) pay nothing on setsockopt.
PROXIES_IN=(--proxies-in "$CG_ON/sockopt")
for i in 1 2 3 4 5 6 7 8 9 10; do PROXIES_IN+=(--proxies-in "$CG_ON/proxy$i"); done
"$CLI" --pin-dir "$PIN" up --cgroup "$CG_ON" "${PROXIES_IN[@]}" >/dev/null
for i in 1 2 3 4 5 6 7 8; do
  "$CLI" --pin-dir "$PIN" callout add "v$i" --proxy "127.0.0.1:$((15000 + i))" --proxy-uid $((4000 + i)) >/dev/null
done
"$CLI" --pin-dir "$PIN" callout add sockopt --proxy 127.0.0.1:7103 --proxy-uid 4009 >/dev/null
OFFLOAD=0
if "$PROXY" --help 2>&1 | grep -q -- --inspect-bytes; then
  OFFLOAD=1
  "$CLI" --pin-dir "$PIN" callout add offload --proxy 127.0.0.1:15010 --proxy-uid 4010 >/dev/null
fi
BASE=$OUT/base-filters.txt
{
  echo "# part 1c, 3, 6: 127.0.0.1:7002 through vendor v1"
  echo "callout=v1 dst=127.0.0.1/32 port=7002 weight=1000"
  echo "# part 4: port 7010+k passes vendors v1..vk"
  for i in 1 2 3 4 5 6 7 8; do echo "callout=v$i dst=127.0.0.1/32 port=$((7010 + i))-7018 weight=$((900 - i))"; done
  echo "# part 5: the socket-option benchmark's redirected connection"
  echo "callout=sockopt dst=127.0.0.1/32 port=7102 weight=1000"
  ((OFFLOAD)) && echo "callout=offload dst=127.0.0.1/32 port=7003 weight=1000"
  echo "# part 8: UDP to 127.0.0.1:7202 through vendor v1 (its proxy runs with --udp)"
  echo "callout=v1 dst=127.0.0.1/32 port=7202 proto=udp weight=1000"
} >"$BASE"
"$CLI" --pin-dir "$PIN" filter load --replace "$BASE" >/dev/null

# Destination servers (no hooks), proxies (one per vendor, each its own
# principal), the nftables side.
srv_ports=(--listen 127.0.0.2:7001 --listen 127.0.0.1:7002 --listen 127.0.0.1:7003 --listen 127.0.0.1:7020)
for k in 0 1 2 3 4 5 6 7 8; do srv_ports+=(--listen "127.0.0.1:$((7010 + k))"); done
bg server "$NS" "$CG_OFF" 0 "$LOAD" server "${srv_ports[@]}"
bg udp_server "$NS" "$CG_OFF" 0 "$LOAD" udp-server --listen 127.0.0.2:7201 --listen 127.0.0.1:7202
for i in 1 2 3 4 5 6 7 8; do
  udp=()
  ((i == 1)) && udp=(--udp)  # part 8; its TCP side is unchanged
  bg "proxy$i" "$NS" "$CG_ON/proxy$i" $((4000 + i)) "$PROXY" --listen "127.0.0.1:$((15000 + i))" \
    --name "v$i" --max-conns 30000 "${udp[@]}" ${PROXY_ARGS:-}
done
if ((OFFLOAD)); then
  bg proxy_offload "$NS" "$CG_ON/proxy10" 4010 "$PROXY" --listen 127.0.0.1:15010 --name offload \
    --max-conns 30000 --inspect-bytes "${INSPECT_BYTES:-4096}"
fi
# The cheapest relay, each engine (bench/relay_floor.cpp): what relaying
# through any process costs here, the floor under connredir-proxy and haproxy.
if [[ -x $FLOOR ]]; then
  bg floor_epoll "$NS" "$CG_OFF" 0 "$FLOOR" --listen 127.0.0.1:7023 --to 127.0.0.1:7020 --engine epoll
  bg floor_uring "$NS" "$CG_OFF" 0 "$FLOOR" --listen 127.0.0.1:7024 --to 127.0.0.1:7020 --engine uring
else
  log "part 3: $FLOOR not built (liburing-dev missing): no floor-epoll/floor-uring configs"
fi
bg socat "$NS" "$CG_OFF" 0 socat -b 65536 \
  TCP4-LISTEN:7021,bind=127.0.0.1,fork,reuseaddr,backlog=4096 TCP4:127.0.0.1:7020
cat >"$OUT/haproxy.cfg" <<EOF
global
  nbthread 1
  maxconn 9000
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen relay
  bind 127.0.0.1:7022
  maxconn 9000
  server dst 127.0.0.1:7020
EOF
bg haproxy "$NS" "$CG_OFF" 0 haproxy -db -f "$OUT/haproxy.cfg"

cat >"$OUT/nat.nft" <<EOF
table ip cbnat {
  chain out {
    type nat hook output priority -100; policy accept;
    meta mark $MARK return
    tcp dport 7004 redirect to :7005
    tcp dport 7100 redirect to :7101
    udp dport 7204 redirect to :7005
  }
}
EOF
ip netns exec "$NS_NAT" nft -f "$OUT/nat.nft"
# The nftables path tells the proxy's own (marked) flows from the clients' by
# conntrack state, per 4-tuple: a client socket that gets the ephemeral port
# of an earlier marked flow to the same destination, while that flow's
# conntrack entry lives (30 s unreplied, 120 s replied by default), matches
# the entry and is not redirected at all (measured: part 8 runs at direct
# speed then). Short UDP timeouts in this namespace keep the measurement on
# the proxy path; the bypass itself is a property of the nftables design.
ip netns exec "$NS_NAT" sysctl -qw net.netfilter.nf_conntrack_udp_timeout=1 \
  net.netfilter.nf_conntrack_udp_timeout_stream=2
bg server_nat "$NS_NAT" "$CG_OFF" 0 "$LOAD" server --listen 127.0.0.1:7004
bg udp_server_nat "$NS_NAT" "$CG_OFF" 0 "$LOAD" udp-server --listen 127.0.0.1:7204
# The same proxy, driven by nftables: SO_ORIGINAL_DST (its fallback when a
# connection carries no records) and SO_MARK on its outgoing sockets. UDP
# behind REDIRECT has no original destination to read: the proxy forwards
# it to a fixed upstream (--udp-upstream), as DNS capture proxies do, and
# conntrack maps the replies' source back.
bg proxy_nat "$NS_NAT" "$CG_OFF" 0 env LD_PRELOAD="$SOMARK" CONNREDIR_BENCH_MARK=$MARK \
  "$PROXY" --listen 127.0.0.1:7005 --name nft --max-conns 30000 --udp \
  --udp-upstream 127.0.0.1:7204 ${PROXY_ARGS:-}
for p in 7001 7002 7020 7021 7022 15001 15008; do wait_port "$NS" $p; done
if [[ -x $FLOOR ]]; then for p in 7023 7024; do wait_port "$NS" $p; done; fi
wait_port "$NS_NAT" 7004
wait_port "$NS_NAT" 7005

# What a system call costs here (one getppid(), on CPU 0): the unit of every
# proxy's per-byte and per-connection overhead, so the figure that most
# explains why proxy-versus-direct ratios differ between machines.
SYSCALL_NS=$(taskset -c 0 "$LOAD" syscall --count $((SMOKE ? 20000 : 200000)) |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["ns_per_syscall"])') ||
  { log "connload syscall failed"; exit 1; }
log "system call cost on CPU 0: $SYSCALL_NS ns (getppid)"
{
  echo "{\"kernel\":\"$(uname -r)\",\"cpus\":$(nproc),\"cpu\":\"$(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)\","
  echo "\"mem_kib\":$(awk '/MemTotal/ {print $2}' /proc/meminfo),\"smoke\":$SMOKE,\"rounds\":$ROUNDS,"
  echo "\"placements\":\"$PLACEMENTS\",\"haproxy\":\"$(haproxy -v | head -1 | awk '{print $3}')\","
  echo "\"socat\":\"$(socat -V | awk '/socat version/ {print $3}')\",\"offload\":$OFFLOAD,"
  echo "\"syscall_ns\":$SYSCALL_NS,"
  echo "\"date\":\"$(date -u +%FT%TZ)\",\"commit\":\"$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null)\"}"
} | tr -d '\n' >"$OUT/machine.json"

# ---- part 1: connect path -------------------------------------------------------
measure_connect() {
  local pl=$1
  case $2 in
    a-no-hooks) run_client "$pl" "$NS" "$CG_OFF" "$LOAD" connect --to 127.0.0.2:7001 --seconds $T ;;
    b-loaded-no-match) run_client "$pl" "$NS" "$CG_ON/app" "$LOAD" connect --to 127.0.0.2:7001 --seconds $T ;;
    c-connredir-proxy) run_client "$pl" "$NS" "$CG_ON/app" "$LOAD" connect --to 127.0.0.1:7002 --seconds $T ;;
    d-nft-proxy) run_client "$pl" "$NS_NAT" "$CG_OFF" "$LOAD" connect --to 127.0.0.1:7004 --seconds $T ;;
  esac
}
part_connect() {
  for pl in $PLACEMENTS; do
    log "part 1 (connect path), $pl"
    rounds connect "$pl" "$ROUNDS" a-no-hooks b-loaded-no-match c-connredir-proxy d-nft-proxy
  done
  ((PROFILE)) && profile_connect && [[ $PLACEMENTS == *free* ]] && profile_sched
  return 0
}

# Where the time of (c) and (d) goes: syscalls per connection of the proxy
# (perf stat on raw_syscalls), and a call-graph profile of CPU 0 on 1cpu.
# Kernel-side cost of connredir per connection of (b) and (c): run count and
# run time of each of its programs (kernel.bpf_stats_enabled, which itself
# adds ~20 ns per run; restored afterwards).
profile_bpf() {  # [PART CONFIG...]: default the connect part's (b) and (c)
  local part=${1:-connect} ids c j before after old
  (($#)) && shift
  local cfgs=("$@")
  ((${#cfgs[@]})) || cfgs=(b-loaded-no-match c-connredir-proxy)
  ids=$(for l in "$PIN"/links/*; do bpftool link show pinned "$l" -j; done |
    python3 -c 'import json,sys; print(",".join(str(json.loads(l)["prog_id"]) for l in sys.stdin if l.strip()))')
  old=$(sysctl -n kernel.bpf_stats_enabled)
  for c in "${cfgs[@]}"; do
    sysctl -qw kernel.bpf_stats_enabled=1
    before=$(bpftool prog show -j)
    j=$("measure_$part" 1cpu "$c")
    after=$(bpftool prog show -j)
    sysctl -qw kernel.bpf_stats_enabled="$old"
    python3 - "$c" "$ids" "$before" "$after" "$j" >>"$OUT/profile-bpf.jsonl" <<'PY'
import json, sys
cfg, ids = sys.argv[1], {int(i) for i in sys.argv[2].split(",") if i}
b = {p["id"]: p for p in json.loads(sys.argv[3])}
n = json.loads(sys.argv[5])["conns"]
progs = {}
for p in json.loads(sys.argv[4]):
    if p["id"] not in ids:
        continue
    q = b.get(p["id"], {})
    runs = p.get("run_cnt", 0) - q.get("run_cnt", 0)
    ns = p.get("run_time_ns", 0) - q.get("run_time_ns", 0)
    if runs:
        e = progs.setdefault(p["name"], [0, 0])
        e[0] += runs
        e[1] += ns
print(json.dumps({"config": cfg, "conns": n, "progs": progs}))
PY
    log "  profile bpf $c: $(tail -1 "$OUT/profile-bpf.jsonl")"
  done
}

profile_connect() {
  place 1cpu
  profile_bpf
  command -v perf >/dev/null || { log "profile: perf missing (linux-perf)"; return 0; }
  local c pid j
  for c in c-connredir-proxy d-nft-proxy; do
    pid=$PID_proxy1
    [[ $c == d-nft-proxy ]] && pid=$PID_proxy_nat
    perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$OUT/profile-$c-syscalls.csv" -- sleep 2.5 &
    local ps=$!
    sleep 0.2
    j=$(measure_connect 1cpu "$c")
    wait $ps || true
    local n=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["conns"])' "$j")
    local s=$(awk -F, '/raw_syscalls/ {print $1}' "$OUT/profile-$c-syscalls.csv")
    log "  profile $c: $s proxy syscalls for $n connections (+warmup): $(python3 -c "print(round($s/$n,1))") per connection"
    echo "{\"config\":\"$c\",\"proxy_syscalls\":$s,\"conns\":$n}" >>"$OUT/profile-syscalls.jsonl"
    perf record -q -C 0 -g -o "$OUT/profile-$c.data" -- sleep 2.2 >/dev/null 2>&1 &
    ps=$!
    sleep 0.1
    measure_connect 1cpu "$c" >/dev/null
    wait $ps || true
    # Only the benchmark's processes (the machine may be shared).
    perf report -q -i "$OUT/profile-$c.data" --comms connredir-proxy,connload,ksoftirqd/0 \
      --no-children --sort comm,dso,sym --percent-limit 0.7 \
      -g none 2>/dev/null | head -60 >"$OUT/profile-$c.txt"
    perf report -q -i "$OUT/profile-$c.data" --no-children --sort comm --percent-limit 1 -g none \
      2>/dev/null | head -20 >"$OUT/profile-$c-comm.txt"
    # KEEP_PERF=1 keeps the data for `perf report`/`perf script` (e.g. what
    # each connredir program's samples are under: storage, maps, its code).
    [[ ${KEEP_PERF:-0} == 1 ]] || rm -f "$OUT/profile-$c.data"
  done
}

# Free placement: who wakes whom. (c) and (d) cost about the same CPU (1cpu
# figures) yet differ unpinned; count, per connection, the scheduler events
# system-wide (wake-ups, migrations, context switches) and the wake-up
# latency each task saw (perf sched latency) for both paths.
profile_sched() {
  place free
  command -v perf >/dev/null || return 0
  local c j n ps
  for c in c-connredir-proxy d-nft-proxy; do
    perf stat -a -x, -o "$OUT/profile-$c-sched.csv" \
      -e sched:sched_wakeup,sched:sched_migrate_task,context-switches,cpu-migrations \
      -- sleep 2.5 &
    ps=$!
    sleep 0.2
    j=$(measure_connect free "$c")
    wait $ps || true
    n=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["conns"])' "$j")
    python3 - "$c" "$n" "$OUT/profile-$c-sched.csv" >>"$OUT/profile-sched.jsonl" <<'PY'
import json, sys
c, n, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
out = {"config": c, "conns": n}
for line in open(path):
    f = line.strip().split(",")
    if len(f) > 2 and f[0].replace(".", "").isdigit():
        out[f[2].split(":")[-1] + "_per_conn"] = round(float(f[0]) / n, 2)
print(json.dumps(out))
PY
    log "  profile sched $c: $(tail -1 "$OUT/profile-sched.jsonl")"
    perf sched record -a -q -o "$OUT/profile-$c-sched.data" -- sleep 2.2 >/dev/null 2>&1 &
    ps=$!
    sleep 0.1
    measure_connect free "$c" >/dev/null
    wait $ps || true
    perf sched latency -i "$OUT/profile-$c-sched.data" --sort max 2>/dev/null |
      grep -E 'connload|connredir-pro|ksoftirqd|TOTAL|Task' >"$OUT/profile-$c-sched-latency.txt" || true
    # Which tasks migrate, from which CPU to which, and who woke whom.
    perf script -i "$OUT/profile-$c-sched.data" -F event,trace 2>/dev/null |
      awk '/sched_migrate_task/ { for (i = 1; i <= NF; i++) if ($i ~ /^(comm|orig_cpu|dest_cpu)=/) k = k " " $i; m[k]++; k = "" }
           END { for (k in m) print m[k], "migrate" k }' | sort -rn | head -12 \
      >"$OUT/profile-$c-sched-migrations.txt" || true
    perf script -i "$OUT/profile-$c-sched.data" -F comm,cpu,event,trace 2>/dev/null |
      awk '/sched_waking:/ { w = ""; for (i = 1; i <= NF; i++) if ($i ~ /^(comm|target_cpu)=/) w = w " " $i; m[$1 " " $2 " wakes" w]++ }
           END { for (k in m) print m[k], k }' | sort -rn | head -16 \
      >"$OUT/profile-$c-sched-wakeups.txt" || true
    rm -f "$OUT/profile-$c-sched.data"
  done
}

# ---- part 2: classifier scale -----------------------------------------------------
CUR_SET=""
use_filters() {  # N: the generated set of N filters (replaces all filters)
  [[ $CUR_SET == "$1" ]] && return 0
  local t0=$EPOCHREALTIME
  "$CLI" --pin-dir "$PIN" filter load --replace "$OUT/gen/filters-$1.txt" >/dev/null
  local t1=$EPOCHREALTIME
  CUR_SET=$1
  sleep 0.2
  echo "{\"filters\":$1,\"load_seconds\":$(python3 -c "print(round($t1-$t0,3))")}" >>"$OUT/filter-load-times.jsonl"
}
measure_classifier() {
  local pl=$1 c=$2
  case $c in
    none) run_client "$pl" "$NS" "$CG_OFF" "$LOAD" connect --to 127.0.0.2:7001 --seconds $T ;;
    connredir-*) use_filters "${c#connredir-}" >&2
      run_client "$pl" "$NS" "$CG_ON/app" "$LOAD" connect --to 127.0.0.2:7001 --seconds $T ;;
    nft-*) run_client "$pl" "$ID-$c" "$CG_OFF" "$LOAD" connect --to 127.0.0.2:7001 --seconds $T ;;
  esac
}
part_classifier() {
  log "part 2 (classifier scale): generating filter sets $SIZES"
  mkdir -p "$OUT/gen"
  : >"$OUT/filter-load-times.jsonl"
  local configs=(none) nft_configs=()
  for n in $SIZES; do
    python3 "$HERE/gen_filters.py" "$n" "$OUT/gen" --callouts v1,v2,v3,v4 --app-cgroup "$CG_OFF"
    configs+=("connredir-$n")
    if ((n > 1 && n <= NFT_LINEAR_MAX)); then nft_configs+=("nft-linear-$n"); fi
    if ((n > 1)); then nft_configs+=("nft-set-$n"); fi
  done
  for c in "${nft_configs[@]}"; do
    mkns "$ID-$c"
    local t0=$EPOCHREALTIME
    ip netns exec "$ID-$c" nft -f "$OUT/gen/$c.nft"
    log "  $c loaded in $(python3 -c "print(round($EPOCHREALTIME-$t0,1))") s"
    bg "server_$c" "$ID-$c" "$CG_OFF" 0 "$LOAD" server --listen 127.0.0.2:7001
    wait_port "$ID-$c" 7001
  done
  for pl in $PLACEMENTS; do
    log "part 2 (classifier scale), $pl"
    rounds classifier "$pl" "$ROUNDS" "${configs[@]}" "${nft_configs[@]}"
  done
  "$CLI" --pin-dir "$PIN" filter load --replace "$BASE" >/dev/null
  CUR_SET=""
}

# ---- part 3: relay ---------------------------------------------------------------
relay_target() {  # CONFIG -> "NS CGROUP ADDR"
  case $1 in
    direct) echo "$NS $CG_OFF 127.0.0.1:7020" ;;
    connredir-proxy) echo "$NS $CG_ON/app 127.0.0.1:7002" ;;
    connredir-proxy-offload) echo "$NS $CG_ON/app 127.0.0.1:7003" ;;
    socat) echo "$NS $CG_OFF 127.0.0.1:7021" ;;
    haproxy) echo "$NS $CG_OFF 127.0.0.1:7022" ;;
    floor-epoll) echo "$NS $CG_OFF 127.0.0.1:7023" ;;
    floor-uring) echo "$NS $CG_OFF 127.0.0.1:7024" ;;
  esac
}
measure_bulk() {
  read -r ns cg to < <(relay_target "$2")
  run_client "$1" "$ns" "$cg" "$LOAD" bulk --to "$to" --bytes $BULK
}
measure_rr() {
  read -r ns cg to < <(relay_target "$2")
  run_client "$1" "$ns" "$cg" "$LOAD" rr --to "$to" --seconds $RR_T --size 64
}
measure_short() {
  read -r ns cg to < <(relay_target "$2")
  run_client "$1" "$ns" "$cg" "$LOAD" connect --to "$to" --count $SHORT --warmup 0.1
}
part_relay() {
  local configs=(direct connredir-proxy socat haproxy)
  ((OFFLOAD)) && configs+=(connredir-proxy-offload)
  [[ -x $FLOOR ]] && configs+=(floor-epoll floor-uring)
  # A focused rerun: RELAY_CONFIGS="direct connredir-proxy haproxy" and/or
  # RELAY_WORKLOADS="rr short" (socat alone takes minutes of short connections);
  # RELAY_SHORT_ROUNDS=N (default: as bulk, at most 3).
  [[ -n ${RELAY_CONFIGS:-} ]] && read -r -a configs <<<"$RELAY_CONFIGS"
  local workloads=" ${RELAY_WORKLOADS:-bulk rr short} "
  for pl in $PLACEMENTS; do
    log "part 3 (relay), $pl"
    [[ $workloads == *" bulk "* ]] && rounds bulk "$pl" "$HEAVY_ROUNDS" "${configs[@]}"
    [[ $workloads == *" rr "* ]] && rounds rr "$pl" "$ROUNDS" "${configs[@]}"
    [[ $workloads == *" short "* ]] && rounds short "$pl" "${RELAY_SHORT_ROUNDS:-$HEAVY_ROUNDS}" "${configs[@]}"
  done
}

# ---- part 4: chain length ------------------------------------------------------------
measure_chain() {
  local k=${2#hops-}
  run_client "$1" "$NS" "$CG_ON/app" "$LOAD" connect --to "127.0.0.1:$((7010 + k))" --seconds $CHAIN_T
}
part_chain() {
  local configs=()
  for k in 0 1 2 3 4 5 6 7 8; do configs+=("hops-$k"); done
  for pl in $PLACEMENTS; do
    log "part 4 (chain length), $pl"
    rounds chain "$pl" "$HEAVY_ROUNDS" "${configs[@]}"
  done
}

# ---- part 5: socket options -------------------------------------------------------------
part_sockopt() {
  if [[ ! -x $SOCKOPT ]]; then
    log "part 5 skipped: $SOCKOPT not built (libbenchmark-dev missing)"
    return 0
  fi
  for pl in $PLACEMENTS; do
    log "part 5 (socket options), $pl"
    local pin=()
    [[ $pl == 1cpu ]] && pin=(taskset -c 0)
    nsenter --net="/run/netns/$NS_NAT" "${pin[@]}" "$SOCKOPT" --cg-off "$CG_OFF" --cg-on "$CG_ON/sockopt" \
      --nat-dst 127.0.0.1:7100 --nat-listen 127.0.0.1:7101 \
      --redirect-dst 127.0.0.1:7102 --proxy-listen 127.0.0.1:7103 \
      $SOCKOPT_ARGS --benchmark_format=json --benchmark_out="$OUT/sockopt-$pl.json" \
      --benchmark_out_format=json >/dev/null 2>"$OUT/logs/sockopt-$pl.log"
    record sockopt "$pl" 0 gbench "$(python3 -c 'import json,sys; print(json.dumps(json.load(open(sys.argv[1]))))' "$OUT/sockopt-$pl.json")"
  done
}

# ---- part 6: memory --------------------------------------------------------------------
# While part 6 holds $HOLD flows through connredir-proxy (three sockets each carry connredir
# state: the app's, the accepted one, the proxy's onward one), time `connredir flows` (sock_diag)
# listing them: first wait until they are all open, then three timed listings.
time_flows_listing() {
  local want=$((3 * HOLD)) n=0 deadline=$((SECONDS + CHURN_S / 2 + 30)) t0 times=()
  local list=("$CLI" --pin-dir "$PIN" flows --netns "/run/netns/$NS" --json)
  while ((SECONDS < deadline)); do
    n=$("${list[@]}" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))')
    ((n >= want)) && break
    sleep 0.5
  done
  for _ in 1 2 3; do
    t0=$EPOCHREALTIME
    "${list[@]}" >"$OUT/flows-listing.json"
    times+=("$(python3 -c "print(round($EPOCHREALTIME - $t0, 4))")")
  done
  n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))))' "$OUT/flows-listing.json")
  local j
  j=$(printf '{"held":%d,"sockets_listed":%d,"seconds":[%s]}' "$HOLD" "$n" "$(IFS=,; echo "${times[*]}")")
  record flows free 0 connredir-flows "$j"
  log "  connredir flows (sock_diag, --json): $j"
}

part_memory() {
  log "part 6 (memory): $HOLD connections through connredir-proxy, ${CHURN_S} s of churn"
  place free
  local j
  local CLIENT_UID=0  # reads /proc/slabinfo
  cp /proc/slabinfo "$OUT/slab-before.txt"
  run_client free "$NS" "$CG_ON/app" "$LOAD" hold --to 127.0.0.1:7002 --conns $HOLD \
    --seconds $CHURN_S --churn-per-s 200 --watch-pid "$PID_proxy1" \
    --slab-dump "$OUT/slab-connredir" >"$OUT/hold-connredir.json" &
  local hold_pid=$!
  time_flows_listing
  wait "$hold_pid"
  j=$(cat "$OUT/hold-connredir.json")
  record memory free 0 connredir-proxy "$j"
  log "  connredir-proxy: $j"
  j=$(run_client free "$NS_NAT" "$CG_OFF" "$LOAD" hold --to 127.0.0.1:7004 --conns $HOLD \
    --seconds 2 --churn-per-s 0 --watch-pid "$PID_proxy_nat" --slab-dump "$OUT/slab-nft")
  record memory free 0 nft-proxy "$j"
  log "  nft-proxy: $j"
  j=$(run_client free "$NS" "$CG_OFF" "$LOAD" hold --to 127.0.0.1:7020 --conns $HOLD \
    --seconds 2 --churn-per-s 0 --watch-pid "$PID_server" --slab-dump "$OUT/slab-direct")
  record memory free 0 direct "$j"
  log "  direct: $j"
  bpftool -j map show >"$OUT/bpftool-maps.json" 2>/dev/null || true
}

START=$EPOCHREALTIME
# ---- part 7: connredir trace ---------------------------------------------------
# What trace support costs: a classified connect that no filter matches
# (127.0.0.1:7020: the base filters cover the address, not the port, so every
# connect walks their candidates) and a redirected one (as 1c), with nobody
# tracing (`idle`: one lease lookup per classified connect) and while
# `connredir trace` runs (`traced`: output to /dev/null; on 1cpu the tracer
# shares CPU 0 with the client, so its own cost is in the figure). Built
# without `trace` (the tree before it, --build-dir), only the idle configs run,
# for the A/B across trees.
# (Not `$CLI trace --help`: CLI11 answers --help with exit 0 before it
# checks the subcommand. The map is what the loaded programs support.)
HAS_TRACE=0
[[ -e $PIN/maps/trace_on ]] && HAS_TRACE=1
measure_trace() {
  local pl=$1 c=$2 to=127.0.0.1:7002 tracer="" rc=0
  [[ $c == walk-* ]] && to=127.0.0.1:7020
  if [[ $c == *-traced ]]; then
    local pin=()
    [[ $pl == 1cpu ]] && pin=(taskset -c 0)
    # --timeout-ms: never outlives the run, even if this script is killed.
    "${pin[@]}" "$CLI" --pin-dir "$PIN" trace --timeout-ms "$(python3 -c "print(int($T * 1000 + 5000))")" \
      >/dev/null 2>>"$OUT/logs/tracer.log" &
    tracer=$!
    sleep 0.3
  fi
  run_client "$pl" "$NS" "$CG_ON/app" "$LOAD" connect --to "$to" --seconds $T || rc=$?
  if [[ -n $tracer ]]; then
    kill -INT "$tracer" 2>/dev/null
    wait "$tracer" 2>/dev/null || true
  fi
  return $rc
}
part_trace() {
  local configs=(walk-idle redirected-idle)
  ((HAS_TRACE)) && configs+=(walk-traced redirected-traced)
  for pl in $PLACEMENTS; do
    log "part 7 (trace), $pl"
    rounds trace "$pl" "$ROUNDS" "${configs[@]}"
  done
  if ((PROFILE)); then
    place 1cpu
    profile_bpf trace "${configs[@]}"
  fi
  return 0
}

# ---- part 8: UDP ---------------------------------------------------------------------
# Request/response of 64-byte datagrams (udp-rr, unconnected and connected
# sockets) and one exchange per new socket (udp-flows: a new flow each, as
# a stub resolver's queries are), every reply checked to come from the
# destination the client sent to: (a) direct, no hooks; (b) connredir
# loaded, no filter matches; (c) through connredir-proxy (vendor v1); (d)
# the same proxy behind nftables REDIRECT.
measure_udp() {
  local pl=$1 cfg=${2%%.*} kind=${2#*.} ns=$NS cg=$CG_ON/app to=127.0.0.2:7201
  case $cfg in
    a-no-hooks) cg=$CG_OFF ;;
    c-connredir-proxy) to=127.0.0.1:7202 ;;
    d-nft-proxy) ns=$NS_NAT cg=$CG_OFF to=127.0.0.1:7204 ;;
  esac
  case $kind in
    rr) run_client "$pl" "$ns" "$cg" "$LOAD" udp-rr --to $to --seconds $RR_T ;;
    rr-connected) run_client "$pl" "$ns" "$cg" "$LOAD" udp-rr --to $to --seconds $RR_T --connected 1 ;;
    flows) run_client "$pl" "$ns" "$cg" "$LOAD" udp-flows --to $to --seconds $T ;;
  esac
}
part_udp() {
  local configs=()
  for k in rr rr-connected flows; do
    for c in a-no-hooks b-loaded-no-match c-connredir-proxy d-nft-proxy; do configs+=("$c.$k"); done
  done
  for pl in $PLACEMENTS; do
    log "part 8 (UDP), $pl"
    rounds udp "$pl" "$ROUNDS" "${configs[@]}"
  done
}

for p in "${PARTS[@]}"; do "part_$p"; done
python3 "$HERE/report.py" "$OUT" >"$OUT/summary.md"
log "done in $(python3 -c "print(round(($EPOCHREALTIME-$START)/60,1))") min: $OUT/summary.md"
cat "$OUT/summary.md"
