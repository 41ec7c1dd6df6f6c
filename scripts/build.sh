#!/usr/bin/env bash
# Configures and builds connredir into build/ (or $1); further arguments go to
# cmake. CONNREDIR_WERROR=ON in the environment makes warnings errors
# (scripts/test.sh sets it); unset, the tree keeps what it was configured with
# (default OFF: a user's build never fails on a new compiler's warning).
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:-build}
shift || true
werror=()
if [[ -n ${CONNREDIR_WERROR:-} ]]; then werror=("-DCONNREDIR_WERROR=$CONNREDIR_WERROR"); fi
cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE=RelWithDebInfo "${werror[@]}" "$@" >/dev/null
cmake --build "$dir" -j"$(nproc)"
