#!/bin/bash
# Runs inside the reboot test's guest at each boot (rt-driver.service, from the 9p share mounted at
# /mnt/rt); scripts/reboot-test.sh describes the test. Boot 1 installs and configures, then
# reboots; boot 2 checks. Lines starting "RT-" go to the console (the host's serial log); the result
# line is "RT-RESULT PASS ..." or "RT-RESULT FAIL ...". Then the guest powers off.
set -uo pipefail
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LC_ALL=C.UTF-8
SHARE=/mnt/rt
OUT=$SHARE/out
STATE=/var/lib/connredir-rt
CG2=/sys/fs/cgroup
mkdir -p "$STATE" "$OUT"

step() { echo "RT-STEP $*"; }
collect() {
  journalctl -b -1 -o short-monotonic --no-pager >"$OUT/journal-boot1.txt" 2>&1
  journalctl -b 0 -o short-monotonic --no-pager >"$OUT/journal-boot2.txt" 2>&1
  systemctl status --no-pager -l connredir.service 'connredir-proxy@*' >"$OUT/units.txt" 2>&1
  connredir status >"$OUT/connredir-status.txt" 2>&1
  connredir export >"$OUT/connredir-export.txt" 2>&1
  connredir --json callout list >"$OUT/callouts.json" 2>&1
  connredir filter list >"$OUT/filters.txt" 2>&1
  systemd-analyze blame --no-pager >"$OUT/systemd-analyze-blame.txt" 2>&1
  systemd-analyze critical-chain --no-pager >"$OUT/systemd-analyze-critical-chain.txt" 2>&1
  cp -r /var/log/connredir-proxy/. "$OUT/flow-logs/" 2>/dev/null || mkdir -p "$OUT/flow-logs"
  cp -r /etc/connredir "$OUT/etc-connredir" 2>/dev/null
}
finish() {  # PASS|FAIL message
  echo "RT-RESULT $*"
  collect
  sync
  systemctl --no-block poweroff
  exit 0
}
fail() { echo "RT-FAIL $*"; finish "FAIL $*"; }

# The guest must reach nothing outside itself: no interface but lo.
if ip -o link show | awk -F': ' '{print $2}' | grep -vqx lo; then
  fail "the guest has a network interface besides lo: $(ip -o link show | awk -F': ' '{print $2}' | tr '\n' ' ')"
fi

PAYLOAD=/srv/rt/payload.bin

# ---------------------------------------------------------------------------------------------------
if [[ ! -e $STATE/boot1-done ]]; then
  step "boot 1: install the packages"
  dpkg -i "$SHARE"/debs/libconnredir0_*.deb "$SHARE"/debs/connredir_*.deb \
    "$SHARE"/debs/libconnredir-dev_*.deb >"$OUT/dpkg.log" 2>&1 ||
    { cat "$OUT/dpkg.log"; fail "dpkg -i of the packages failed"; }
  # systemd's own check of the units (syntax, dependencies, executables).
  # --man=no: the guest image has no man pages (and no man) to look the Documentation= up in.
  systemd-analyze verify --man=no connredir.service connredir.slice connredir-proxy@check.service \
    >"$OUT/systemd-analyze-verify.txt" 2>&1
  if grep -i 'connredir' "$OUT/systemd-analyze-verify.txt"; then
    fail "systemd-analyze verify reports problems in the connredir units (above)"
  fi
  en=$(systemctl is-enabled connredir.service 2>&1)
  [[ $en == enabled ]] || fail "connredir.service is '$en' after install, expected enabled"
  systemctl is-active -q connredir.service ||
    { systemctl status --no-pager connredir.service; fail "connredir.service did not start on install"; }
  # The shipped configuration redirects nothing: no callout, no filter.
  n=$(connredir --json callout list | python3 -c 'import json,sys; print(len(json.load(sys.stdin)))') ||
    fail "connredir --json callout list failed after install"
  [[ $n == 0 ]] || fail "the shipped configuration installed $n callouts, expected none"
  connredir apply >"$OUT/apply-shipped.txt" 2>&1 || fail "connredir apply of the shipped configuration failed"

  step "boot 1: two vendors' drop-ins, their proxy instances, HTTP and echo servers on 127.0.0.1:8080-8081"
  mkdir -p /srv/rt
  head -c $((4 * 1024 * 1024)) /dev/urandom >"$PAYLOAD"
  # Lexical file order is vendor-b first; the weights put vendor-a first on the path.
  cat >/etc/connredir/conf.d/10-vendor-b.toml <<'EOF'
# vendor-b's package: its callout, proxied by connredir-proxy@vendor-b.service.
[[callout]]
name = "vendor-b"
proxy = ["127.0.0.1:15002"]
proxy_unit = "connredir-proxy@vendor-b.service"
on_proxy_down = "refuse"

