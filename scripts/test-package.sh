#!/usr/bin/env bash
# scripts/test-package.sh — proves the Debian packages, not the tree:
#  1. builds them (scripts/build-deb.sh: dpkg-buildpackage + lintian, no errors);
#  2. unpacks them into a throwaway root (dpkg -x) and checks what they hold;
#  3. builds the shipped C and C++ examples against the unpacked files only
#     (pkg-config with a sysroot, find_package with CMAKE_PREFIX_PATH; no
#     include or library path into the source or build tree);
#  4. runs a two-vendor chain with the unpacked `connredir` and
#     `connredir-proxy`, each example as vendor-a, in a private network
#     namespace and a throwaway cgroup: a curl download, byte-exact, each
#     vendor once;
#  5. installs the packages for real with `apt-get install ./*.deb` (their
#     runtime dependencies come from Debian), runs the installed programs, and
#     purges them, checking nothing is left.
# Root only. Everything it creates is removed on exit.
set -euo pipefail
# No `producer | grep -q` below: under pipefail, grep -q exiting at its first
# match can kill the producer with SIGPIPE and turn a match into a failure
# (stop 20's CI: ldd | grep -q). Capture the output, then grep it.
cd "$(dirname "$0")/.."
REPO=$PWD
[[ $(id -u) -eq 0 ]] || { echo "test-package.sh: run as root" >&2; exit 1; }
OUT=$REPO/build-deb

if [[ ${1:-} != --inside ]]; then
  echo "== package: build + lintian"
  scripts/build-deb.sh "$OUT"
  # Outside the private namespace: apt may fetch runtime dependencies.
  trap 'DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq connredir libconnredir0 libconnredir-dev >/dev/null 2>&1' EXIT
  echo "== package: apt-get install ./*.deb, run, purge"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    "$OUT"/connredir_*.deb "$OUT"/libconnredir0_*.deb "$OUT"/libconnredir-dev_*.deb >"$OUT/apt.log" 2>&1 ||
    { cat "$OUT/apt.log" >&2; exit 1; }
  /usr/sbin/connredir --version
  /usr/bin/connredir-proxy --version
  pkg-config --modversion connredir
  man -w connredir >/dev/null 2>&1 || [[ -e /usr/share/man/man8/connredir.8.gz ]]
  files=$(dpkg -L connredir libconnredir0 libconnredir-dev | grep -E '^/usr/(s?bin|lib|include)/' || true)
  DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq connredir libconnredir0 libconnredir-dev >"$OUT/apt.log" 2>&1 ||
    { cat "$OUT/apt.log" >&2; exit 1; }
  left=0
  while read -r f; do [[ -f $f ]] && { echo "left after purge: $f" >&2; left=1; }; done <<<"$files"
  ((left == 0)) || { echo "FAIL: purging the packages left files behind" >&2; exit 1; }
  trap - EXIT
  exec unshare --net -- "$0" --inside
fi

ROOT=$(mktemp -d /var/tmp/connredir-pkgroot.XXXXXX)
WORK=$(mktemp -d /var/tmp/connredir-pkgtest.XXXXXX)
chmod 0755 "$ROOT"
chmod 0777 "$WORK"
cg2=$(awk '$3 == "cgroup2" { print $2; exit }' /proc/mounts)
TAG="connredir-pkgtest-$$"
CG=$cg2/$TAG
PIN=/sys/fs/bpf/$TAG
PIDS=()
cleanup() {
  set +e
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
  for g in "$CG"/*/ "$CG"; do [[ -e $g/cgroup.kill ]] && echo 1 >"$g/cgroup.kill" 2>/dev/null; done
  sleep 0.2
  [[ -e $PIN ]] && "$ROOT/usr/sbin/connredir" --pin-dir "$PIN" down >/dev/null
  for g in "$CG"/*/; do [[ -d $g ]] && rmdir "$g"; done
  [[ -d $CG ]] && rmdir "$CG"
  rm -rf "$ROOT" "$WORK"
}
trap cleanup EXIT
ip link set lo up

echo "== package: unpack into $ROOT (dpkg -x) and check the contents"
for d in "$OUT"/connredir_*.deb "$OUT"/libconnredir0_*.deb "$OUT"/libconnredir-dev_*.deb; do
  dpkg -x "$d" "$ROOT"
