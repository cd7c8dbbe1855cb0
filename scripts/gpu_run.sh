#!/usr/bin/env bash
# One-shot GPU verification of the CUDA backend, for the lent GPU machine (no package registry there).
#
#   prepare here:   scripts/gpu_fetch_debs.sh            (downloads .debs into .gpu-debs/, gitignored)
#   on the GPU:     scripts/gpu_run.sh [--no-bench] [--no-sanitizer] [--arch 90] [--prebuilt DIR]
#                   (through the device tool: command "bash scripts/gpu_run.sh", carry [".gpu-debs"])
#   --bench-args "ARGS": arguments for cuda_kernel_bench (e.g. "--rpw 0,1,2,4").
#   --models DIR: the test models folder (a copy of ../shared/models/stories260K under DIR, carried in an ignored
#                 folder): runs the model on the GPU (cuda_model_test, `tessera generate --device cuda` against
#                 llama2.c's greedy output, also under mpiexec with --tp 2, --pp 2 and both) and, unless --no-model-bench, `tessera bench --device cuda` on the
#                 llama2-7b and llama3-8b presets in bf16, int8 and int4.
#   --bench-70b: with --models, also `tessera bench --device cuda` on llama2-70b int4:g128 (about 36 GB of host
#                and device memory; the random weights are made and quantized one tensor at a time).
#   --prebuilt DIR: skip configure and build and run the programs in DIR (e.g. build-cuda/bin built here by
#                   scripts/test.sh --cuda and carried too): saves the lent machine's minutes.
#
# It unpacks .gpu-debs/*.deb into a private prefix (dpkg -x; nothing is installed system-wide), configures with
# CUDA and MPI on, builds the CUDA targets, then runs: the host-side layout test, the CUDA op harness, the op
# harness under compute-sanitizer (memcheck, then racecheck on attention and reductions), the NCCL test and the
# kernel benchmark. Logs go to $OUT (or ./gpu-out): at most 8 files, which is what the device tool brings back.
# Every step runs even if an earlier test step fails; the last lines printed are the summary table.
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
bench=1 sanitizer=1 arch=${TESSERA_CUDA_ARCH:-} prebuilt='' bench_args=() models='' model_bench=1 bench_70b=0
while (($#)); do
  case $1 in
    --no-bench) bench=0 ;;
    --no-sanitizer) sanitizer=0 ;;
    --arch) arch=$2; shift ;;
    --prebuilt) prebuilt=$2; shift ;;
    --bench-args) read -r -a bench_args <<<"$2"; shift ;;
    --models) models=$(cd "$2" && pwd); shift ;;
    --no-model-bench) model_bench=0 ;;
    --bench-70b) bench_70b=1 ;;
    *) echo "usage: $0 [--no-bench] [--no-sanitizer] [--arch SM] [--prebuilt DIR] [--bench-args ARGS] [--models DIR] [--no-model-bench] [--bench-70b]" >&2
       exit 2 ;;
  esac
  shift
done

summary=$out/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
# step NAME LOG CMD...: runs CMD with output appended to LOG, records its status and wall time.
step() {
  local name=$1 log=$2
  shift 2
  local t0=$SECONDS
  echo "=== $name: $*" >>"$log"
  "$@" >>"$log" 2>&1
  local rc=$?
  note "$(printf '%-28s rc=%-3s %4ss  (%s)' "$name" "$rc" $((SECONDS - t0)) "$(basename "$log")")"
  return $rc
}

# ---- environment ----
env_log=$out/build.log
{
  date -u
  cat /etc/os-release 2>/dev/null | head -2
  nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv 2>&1
  command -v nvcc && nvcc --version | tail -2
  command -v g++ c++ gcc cmake ninja pkg-config 2>&1
  g++ --version 2>&1 | head -1
  cmake --version | head -1
  nproc
} >"$env_log" 2>&1
if [[ -z $arch ]]; then
  arch=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  [[ -n $arch ]] || arch="80;90"
fi
cuda_home=${CUDA_HOME:-/usr/local/cuda}
[[ -x $cuda_home/bin/nvcc ]] || cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
export PATH=$cuda_home/bin:$PATH