[[filter]]
callout = "vendor-b"
dst = "127.0.0.1/32"
port = "8080-8081"
proto = "tcp"
weight = 100
EOF
  cat >/etc/connredir/conf.d/20-vendor-a.toml <<'EOF'
# vendor-a's package: its callout, proxied by connredir-proxy@vendor-a.service.
[[callout]]
name = "vendor-a"
proxy = ["127.0.0.1:15001"]
proxy_unit = "connredir-proxy@vendor-a.service"
on_proxy_down = "refuse"

[[filter]]
callout = "vendor-a"
dst = "127.0.0.1/32"
port = "8080-8081"
proto = "tcp"
weight = 200
EOF
  echo 'CONNREDIR_PROXY_OPTS="--listen 127.0.0.1:15001"' >/etc/connredir/proxy/vendor-a.conf
  echo 'CONNREDIR_PROXY_OPTS="--listen 127.0.0.1:15002"' >/etc/connredir/proxy/vendor-b.conf
  connredir apply --dry-run /etc/connredir/connredir.toml /etc/connredir/conf.d/*.toml \
    >"$OUT/apply-dry-run.txt" 2>&1 || { cat "$OUT/apply-dry-run.txt"; fail "connredir apply --dry-run refused the two-vendor configuration"; }
  cat >/usr/local/bin/rt-echo <<'EOF'
#!/usr/bin/python3
# The reboot test's echo server on 127.0.0.1:8081: holds a flow open for as long as its client.
import socketserver
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(65536)
            if not d:
                return
            self.request.sendall(d)
socketserver.ThreadingTCPServer.allow_reuse_address = True
socketserver.ThreadingTCPServer(("127.0.0.1", 8081), Echo).serve_forever()
EOF
  chmod +x /usr/local/bin/rt-echo
  cat >/etc/systemd/system/rt-echo.service <<EOF
[Unit]
Description=reboot test: echo server on 127.0.0.1:8081
[Service]
ExecStart=/usr/local/bin/rt-echo
[Install]
WantedBy=multi-user.target
EOF
  cat >/etc/systemd/system/rt-http.service <<EOF
[Unit]
Description=reboot test: HTTP server on 127.0.0.1:8080
[Service]
ExecStart=/usr/bin/python3 -m http.server 8080 --bind 127.0.0.1 --directory /srv/rt
[Install]
WantedBy=multi-user.target
EOF
  systemctl enable -q connredir-proxy@vendor-a.service connredir-proxy@vendor-b.service rt-http.service \
    rt-echo.service ||
    fail "systemctl enable of the proxy instances failed"
  cat /proc/sys/kernel/random/boot_id >"$STATE/boot1-id"
  touch "$STATE/boot1-done"
  sync
  step "boot 1: done, rebooting"
  systemctl --no-block reboot
  exit 0
fi

# ---------------------------------------------------------------------------------------------------
step "boot 2: waiting for the boot to finish"
[[ $(cat /proc/sys/kernel/random/boot_id) != $(cat "$STATE/boot1-id") ]] || fail "the guest did not reboot"
sys=$(timeout 300 systemctl is-system-running --wait 2>&1)
if [[ $sys != running ]]; then
  systemctl --failed --no-pager
  fail "the system is '$sys' after the reboot, not running (failed units above)"
fi
for u in connredir.service connredir-proxy@vendor-a.service connredir-proxy@vendor-b.service \
         rt-http.service rt-echo.service; do
  systemctl is-active -q "$u" || { systemctl status --no-pager "$u"; fail "$u is not active after the reboot"; }
done
step "boot 2: boot ordering"
mono() { systemctl show -P ActiveEnterTimestampMonotonic "$1"; }
c=$(mono connredir.service) n=$(mono network-pre.target) s=$(mono sysinit.target)
a=$(mono connredir-proxy@vendor-a.service) b=$(mono connredir-proxy@vendor-b.service)
echo "RT-INFO active at (us since boot): connredir.service $c, sysinit.target $s, network-pre.target $n, proxies $a $b"
((c > 0 && c <= n && c <= s)) || fail "connredir.service ($c) was not up before network-pre.target ($n) and sysinit.target ($s)"
((a >= c && b >= c)) || fail "a proxy instance started before connredir.service"
findmnt -n -t bpf /sys/fs/bpf >/dev/null || fail "no bpffs at /sys/fs/bpf"
t=$(date +%s.%N)
connredir apply >"$STATE/apply-again.txt" 2>&1 || { cat "$STATE/apply-again.txt"; fail "a second connredir apply failed"; }
grep -q '^nothing to change' "$STATE/apply-again.txt" ||
  { cat "$STATE/apply-again.txt"; fail "a second connredir apply after the boot's changed something"; }
echo "RT-INFO a second apply changes nothing ($(python3 -c "print(round($(date +%s.%N) - $t, 1))")s)"

step "boot 2: each callout's principal is its proxy unit's cgroup of this boot"
connredir --json callout list >"$STATE/callouts.json" 2>&1 || fail "connredir --json callout list failed"
python3 - "$STATE/callouts.json" "$CG2" <<'PY' || fail "the callouts are not as configured (above)"
import json, os, sys
callouts = {c["name"]: c for c in json.load(open(sys.argv[1]))}
for v in ("vendor-a", "vendor-b"):
    c = callouts.get(v)
    if c is None:
        sys.exit(f"RT-FAIL no callout {v} after the reboot: {sorted(callouts)}")
    cg = f"{sys.argv[2]}/connredir.slice/connredir-proxy@{v}.service"
    want = os.stat(cg).st_ino
    got = (c.get("proxy_cgroup") or {}).get("id")
    if got != want:
        sys.exit(f"RT-FAIL callout {v}'s principal cgroup is {c.get('proxy_cgroup')}, expected {cg} (id {want})")
print("RT-INFO callouts", {v: callouts[v]["id"] for v in ("vendor-a", "vendor-b")})
PY

# One download of FILE; checks it byte-exact and that the flow logs got one new line each, whose
# chains list the callouts in ORDER (callout names, first hop first).
want_sum() { sha256sum <"$1" | cut -d' ' -f1; }
logs=/var/log/connredir-proxy
lines() { if [[ -f $logs/$1/flows.log ]]; then wc -l <"$logs/$1/flows.log"; else echo 0; fi; }
download_through() {  # label order...
  local label=$1; shift
  local na nb
  na=$(lines vendor-a) nb=$(lines vendor-b)
  rm -f /tmp/dl.bin
  curl -sS --max-time 60 -o /tmp/dl.bin http://127.0.0.1:8080/payload.bin 2>&1 ||
    fail "$label: curl failed"
  [[ $(want_sum /tmp/dl.bin) == "$(want_sum "$PAYLOAD")" ]] || fail "$label: downloaded bytes differ"
  for _ in $(seq 100); do
    (($(lines vendor-a) > na && $(lines vendor-b) > nb)) && break
    sleep 0.1
  done
  python3 - "$label" "$STATE/callouts.json" "$logs" "$na" "$nb" "$@" <<'PY' || fail "$label: the chain is wrong (above)"
import json, sys
label, callouts, logs, na, nb, order = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), sys.argv[6:]
ids = {c["id"]: c["name"] for c in json.load(open(callouts))}
for v, before in (("vendor-a", na), ("vendor-b", nb)):
    new = [json.loads(l) for l in open(f"{logs}/{v}/flows.log").read().splitlines()[before:] if l.strip()]
    if len(new) != 1:
        sys.exit(f"RT-FAIL {label}: {v} logged {len(new)} flows for one download, expected 1")
    f = new[0]
    if not str(f.get("orig_dst", "")).endswith(":8080"):
        sys.exit(f"RT-FAIL {label}: {v} logged a flow to {f.get('orig_dst')}, expected 127.0.0.1:8080")
    chain = [ids.get(h.get("callout_id"), h.get("callout_id")) for h in f.get("chain", [])]
    want = order[: order.index(v) + 1]
    if chain != want:
        sys.exit(f"RT-FAIL {label}: {v} saw the chain {chain}, expected {want}: {f}")
print(f"RT-INFO {label}: byte-exact, chain " + " -> ".join(order))
PY
}
step "boot 2: a download passes vendor-a then vendor-b"
download_through "after the reboot" vendor-a vendor-b

step "boot 2: an established flow (echo, 127.0.0.1:8081) through both proxies during reload and stop"
# Echoes 1 MiB, says so, waits for the go, echoes 1 MiB more on the same connection, closes.
cat >/tmp/echo-client.py <<'PY'
import os, socket, sys, time
flag = sys.argv[1]
s = socket.create_connection(("127.0.0.1", 8081), timeout=120)
def roundtrip(n):
    data = os.urandom(n)
    s.sendall(data)
    got = b""
    while len(got) < n:
        c = s.recv(65536)
        if not c:
            sys.exit("the connection was closed")
        got += c
    if got != data:
        sys.exit("the echoed bytes differ")
roundtrip(1 << 20)
open(flag + ".up", "w").close()
deadline = time.time() + 600
while not os.path.exists(flag + ".go"):
    if time.time() > deadline:
        sys.exit("no go within 600 s")
    time.sleep(0.2)
roundtrip(1 << 20)
s.close()
PY
rm -f /tmp/echo.up /tmp/echo.go
python3 /tmp/echo-client.py /tmp/echo >/tmp/echo.err 2>&1 &
echo_pid=$!
for _ in $(seq 600); do [[ -e /tmp/echo.up ]] && break; kill -0 "$echo_pid" 2>/dev/null || break; sleep 0.1; done
[[ -e /tmp/echo.up ]] || fail "the echo flow did not come up: $(cat /tmp/echo.err)"

step "boot 2: reload with the vendors' weights swapped"
sed -i 's/^weight = 100$/weight = 300/' /etc/connredir/conf.d/10-vendor-b.toml
systemctl reload connredir.service || fail "systemctl reload connredir failed"
systemctl is-active -q connredir.service || fail "connredir.service is not active after reload"
journalctl -u connredir.service -n 20 --no-pager -o cat | sed 's/^/RT-INFO reload| /' | tail -6
download_through "after reload" vendor-b vendor-a

step "boot 2: stop"
systemctl stop connredir.service || fail "systemctl stop connredir failed"
systemctl is-active -q connredir.service && fail "connredir.service is still active after stop"
[[ -e /sys/fs/bpf/connredir ]] && fail "connredir is still pinned after stop (ExecStop=connredir down)"
kill -0 "$echo_pid" 2>/dev/null || fail "the echo flow ended before the go: $(cat /tmp/echo.err)"
na=$(lines vendor-a) nb=$(lines vendor-b)
touch /tmp/echo.go
wait "$echo_pid"; echo_rc=$?
[[ $echo_rc == 0 ]] || fail "the established flow broke across reload and stop: $(cat /tmp/echo.err)"
# It went through both proxies, in the order of when it was made (vendor-a, vendor-b).
for _ in $(seq 100); do
  (($(lines vendor-a) > na && $(lines vendor-b) > nb)) && break
  sleep 0.1
done
python3 - "$STATE/callouts.json" "$logs" "$na" "$nb" <<'PY' || fail "the established flow's chain is wrong (above)"
import json, sys
ids = {c["id"]: c["name"] for c in json.load(open(sys.argv[1]))}
for v, before, want in (("vendor-a", int(sys.argv[3]), ["vendor-a"]),
                        ("vendor-b", int(sys.argv[4]), ["vendor-a", "vendor-b"])):
    new = [json.loads(l) for l in open(f"{sys.argv[2]}/{v}/flows.log").read().splitlines()[before:] if l.strip()]
    echo = [f for f in new if str(f.get("orig_dst", "")).endswith(":8081")]
    if len(echo) != 1:
        sys.exit(f"RT-FAIL {v} logged {len(echo)} echo flows, expected 1: {new}")
    chain = [ids.get(h.get("callout_id"), h.get("callout_id")) for h in echo[0].get("chain", [])]
    if chain != want or echo[0].get("bytes_up", 0) < 2 << 20:
        sys.exit(f"RT-FAIL {v} saw the echo flow with chain {chain} (expected {want}): {echo[0]}")
PY
echo "RT-INFO the established flow (vendor-a -> vendor-b) survived reload and stop, 2 MiB each way, byte-exact"
sleep 1
na=$(lines vendor-a) nb=$(lines vendor-b)
curl -sS --max-time 60 -o /tmp/dl.bin http://127.0.0.1:8080/payload.bin || fail "a download after stop failed"
[[ $(want_sum /tmp/dl.bin) == "$(want_sum "$PAYLOAD")" ]] || fail "a download after stop differs"
sleep 2
(($(lines vendor-a) == na && $(lines vendor-b) == nb)) ||
  fail "a connect after stop still went through a proxy"
echo "RT-INFO after stop, a new connect goes direct"

step "boot 2: start again"
systemctl start connredir.service || fail "systemctl start connredir failed"
connredir --json callout list >"$STATE/callouts.json" 2>&1 || fail "connredir --json callout list failed"
# The proxies kept running across stop + start: `up` adopted their listeners (their owner records
# went with the maps at stop), each once.
n=$(journalctl -u connredir.service -b 0 --no-pager -o cat | grep -c 'adopted the listener 127\.0\.0\.1:1500[12] ')
[[ $n == 2 ]] || fail "start after stop adopted $n of the 2 proxies' listeners (journalctl -u connredir)"
download_through "after stop and start" vendor-b vendor-a

finish "PASS: after a reboot the two-vendor chain was restored (vendor-a -> vendor-b, byte-exact); reload re-applied (vendor-b -> vendor-a); stop sent new connects direct and kept an established flow; start adopted the running proxies and restored the chain"
