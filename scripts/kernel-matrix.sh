#!/usr/bin/env bash
# scripts/kernel-matrix.sh [VERSION...] — run connredir on Debian's own kernels under qemu (TCG).
#
# For each VERSION (default: 5.10 6.1 6.12) this fetches Debian's newest generic amd64 kernel of that
# series (linux-image-amd64 of bullseye-security / bookworm(-security) / bookworm-backports), boots it
# with qemu-system-x86_64 (software emulation) with the host's / exported read-only over virtio-9p,
# and inside the guest: mounts proc/sys/dev, cgroup2, bpffs and tmpfs /tmp, brings lo up, loads veth
# and inet_diag/tcp_diag/udp_diag, runs `connredir up` on a throwaway cgroup (then `down`), and the
# kernel test subset ($CONNREDIR_KM_FILTER). One PASS/FAIL line per kernel; exit status 1 if any kernel failed.
# Kernels older than 5.18 must be *refused* by `connredir up` (no tests run there): that is a PASS.
#
# Slow (minutes per kernel under emulation): scripts/test.sh (so CI) runs it last, on 6.1 and 6.12.
# Needs root (for the guest binaries' paths and the download), the packages qemu-system-x86
# busybox-static cpio kmod file xz-utils zstd debian-archive-keyring (scripts/install-deps.sh; also
# installed here if missing), and the build in $CONNREDIR_BUILD_DIR (default build-km; built if
# missing). Works from any checkout location, /tmp included, and with a relative build dir.
#
# Environment:
#   CONNREDIR_BUILD_DIR   build tree whose binaries run in the guest (default: <repo>/build-km)
#   CONNREDIR_KM_CACHE    downloaded kernels, extracted modules, logs (default: $BUILD/kernel-matrix)
#   CONNREDIR_KM_FILTER   gtest filter (default: 38 tests, one or a few per concern: chains of
#                         both families, the socket-option contract, namespaces, Winsock (TCP
#                         and UDP), trace, implicit records, actions, UDP, listener adoption,
#                         the object under strict alignment and the probe that decides it)
#   CONNREDIR_KM_TIMEOUT  seconds per VM (default: 1200)
#   CONNREDIR_KM_MEM      guest memory in MiB (default: 1024)
# Logs: $CONNREDIR_KM_CACHE/logs/<kernel release>.log (the guest's serial console).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
# Absolute, symlink-free paths: apt resolves relative Dir:: settings under /etc/apt, and the guest
# finds the binaries at these paths (compiled into the kernel test binary) on the 9p-exported /.
BUILD=$(realpath -m -- "${CONNREDIR_BUILD_DIR:-$REPO/build-km}")
CACHE=$(realpath -m -- "${CONNREDIR_KM_CACHE:-$BUILD/kernel-matrix}")
# One or a few tests per concern (under TCG each test's `connredir up` verifies
# every program, 10-30 s; the whole suite runs on the host kernel in CI).
FILTER=${CONNREDIR_KM_FILTER:-'Chain.TwoVendorsInWeightOrderEachOnce:Chain.IPv6Chain:Chain.IPv4MappedOnDualStackSocket:Chain.GetpeernameReportsOriginalDestination:Chain.ProxyDownBypassGoesToTheNextVendor:Chain.FlowsListsLiveIPv6Chains:Contract.QueriesOnARedirectedSocket:Contract.SetRecords*:Contract.NotLoadedGivesTheKernelsOwnErrors:Contract.UnprivilegedProcessIsRefused:Contract.OnlyPrincipalsMayListenAtAProxyAddress:Contract.PrincipalChangesTakeEffectAtOnceDespiteTheCache:Netns.*:Winsock.SynchronousIoctlsOnARealRedirectedSocket:Winsock.WindowsStyleProxyTakesPartInATwoVendorChain:WinsockUdp.*:Trace.ExplainsEachHopOfAChain:Trace.CountsAndReportsLostEvents:Trace.SaysWhichFilterPermittedOrBlocked:Implicit.TwoProxiesThatSetNoRecordsChainOnce:Implicit.OffLetsTheLoopBreakerEndTheLoop:Actions.*:Udp.*:Ownership.ListenersBound*:Ownership.UpWithout*:StrictAlignment.ObjectLoadsWithByteCopies:Features.SockoptWordAccessProbeSeesStrictAlignment'}
VM_TIMEOUT=${CONNREDIR_KM_TIMEOUT:-1200}
VM_MEM=${CONNREDIR_KM_MEM:-1024}
# Loaded in the guest before it chroots into the host's / (which has no modules for Debian's
# kernels, so nothing can be autoloaded later): 9p to mount it, veth for the netns tests, and the
# inet_diag stack (`connredir flows` reads flows through NETLINK_SOCK_DIAG). Dependencies come along
# (sock_diag itself is core code in Debian's kernels, no config option of its own). A module the
# kernel has built in (=y) is skipped; one it has neither built in nor as a module fails the kernel.
MODULES=(virtio_pci 9pnet_virtio 9p veth inet_diag tcp_diag udp_diag)

