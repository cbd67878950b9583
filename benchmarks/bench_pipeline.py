"""geomfast trace vs the paper's pipeline, per checkpoint, on this machine (CPU).

Baseline (Li et al. 2025's public pipeline, re-implemented here): load the checkpoint, run the
FULL model with ``output_hidden_states=True`` (LM head included), take the last non-padding
token of ``hidden_states[-1]`` (after the final norm), stack the activations in numpy, fit
``sklearn.decomposition.PCA(n_components=min(2048, n, d), svd_solver="full")``, then RankMe
and α-ReQ from ``explained_variance_ratio_`` with plain numpy.

geomfast: ``geomfast.sweep.trace`` on the same checkpoint folder, samples, batch size and
threads (truncated forward without the LM head, hooks into GramAccumulator, eigenvalues,
every metric, the SQLite store).

Part 2 measures peak memory (ru_maxrss of a fresh subprocess) with ``pooling='all'`` (every
token's state) as the sample count grows 10×, for both pipelines.

    python benchmarks/bench_pipeline.py                  # both parts
    python benchmarks/bench_pipeline.py --part speed --threads 2 --repeats 3

The ratio is printed against the baseline measured in the same run; no timing is asserted.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

# Pythia-14m's shape (d=128, 6 layers, 4 heads, |V|=50304) with random weights: tiny, but the
# LM head dominates its forward pass, as in the small Pythia models the paper traces.
SPEED_MODEL = dict(hidden_size=128, num_hidden_layers=6, num_attention_heads=4,
                   intermediate_size=512, vocab_size=50304, max_position_embeddings=512)
# Part 2 uses a smaller vocabulary so the baseline's LM head does not dominate its run time.
MEMORY_MODEL = dict(SPEED_MODEL, vocab_size=4096)


def build_checkpoints(root: Path, config: dict, n: int) -> Path:
    import torch
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    for i in range(n):
        torch.manual_seed(100 + i)
        model = GPTNeoXForCausalLM(GPTNeoXConfig(**config, hidden_dropout=0.0,
                                                 attention_dropout=0.0, tie_word_embeddings=False))
        model.save_pretrained(root / f"step{1000 * i}", safe_serialization=True)
    return root


def samples_for(vocab: int, n: int, seq_len: int, seed: int = 0) -> list[list[int]]:
    """geomfast's built-in corpus, with lengths varied between seq_len/2 and seq_len so that
    padding and the last-token choice matter, as with real text."""
    from geomfast.data import load_samples

    base = load_samples("synthetic", None, n_samples=n, seed=seed, vocab_size=vocab,
                        max_length=seq_len)
    rng = np.random.default_rng(seed)
    return [s[: int(rng.integers(seq_len // 2, seq_len + 1))] for s in base]


# ----------------------------------------------------------------------------- baseline

def paper_rankme(ratio: np.ndarray, eps: float = 1e-7) -> float:
    p = ratio / np.abs(ratio).sum() + eps
    return float(np.exp(-(p * np.log(p)).sum()))


def paper_alpha(spectrum: np.ndarray, lo: int = 11, hi: int = 100) -> float:
    y = np.log(np.abs(spectrum[lo:hi]))
    k = np.arange(lo, min(hi, spectrum.size)) + 1.0
    x = np.stack([-np.log(k), np.ones_like(k)], axis=1)
    w = 1.0 / k
    b = np.linalg.solve(x.T @ (w[:, None] * x), (w[:, None] * x).T @ y)
    return float(b[0])


def baseline_checkpoint(folder: str, samples, *, batch_size: int, pooling: str = "last",
                        fit_range=(11, 100)) -> dict:
    """The paper's pipeline on one checkpoint: full forward, stack, sklearn PCA, metrics."""
    import torch
    from sklearn.decomposition import PCA
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder, local_files_only=True).eval()
    order = sorted(range(len(samples)), key=lambda i: -len(samples[i]))
    feats = []
    with torch.no_grad():
        for b in range(0, len(order), batch_size):
            batch = [samples[i] for i in order[b: b + batch_size]]
            L = max(len(s) for s in batch)
            ids = torch.zeros(len(batch), L, dtype=torch.long)
            mask = torch.zeros(len(batch), L, dtype=torch.long)
            for j, s in enumerate(batch):
                ids[j, : len(s)] = torch.tensor(s)
                mask[j, : len(s)] = 1
            out = model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
            h = out.hidden_states[-1]
            if pooling == "last":
                last = mask.sum(1) - 1
                feats.append(h[torch.arange(len(batch)), last].numpy())
            else:  # every non-padding token
                feats.append(h[mask.bool()].numpy())
    x = np.concatenate(feats, axis=0)
    n, d = x.shape
    pca = PCA(n_components=min(2048, n, d), svd_solver="full").fit(x)
    ratio = pca.explained_variance_ratio_
    return {"n": n, "dim": d, "rankme": paper_rankme(ratio),
            "alpha": paper_alpha(pca.explained_variance_, *fit_range)}


