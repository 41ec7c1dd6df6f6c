#!/usr/bin/env bash
# Installs the Debian 12 packages connredir needs to build, test and demo
# (golang-go: the Go example proxy, which a kernel test runs in a chain).
# Idempotent: only calls apt-get when something is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang llvm libclang-rt-14-dev libbpf-dev libmnl-dev libtomlplusplus-dev libcpp-httplib-dev bpftool
      libelf-dev zlib1g-dev libcli11-dev nlohmann-json3-dev libfmt-dev libexpected-dev
      googletest libgtest-dev libgmock-dev libbenchmark-dev iproute2 curl python3 util-linux
      # bench/relay_floor (the io_uring relay floor of bench/run.sh part 3)
      liburing-dev
      clang-format clang-tidy nftables socat haproxy linux-perf valgrind
      # `connredir flows --dot` is rendered by the kernel tests
      graphviz
      # promtool and a real Prometheus server, used by the metrics tests
      prometheus
      # scripts/kernel-matrix.sh (test.sh's last stage): boots Debian's kernels under qemu
      qemu-system-x86 busybox-static cpio kmod file xz-utils zstd debian-archive-keyring
      # scripts/reboot-test.sh: a Debian 12 guest image (mmdebstrap) booted under qemu
      mmdebstrap qemu-utils e2fsprogs
      # the Go example proxy (examples/go), run by the kernel tests
      golang-go
      # off-the-shelf vendors (tests/kernel/test_offshelf.cpp, demo/run.sh offshelf):
      # Debian's unmodified mitmproxy (transparent mode) and squid (intercept port)
      mitmproxy squid
      # DNS through a chain of vendors (tests/kernel/test_udp.cpp, demo/run.sh):
      # dig, and dnsmasq without its system service
      bind9-dnsutils dnsmasq-base
      # the Debian packages (scripts/build-deb.sh, scripts/test-package.sh) and their man pages
      debhelper dpkg-dev fakeroot lintian help2man)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    echo "missing packages: ${missing[*]} (run as root, or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  # Debian's squid package enables and starts a system squid on *:3128. The
  # tests and the demo run their own squid (own config, ports 16202-16204 and
  # 18202-18204), so the system one is only in the way: when this run just
  # installed squid, stop it and keep it from starting at boot. A squid that
  # was installed before is left as its admin configured it.
  if [[ " ${missing[*]} " == *" squid "* ]]; then
    if [[ -d /run/systemd/system ]]; then
      systemctl disable --now squid.service >/dev/null 2>&1 ||
        echo "note: could not disable the system squid service" >&2
    elif [[ -x /etc/init.d/squid ]]; then
      # no systemd (a container): the postinst started it unless policy-rc.d said no
      /etc/init.d/squid stop >/dev/null 2>&1 || true
      update-rc.d squid disable >/dev/null 2>&1 || true
    fi
  fi
fi
