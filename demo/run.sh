#!/usr/bin/env bash
# connredir end-to-end demo. Cases (default: basic):
#
#   demo/run.sh [basic]   a real HTTP download passes through two independent
#                         inspection proxies ("vendors") in turn, each exactly
#                         once;
#   demo/run.sh offshelf  the same through three vendors, two of them Debian's
#                         unmodified mitmproxy (transparent mode) and squid
#                         (intercept port), which find the destination with
#                         SO_ORIGINAL_DST and set no records, plus the
#                         reference proxy: implicit records keep it one chain
#                         (docs/OFF-THE-SHELF.md);
#   demo/run.sh dns       DNS over UDP: dig resolves a name served by dnsmasq
#                         through the two vendors' proxies (connredir-proxy
#                         --udp), each once; each proxy prints the chain;
#   demo/run.sh all       all three, one after the other.
#
# It installs what it needs, builds, then inside a private network namespace:
# creates a throwaway cgroup tree, brings connredir up on it, registers the
# vendors with overlapping filters, starts their proxies as unprivileged
# principals, serves a file over HTTP on 127.0.0.1, downloads it with curl
# from inside the app cgroup, verifies the bytes, prints what each proxy saw
# (basic: also draws the live chain, build/demo/chains.svg), and removes
# everything else it created.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

if [[ ${1:-} != --inside ]]; then
  CASE=${1:-basic}
  case $CASE in
    basic | offshelf | dns | all) ;;
    *)
      echo "usage: demo/run.sh [basic|offshelf|dns|all]" >&2
      exit 2
      ;;
  esac
  if [[ $(id -u) -ne 0 ]]; then
    echo "demo/run.sh must run as root (it loads BPF programs): run it from a root shell" >&2
    exit 1
  fi
  scripts/install-deps.sh
  echo "== building connredir"
  scripts/build.sh build
  # A private network namespace per case: every address below is ours alone.
  if [[ $CASE == all ]]; then
    unshare --net -- "$0" --inside basic
    unshare --net -- "$0" --inside offshelf
    exec unshare --net -- "$0" --inside dns
  fi
  exec unshare --net -- "$0" --inside "$CASE"
fi
CASE=$2

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
# squid's service name (alphanumeric): names the shared memory segments it
# leaves in /dev/shm, which cleanup removes.
SQUID_SERVICE="crdemo$$"
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
  rm -f /dev/shm/"$SQUID_SERVICE"-*
  echo "== cleaned up: cgroup $CG, pins $PIN, processes, temp files"
}
trap cleanup EXIT

# The download equals the payload, byte for byte, or the demo fails.
verify_download() {
  local want got
  want=$(sha256sum <"$WORK/payload.bin" | cut -d' ' -f1)
  got=$(sha256sum <"$WORK/download.bin" | cut -d' ' -f1)
  if [[ $want != "$got" ]]; then
    echo "FAIL: downloaded bytes differ ($got != $want)" >&2
    exit 1
  fi
  echo "bytes verified: sha256 $got"
}

# Waits for each of vendor-a and vendor-b to log its one flow (a proxy logs a
# flow when it ends), prints what each saw and fails unless vendor-a saw the
# chain [vendor-a] and vendor-b [vendor-a -> vendor-b].
show_chains() {
  for v in a b; do
    for _ in $(seq 100); do [[ -s $WORK/vendor-$v.jsonl ]] && break; sleep 0.05; done
  done
  echo "== the chain each proxy saw"
  cr --json callout list >"$WORK/callouts.json"
  python3 - "$WORK" <<'PY'
import json, sys, os
work = sys.argv[1]
names = {c["id"]: c["name"] for c in json.load(open(os.path.join(work, "callouts.json")))}
for i, v in enumerate(("vendor-a", "vendor-b")):
    path = os.path.join(work, v + ".jsonl")
    flows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
    if len(flows) != 1:
        sys.exit(f"FAIL: {v} saw {len(flows)} flows, expected exactly 1")
    f = flows[0]
    chain = [names.get(h["callout_id"], str(h["callout_id"])) for h in f["chain"]]
    print(f"{v}: {f.get('proto', 'tcp')} flow {f['flow_id']} from {f['comm']} (pid {f['pid']}, "
          f"uid {f['uid']}) to {f['orig_dst']}: chain [{' -> '.join(chain)}], "
          f"{f['bytes_up']} bytes up, {f['bytes_down']} bytes down, {f['duration_ms']} ms, "
          f"{f['result']}")
    if chain != ["vendor-a", "vendor-b"][: i + 1] or f["result"] != "ok":
        sys.exit(f"FAIL: {v} saw the chain {chain} ({f['result']})")
PY
}

