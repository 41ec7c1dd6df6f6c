#!/usr/bin/env bash
# Installs the Debian 12 packages connredir needs to build, test and demo
# (golang-go: the Go example proxy, which a kernel test runs in a chain).
# Idempotent: only calls apt-get when something is missing.
set -euo pipefail
pkgs=(build-essential cmake pkg-config clang llvm libclang-rt-14-dev libbpf-dev libmnl-dev libtomlplusplus-dev bpftool
      libelf-dev zlib1g-dev libcli11-dev nlohmann-json3-dev libfmt-dev libexpected-dev
      googletest libgtest-dev libgmock-dev libbenchmark-dev iproute2 curl python3 util-linux
      clang-format clang-tidy nftables socat haproxy linux-perf valgrind
      # `connredir flows --dot` is rendered by the kernel tests
      graphviz
      # connredir-proxy --metrics (HTTP server); promtool checks its output in a kernel test
      libcpp-httplib-dev prometheus
      # scripts/kernel-matrix.sh (test.sh's last stage): boots Debian's kernels under qemu
      qemu-system-x86 busybox-static cpio kmod file xz-utils zstd debian-archive-keyring
      # the Go example proxy (examples/go), run by the kernel tests
      golang-go
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
fi
