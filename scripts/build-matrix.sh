#!/usr/bin/env bash
# Every build type with every supported compiler, warnings as errors: builds
# Release, Debug and RelWithDebInfo with g++ and clang++ into
# build-{gcc,clang}-{release,debug,relwithdebinfo}/ and runs each tree's
# unprivileged tests (everything but the kernel, bench and fuzz suites; no root
# needed). Keeps going after a failure and prints one line per configuration;
# exits 1 if any configuration failed to configure, build or pass its tests.
#
#   scripts/build-matrix.sh [--no-tests] [--clean] [CONFIG...]
#
# CONFIG is e.g. gcc-release or clang-debug (default: all six). --clean removes
# each tree after its tests (they are large). Environment: JOBS (default
# nproc), CONNREDIR_MATRIX_PREFIX (default build-, relative to the repo root).
set -euo pipefail
cd "$(dirname "$0")/.."

run_tests=1 clean=0 configs=()
for a in "$@"; do
  case $a in
    --no-tests) run_tests=0 ;;
    --clean) clean=1 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    -*) echo "build-matrix.sh: unknown option $a" >&2; exit 2 ;;
    *) configs+=("$a") ;;
  esac
done
if ((${#configs[@]} == 0)); then
  for cc in gcc clang; do
    for bt in release debug relwithdebinfo; do configs+=("$cc-$bt"); done
  done
fi

jobs=${JOBS:-$(nproc)}
prefix=${CONNREDIR_MATRIX_PREFIX:-build-}
declare -A build_type=([release]=Release [debug]=Debug [relwithdebinfo]=RelWithDebInfo)
summary=() failed=0

for cfg in "${configs[@]}"; do
  cc=${cfg%%-*} bt=${cfg#*-}
  case $cc in
    gcc) cenv=(CC=gcc CXX=g++) ;;
    clang) cenv=(CC=clang CXX=clang++) ;;
    *) echo "build-matrix.sh: unknown compiler in $cfg (gcc or clang)" >&2; exit 2 ;;
  esac
  if [[ -z ${build_type[$bt]:-} ]]; then
    echo "build-matrix.sh: unknown build type in $cfg (release, debug, relwithdebinfo)" >&2
    exit 2
  fi
  dir=$prefix$cfg
  echo "== $cfg: ${cenv[*]} CMAKE_BUILD_TYPE=${build_type[$bt]} CONNREDIR_WERROR=ON -> $dir"
  start=$SECONDS
  mkdir -p "$dir"
  if ! env "${cenv[@]}" cmake -S . -B "$dir" -DCMAKE_BUILD_TYPE="${build_type[$bt]}" \
      -DCONNREDIR_WERROR=ON >"$dir/configure.log" 2>&1; then
    cat "$dir/configure.log" >&2
    summary+=("$cfg: FAIL (configure, see $dir/configure.log)"); failed=1; continue
  fi
  if ! cmake --build "$dir" -j"$jobs"; then
    summary+=("$cfg: FAIL (build)"); failed=1; continue
  fi
  result="built in $((SECONDS - start)) s"
  if ((run_tests)); then
    log=$dir/ctest.log
    set +e
    ctest --test-dir "$dir" --output-on-failure -LE 'kernel|bench|fuzz' 2>&1 | tee "$log"
    rc=${PIPESTATUS[0]}
    set -e
    counts=$(grep -Eo '[0-9]+% tests passed, [0-9]+ tests failed out of [0-9]+' "$log" || true)
    if ((rc)) || grep -q "(Skipped)\|\[  SKIPPED \]" "$log"; then
      summary+=("$cfg: FAIL (tests: ${counts:-no summary}; see $log)"); failed=1; continue
    fi
    result+=", tests: $counts"
  fi
  summary+=("$cfg: ok ($result)")
  if ((clean)); then rm -rf "$dir"; fi
done

echo "== build matrix"
printf '  %s\n' "${summary[@]}"
exit "$failed"