case_basic() {
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
      [[ -n $(ss -Htln "sport = :$port") ]] && break
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
  verify_download

  show_chains
  cr status
  if dot -Tsvg -o "$PICTURE/chains.svg" "$PICTURE/chains.dot"; then
    echo "== the live chain as a picture: $PICTURE/chains.svg (from \`connredir flows --dot\`: $PICTURE/chains.dot)"
  else
    echo "FAIL: Graphviz could not render $PICTURE/chains.dot" >&2
    exit 1
  fi
  echo "== demo passed: one download, two vendors, each exactly once"
}

# Waits for a TCP listener on 127.0.0.1:$1, up to $2 tenths of a second.
wait_port() {
  for _ in $(seq "${2:-100}"); do
    [[ -n $(ss -Htln "sport = :$1") ]] && return 0
    sleep 0.1
  done
  echo "FAIL: nothing listens on port $1" >&2
  return 1
}

# Off-the-shelf vendors: mitmproxy -> squid -> connredir-proxy, by weight.
# Neither mitmproxy nor squid knows connredir: each finds the original
# destination with SO_ORIGINAL_DST and connects onward without records;
# connredir attaches the records of the flow it accepted (implicit records),
# so the onward connect continues the chain instead of starting a new one.
case_offshelf() {
  for p in mitmdump squid curl; do
    command -v "$p" >/dev/null || { echo "FAIL: $p is missing: run scripts/install-deps.sh" >&2; exit 1; }
  done
  mkdir -p "$CG/app" "$CG/mitmproxy" "$CG/squid" "$CG/reference"
  echo "== connredir up on $CG (proxy socket options, SO_ORIGINAL_DST included, in the proxies' cgroups)"
  cr up --cgroup "$CG" --proxies-in "$CG/mitmproxy" --proxies-in "$CG/squid" \
    --proxies-in "$CG/reference"
  # Three vendors, each its own principal (uid); the weights give the order.
  cr callout add mitmproxy --proxy 127.0.0.1:18201 --proxy-uid 4201
  cr callout add squid --proxy 127.0.0.1:18202 --proxy-uid 4202
  cr callout add reference --proxy 127.0.0.1:18203 --proxy-uid 4203
  cr filter add --callout mitmproxy --dst 127.0.0.1/32 --port 8080 --weight 300
  cr filter add --callout squid --dst 127.0.0.1/32 --port 8080 --weight 200
  cr filter add --callout reference --dst 127.0.0.1/32 --port 8080 --weight 100
  cr callout list

  echo "== starting the web server, connredir-proxy, squid (intercept) and mitmdump (transparent)"
  head -c $((4 * 1024 * 1024)) /dev/urandom >"$WORK/payload.bin"
  python3 -m http.server 8080 --bind 127.0.0.1 --directory "$WORK" >"$WORK/http.log" 2>&1 &
  PIDS+=($!)
  cr exec --cgroup "$CG/reference" --uid 4203 -- \
    "$PROXY" --listen 127.0.0.1:18203 --name reference --log "$WORK/reference.jsonl" \
    >"$WORK/reference.out" 2>&1 &
  PIDS+=($!)
  # squid: an intercept port (the callout's proxy), the forward port squid 5
  # insists on, no cache, no Via, everything in $WORK, in the foreground.
  install -d -o 4202 -g 4202 "$WORK/squid"
  cat >"$WORK/squid/squid.conf" <<EOF
http_port 127.0.0.1:18204
http_port 127.0.0.1:18202 intercept
http_access allow all
cache deny all
via off
forwarded_for transparent
access_log stdio:$WORK/squid/access.log
cache_log $WORK/squid/cache.log
cache_store_log none
logfile_rotate 0
pid_filename $WORK/squid/squid.pid
coredump_dir $WORK/squid
pinger_enable off
netdb_filename none
shutdown_lifetime 0 seconds
visible_hostname connredir-demo-squid
EOF
  cr exec --cgroup "$CG/squid" --uid 4202 -- squid -n "$SQUID_SERVICE" -N -f "$WORK/squid/squid.conf" \
    >"$WORK/squid.out" 2>&1 &
  PIDS+=($!)
  # mitmdump: transparent mode, its CA and settings in $WORK.
  install -d -o 4201 -g 4201 "$WORK/mitmproxy"
  cr exec --cgroup "$CG/mitmproxy" --uid 4201 -- env HOME="$WORK/mitmproxy" PYTHONUNBUFFERED=1 \
    mitmdump --mode transparent --listen-host 127.0.0.1 --listen-port 18201 \
    --set confdir="$WORK/mitmproxy" --set stream_large_bodies=64k >"$WORK/mitmproxy.out" 2>&1 &
  PIDS+=($!)
  wait_port 8080 && wait_port 18203 && wait_port 18202 && wait_port 18201 300

  # Without implicit records the two would hand the flow to each other for
  # ever: give up (and say so) past the three redirects a chain needs.
  (
    for _ in $(seq 300); do
      [[ -e $WORK/curl.done ]] && exit 0
      n=$(cr --json status | python3 -c 'import json,sys; print(json.load(sys.stdin)["stats"]["redirected"])')
      if ((n > 6)); then
        echo "FAIL: $n redirects for one download: the proxies loop (this connredir has no implicit records?)" >&2
        for g in mitmproxy squid reference; do echo 1 >"$CG/$g/cgroup.kill"; done
        exit 1
      fi
      sleep 0.1
    done
  ) &
  WATCHDOG=$!
  PIDS+=($WATCHDOG)

  echo "== curl (uid 1000, in the app cgroup) downloads 4 MiB from http://127.0.0.1:8080/"
  rc=0
  cr exec --cgroup "$CG/app" --uid 1000 -- \
    curl -sS --noproxy '*' --max-time 20 -o "$WORK/download.bin" http://127.0.0.1:8080/payload.bin ||
    rc=$?
  touch "$WORK/curl.done"
  wait "$WATCHDOG" 2>/dev/null || true
  ((rc == 0)) || { echo "FAIL: curl exited with $rc" >&2; exit 1; }
  verify_download
  for _ in $(seq 50); do
    [[ -s $WORK/reference.jsonl && -s $WORK/squid/access.log ]] && break
    sleep 0.1
  done

  echo "== what each proxy logged"
  echo "-- mitmdump (streamed bodies show as \"content missing\"):"
  grep -E 'client connect|server connect|GET |<<' "$WORK/mitmproxy.out" || true
  echo "-- squid access.log:"
  cat "$WORK/squid/access.log"
  echo "-- connredir-proxy (reference):"
  cr --json callout list >"$WORK/callouts.json"
  python3 - "$WORK" <<'PY'
import json, sys, os
work = sys.argv[1]
names = {c["id"]: c["name"] for c in json.load(open(os.path.join(work, "callouts.json")))}
flows = [json.loads(l) for l in open(os.path.join(work, "reference.jsonl"))]
if len(flows) != 1:
    sys.exit(f"FAIL: the reference proxy saw {len(flows)} flows, expected exactly 1")
f = flows[0]
chain = " -> ".join(names.get(h["callout_id"], str(h["callout_id"])) for h in f["chain"])
print(f"flow {f['flow_id']} from {f['comm']} (uid {f['uid']}) to {f['orig_dst']}: "
      f"chain [{chain}], {f['bytes_down']} bytes down, {f['result']}")
if [names.get(h["callout_id"]) for h in f["chain"]] != ["mitmproxy", "squid", "reference"]:
    sys.exit("FAIL: expected the chain [mitmproxy -> squid -> reference]")
for v in ("mitmproxy", "squid", "reference"):
    c = next(c for c in json.load(open(os.path.join(work, "callouts.json"))) if c["name"] == v)
    if c["counters"]["redirected"] != 1:
        sys.exit(f"FAIL: {v} was visited {c['counters']['redirected']} times, expected once")
PY
  [[ $(grep -c /payload.bin "$WORK/squid/access.log") == 1 ]] || {
    echo "FAIL: squid logged $(grep -c /payload.bin "$WORK/squid/access.log") requests, expected 1" >&2
    exit 1
  }
  cr status
  echo "== demo passed: one download, mitmproxy -> squid -> connredir-proxy, each exactly once"
}

