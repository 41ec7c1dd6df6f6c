#!/usr/bin/env bash
# Style gate: every tracked C/C++ file is clang-formatted (bpf/ and abi/ use
# kernel style from their own .clang-format). With --tidy, also runs
# clang-tidy (.clang-tidy) on the user-space sources using build/'s
# compile_commands.json.
set -euo pipefail
cd "$(dirname "$0")/.."
mapfile -t files < <(git ls-files '*.c' '*.h' '*.cpp' '*.hpp')
clang-format --dry-run -Werror "${files[@]}"
echo "clang-format: ${#files[@]} files clean"
if [[ ${1:-} == --tidy ]]; then
  mapfile -t srcs < <(git ls-files 'src/*.cpp')
  clang-tidy -p build --quiet "${srcs[@]}"
fi
