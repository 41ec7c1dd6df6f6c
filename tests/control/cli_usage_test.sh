#!/bin/sh
# Bad arguments: one clear line on stderr and exit code 2, before any
# privileged work (so this runs unprivileged and never touches the kernel).
CLI="$1"
PIN=/sys/fs/bpf/connredir-usage-test-never-created
fails=0
expect() {
  want=$1
  shift
  err=$("$CLI" --pin-dir "$PIN" "$@" 2>&1 >/dev/null)
  rc=$?
  lines=$(printf '%s\n' "$err" | grep -c .)
  if [ "$rc" != "$want" ] || { [ "$want" = 2 ] && [ "$lines" != 1 ]; }; then
    echo "FAIL: connredir $* -> rc=$rc (want $want), stderr:"
    printf '%s\n' "$err"
    fails=$((fails + 1))
  else
    echo "ok:   connredir $* -> $rc: $err"
  fi
}
expect 0 --help
expect 2
expect 2 frobnicate
expect 2 callout
expect 2 callout add
expect 2 callout add "bad name" --proxy 127.0.0.1:1
expect 2 callout add x
expect 2 callout add x --proxy 127.0.0.1
expect 2 callout add x --proxy 127.0.0.1:0
expect 2 callout add x --proxy 127.0.0.1:1 --proxy 127.0.0.2:2
expect 2 callout add x --proxy 127.0.0.1:1 --proxy-uid -5
expect 2 callout add x --proxy 127.0.0.1:1 --proxy-cgroup /tmp
expect 2 callout add x --proxy 127.0.0.1:1 --implicit-records maybe
expect 2 callout add x --proxy 127.0.0.1:1 --implicit-records
expect 2 callout del
expect 2 filter add
expect 2 filter add --callout x --dst 10.1.2.3/8
expect 2 filter add --callout x --dst 10.0.0.0/33
expect 2 filter add --callout x --dst nonsense
expect 2 filter add --callout x --port 0
expect 2 filter add --callout x --port 90-80
expect 2 filter add --callout x --port 70000
expect 2 filter load
expect 2 filter load /nonexistent/connredir-filters.txt
BADF=$(mktemp)
printf 'callout=x dst=10.0.0.0/8\ncallout=x dst=10.1.2.3/8\n' >"$BADF"
expect 2 filter load "$BADF"
printf '{"callout":"x","colour":"red"}\n' >"$BADF"
expect 2 filter load "$BADF"
rm -f "$BADF"
expect 2 filter add --proto udp --port 443
expect 2 filter add --callout x --weight x
expect 2 filter add --callout x --app-uid 4294967295
expect 2 filter add --callout x --context "$(printf '%0129d' 0)"
expect 2 filter del
expect 2 filter del abc
expect 2 filter del 0
expect 2 authorize
expect 2 authorize --uid 1 --cgroup-id 2
expect 2 authorize --uid x
expect 2 authorize --list --uid 1
expect 2 decode
expect 2 decode zz
expect 2 exec --cgroup /nonexistent-cgroup -- true
expect 2 exec -- true
expect 2 --pin-dir relative status
[ "$fails" = 0 ] || { echo "$fails failure(s)"; exit 1; }
echo "all usage checks passed"