# DNS over UDP through two vendors: dig (connected UDP socket) -> vendor-a ->
# vendor-b -> dnsmasq, each vendor once; the proxies relay UDP (--udp).
case_dns() {
  mkdir -p "$CG/app" "$CG/vendor-a" "$CG/vendor-b"
  echo "== connredir up on $CG"
  cr up --cgroup "$CG" --proxies-in "$CG/vendor-a" --proxies-in "$CG/vendor-b"
  cr callout add vendor-a --proxy 127.0.0.1:15001 --proxy-uid 4001
  cr callout add vendor-b --proxy 127.0.0.1:15002 --proxy-uid 4002
  # UDP is redirected by filters that name it; vendor-a (weight 200) first.
  cr filter add --callout vendor-a --proto udp --dst 127.0.0.1/32 --port 53 --weight 200 \
    --context "vendor-a: DNS inspection"
  cr filter add --callout vendor-b --proto udp --dst 127.0.0.0/8 --weight 100 \
    --context "vendor-b: UDP DLP"
  cr filter list

  echo "== starting dnsmasq on 127.0.0.1:53 and the two vendors' proxies (--udp)"
  dnsmasq --keep-in-foreground --no-resolv --no-hosts --conf-file=/dev/null --pid-file= --user=root \
    --bind-interfaces --listen-address=127.0.0.1 --port=53 \
    --address=/inspected.example/192.0.2.7 --log-queries --log-facility=- \
    >"$WORK/dnsmasq.log" 2>&1 &
  PIDS+=($!)
  for v in a b; do
    uid=$((4000 + $(printf '%d' "'$v") - 96))
    cr exec --cgroup "$CG/vendor-$v" --uid "$uid" -- \
      "$PROXY" --listen "127.0.0.1:1500$((uid - 4000))" --name "vendor-$v" --udp \
      --udp-idle-timeout-ms 500 --log "$WORK/vendor-$v.jsonl" >"$WORK/vendor-$v.out" 2>&1 &
    PIDS+=($!)
  done
  for port in 15001 15002; do wait_port "$port"; done
  for _ in $(seq 100); do
    [[ -n $(ss -Huln "sport = :53") ]] && break
    sleep 0.05
  done

  echo "== dig (uid 1000, in the app cgroup) asks 127.0.0.1 for inspected.example"
  answer=$(cr exec --cgroup "$CG/app" --uid 1000 -- \
    dig @127.0.0.1 +short +tries=1 +time=3 +notcp inspected.example A)
  echo "answer: $answer"
  [[ $answer == 192.0.2.7 ]] || {
    echo "FAIL: dig got '$answer', expected 192.0.2.7" >&2
    cat "$WORK/dnsmasq.log" "$WORK"/vendor-*.out >&2
    exit 1
  }
  # A UDP flow is logged when it has been idle for --udp-idle-timeout-ms.
  show_chains
  grep -q 'query\[A\] inspected.example' "$WORK/dnsmasq.log" || {
    echo "FAIL: dnsmasq did not log the query" >&2
    exit 1
  }
  echo "-- dnsmasq:"
  grep 'inspected.example' "$WORK/dnsmasq.log"
  cr status
  echo "== demo passed: one DNS query, two vendors, each exactly once"
}

"case_$CASE"