# ----------------------------------------------------------------------------- geomfast

def geomfast_trace(folder: str, samples_n: int, seq_len: int, vocab: int, *, db: str,
                   batch_size: int, pooling: str = "last") -> tuple[float, list[dict]]:
    """trace() over the folder with the same samples; returns (seconds, rows)."""
    from geomfast.store import ResultStore
    from geomfast.sweep import _SampleCache, trace

    samples = samples_for(vocab, samples_n, seq_len)
    # Hand the sweep exactly the benchmark's samples (the same the baseline sees).
    orig = _SampleCache.get
    _SampleCache.get = lambda self, ck: samples
    try:
        t = time.perf_counter()
        trace(folder, dataset="synthetic", out=db, n_samples=samples_n, layers="last",
              pooling=pooling, batch_size=batch_size, progress=False, local_files_only=True,
              prefetch=True)
        seconds = time.perf_counter() - t
    finally:
        _SampleCache.get = orig
    with ResultStore(db, readonly=True) as s:
        rows = s.rows()
    return seconds, rows


# ----------------------------------------------------------------------------- parts

def part_speed(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    vocab = SPEED_MODEL["vocab_size"]
    with tempfile.TemporaryDirectory() as tmp:
        root = build_checkpoints(Path(tmp) / "ckpts", SPEED_MODEL, args.checkpoints)
        folders = sorted((p for p in root.iterdir()), key=lambda p: int(p.name[4:]))
        samples = samples_for(vocab, args.samples, args.seq_len)
        n_tok = sum(len(s) for s in samples)
        print(f"\n== speed: {args.checkpoints} checkpoints of a Pythia-14m-shaped GPT-NeoX "
              f"(d=128, 6 layers, |V|=50304, random weights); {args.samples} sequences "
              f"({n_tok} tokens, {args.seq_len // 2}..{args.seq_len} long), last token of the "
              f"final layer; batch {args.batch_size}; torch threads {args.threads}; best of "
              f"{args.repeats}")
        base_t, base_res = [], None
        for _ in range(args.repeats):
            t = time.perf_counter()
            res = [baseline_checkpoint(str(f), samples, batch_size=args.batch_size) for f in folders]
            base_t.append(time.perf_counter() - t)
            base_res = res
        gf_t, rows = [], None
        for r in range(args.repeats):
            db = str(Path(tmp) / f"r{r}.db")
            sec, rows = geomfast_trace(str(root), args.samples, args.seq_len, vocab, db=db,
                                       batch_size=args.batch_size)
            gf_t.append(sec)
    per_base = min(base_t) / len(folders)
    per_gf = min(gf_t) / len(folders)
    rows = sorted(rows, key=lambda r: r["step"])
    d_rank = max(abs(r["rankme"] - b["rankme"]) / b["rankme"] for r, b in zip(rows, base_res))
    d_alpha = max(abs(r["alpha"] - b["alpha"]) / abs(b["alpha"]) for r, b in zip(rows, base_res))
    print(f"{'pipeline':<52} {'s / checkpoint':>15} {'ratio':>7}")
    print(f"{'paper (output_hidden_states + numpy + sklearn PCA)':<52} {per_base:>15.3f} {1.0:>7.2f}")
    print(f"{'geomfast trace (truncated forward + GramAccumulator)':<52} {per_gf:>15.3f} "
          f"{per_base / per_gf:>7.2f}x")
    print(f"metrics equal: max relative difference RankMe {d_rank:.1e}, alpha {d_alpha:.1e} "
          f"over {len(rows)} checkpoints -> {'EQUAL' if max(d_rank, d_alpha) < 1e-4 else 'DIFFERENT'} "
          f"(tolerance 1e-4; the baseline's PCA runs on float32 activations)")
    for r, b in zip(rows, base_res):
        print(f"  {r['revision']:>9}: RankMe {r['rankme']:.6f} vs {b['rankme']:.6f}   "
              f"alpha {r['alpha']:.6f} vs {b['alpha']:.6f}")


def _child(args) -> None:
    """One memory measurement in a fresh process: prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    folder = args.child_folder
    vocab = MEMORY_MODEL["vocab_size"]
    t = time.perf_counter()
    if args.child == "baseline":
        samples = samples_for(vocab, args.child_n, args.seq_len)
        res = baseline_checkpoint(folder, samples, batch_size=args.batch_size, pooling="all")
        n = res["n"]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            _, rows = geomfast_trace(folder, args.child_n, args.seq_len, vocab,
                                     db=str(Path(tmp) / "r.db"), batch_size=args.batch_size,
                                     pooling="all")
        n = rows[0]["n"]
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB
    print(json.dumps({"n_rows": n, "peak_rss_mb": rss_mb, "seconds": time.perf_counter() - t}))


def part_memory(args) -> None:
    sizes = [args.memory_samples, 10 * args.memory_samples]
    with tempfile.TemporaryDirectory() as tmp:
        root = build_checkpoints(Path(tmp) / "ckpts", MEMORY_MODEL, 1)
        folder = str(next(root.iterdir()))
        print(f"\n== peak memory, pooling 'all' (every token's final-layer state), "
              f"GPT-NeoX d=128, 6 layers, |V|=4096; sequences of {args.seq_len // 2}.."
              f"{args.seq_len} tokens; ru_maxrss of a fresh subprocess (includes torch itself)")
        print(f"{'pipeline':<10} {'samples':>8} {'rows (tokens)':>14} {'peak RSS MB':>12} {'s':>7}")
        results = {}
        for which in ("baseline", "geomfast"):
            for n in sizes:
                cmd = [sys.executable, __file__, "--child", which, "--child-n", str(n),
                       "--child-folder", folder, "--seq-len", str(args.seq_len),
                       "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
                out = subprocess.run(cmd, capture_output=True, text=True, check=True)
                r = json.loads(out.stdout.strip().splitlines()[-1])
                results[(which, n)] = r
                print(f"{which:<10} {n:>8} {r['n_rows']:>14} {r['peak_rss_mb']:>12.0f} "
                      f"{r['seconds']:>7.1f}")
        for which in ("baseline", "geomfast"):
            a, b = results[(which, sizes[0])], results[(which, sizes[1])]
            print(f"{which}: 10x the samples -> peak RSS x{b['peak_rss_mb'] / a['peak_rss_mb']:.2f} "
                  f"(+{b['peak_rss_mb'] - a['peak_rss_mb']:.0f} MB)")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=["speed", "memory", "all"], default="all")
    p.add_argument("--checkpoints", type=int, default=2)
    p.add_argument("--samples", type=int, default=256)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads for both pipelines (default 1: steadier on a shared machine)")
    p.add_argument("--memory-samples", type=int, default=200)
    p.add_argument("--child", choices=["baseline", "geomfast"], help=argparse.SUPPRESS)
    p.add_argument("--child-n", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        _child(args)
        return
    print(f"geomfast pipeline benchmark — {os.cpu_count()} CPU core(s), numpy {np.__version__}")
    if args.part in ("speed", "all"):
        part_speed(args)
    if args.part in ("memory", "all"):
        part_memory(args)


if __name__ == "__main__":
    main()
