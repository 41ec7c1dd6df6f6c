#!/usr/bin/env bash
# scripts/reboot-test.sh — connredir.service across a real reboot, from the Debian packages.
#
# Boots a Debian 12 guest with systemd as PID 1 under qemu (no network device: the guest reaches
# nothing outside itself), and inside it, with no manual step:
#  boot 1: installs the .debs of scripts/build-deb.sh with dpkg (the package enables and starts
#          connredir.service; the shipped configuration must redirect nothing), writes a two-vendor
#          configuration (two drop-ins in /etc/connredir/conf.d, each a callout whose proxy is a
#          connredir-proxy@ instance, filters sending 127.0.0.1:8080-8081 through vendor-a then vendor-b
#          by weight, the drop-in files' lexical order being the other way round), enables both
#          proxy instances, a local HTTP server (8080) and echo server (8081), and reboots;
#  boot 2: waits for the boot to finish, checks connredir.service ran before sysinit.target and
#          network-pre.target, that a second apply changes nothing,
#          that each callout's principal is its proxy unit's cgroup of this boot, that a curl
#          download passes vendor-a then vendor-b (each proxy's flow log shows the chain, by callout
#          id) byte-exact; then, with an echo connection open through both proxies: `systemctl
#          reload connredir` after swapping the vendors' weights (a new download passes vendor-b
#          then vendor-a), `systemctl stop connredir` (connredir is unpinned; a new connect goes
#          direct, no proxy sees it), the echo connection carries on byte-exact (an established
#          flow survives reload and stop; both proxies log it with its original chain),
#          and `systemctl start connredir` restores the chain.
# Prints one line, "reboot-test: PASS ..." or "reboot-test: FAIL ...", and exits 1 on failure.
#
# The guest image (mmdebstrap of bookworm from deb.debian.org: systemd-sysv, linux-image-amd64, curl,
# python3, connredir's runtime dependencies) is built once and cached under $CACHE/image; each run
# boots a throwaway qcow2 overlay of it. Uses KVM when it can run the guest kernel, else TCG.
# Root only (mmdebstrap, the 9p export). Needs qemu-system-x86 mmdebstrap e2fsprogs
# debian-archive-keyring (scripts/install-deps.sh).
#
# Environment:
#   CONNREDIR_BUILD_DIR    build tree whose reboot-test/ holds the cache (default: <repo>/build)
#   CONNREDIR_RT_CACHE     image, logs (default: $CONNREDIR_BUILD_DIR/reboot-test)
#   CONNREDIR_RT_DEBS      directory with the connredir, libconnredir0 and libconnredir-dev .debs to
#                          test (default: build them now with scripts/build-deb.sh into build-deb/)
#   CONNREDIR_RT_ACCEL     kvm, tcg or auto (default: auto = kvm if it boots the guest kernel)
#   CONNREDIR_RT_TIMEOUT   seconds for the whole VM run, both boots (default: 900)
#   CONNREDIR_RT_REBUILD   1 = rebuild the guest image even if the cached one is current
# Logs: $CACHE/logs/serial.log (both boots' console), $CACHE/logs/guest/ (journal of both boots,
# flow logs, connredir state).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd -P)
BUILD=$(realpath -m -- "${CONNREDIR_BUILD_DIR:-$REPO/build}")
CACHE=$(realpath -m -- "${CONNREDIR_RT_CACHE:-$BUILD/reboot-test}")
ACCEL=${CONNREDIR_RT_ACCEL:-auto}
VM_TIMEOUT=${CONNREDIR_RT_TIMEOUT:-900}
SUITE=bookworm
MIRROR=http://deb.debian.org/debian

die() { echo "reboot-test: FAIL: $*"; exit 1; }
[[ $(id -u) -eq 0 ]] || { echo "reboot-test: run as root" >&2; exit 2; }
case "$CACHE" in "$REPO"/build*/*|/var/cache/*|/var/tmp/*) ;;
  "$REPO"/*) echo "reboot-test: CONNREDIR_RT_CACHE must not be inside the repository (use build*/)" >&2
             exit 2 ;;