# ---- dependencies from the carried .debs ----
prefix=${TESSERA_DEPS_PREFIX:-/tmp/tessera-deps}
ml=$prefix/usr/lib/x86_64-linux-gnu
cmake_deps=()
if compgen -G ".gpu-debs/*.deb" >/dev/null; then
  rm -rf "$prefix" && mkdir -p "$prefix/bin"
  for f in .gpu-debs/*.deb; do dpkg -x "$f" "$prefix" || note "dpkg -x failed on $f"; done
  # Our libraries first for the programs built here; base libraries (glibc, libstdc++) stay the machine's own.
  export LD_LIBRARY_PATH=$ml:$ml/openmpi/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  # Open MPI and PMIx look for their plugins and helpers under their install prefix: point them at ours.
  export OPAL_PREFIX=$prefix/usr PMIX_INSTALL_PREFIX=$prefix/usr PMIX_MCA_pcompress_base_silence_warning=1
  export PKG_CONFIG_LIBDIR=$ml/pkgconfig:$prefix/usr/share/pkgconfig PKG_CONFIG_SYSROOT_DIR=$prefix
  if ! command -v pkg-config >/dev/null; then
    printf '#!/bin/sh\nexec %s "$@"\n' "$prefix/usr/bin/pkgconf" >"$prefix/bin/pkg-config"
    chmod +x "$prefix/bin/pkg-config"
    export PATH=$prefix/bin:$PATH
  fi
  cmake_deps=(-DCMAKE_PREFIX_PATH="$prefix/usr" -DMPI_CXX_COMPILER="$prefix/usr/bin/mpicxx.openmpi"
              -DMPIEXEC_EXECUTABLE="$prefix/usr/bin/mpiexec.openmpi")
  echo "deps: $(ls .gpu-debs/*.deb | wc -l) .debs unpacked into $prefix" >>"$env_log"
else
  echo "deps: no .gpu-debs/ carried; using the machine's own packages" >>"$env_log"
fi

# NCCL may live outside the CUDA toolkit (e.g. a pip wheel's nvidia/nccl/lib): let the loader find it.
if ! ldconfig -p | grep -q 'libnccl\.so\.2'; then
  nccl_so=$(find "$cuda_home/" /usr /opt -name 'libnccl.so.2' 2>/dev/null | head -1)
  [[ -n $nccl_so ]] && export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$(dirname "$nccl_so")
fi
echo "nccl: $(ldconfig -p | grep -m1 'libnccl\.so\.2' || echo "${nccl_so:-none found}")" >>"$env_log"

# ---- configure and build (or take programs built elsewhere) ----
if [[ -n $prebuilt ]]; then
  bin=$(cd "$prebuilt" && pwd)
  echo "prebuilt: $(ls "$bin" | tr '\n' ' ')" >>"$env_log"
else
gen=()
command -v ninja >/dev/null && gen=(-G Ninja)
build=$root/build-gpu
step configure "$env_log" cmake -S . -B "$build" "${gen[@]}" -DCMAKE_BUILD_TYPE=Release -DTESSERA_ENABLE_CUDA=ON \
  -DTESSERA_ENABLE_MPI=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DCMAKE_CUDA_COMPILER="$cuda_home/bin/nvcc" \
  -DTESSERA_PYTHON="$(command -v python3)" "${cmake_deps[@]}" || { cat "$summary"; exit 1; }
targets=(cuda_layout_test cuda_ops_test cuda_kernel_bench cuda_model_test tessera)
grep -q '^TESSERA_NCCL_LIBRARY:.*nccl' "$build/CMakeCache.txt" 2>/dev/null && targets+=(test_nccl_collectives)
step build "$env_log" cmake --build "$build" -j"$(nproc)" --target "${targets[@]}" || { cat "$summary"; exit 1; }
bin=$build/bin
fi

# ---- tests ----
tests_log=$out/tests.log
step layout_test "$tests_log" "$bin/cuda_layout_test"
step ops_test "$tests_log" "$bin/cuda_ops_test" --gtest_output=xml:"$out/cuda_ops_test.xml"
# A second run draws fresh random inputs: an error that moves between runs points at a race.
step ops_test_again "$tests_log" "$bin/cuda_ops_test" --gtest_brief=1
if ((sanitizer)) && command -v compute-sanitizer >/dev/null; then
  san_log=$out/sanitizer.log
  step memcheck "$san_log" compute-sanitizer --tool memcheck --error-exitcode 9 "$bin/cuda_ops_test" \
    --gtest_brief=1 --gtest_filter='-*MatmulEveryFormat*:*BadDeviceIndex*:*CudaErrorsBecomeErrors*'
  step racecheck "$san_log" compute-sanitizer --tool racecheck --error-exitcode 9 "$bin/cuda_ops_test" \
    --gtest_brief=1 --gtest_filter='*Attention*:*Rmsnorm*:*Argmax*:*SiluMul*:*MmaQ4*'
fi
if [[ -x $bin/test_nccl_collectives ]]; then
  nccl_log=$out/nccl.log
  # One rank exercises the MPI bootstrap and every collective; two need two GPUs (the test skips, 77, on one).
  step nccl_np1 "$nccl_log" "$prefix/usr/bin/mpiexec.openmpi" -n 1 --allow-run-as-root \
    -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PMIX_INSTALL_PREFIX "$bin/test_nccl_collectives"
  step nccl_np2 "$nccl_log" "$prefix/usr/bin/mpiexec.openmpi" -n 2 --oversubscribe --allow-run-as-root \
    -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PMIX_INSTALL_PREFIX "$bin/test_nccl_collectives"
fi

# ---- the model on the GPU ----
if [[ -n $models ]]; then
  model_log=$out/model.log
  step model_test "$model_log" env TESSERA_MODELS="$models" "$bin/cuda_model_test"
  s260=$models/stories260K
  if [[ -f $s260/stories260K.bin ]]; then
    step greedy_cli "$model_log" bash -c "\"$bin/tessera\" generate --device cuda --model $s260/stories260K.bin \
      --tokenizer $s260/tok512.bin --temperature 0 -n 200 >$out/greedy-cuda.txt && cmp $out/greedy-cuda.txt $s260/greedy-200.txt"
    # Tensor and pipeline parallel on the GPU(s): ranks share a GPU when there are fewer GPUs than ranks (then the
    # tensor-parallel activations go through host memory over MPI; with a GPU per rank, over NCCL).
    for layout in "2 --tp 2" "2 --pp 2" "4 --tp 2 --pp 2"; do
      np=${layout%% *} flags=${layout#* }
      name=greedy_cli_$(echo "$flags" | tr -d ' -')
      step "$name" "$model_log" bash -c "\"$prefix/usr/bin/mpiexec.openmpi\" -n $np --oversubscribe --allow-run-as-root \
        -x LD_LIBRARY_PATH -x OPAL_PREFIX -x PMIX_INSTALL_PREFIX \"$bin/tessera\" generate --device cuda $flags \
        --model $s260/stories260K.bin --tokenizer $s260/tok512.bin --temperature 0 -n 200 >/tmp/$name.txt \
        && cmp /tmp/$name.txt $s260/greedy-200.txt"
    done
  fi
  if ((model_bench)); then
    for preset in llama2-7b llama3-8b; do
      for q in keep int8 int4:g128; do
        step "bench_${preset}_${q%%:*}" "$out/model_bench.log" "$bin/tessera" bench --device cuda --preset "$preset" \
          --dtype bf16 --quant "$q" --prompt-lens 128,512 --gen 128
      done
    done
  fi
  if ((bench_70b)); then
    step bench_llama2-70b_int4 "$out/model_bench.log" "$bin/tessera" bench --device cuda --preset llama2-70b \
      --dtype bf16 --quant int4:g128 --prompt-lens 128 --gen 64
  fi
fi

# ---- benchmark ----
if ((bench)); then
  step bench "$out/bench.log" "$bin/cuda_kernel_bench" "${bench_args[@]}"
fi

echo
echo "---- summary ($(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1), sm $arch) ----"
cat "$summary"
[[ -f $out/bench.log ]] && { echo; grep -v "^===" "$out/bench.log" | tail -60; }
[[ -f $out/model_bench.log ]] && { echo; grep -v "^===" "$out/model_bench.log" | tail -60; }
echo "skipped tests: $(grep -c '^\[  SKIPPED \] .*(' "$tests_log")"
grep -E '^\[  FAILED  \] .*\(' "$tests_log" | sort -u | head -30
exit 0