if [[ $# -gt 0 ]]; then VERSIONS=("$@"); else VERSIONS=(5.10 6.1 6.12); fi

die() { echo "kernel-matrix: $*" >&2; exit 2; }
[[ $(id -u) -eq 0 ]] || die "run as root"
case "$CACHE" in "$REPO"/build*/*|/var/cache/*|/var/tmp/*) ;;
  "$REPO"/*) die "CONNREDIR_KM_CACHE must not be inside the repository (use build*/ or /var/cache)" ;;
esac

need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
[[ -x /bin/busybox ]] || need+=(busybox-static)
command -v cpio >/dev/null || need+=(cpio)
command -v depmod >/dev/null || need+=(kmod)
command -v file >/dev/null || need+=(file)
command -v xz >/dev/null || need+=(xz-utils)
command -v zstd >/dev/null || need+=(zstd)
[[ -s /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${need[@]}" >/dev/null
fi
# A dynamically linked busybox cannot run from the initramfs.
grep -q 'statically linked' <<<"$(file -L /bin/busybox 2>/dev/null)" ||
  die "/bin/busybox is not static (install busybox-static)"

CLI=$BUILD/src/cli/connredir
TESTS=$BUILD/tests/kernel/connredir_kernel_tests
if [[ ! -x $CLI || ! -x $TESTS || ! -x $BUILD/src/proxy/connredir-proxy ||
      ! -x $BUILD/tests/winsock/wfp-style-proxy ]]; then
  cmake -S "$REPO" -B "$BUILD" >/dev/null
  cmake --build "$BUILD" -j"$(nproc)" >/dev/null
fi

mkdir -p "$CACHE"/{apt/lists/partial,apt/archives/partial,apt/cache,debs,kernels,logs}
WORK=$(mktemp -d /tmp/connredir-km.XXXXXX)
QEMU_PID=
cleanup() {
  if [[ -n $QEMU_PID ]] && kill -0 "$QEMU_PID" 2>/dev/null; then
    kill "$QEMU_PID" 2>/dev/null || true
    wait "$QEMU_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- private apt configuration: Debian suites that carry the kernels; system sources untouched ---
APTD=$CACHE/apt
cat >"$APTD/sources.list" <<'EOF'
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm-backports main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
EOF
: >>"$APTD/status"
cat >"$APTD/apt.conf" <<EOF
Dir::Etc::SourceList "$APTD/sources.list";
Dir::Etc::SourceParts "/nonexistent";
Dir::State::Lists "$APTD/lists";
Dir::State::Status "$APTD/status";
Dir::Cache "$APTD/cache";
Dir::Cache::Archives "$APTD/archives";
APT::Architecture "amd64";
APT::Sandbox::User "root";
EOF
export APT_CONFIG=$APTD/apt.conf
# Refresh the package lists at most once a day.
if [[ -z $(find "$APTD/lists" -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null | head -1) ]]; then
  # apt-get update exits 0 when a suite could not be fetched (a warning only): check its log too,
  # or a network failure would surface later as "no such kernel".
  if ! apt-get -q update >"$WORK/apt-update.log" 2>&1 ||
     grep -Eq '^(E:|W: (Failed to fetch|Some index files failed))' "$WORK/apt-update.log"; then
    cat "$WORK/apt-update.log" >&2
    die "cannot download Debian's package lists (apt-get update with APT_CONFIG=$APT_CONFIG, log above)"
  fi
fi

# The image package behind the newest linux-image-amd64 whose version is VERSION.*.
resolve_pkg() {
  local ver=$1 metaver
  metaver=$(apt-cache madison linux-image-amd64 | awk -v v="$ver" '$3 ~ "^"v"\\." {print $3}' |
            sort -V | tail -1)
  [[ -n $metaver ]] || return 1
  apt-cache show "linux-image-amd64=$metaver" |
    sed -n 's/^Depends:.*\(linux-image-[^ ,]*-amd64\) (= \([^)]*\)).*/\1=\2/p' | head -1
}

# Fetches and extracts one kernel into $CACHE/kernels/<release>/: vmlinuz, config, and the modules
# (decompressed, in load order) for 9p and veth. Prints the release.
prepare_kernel() {
  local pkgver=$1 pkg=${1%%=*} ver=${1#*=} deb x kv kdir
  deb=$CACHE/debs/${pkg}_${ver//:/%3a}_amd64.deb
  if [[ ! -s $deb ]]; then
    (cd "$CACHE/debs" && apt-get -q download "$pkgver" >/dev/null 2>"$WORK/dl.log") ||
      { echo "kernel-matrix: apt-get download $pkgver failed:" >&2; cat "$WORK/dl.log" >&2; return 1; }
    [[ -s $deb ]] || { echo "kernel-matrix: $deb missing after download" >&2; return 1; }
  fi
  x=$WORK/x-$pkg
  kv=$(dpkg-deb -c "$deb" | sed -n 's|.*\./boot/vmlinuz-\(.*\)$|\1|p' | head -1)
  kdir=$CACHE/kernels/$kv
  if [[ ! -s $kdir/modules.order || ! -s $kdir/vmlinuz || $kdir/vmlinuz -ot $deb ||
        $(cat "$kdir/modules.wanted" 2>/dev/null) != "${MODULES[*]}" ]]; then
    rm -rf "$kdir" "$x"; mkdir -p "$kdir/modules" "$x"
    dpkg -x "$deb" "$x"
    depmod -b "$x" "$kv"
    cp "$x/boot/vmlinuz-$kv" "$kdir/vmlinuz"
    cp "$x/boot/config-$kv" "$kdir/config"
    : >"$kdir/modules.order.tmp"
    local m deps kind path base
    for m in "${MODULES[@]}"; do
      # "builtin M" for a module the kernel has built in (nothing to load), "insmod PATH" per
      # module to load, dependencies first; fails if the kernel has M neither way.
      deps=$(modprobe -d "$x" -S "$kv" --show-depends "$m" 2>"$WORK/modprobe.log") || {
        echo "kernel-matrix: $kv has no module $m, built in or loadable: $(cat "$WORK/modprobe.log")" >&2
        return 1
      }
      while read -r kind path _; do
        [[ $kind == insmod ]] || continue
        base=$(basename "$path"); base=${base%.xz}; base=${base%.zst}
        grep -qxF "$base" "$kdir/modules.order.tmp" && continue
        case "$path" in
          *.xz) xz -dc "$path" >"$kdir/modules/$base" ;;
          *.zst) zstd -qdc "$path" >"$kdir/modules/$base" ;;
          *) cp "$path" "$kdir/modules/$base" ;;
        esac
        echo "$base" >>"$kdir/modules.order.tmp"
      done <<<"$deps"
    done
    mv "$kdir/modules.order.tmp" "$kdir/modules.order"
    echo "${MODULES[*]}" >"$kdir/modules.wanted"
    rm -rf "$x"
  fi
  echo "$kv"
}

# The initramfs: static busybox, the modules, /init (mounts the host over 9p, chroots into it and
# runs guest.sh from a tmpfs).
build_initrd() {
  local kdir=$1 out=$2 root=$WORK/initrd-root
  rm -rf "$root"; mkdir -p "$root"/{bin,dev,proc,sys,host,lib/modules}
  cp /bin/busybox "$root/bin/busybox"
  cp "$kdir"/modules/*.ko "$root/lib/modules/"
  cp "$kdir/modules.order" "$root/lib/modules/order"
  cp "$WORK/guest.sh" "$root/guest.sh"
  # The guest mounts scratch tmpfs over /tmp, /run and /var/tmp, which would hide a build under
  # them (a CI clone may live anywhere, /tmp included): /init binds such a build back on top.
  case "$BUILD" in /tmp/*|/run/*|/var/tmp/*) echo "$BUILD" ;; esac >"$root/keep"
  cat >"$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc; mount -t sysfs sysfs /sys; mount -t devtmpfs devtmpfs /dev
for m in $(cat /lib/modules/order); do
  insmod /lib/modules/$m 2>/dev/null || echo "KM-WARN insmod $m failed"
done
if mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
  n=0
  while read -r d; do
    n=$((n + 1)); mkdir -p /keep.d/$n
    mount -o bind "/host$d" /keep.d/$n || echo "KM-WARN cannot bind $d"
  done </keep
  mount -t proc proc /host/proc
  mount -t sysfs sysfs /host/sys
  mount -t devtmpfs devtmpfs /host/dev
  mount -t tmpfs tmpfs /host/tmp
  mount -t tmpfs tmpfs /host/run
  mount -t tmpfs tmpfs /host/var/tmp
  n=0
  while read -r d; do
    n=$((n + 1)); mkdir -p "/host$d"
    mount -o bind /keep.d/$n "/host$d" || echo "KM-WARN cannot keep $d visible"
  done </keep
  mount -t cgroup2 cgroup2 /host/sys/fs/cgroup
  mount -t bpf bpf /host/sys/fs/bpf
  cp /guest.sh /host/tmp/guest.sh
  chroot /host /bin/bash /tmp/guest.sh
else
  echo "KM-ERROR cannot mount the host root over 9p"
fi
echo KM-POWEROFF
sync
poweroff -f
EOF
  chmod +x "$root/init"
  (cd "$root" && find . | cpio -o -H newc --quiet | gzip -1) >"$out"
}

# The script run inside the guest (as root, chrooted into the host's /, read-only).
cat >"$WORK/guest.sh" <<EOF
#!/bin/bash
CLI='$CLI'
TESTS='$TESTS'
FILTER='$FILTER'
EOF
cat >>"$WORK/guest.sh" <<'EOF'
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/tmp
echo "KM-BEGIN $(uname -r)"
ip link set lo up
cg=/sys/fs/cgroup/connredir-km-up pin=/sys/fs/bpf/connredir-km-up
mkdir -p "$cg"
"$CLI" --pin-dir "$pin" up --cgroup "$cg" >/tmp/up.out 2>&1
up_rc=$?
sed 's/^/KM-UP| /' /tmp/up.out
echo "KM-UP rc=$up_rc"
if [ $up_rc -eq 0 ]; then
  "$CLI" --pin-dir "$pin" status >/tmp/st.out 2>&1; echo "KM-STATUS rc=$?"
  "$CLI" --pin-dir "$pin" down >/tmp/down.out 2>&1; echo "KM-DOWN rc=$?"
  sed 's/^/KM-DOWN| /' /tmp/down.out
fi
rmdir "$cg" 2>/dev/null
rel=$(uname -r); maj=${rel%%.*}; rest=${rel#*.}; min=${rest%%[!0-9]*}
if [ "$maj" -lt 5 ] || { [ "$maj" -eq 5 ] && [ "$min" -lt 18 ]; }; then
  echo "KM-TESTS skipped (kernel older than 5.18)"
else
  "$TESTS" --gtest_filter="$FILTER" --gtest_color=no 2>&1
  echo "KM-TESTS rc=$?"
fi
echo "KM-END"
EOF

overall=0
results=()
for ver in "${VERSIONS[@]}"; do
  pkgver=$(resolve_pkg "$ver") || {
    line="FAIL $ver: no Debian linux-image-amd64 $ver.* in the package lists ($APTD/lists)"
    echo "$line"; results+=("$line"); overall=1; continue
  }
  kv=$(prepare_kernel "$pkgver") || {
    line="FAIL $ver: cannot download or unpack $pkgver (reason above)"
    echo "$line"; results+=("$line"); overall=1; continue
  }
  kdir=$CACHE/kernels/$kv
  build_initrd "$kdir" "$WORK/initrd-$kv.gz"
  log=$CACHE/logs/$kv.log
  echo "kernel-matrix: booting $kv ($pkgver), log $log" >&2
  start=$SECONDS
  timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 \
      -machine q35 -accel tcg -cpu max -smp 2 -m "$VM_MEM" \
      -kernel "$kdir/vmlinuz" -initrd "$WORK/initrd-$kv.gz" \
      -append "console=ttyS0 rdinit=/init panic=-1 quiet loglevel=3" \
      -fsdev local,id=hostroot,path=/,security_model=none,readonly=on \
      -device virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot \
      -nographic -no-reboot -nodefaults -serial stdio -monitor none </dev/null >"$log" 2>&1 &
  QEMU_PID=$!
  vm_rc=0; wait "$QEMU_PID" || vm_rc=$?
  QEMU_PID=
  secs=$((SECONDS - start))
  tr -d '\r' <"$log" >"$log.tmp" && mv "$log.tmp" "$log"

  up_rc=$(sed -n 's/^KM-UP rc=//p' "$log" | tail -1)
  up_msg=$(sed -n 's/^KM-UP| //p' "$log" | tail -3 | tr '\n' ' ' || true)
  t_rc=$(sed -n 's/^KM-TESTS rc=//p' "$log" | tail -1)
  summary=$(grep -E '^\[  (PASSED|FAILED)  \] [0-9]+ tests?' "$log" | sed 's/, listed below://' |
            tr -s ' ' | tr '\n' ' ' || true)
  failed=$(grep -E '^\[  FAILED  \] [A-Za-z_]+\.' "$log" | awk '{print $4}' | sort -u | tr '\n' ' ' || true)
  maj=${kv%%.*}; rest=${kv#*.}; min=${rest%%[!0-9]*}
  old=0; if ((maj < 5 || (maj == 5 && min < 18))); then old=1; fi
  if ! grep -q '^KM-END' "$log"; then
    line="FAIL $kv: VM did not finish (rc $vm_rc after ${secs}s; timeout ${VM_TIMEOUT}s)"
  elif ((old)); then
    if [[ $up_rc != 0 ]] && grep -q 'too old' <<<"$up_msg"; then
      line="PASS $kv: connredir up refuses as expected: ${up_msg% }"
    else
      line="FAIL $kv: connredir up should refuse a kernel older than 5.18 (rc ${up_rc:-?}): ${up_msg% }"
    fi
  elif [[ $up_rc != 0 ]]; then
    line="FAIL $kv: connredir up failed (rc ${up_rc:-?}): ${up_msg% }; tests: ${summary:-none}"
  elif [[ $t_rc != 0 ]]; then
    line="FAIL $kv: connredir up ok; tests rc ${t_rc:-?}: ${summary:-no summary} ${failed:+failed: $failed}"
  else
    line="PASS $kv: connredir up ok; tests: ${summary% } (${secs}s)"
  fi
  [[ $line == PASS* ]] || overall=1
  echo "$line"
  results+=("$line")
done

echo "kernel-matrix summary:"
printf '  %s\n' "${results[@]}"
exit "$overall"
