#!/usr/bin/env bash
# The floor of issue 14's goal 1 (bench/RESULTS.md): what programs that do
# nothing cost at the three hooks every TCP connection of an attached cgroup
# runs (connect4, sockops, sock_release; bench/floor.bpf.c).
#
#   bench/floor.sh [--build-dir DIR] [--rounds N] [--seconds S]
#
# Sequential connect + 1 byte (connload, as part 1 of run.sh), 1cpu (client
# and server pinned to CPU 0), in a network namespace and cgroups this script
# creates and removes. Rounds alternate "no hooks" and "empty hooks"; each
# round's ratio is empty/none. Then one run with kernel.bpf_stats_enabled
# gives the empty programs' run time per connection (bpf_stats adds ~20 ns
# per run itself, as in run.sh --profile). Root only; exit 77 otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
BUILD=$HERE/../build-bench
ROUNDS=5
SECS=2
while (($#)); do
  case $1 in
    --build-dir) BUILD=$2; shift ;;
    --rounds) ROUNDS=$2; shift ;;
    --seconds) SECS=$2; shift ;;
    -h|--help) sed -n 2,14p "$0"; exit 0 ;;
    *) echo "floor.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
if [[ $(id -u) -ne 0 ]]; then echo "floor.sh: needs root; skipped" >&2; exit 77; fi
LOAD=$BUILD/bench/connload
[[ -x $LOAD ]] || { echo "floor.sh: $LOAD missing: cmake --build $BUILD --target connload" >&2; exit 1; }
CG_ROOT=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
[[ -n $CG_ROOT ]] || { echo "floor.sh: no cgroup2 mount" >&2; exit 1; }
ID=crfloor-$$
CG=$CG_ROOT/$ID NS=$ID PIN=/sys/fs/bpf/$ID OBJ=$(mktemp -d)/floor.bpf.o
SRV=""
STATS_OLD=$(sysctl -n kernel.bpf_stats_enabled)
cleanup() {
  set +e  # every step runs, whatever the one before it returned
  if [[ -n $SRV ]]; then
    kill "$SRV" 2>/dev/null
    wait "$SRV" 2>/dev/null
  fi
  detach
  rm -rf "$PIN" "$(dirname "$OBJ")"
  rmdir "$CG/app" "$CG/srv" "$CG" 2>/dev/null || true
  ip netns del "$NS" 2>/dev/null || true
  sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
}
# hook:program, one per hook every TCP connection of the cgroup runs.
HOOKS=(connect4:floor_connect4 sock_ops:floor_sockops sock_release:floor_release)
attach() {
  local h
  for h in "${HOOKS[@]}"; do bpftool cgroup attach "$CG/app" "${h%%:*}" pinned "$PIN/${h#*:}"; done
}
detach() {
  [[ -d $PIN ]] || return 0
  local h
  for h in "${HOOKS[@]}"; do
    bpftool cgroup detach "$CG/app" "${h%%:*}" pinned "$PIN/${h#*:}" 2>/dev/null || true
  done
}
trap cleanup EXIT
clang -O2 -g -target bpf -I"/usr/include/$(gcc -dumpmachine)" -c "$HERE/floor.bpf.c" -o "$OBJ"
mkdir -p "$CG/app" "$CG/srv"
ip netns add "$NS"
ip -n "$NS" link set lo up
bpftool prog loadall "$OBJ" "$PIN"
# Programs enter the namespace with nsenter (ip netns exec remounts /sys).
run_in() {
  local cg=$1
  shift
  # exec all the way: the server's background pid is connload's own.
  exec sh -c 'echo $$ > "$0/cgroup.procs" && exec "$@"' "$cg" \
    nsenter --net="/run/netns/$NS" taskset -c 0 "$@"
}
run_in "$CG/srv" "$LOAD" server --listen 127.0.0.2:7001 >/dev/null 2>&1 &
SRV=$!
sleep 0.5
rate() { run_in "$CG/app" "$LOAD" connect --to 127.0.0.2:7001 --seconds "$SECS"; }
echo "# floor.sh: kernel $(uname -r), $(nproc) CPUs, $ROUNDS rounds of ${SECS} s, 1cpu"
ratios=()
for ((r = 0; r < ROUNDS; r++)); do
  none=$(rate)
  attach
  empty=$(rate)
  detach
  line=$(python3 -c 'import json,sys; a=json.loads(sys.argv[1])["rate"]; b=json.loads(sys.argv[2])["rate"]; print(f"{b/a:.3f} round {sys.argv[3]}: no hooks {a:.0f} conn/s, empty hooks {b:.0f} conn/s, ratio {b/a:.3f}")' \
    "$none" "$empty" "$r")
  ratios+=("${line%% *}")
  echo "${line#* }"
done
python3 -c 'import statistics,sys; r=sorted(map(float,sys.argv[1:])); print(f"empty/none: median {statistics.median(r):.3f} (min {r[0]:.3f}, max {r[-1]:.3f}), {sum(x < 0.99 for x in r)} of {len(r)} rounds below 0.99")' "${ratios[@]}"
attach
sysctl -qw kernel.bpf_stats_enabled=1
before=$(bpftool prog show -j)
j=$(rate)
after=$(bpftool prog show -j)
sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
python3 - "$before" "$after" "$j" <<'PY'
import json, sys
b = {p["id"]: p for p in json.loads(sys.argv[1])}
res = json.loads(sys.argv[3])
n, rate = res["conns"], res["rate"]
total = 0.0
for p in json.loads(sys.argv[2]):
    if not p.get("name", "").startswith("floor_"):
        continue
    q = b.get(p["id"], {})
    runs = p.get("run_cnt", 0) - q.get("run_cnt", 0)
    ns = p.get("run_time_ns", 0) - q.get("run_time_ns", 0)
    if runs:
        print(f'{p["name"]}: {runs / n:.2f} runs/conn, {ns / runs:.0f} ns/run, {ns / n:.0f} ns/conn')
        total += ns / n
conn_ns = 1e9 / rate
print(f"empty programs, all: {total:.0f} ns per connection = {100 * total / conn_ns:.2f} % "
      f"of a connection ({conn_ns / 1000:.1f} us at {rate:.0f} conn/s, stats on)")
PY