done
MA=$(dpkg-architecture -qDEB_HOST_MULTIARCH)
LIB=$ROOT/usr/lib/$MA
for f in usr/sbin/connredir usr/bin/connredir-proxy usr/share/man/man8/connredir.8.gz \
         usr/share/man/man1/connredir-proxy.1.gz "usr/lib/$MA/libconnredir.so.0" \
         "usr/lib/$MA/libconnredir_winsock.so.0" "usr/lib/$MA/libconnredir.a" \
         "usr/lib/$MA/pkgconfig/connredir.pc" "usr/lib/$MA/pkgconfig/connredir-winsock.pc" \
         "usr/lib/$MA/cmake/connredir/connredirConfig.cmake" usr/include/connredir/client.hpp \
         usr/include/connredir/winsock.h usr/include/connredir/connredir_abi.h \
         lib/systemd/system/connredir.service lib/systemd/system/connredir-proxy@.service \
         lib/systemd/system/connredir.slice etc/connredir/connredir.toml etc/connredir/conf.d \
         etc/connredir/proxy; do
  [[ -e $ROOT/$f ]] || { echo "FAIL: the packages lack /$f" >&2; exit 1; }
done
[[ ! -e $ROOT/usr/include/connredir/control.hpp ]] ||
  { echo "FAIL: control-plane internals (control.hpp) are in the public headers" >&2; exit 1; }
grep -q 'SONAME *libconnredir.so.0' <<<"$(objdump -p "$LIB/libconnredir.so.0")" ||
  { echo "FAIL: libconnredir.so.0 has no SONAME libconnredir.so.0" >&2; exit 1; }
if grep -q 'connredir::control' <<<"$(nm -D --defined-only "$LIB/libconnredir.so.0" | c++filt)"; then
  echo "FAIL: libconnredir exports control-plane symbols" >&2; exit 1
fi
export LD_LIBRARY_PATH=$LIB
CLI=$ROOT/usr/sbin/connredir
PROXY=$ROOT/usr/bin/connredir-proxy
"$CLI" --version
"$PROXY" --version

EX=$ROOT/usr/share/doc/libconnredir-dev/examples
echo "== package: build the shipped examples against the unpacked package only"
built=()
if [[ -d $EX/c ]]; then
  cp -r "$EX/c" "$WORK/c"
  PKG_CONFIG_SYSROOT_DIR=$ROOT PKG_CONFIG_PATH= \
    PKG_CONFIG_LIBDIR=$LIB/pkgconfig:/usr/lib/$MA/pkgconfig:/usr/share/pkgconfig \
    make -C "$WORK/c" >"$WORK/c-build.log" 2>&1 || { cat "$WORK/c-build.log" >&2; exit 1; }
  grep -q -- "-I$ROOT/usr/include" "$WORK/c-build.log" ||
    { echo "FAIL: the C example did not take its flags from the package's pkg-config" >&2; exit 1; }
  built+=(c)
fi
if [[ -d $EX/cpp ]]; then
  cmake -S "$EX/cpp" -B "$WORK/cpp" -DCMAKE_PREFIX_PATH="$ROOT/usr" \
    -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF >"$WORK/cpp-build.log" 2>&1 &&
    cmake --build "$WORK/cpp" >>"$WORK/cpp-build.log" 2>&1 ||
    { cat "$WORK/cpp-build.log" >&2; exit 1; }
  grep -q "connredir_DIR:PATH=$LIB/cmake/connredir" "$WORK/cpp/CMakeCache.txt" ||
    { echo "FAIL: the C++ example did not find the package's CMake config" >&2; exit 1; }
  built+=(cpp)
fi
example_bin() { [[ $1 == c ]] && echo "$WORK/c/connredir-example-c" || echo "$WORK/cpp/connredir-example-cpp"; }
for b in "${built[@]}"; do
  grep -qF "$LIB/libconnredir.so.0" <<<"$(ldd "$(example_bin "$b")")" ||
    { echo "FAIL: the $b example does not load the package's libconnredir.so.0" >&2; exit 1; }
done

