#!/usr/bin/env bash
# scripts/build-deb.sh [OUTDIR] — builds the Debian packages (connredir,
# libconnredir0, libconnredir-dev, and their -dbgsym) from the working tree
# with dpkg-buildpackage (debian/), in a scratch copy so the tree stays clean,
# and runs lintian on them. The .deb files land in OUTDIR (default
# build-deb/). Fails if lintian reports an error.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
OUT=$(realpath -m "${1:-build-deb}")
need=()
for p in debhelper dpkg-dev fakeroot lintian help2man; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if ((${#need[@]})); then
  [[ $(id -u) -eq 0 ]] || { echo "build-deb: install ${need[*]} (as root)" >&2; exit 1; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# The build dependencies of debian/control must be installed.
dpkg-checkbuilddeps || { echo "build-deb: run scripts/install-deps.sh first" >&2; exit 1; }

WORK=$OUT/src
rm -rf "$WORK" && mkdir -p "$WORK/connredir"
# Only what git tracks (and untracked files it does not ignore): no build trees.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [[ -e $f ]] && printf '%s\0' "$f"
done | tar -C "$REPO" --null -T - -cf - | tar -C "$WORK/connredir" -xf -
(cd "$WORK/connredir" && dpkg-buildpackage -b -us -uc -j"$(nproc)" >"$OUT/dpkg-buildpackage.log" 2>&1) || {
  tail -40 "$OUT/dpkg-buildpackage.log" >&2
  echo "build-deb: dpkg-buildpackage failed (log: $OUT/dpkg-buildpackage.log)" >&2
  exit 1
}
rm -f "$OUT"/*.deb "$OUT"/*.ddeb
mv "$WORK"/*.deb "$OUT"/
mv "$WORK"/*.ddeb "$OUT"/ 2>/dev/null || true
echo "build-deb: packages in $OUT:"
ls -1 "$OUT"/*.deb
echo "== lintian"
# Errors fail; warnings and info are printed for the record.
lintian --fail-on error --info "$OUT"/*.deb 2>&1 |
  { grep -v 'running with root privileges' || true; } | tee "$OUT/lintian.txt"
((PIPESTATUS[0] == 0)) || { echo "build-deb: lintian reports errors (above)" >&2; exit 1; }
echo "build-deb: lintian reports no errors"