esac
need=()
command -v qemu-system-x86_64 >/dev/null || need+=(qemu-system-x86)
command -v qemu-img >/dev/null || need+=(qemu-utils)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
command -v mkfs.ext4 >/dev/null || need+=(e2fsprogs)
[[ -s /usr/share/keyrings/debian-archive-keyring.gpg ]] || need+=(debian-archive-keyring)
if ((${#need[@]})); then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends "${need[@]}" >/dev/null
fi

T0=$SECONDS
mkdir -p "$CACHE/logs"
WORK=$(mktemp -d /var/tmp/connredir-rt.XXXXXX)
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

# --- the packages under test --------------------------------------------------------------------
if [[ -n ${CONNREDIR_RT_DEBS:-} ]]; then
  DEBS=$(realpath -m -- "$CONNREDIR_RT_DEBS")
else
  DEBS=$REPO/build-deb
  echo "reboot-test: building the packages (scripts/build-deb.sh $DEBS)" >&2
  "$REPO/scripts/build-deb.sh" "$DEBS" >"$CACHE/logs/build-deb.log" 2>&1 ||
    { tail -20 "$CACHE/logs/build-deb.log" >&2; die "scripts/build-deb.sh failed ($CACHE/logs/build-deb.log)"; }
fi
mkdir -p "$WORK/share/debs" "$WORK/share/out"
for p in connredir libconnredir0 libconnredir-dev; do
  f=$(find "$DEBS" -maxdepth 1 -name "${p}_*_amd64.deb" | sort -V | tail -1)
  [[ -n $f ]] || die "no ${p}_*_amd64.deb in $DEBS (run scripts/build-deb.sh)"
  cp "$f" "$WORK/share/debs/"
done

# --- the guest image, cached --------------------------------------------------------------------
# Everything the guest needs is in the image: it has no network. The recipe's hash names the image,
# so a change to the package list or the setup below rebuilds it.
IMG_PKGS=systemd-sysv,udev,kmod,procps,iproute2,linux-image-amd64,initramfs-tools,curl,python3
# The packages' own dependencies, from their control files (dpkg -i in the guest is offline).
deps=$(for d in "$WORK"/share/debs/*.deb; do dpkg-deb -f "$d" Depends; done | tr ',' '\n' |
       sed 's/([^)]*)//g; s/|.*//; s/[[:space:]]//g' | grep -v '^libconnredir' | grep . | sort -u |
       paste -sd, -)
IMG_PKGS+=,$deps
image_setup() {  # the customisation of the unpacked root $1
  local r=$1
  echo rt-guest >"$r/etc/hostname"
  printf '127.0.0.1 localhost\n127.0.1.1 rt-guest\n::1 localhost\n' >"$r/etc/hosts"
  echo '/dev/vda / ext4 rw,errors=remount-ro 0 1' >"$r/etc/fstab"
  # Both boots' journals stay on disk (the second boot's check dumps the first's).
  mkdir -p "$r/var/log/journal" "$r/mnt/rt"
  # Nothing that would try the (absent) network or write over the test's console output.
  local u
  for u in apt-daily.timer apt-daily-upgrade.timer e2scrub_all.timer fstrim.timer \
           serial-getty@ttyS0.service getty@tty1.service; do
    ln -sf /dev/null "$r/etc/systemd/system/$u"
  done
  # The driver: mounts the host's share (virtio-9p) and runs its guest.sh, each boot.
  cat >"$r/etc/systemd/system/rt-driver.service" <<'EOF'
[Unit]
Description=connredir reboot test driver (scripts/reboot-test.sh)
After=local-fs.target
[Service]
Type=exec
ExecStart=/bin/sh -c 'modprobe -a 9pnet_virtio 9p && mount -t 9p -o trans=virtio,version=9p2000.L,msize=262144 rt /mnt/rt && exec /bin/bash /mnt/rt/guest.sh'
StandardOutput=journal+console
StandardError=journal+console
[Install]
WantedBy=multi-user.target
EOF
  mkdir -p "$r/etc/systemd/system/multi-user.target.wants"
  ln -sf /etc/systemd/system/rt-driver.service "$r/etc/systemd/system/multi-user.target.wants/rt-driver.service"
}
recipe=$( { echo "$SUITE $MIRROR $IMG_PKGS"; declare -f image_setup; } | sha256sum | cut -c1-16)
IMG=$CACHE/image
if [[ ${CONNREDIR_RT_REBUILD:-0} == 1 || $(cat "$IMG/recipe" 2>/dev/null) != "$recipe" ||
      ! -s $IMG/root.raw || ! -s $IMG/vmlinuz || ! -s $IMG/initrd.img ]]; then
  echo "reboot-test: building the guest image (mmdebstrap $SUITE, log $CACHE/logs/mmdebstrap.log)" >&2
  t=$SECONDS
  rm -rf "$IMG" "$CACHE/image.tmp"
  mkdir -p "$CACHE/image.tmp"
  root=$CACHE/image.tmp/root
  timeout 1800 mmdebstrap --variant=minbase --mode=root --format=directory \
    --include="$IMG_PKGS" \
    --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
    "$SUITE" "$root" "$MIRROR" >"$CACHE/logs/mmdebstrap.log" 2>&1 ||
    { tail -20 "$CACHE/logs/mmdebstrap.log"; die "mmdebstrap failed ($CACHE/logs/mmdebstrap.log)"; }
  image_setup "$root"
  cp "$(ls "$root"/boot/vmlinuz-* | sort -V | tail -1)" "$CACHE/image.tmp/vmlinuz"
  cp "$(ls "$root"/boot/initrd.img-* | sort -V | tail -1)" "$CACHE/image.tmp/initrd.img"
  truncate -s 3G "$CACHE/image.tmp/root.raw"
  mkfs.ext4 -q -F -L rt-root -d "$root" "$CACHE/image.tmp/root.raw" ||
    die "mkfs.ext4 -d failed"
  rm -rf "$root"
  echo "$recipe" >"$CACHE/image.tmp/recipe"
  mv "$CACHE/image.tmp" "$IMG"
  echo "reboot-test: guest image built in $((SECONDS - t))s" >&2
fi

# --- KVM if it runs the guest kernel, else TCG ---------------------------------------------------
# /dev/kvm may exist and still not run a stock kernel (a nested or paravirtual KVM): boot the kernel
# with no root and expect its panic line within seconds.
if [[ $ACCEL == auto ]]; then
  ACCEL=tcg
  if [[ -c /dev/kvm ]] && [[ -w /dev/kvm ]]; then
    ( timeout 20 qemu-system-x86_64 -machine q35 -accel kvm -cpu host -m 256 -nic none \
      -kernel "$IMG/vmlinuz" -append "console=ttyS0 panic=-1" -nographic -nodefaults \
      -serial "file:$WORK/kvm-probe.log" -monitor none -no-reboot || true ) >/dev/null 2>&1
    grep -q 'Kernel panic' "$WORK/kvm-probe.log" 2>/dev/null && ACCEL=kvm
    [[ $ACCEL == kvm ]] ||
      echo "reboot-test: /dev/kvm does not run the guest kernel here (a nested or paravirtual KVM?): TCG" >&2
  fi
fi
case $ACCEL in
  kvm) QACCEL=(-accel kvm -cpu host) ;;
  tcg) QACCEL=(-accel "tcg,thread=multi" -cpu max) ;;
  *) echo "reboot-test: CONNREDIR_RT_ACCEL must be kvm, tcg or auto" >&2; exit 2 ;;