echo "== package: a two-vendor chain with the unpacked connredir and connredir-proxy"
mkdir -p "$CG/app" "$CG/vendor-a" "$CG/vendor-b"
cr() { "$CLI" --pin-dir "$PIN" "$@"; }
cr up --cgroup "$CG" --proxies-in "$CG/vendor-a" --proxies-in "$CG/vendor-b" >/dev/null
cr callout add vendor-a --proxy 127.0.0.1:15001 --proxy-uid 4001 >/dev/null
cr callout add vendor-b --proxy 127.0.0.1:15002 --proxy-uid 4002 >/dev/null
cr filter add --callout vendor-a --dst 127.0.0.1/32 --port 8080 --weight 200 >/dev/null
cr filter add --callout vendor-b --dst 127.0.0.1/32 --port 8080 --weight 100 >/dev/null
head -c $((4 * 1024 * 1024)) /dev/urandom >"$WORK/payload.bin"
python3 -m http.server 8080 --bind 127.0.0.1 --directory "$WORK" >"$WORK/http.log" 2>&1 &
PIDS+=($!)
wait_port() {
  for _ in $(seq 200); do [[ -n $(ss -Htln "sport = :$1") ]] && return 0; sleep 0.05; done
  echo "FAIL: nothing listens on port $1" >&2
  return 1
}
start_vendor() {  # name uid port cmd...
  local name=$1 uid=$2 port=$3
  shift 3
  cr exec --cgroup "$CG/$name" --uid "$uid" -- "$@" >"$WORK/$name.out" 2>&1 &
  PIDS+=($!)
  wait_port "$port"
}
start_vendor vendor-b 4002 15002 "$PROXY" --listen 127.0.0.1:15002 --name vendor-b \
  --log "$WORK/vendor-b.jsonl"
wait_port 8080
want=$(sha256sum <"$WORK/payload.bin" | cut -d' ' -f1)
# One download through vendor-a = `$@`, then vendor-b; both must log it once.
chain_download() {
  local label=$1
  shift
  rm -f "$WORK/vendor-a.jsonl" "$WORK/download.bin"
  : >"$WORK/vendor-b.jsonl"
  if [[ -n $(ss -Htln "sport = :15001") ]]; then
    echo "FAIL ($label): port 15001 is taken before vendor-a starts" >&2
    exit 1
  fi
  start_vendor vendor-a 4001 15001 "$@"
  local apid=${PIDS[-1]}
  cr exec --cgroup "$CG/app" --uid 1000 -- \
    curl -sS --max-time 30 -o "$WORK/download.bin" http://127.0.0.1:8080/payload.bin
  local got
  got=$(sha256sum <"$WORK/download.bin" | cut -d' ' -f1)
  [[ $got == "$want" ]] || { echo "FAIL ($label): downloaded bytes differ" >&2; exit 1; }
  for _ in $(seq 100); do
    [[ -s $WORK/vendor-a.jsonl && -s $WORK/vendor-b.jsonl ]] && break
    sleep 0.05
  done
  python3 - "$WORK" "$label" <<'PY'
import json, sys
work, label = sys.argv[1], sys.argv[2]
for v, n in (("vendor-a", 1), ("vendor-b", 2)):
    lines = [json.loads(l) for l in open(f"{work}/{v}.jsonl") if l.strip()]
    if len(lines) != 1:
        sys.exit(f"FAIL ({label}): {v} logged {len(lines)} flows, expected 1")
    if len(lines[0].get("chain", [])) != n:
        sys.exit(f"FAIL ({label}): {v} saw a chain of {len(lines[0].get('chain', []))} hops, expected {n}")
print(f"  {label}: download verified; vendor-a saw 1 hop, vendor-b 2 hops")
PY
  # Every process of vendor-a's cgroup (connredir exec may leave a parent and
  # a child), so the next vendor-a is the only one listening.
  echo 1 >"$CG/vendor-a/cgroup.kill"
  wait "$apid" 2>/dev/null || true
  for _ in $(seq 200); do [[ -n $(ss -Htln "sport = :15001") ]] || return 0; sleep 0.05; done
  echo "FAIL ($label): vendor-a still listens after it was killed" >&2
  exit 1
}
chain_download "connredir-proxy as vendor-a" "$PROXY" --listen 127.0.0.1:15001 --name vendor-a \
  --log "$WORK/vendor-a.jsonl"
for b in "${built[@]}"; do
  bin=$(example_bin "$b")
  chain_download "the $b example (built from the package) as vendor-a" "$bin" \
    --listen 127.0.0.1:15001 --log "$WORK/vendor-a.jsonl"
done

echo "== package: all checks passed (${#built[@]} examples built from the package)"
