#!/usr/bin/env bash
# Builds (if needed) and runs Tessera's test suite with CTest.
#   scripts/test.sh               Release build in build/, every test
#   scripts/test.sh --sanitize    ASan+UBSan build in build-asan/, unit tests (label "unit")
#   scripts/test.sh --tsan        ThreadSanitizer build in build-tsan/ of the serving targets only, then the
#                                 engine-thread and end-to-end server tests (label "tsan")
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
python=python3
[ -x .venv/bin/python ] && python="$PWD/.venv/bin/python"

if [ "${1:-}" = "--tsan" ]; then
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_SANITIZE=thread \
        -DTESSERA_PYTHON="$python" >/dev/null
  cmake --build build-tsan -j"$jobs" --target tessera test_serving_engine
  TSAN_OPTIONS="halt_on_error=1 second_deadlock_stack=1" \
    ctest --test-dir build-tsan -L tsan --output-on-failure -j"$jobs"
elif [ "${1:-}" = "--sanitize" ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_SANITIZE=address,undefined \
        -DTESSERA_ENABLE_MPI=ON -DTESSERA_PYTHON="$python" >/dev/null
  cmake --build build-asan -j"$jobs"
  ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    ctest --test-dir build-asan -L unit --output-on-failure -j"$jobs"
else
  cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DTESSERA_ENABLE_MPI=ON -DTESSERA_PYTHON="$python" >/dev/null
  cmake --build build -j"$jobs"
  ctest --test-dir build --output-on-failure -j"$jobs"
fi