esac

# --- the script the guest runs at each boot ------------------------------------------------------
cp "$REPO/scripts/reboot-test-guest.sh" "$WORK/share/guest.sh"

# --- boot, reboot, check -------------------------------------------------------------------------
qemu-img create -q -f qcow2 -b "$IMG/root.raw" -F raw "$WORK/overlay.qcow2"
LOG=$CACHE/logs/serial.log
rm -rf "$CACHE/logs/guest"
echo "reboot-test: booting the guest ($ACCEL), console log $LOG" >&2
t=$SECONDS
# No -no-reboot: the guest's reboot restarts the VM with the same kernel, disk and share; its
# poweroff ends qemu.
timeout --kill-after=10 "$VM_TIMEOUT" qemu-system-x86_64 -machine q35 "${QACCEL[@]}" -smp 2 -m 1024 \
  -nic none -drive "file=$WORK/overlay.qcow2,if=virtio,format=qcow2" \
  -kernel "$IMG/vmlinuz" -initrd "$IMG/initrd.img" \
  -append "root=/dev/vda rw console=ttyS0 panic=-1 net.ifnames=0 quiet systemd.show_status=yes" \
  -virtfs "local,path=$WORK/share,mount_tag=rt,security_model=none,id=rt" \
  -nographic -nodefaults -serial "file:$LOG" -monitor none </dev/null >"$WORK/qemu.out" 2>&1 &
QEMU_PID=$!
vm_rc=0; wait "$QEMU_PID" || vm_rc=$?
QEMU_PID=
vm_secs=$((SECONDS - t))
tr -d '\r' <"$LOG" >"$LOG.tmp" && mv "$LOG.tmp" "$LOG"
cp -r "$WORK/share/out" "$CACHE/logs/guest"

result=$(sed -n 's/^.*RT-RESULT //p' "$LOG" | tail -1)
total=$((SECONDS - T0))
if [[ -z $result ]]; then
  cat "$WORK/qemu.out" >&2 || true
  grep -E 'RT-(STEP|FAIL)' "$LOG" | tail -5 >&2 || true
  echo "reboot-test: FAIL: the guest reported no result (qemu rc $vm_rc after ${vm_secs}s, timeout ${VM_TIMEOUT}s; $LOG)"
  exit 1
fi
if [[ $result == PASS* ]]; then
  echo "reboot-test: ${result} ($ACCEL; VM ${vm_secs}s, total ${total}s)"
  exit 0
fi
grep -E 'RT-(STEP|FAIL)' "$LOG" | tail -8 >&2 || true
echo "reboot-test: ${result} ($ACCEL; VM ${vm_secs}s, total ${total}s; $LOG, $CACHE/logs/guest/)"
exit 1
