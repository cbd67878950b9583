"""What float32 accumulation on tensor cores does to the fast 16-bit Gram: a numerical MODEL.

Public probes of the H100 report that an FP16/BF16 -> FP32 tensor-core step sums its exact products
with the accumulator in a window of about 25 bits aligned to the largest term, then rounds once
toward zero (earlier GPUs: 24 bits, the same rounding). Truncation is biased, and its error is
relative to the accumulator, which grows with every row: so the error of a long chain grows like
(rows) * 2^-25, not like sqrt(rows) * 2^-24.

This script applies that model to the Gram of bf16 rows, exactly as the CUDA backend computes it:
  - "cublas" design: chains of F rows (the flush interval), each added to float64;
  - "two-level" design (csrc/cuda/gram_tc.cu): chains reset every L rows, the partials added in
    float32 with round-to-nearest, and those added to float64 every F rows.
It prints the relative Frobenius error against the exact Gram (the `fast` bar is 1e-6). It is a
model, not a measurement: benchmarks/gpu_check.py measures the same sweep on the card.

    python benchmarks/tensor_core_model.py [--window 25] [--d 48] [--rows 8192]
"""
from __future__ import annotations

import argparse

import numpy as np


def round_toward_zero_f32(x: np.ndarray) -> np.ndarray:
    f = x.astype(np.float32)
    over = np.abs(f.astype(np.float64)) > np.abs(x)
    f[over] = np.nextafter(f[over], np.float32(0))
    return f.astype(np.float64)


def chain(products: np.ndarray, window: int, k: int = 16) -> np.ndarray:
    """Accumulates products [rows, m] down the rows, k per tensor-core step, under the model."""
    acc = np.zeros(products.shape[1])
    for r0 in range(0, products.shape[0], k):
        terms = np.vstack([acc[None], products[r0:r0 + k]])
        top = np.max(np.abs(terms), axis=0)
        e = np.floor(np.log2(np.where(top > 0, top, 1.0)))
        q = 2.0 ** (e - (window - 1))
        acc = round_toward_zero_f32((np.trunc(terms / q) * q).sum(axis=0))
    return acc


def to_bf16(x: np.ndarray) -> np.ndarray:
    u = np.asarray(x, np.float32).view(np.uint32)
    return ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).view(np.float32).astype(np.float64)


def gram_error(x: np.ndarray, *, chain_rows: int, flush_rows: int, window: int, two_level: bool) -> float:
    n, d = x.shape
    i, j = np.triu_indices(d)
    g = np.zeros(len(i))
    for f0 in range(0, n, flush_rows):
        level2 = np.zeros(len(i), np.float32)
        for r0 in range(f0, min(f0 + flush_rows, n), chain_rows):
            blk = x[r0:min(r0 + chain_rows, f0 + flush_rows, n)]
            part = chain(blk[:, i] * blk[:, j], window)
            if two_level:
                level2 = (level2 + part.astype(np.float32)).astype(np.float32)
            else:
                g += part
        if two_level:
            g += level2
    m = np.zeros((d, d))
    m[i, j] = g
    m = np.triu(m) + np.triu(m, 1).T
    ref = x.T @ x  # float64: off by ~1e-16, far below the errors modelled
    return float(np.linalg.norm(m - ref) / np.linalg.norm(ref))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--window", type=int, default=25, help="bits of the alignment window (H100: 25)")
    ap.add_argument("--d", type=int, default=48)
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--dtype", choices=("bfloat16", "float16"), default="bfloat16",
                    help="input type (float16's 11-bit values make 22-bit products: longer chains lose more)")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, args.d)) * rng.uniform(0.5, 1.5, args.d)
    x = to_bf16(x) if args.dtype == "bfloat16" else x.astype(np.float16).astype(np.float64)
    print(f"model: {args.window}-bit window, round toward zero; {args.rows} {args.dtype} rows, d = {args.d}")
    for f in (64, 128, 256, 1024, 4096):
        e = gram_error(x, chain_rows=f, flush_rows=f, window=args.window, two_level=False)
        print(f"  cublas design, flush every {f:5d} rows:                      rel Frobenius {e:.2e}")
    for l, f in ((64, 4096), (128, 8192), (256, 8192), (128, 32768)):
        e = gram_error(x, chain_rows=l, flush_rows=f, window=args.window, two_level=True)
        print(f"  two-level, chains of {l:3d} rows, float64 every {f:5d} rows:   rel Frobenius {e:.2e}")


if __name__ == "__main__":
    main()
