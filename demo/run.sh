#!/usr/bin/env bash
# connredir end-to-end demo: a real HTTP download passes through two
# independent inspection proxies ("vendors") in turn, each exactly once.
#
# It installs what it needs, builds, then inside a private network namespace:
# creates a throwaway cgroup tree, brings connredir up on it, registers two
# vendors with overlapping filters, starts two connredir-proxy instances as
# unprivileged principals, serves a file over HTTP on 127.0.0.1, downloads
# it with curl from inside the app cgroup, verifies the bytes, prints the
# chain each proxy saw, draws the live chain (build/demo/chains.svg), and
# removes everything else it created.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ${1:-} != --inside ]]; then
  if [[ $(id -u) -ne 0 ]]; then
    echo "demo/run.sh must run as root (it loads BPF programs): run it from a root shell" >&2
    exit 1
  fi
  scripts/install-deps.sh
  echo "== building connredir"
  scripts/build.sh build
  # A private network namespace: every address below is ours alone.
  exec unshare --net -- "$0" --inside
fi

CLI="$ROOT/build/src/cli/connredir"
PROXY="$ROOT/build/src/proxy/connredir-proxy"
ip link set lo up

cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
[[ -n $cg2 ]] || { echo "no cgroup v2 mount: connredir needs cgroup v2" >&2; exit 1; }
TAG="connredir-demo-$$"
CG="$cg2/$TAG"
PIN="/sys/fs/bpf/$TAG"
WORK=$(mktemp -d /tmp/connredir-demo.XXXXXX)
chmod 0777 "$WORK"
cr() { "$CLI" --pin-dir "$PIN" "$@"; }
PIDS=()

cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for g in "$CG"/*/ "$CG"; do
    [[ -d $g ]] || continue
    [[ -e $g/cgroup.kill ]] && echo 1 >"$g/cgroup.kill" 2>/dev/null
  done
  sleep 0.2
  [[ -e $PIN ]] && cr down >/dev/null
  for g in "$CG"/*/; do [[ -d $g ]] && rmdir "$g"; done
  [[ -d $CG ]] && rmdir "$CG"
  rm -rf "$WORK"
  echo "== cleaned up: cgroup $CG, pins $PIN, processes, temp files"
}
trap cleanup EXIT

mkdir -p "$CG/app" "$CG/vendor-a" "$CG/vendor-b"

echo "== connredir up on $CG (proxy socket options only in the vendors' cgroups)"
cr up --cgroup "$CG" --proxies-in "$CG/vendor-a" --proxies-in "$CG/vendor-b"
cr callout add vendor-a --proxy 127.0.0.1:15001 --proxy-uid 4001
cr callout add vendor-b --proxy 127.0.0.1:15002 --proxy-uid 4002
# Overlapping filters: A (weight 200) wants HTTP to 127.0.0.1, B (weight 100)
# wants everything on loopback. WFP order: A first, then B.
cr filter add --callout vendor-a --dst 127.0.0.1/32 --port 8080 --weight 200 \
  --context "vendor-a: HTTP inspection"
cr filter add --callout vendor-b --dst 127.0.0.0/8 --weight 100 --context "vendor-b: loopback DLP"
cr callout list
cr filter list

echo "== starting the destination web server and the two vendors' proxies"
head -c $((8 * 1024 * 1024)) /dev/urandom >"$WORK/payload.bin"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$WORK" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
for v in a b; do
  uid=$((4000 + $(printf '%d' "'$v") - 96))
  cr exec --cgroup "$CG/vendor-$v" --uid "$uid" -- \
    "$PROXY" --listen "127.0.0.1:1500$((uid - 4000))" --name "vendor-$v" \
    --log "$WORK/vendor-$v.jsonl" >"$WORK/vendor-$v.out" 2>&1 &
  PIDS+=($!)
done
for port in 8080 15001 15002; do
  for _ in $(seq 100); do
    ss -Htln "sport = :$port" | grep -q . && break
    sleep 0.05
  done
done

echo "== curl (uid 1000, in the app cgroup) downloads 8 MiB from http://127.0.0.1:8080/"
# At 1 MiB/s the download lasts a few seconds (less what the socket buffers
# on the way hold): long enough to picture its live chain.
cr exec --cgroup "$CG/app" --uid 1000 -- \
  curl -sS --max-time 30 --limit-rate 1M -o "$WORK/download.bin" \
  http://127.0.0.1:8080/payload.bin &
CURL=$!
# The chain while it flows: `connredir flows --dot`, rendered by Graphviz.
PICTURE="$ROOT/build/demo"
mkdir -p "$PICTURE"
for _ in $(seq 100); do
  cr flows --dot >"$PICTURE/chains.dot"
  grep -q '"callout:vendor-b" -> "dst:' "$PICTURE/chains.dot" && break
  sleep 0.02
done
wait "$CURL"
grep -q '"callout:vendor-b" -> "dst:' "$PICTURE/chains.dot" || {
  echo "FAIL: connredir flows --dot never showed the live chain (see $PICTURE/chains.dot)" >&2
  exit 1
}
want=$(sha256sum <"$WORK/payload.bin" | cut -d' ' -f1)
got=$(sha256sum <"$WORK/download.bin" | cut -d' ' -f1)
if [[ $want != "$got" ]]; then
  echo "FAIL: downloaded bytes differ ($got != $want)" >&2
  exit 1
fi
echo "bytes verified: sha256 $got"

# Proxies log a flow when it ends; give them a moment to flush.
for v in a b; do
  for _ in $(seq 100); do [[ -s $WORK/vendor-$v.jsonl ]] && break; sleep 0.05; done
done

echo "== the chain each proxy saw"
cr --json callout list >"$WORK/callouts.json"
python3 - "$WORK" <<'PY'
import json, sys, os
work = sys.argv[1]
names = {c["id"]: c["name"] for c in json.load(open(os.path.join(work, "callouts.json")))}
for v in ("vendor-a", "vendor-b"):
    path = os.path.join(work, v + ".jsonl")
    flows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    if len(flows) != 1:
        sys.exit(f"FAIL: {v} saw {len(flows)} flows, expected exactly 1")
    f = flows[0]
    chain = " -> ".join(names.get(h["callout_id"], str(h["callout_id"])) for h in f["chain"])
    print(f"{v}: flow {f['flow_id']} from {f['comm']} (pid {f['pid']}, uid {f['uid']}) to "
          f"{f['orig_dst']}: chain [{chain}], {f['bytes_down']} bytes down, "
          f"{f['duration_ms']} ms, {f['result']}")
PY
cr status
if dot -Tsvg -o "$PICTURE/chains.svg" "$PICTURE/chains.dot"; then
  echo "== the live chain as a picture: $PICTURE/chains.svg (from \`connredir flows --dot\`: $PICTURE/chains.dot)"
else
  echo "FAIL: Graphviz could not render $PICTURE/chains.dot" >&2
  exit 1
fi
echo "== demo passed: one download, two vendors, each exactly once"
