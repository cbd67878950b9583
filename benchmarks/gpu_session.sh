#!/usr/bin/env bash
# The whole GPU check on the project's device machine, from a bare start, in one command.
#
# That machine (see the device tool's KINDS.md) has nvcc, torch with CUDA, cupy, cmake, ninja,
# pybind11, scikit-build-core, pytest, hypothesis and the nvidia-cublas / nvidia-cusolver wheels,
# but NOT scipy-openblas32 (the CPU backend's BLAS/LAPACK) and no network. So, once, here:
#
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#       -d .whl scipy-openblas32
#
# then run, with the device tool (carry [".whl"], timeout_s 600):
#
#   bash benchmarks/gpu_session.sh
#
# It builds the module in place (sm_90 only: the H100/H200; about 20 s on 16 cores), runs
# benchmarks/gpu_check.py under a budget (GPU_CHECK_BUDGET_S, default 400 s) and leaves
# gpu_check.json, table.txt, test_cuda.log and build.log in $OUT (or ./gpu-check-out), written
# as each section ends, so a run that is cut short still brings back what it finished.
# Extra arguments go to gpu_check.py (e.g. --skip-tests, --dims 4096). GPU_SANITIZE=1 first runs
# a few CUDA tests under compute-sanitizer's memcheck (slow; log in sanitizer.log).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$out"
export PYTHONUNBUFFERED=1
py="$(command -v python3)"
t0=$(date +%s)
say() { echo "[gpu_session +$(( $(date +%s) - t0 ))s] $*"; }

if ! "$py" -c "import scipy_openblas32" 2>/dev/null; then
  if ls .whl/scipy_openblas32-*.whl >/dev/null 2>&1; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl \
      || { say "installing the carried wheels failed"; exit 3; }
    export PYTHONPATH="/tmp/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    say "scipy-openblas32 is missing and no .whl/scipy_openblas32-*.whl was carried (see this script's header)"
    exit 3
  fi
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"   # the in-place module

# pybind11 needs Python.h for this python3 (the image's /opt/torch/.venv): say so at once if absent
inc="$("$py" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
if [ ! -f "$inc/Python.h" ]; then
  say "no Python.h under $inc: the module cannot be built with this python3 ($py)"
  exit 5
fi
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>&1 | sed 's/^/[nvidia-smi] /'
say "configuring and building (GEOMFAST_CUDA=ON, sm_${GEOMFAST_CUDA_ARCHS:-90})"
{
  cmake -S . -B build/gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DGEOMFAST_INPLACE=ON -DGEOMFAST_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES="${GEOMFAST_CUDA_ARCHS:-90}" -DPython_EXECUTABLE="$py" &&
  cmake --build build/gpu -j "$(nproc)"
} >"$out/build.log" 2>&1
rc=$?
grep -E "geomfast:|error|Error" "$out/build.log" | head -40
if [ $rc -ne 0 ]; then
  say "build FAILED (rc $rc); the end of build.log:"
  tail -40 "$out/build.log"
  exit 4
fi
say "built"
# The Hopper kernel's machine code, from this build (cuobjdump is on the device image): wgmma
# shows as HGMMA, and local memory (LDL/STL) would mean spilled accumulators.
wgo="$(find build/gpu -name 'gram_wgmma.cu.o' | head -1)"
if [ -n "$wgo" ] && command -v cuobjdump >/dev/null 2>&1; then
  cuobjdump -sass "$wgo" >"$out/wgmma.sass" 2>&1
  say "gram_wgmma.cu SASS: $(grep -c 'HGMMA' "$out/wgmma.sass") HGMMA, $(grep -cE '\b(LDL|STL)\b' "$out/wgmma.sass") LDL/STL (expected 48 and 0; wgmma.sass)"
fi
"$py" -m geomfast info | tee "$out/info.txt"   # versions, backends (why CUDA is unusable), the cards

if [ "${GPU_SANITIZE:-0}" = "1" ] && command -v compute-sanitizer >/dev/null 2>&1; then
  # Opt-in (slow): out-of-bounds and uninitialised-memory checks of our kernels on a few small cases.
  say "compute-sanitizer memcheck on a few CUDA tests (GPU_SANITIZE=1)"
  timeout "${GPU_SANITIZE_S:-180}" compute-sanitizer --tool memcheck --error-exitcode 9 \
    "$py" -m pytest -q -x -p no:cacheprovider tests/test_cuda.py \
    -k "test_own_kernel_matches_reference_and_cublas and (31 or 129) or test_fast_16bit_with_a_few_offset_columns or test_strided" \
    >"$out/sanitizer.log" 2>&1
  say "compute-sanitizer exited with $? (log: sanitizer.log)"
  tail -15 "$out/sanitizer.log"
fi

"$py" benchmarks/gpu_check.py --out "$out" --budget-s "${GPU_CHECK_BUDGET_S:-400}" "$@"
rc=$?
say "gpu_check.py exited with $rc"
# The CPU full eigensolver's two paths on this machine's 16 cores (only 2-core VMs measured so far:
# the band reduction scales with cores, its bulge chasing and dsterf run on one), ~15 s. Total
# with the build (~20-60 s): well inside the device tool's 600 s per command.
say "CPU eigvalsh A/B at d = 4096 on $(nproc) cores (eig_cpu_ab.txt)"
timeout "${EIG_AB_S:-30}" "$py" benchmarks/bench_eig_ab.py --dims 4096 --rounds 2 >"$out/eig_cpu_ab.txt" 2>&1
tail -8 "$out/eig_cpu_ab.txt"
exit $rc
