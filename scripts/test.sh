#!/usr/bin/env bash
# Builds (if needed) and runs Tessera's test suite with CTest.
#   scripts/test.sh               Release build in build/, every test
#   scripts/test.sh --sanitize    ASan+UBSan build in build-asan/, unit tests (label "unit")
#   scripts/test.sh --tsan        ThreadSanitizer build in build-tsan/ of the serving targets only, then the
#                                 engine-thread, end-to-end server, thread pool and decode work-sharing tests
#                                 (label "tsan")
#   scripts/test.sh --cuda        CUDA build in build-cuda/ (nvcc from PATH or /usr/local/cuda) of the CUDA backend,
#                                 its tests (ops, the whole model), the NCCL communicator and `tessera` with
#                                 --device cuda; runs the tests (they skip without a GPU)
set -euo pipefail
cd "$(dirname "$0")/.."
jobs=$(nproc)
python=python3
[ -x .venv/bin/python ] && python="$PWD/.venv/bin/python"

if [ "${1:-}" = "--cuda" ]; then
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  [ -x "$nvcc" ] || { echo "--cuda: no nvcc on PATH or in /usr/local/cuda/bin"; exit 1; }
  cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DTESSERA_ENABLE_CUDA=ON -DTESSERA_ENABLE_MPI=ON \
        -DCMAKE_CUDA_COMPILER="$nvcc" -DTESSERA_PYTHON="$python" >/dev/null
  cmake --build build-cuda -j"$jobs" --target cuda_layout_test cuda_ops_test cuda_model_test cuda_kernel_bench \
                                           test_nccl_collectives tessera
  ctest --test-dir build-cuda -R "cuda|Cuda|nccl|Nccl" --output-on-failure -j"$jobs"
elif [ "${1:-}" = "--tsan" ]; then
  cmake -S . -B build-tsan -DCMAKE_BUILD_TYPE=RelWithDebInfo -DTESSERA_SANITIZE=thread \
        -DTESSERA_PYTHON="$python" >/dev/null
  cmake --build build-tsan -j"$jobs" --target tessera test_serving_engine thread_pool_test step_queues_test
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
