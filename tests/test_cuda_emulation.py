"""The CUDA backend's own code (kernels, launchers, CudaGram's host code), its source run on the CPU.

tests/cuda_emulation/wmma_emulation.hpp emulates the CUDA features the kernels use (threads and
barriers of a CTA, shared memory, WMMA fragments, atomics, round-to-nearest intrinsics) with host
threads, so the tensor-core kernel's indexing, padding and row masking, double-buffered slabs,
chain bookkeeping and output stage, the exactness of the 16-bit split, and the fast 16-bit path
as a whole are checked against float64 here, where no GPU exists; with the runtime and cuBLAS
calls answered on the host (fake_cuda_runtime.cpp), so is CudaGram itself. It needs only the CUDA headers (found through nvcc, as
in CI) and g++; without them it is skipped with the reason. The GPU's arithmetic is checked by
tests/test_cuda.py on a GPU.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def cuda_include_dir() -> Path | None:
    for env in ("CUDA_HOME", "CUDA_PATH"):
        if os.environ.get(env) and (Path(os.environ[env]) / "include" / "cuda_bf16.h").exists():
            return Path(os.environ[env]) / "include"
    if shutil.which("nvcc"):
        out = subprocess.run(["nvcc", "--dryrun", "-x", "cu", "-c", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True).stderr
        for inc in re.findall(r'INCLUDES="-I([^"]+?)"', out):
            if (Path(inc.strip()) / "cuda_bf16.h").exists():
                return Path(inc.strip())
    for p in (Path("/usr/local/cuda/include"),):
        if (p / "cuda_bf16.h").exists():
            return p
    return None


def cublas_include_dir() -> Path | None:
    """cublas_v2.h / cusolverDn.h: the nvidia-cublas / nvidia-cusolver wheels (as CI installs them)."""
    try:
        import nvidia
    except ImportError:
        return None
    for root in nvidia.__path__:
        inc = Path(root) / "cu13" / "include"
        if (inc / "cublas_v2.h").exists() and (inc / "cusolverDn.h").exists():
            return inc
    return None


def build_and_run(tmp_path, source: str) -> str:
    inc = cuda_include_dir()
    if inc is None:
        pytest.skip("no CUDA headers (cuda_bf16.h) found through CUDA_HOME, CUDA_PATH or nvcc")
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    exe = tmp_path / Path(source).stem
    build = subprocess.run(
        [cxx, "-std=c++20", "-O1", "-pthread", f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}",
         f"-I{ROOT / 'tests' / 'cuda_emulation'}", f"-I{inc}",
         str(ROOT / "tests" / "cuda_emulation" / source), "-o", str(exe)],
        capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-4000:]
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout + run.stderr
    return run.stdout


def test_tc_kernel_source_on_cpu_emulation(tmp_path):
    out = build_and_run(tmp_path, "tc_kernel_emulation.cpp")
    assert out.count(" -> ok") == 12


def test_wgmma_kernel_source_on_cpu_emulation(tmp_path):
    """gram_wgmma.cu's Hopper kernel: its cp.async pipeline, wgmma descriptors, swizzled layout,
    staggered chains and fragment mapping, under three completion schedules of the async work."""
    out = build_and_run(tmp_path, "wg_kernel_emulation.cpp")
    assert out.count(" -> ok") == 3 * (14 + 6) + 1  # + the H100-model chain-length case


def test_fast16_path_kernels_on_cpu_emulation(tmp_path):
    """The exact hi + lo split, the 16-byte-vector statistics and split against the scalar kernels
    (bit for bit), and the whole fast 16-bit tc path (statistics, kernel shift, split,
    products, cross terms, commits, covariance; a non-finite chunk rejected) against float64."""
    out = build_and_run(tmp_path, "fast16_path_emulation.cpp")
    assert out.count(" -> ok") == 14  # + the 16-byte-vector statistics / split against the scalar kernels


@pytest.fixture(scope="module")
def host_emulation(tmp_path_factory):
    """The CUDA backend's host code, kernels and launchers compiled with g++ against the emulation and
    the host stand-ins (fake_cuda_runtime.cpp, fake_cuda_solver.cpp on scipy-openblas32's LAPACK):
    one executable per driver."""
    inc, nv = cuda_include_dir(), cublas_include_dir()
    if inc is None or nv is None:
        pytest.skip("needs the CUDA headers (through nvcc) and the nvidia-cublas / nvidia-cusolver wheels' headers")
    cxx = shutil.which(os.environ.get("CXX", "g++")) or shutil.which("c++")
    if cxx is None:
        pytest.skip("no C++ compiler")
    try:
        import scipy_openblas32 as sob
    except ImportError:
        pytest.skip("needs scipy-openblas32 (LAPACK for the cuSOLVER stand-ins)")
    out = tmp_path_factory.mktemp("cuda_host_emulation")
    flags = ["-std=c++20", "-O1", "-pthread", "-DGEOMFAST_CUDA_EMULATE", "-DGEOMFAST_CUDA_EMULATE_HOST",
             f"-I{ROOT / 'csrc'}", f"-I{ROOT / 'csrc' / 'include'}", f"-I{ROOT / 'tests' / 'cuda_emulation'}",
             f"-I{inc}", f"-I{nv}"]
    emu = ROOT / "tests" / "cuda_emulation"
    sources = [ROOT / "csrc" / "cuda" / f for f in ("gram_cuda.cu", "gram_kernels.cu", "gram_tc.cu", "gram_wgmma.cu", "cuda_context.cu",
                                                    "eig_cuda.cu")]
    sources += [ROOT / "csrc" / "common" / f for f in ("gram_state.cpp", "randomized.cpp", "dispatch.cpp")]
    sources += [emu / "fake_cuda_runtime.cpp", emu / "fake_cuda_solver.cpp"]
    drivers = [emu / "cuda_gram_emulation.cpp", emu / "cuda_eig_emulation.cpp"]
    jobs, common = [], []
    for src in sources + drivers:
        obj = out / (src.name + ".o")
        lang = ["-x", "c++"] if src.suffix == ".cu" else []
        jobs.append((src, subprocess.Popen([cxx, *flags, *lang, "-c", str(src), "-o", str(obj)],
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)))
        if src not in drivers:
            common.append(str(obj))
    for src, job in jobs:
        _, err = job.communicate()
        assert job.returncode == 0, f"{src.name}: {err[-4000:]}"
    libdir = sob.get_lib_dir()
    exes = {}
    for drv in drivers:
        exe = out / drv.stem
        link = subprocess.run([cxx, "-pthread", *common, str(out / (drv.name + ".o")), f"-L{libdir}",
                               f"-l{sob.get_library()}", f"-Wl,-rpath,{libdir}", "-o", str(exe)],
                              capture_output=True, text=True)
        assert link.returncode == 0, link.stderr[-4000:]
        exes[drv.stem] = exe
    return exes


def run_driver(exe: Path, **fake_env: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOMFAST_CUDA_", "GF_FAKE_"))}
    env.update(fake_env)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 0 and "ALL OK" in run.stdout, run.stdout + run.stderr
    return run.stdout


def test_cuda_gram_host_code_on_cpu_emulation(host_emulation):
    """CudaGram itself (gram_cuda.cu's host code, launchers and kernels): every update path, dtype
    switches, non-finite chunks, state()/set_state()/add_state()/reset(), views at any offset and
    stride (the 16-byte-vector kernels only where rows are 16-byte aligned: the emulation aborts on
    a misaligned vector load), data misaligned for its type refused, against long double."""
    out = run_driver(host_emulation["cuda_gram_emulation"])
    assert out.count(" -> ok") == 65
    assert "fast 16-bit kernels cublas, tc, wg)" in out  # the fake device is a 9.0: backends() lists wg


def test_cuda_eigensolvers_on_cpu_emulation(host_emulation):
    """eig_cuda.cu: the full solve from the upper triangle of any layout, float32, the cuSOLVER
    failure chain (float32 -> float64 -> CPU, warned), a non-finite matrix, the randomized solver
    over cuBLAS/cuSOLVER, spectrum() and the batched spectra (and their fallback), eigvalsh of a batch
    of matrices (its checks, fallback and randomized route), an offset / padded view, data
    misaligned for its type refused."""
    assert run_driver(host_emulation["cuda_eig_emulation"]).count(" -> ok") == 19


def test_cuda_solvers_without_memory_pools_on_cpu_emulation(host_emulation):
    """A device without memory pools (some virtualised GPUs: cudaDevAttrMemoryPoolsSupported = 0,
    stream-ordered allocation unsupported): every buffer falls back to cudaMalloc / cudaFree, and the
    fake runtime aborts on a buffer freed the other way. The eigensolver driver covers the
    accumulators' state, covariance and spectra buffers too."""
    assert run_driver(host_emulation["cuda_eig_emulation"], GF_FAKE_NO_MEMPOOLS="1").count(" -> ok") == 19
