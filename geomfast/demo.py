"""``geomfast demo``: the whole pipeline offline, on a CPU, in about a minute.

1. Trains a tiny GPT-NeoX (d = 64, 2 layers, 4 heads, |V| = 2048) with AdamW (lr 3e-3,
   100 warm-up steps, then cosine decay to 0 at step 1400), batch 24 × 64 tokens (LEADS.md's
   setup used batch 32 × 2000 steps; 24 × 1400 shows the same three phases in 0.5× the
   compute; batch 16 × 1200 and 32 × 1000 did not reach the compression phase), on the built-in synthetic
   corpus (:func:`geomfast.data.synthetic_sequences`: Zipf-distributed tokens with a sparse
   bigram structure, each sequence's second half repeating its first half — a long-context
   dependency that is learned late).
2. Saves Pythia-style checkpoints ``step{N}`` (safetensors) at log-spaced steps
   0, 1, 2, 4, …, 512, then every 200 steps.
3. Traces them with the normal sweep (:func:`geomfast.sweep.trace`) on held-out synthetic
   sequences, writes ``results.db``, ``geometry.png`` and ``summary.txt``.

With d ≪ |V|, skewed token frequencies and cross-entropy training, the paper's three phases
can show: warm-up collapse of RankMe, an entropy-seeking rise, then compression (RankMe falls,
α rises). The summary reports what the curves actually did.
"""
from __future__ import annotations

import json
import math
import os
import time
from typing import Any

from ._paths import write_file

__all__ = ["DEMO", "checkpoint_steps", "train_tiny_gpt_neox", "run_demo", "describe_phases"]

DEMO: dict[str, Any] = {
    "vocab_size": 2048,
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "intermediate_size": 256,
    "seq_len": 64,
    "batch_size": 24,
    "lr": 3e-3,
    "warmup": 100,
    "steps": 1400,
    "train_seed": 1234,  # training stream; the traced samples come from another seed
    "eval_seed": 0,
    "eval_samples": 512,
    "fit_range": (3, 50),  # d = 64: the paper's 11..99 needs 100 eigenvalues
}


def checkpoint_steps(total: int, every: int = 200) -> list[int]:
    """0, 1, 2, 4, …, 512 (powers of two, as Pythia), then every ``every`` steps up to total."""
    steps = [0]
    p = 1
    while p <= min(512, total):
        steps.append(p)
        p *= 2
    s = (512 // every + 1) * every
    while s <= total:
        steps.append(s)
        s += every
    if steps[-1] != total:
        steps.append(total)
    return sorted(set(steps))


def _lr_at(step: int, *, lr: float, warmup: int, total: int) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def _keep_freed_memory() -> None:
    """Ask glibc to keep freed large blocks instead of unmapping them: every training step
    allocates and frees the same ~10 MB logits buffers, and re-mapping them cost millions of
    page faults (about a tenth of the demo's time). No-op where glibc is absent."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
        libc.mallopt(M_MMAP_THRESHOLD, 256 * 1024 * 1024)
        libc.mallopt(M_TRIM_THRESHOLD, 512 * 1024 * 1024)
    except (OSError, AttributeError):
        pass


def train_tiny_gpt_neox(folder: str, *, steps: int = DEMO["steps"], progress: bool = True,
                        seed: int = DEMO["train_seed"], batch_size: int = DEMO["batch_size"]
                        ) -> list[dict]:
    """Train the demo model, saving ``folder/step{N}`` checkpoints. Returns a loss log
    (one entry per saved checkpoint: step, mean training loss over the last steps)."""
    import torch
    from tqdm.auto import tqdm
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # one "Writing model shards" bar per checkpoint is noise
    _keep_freed_memory()

    from .data import synthetic_sequences

    c = DEMO
    torch.manual_seed(seed)
    config = GPTNeoXConfig(
        vocab_size=c["vocab_size"], hidden_size=c["hidden_size"],
        num_hidden_layers=c["num_hidden_layers"], num_attention_heads=c["num_attention_heads"],
        intermediate_size=c["intermediate_size"], max_position_embeddings=c["seq_len"],
        hidden_dropout=0.0, attention_dropout=0.0, tie_word_embeddings=False)
    model = GPTNeoXForCausalLM(config)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=c["lr"], betas=(0.9, 0.95), weight_decay=0.01)
    save_at = set(checkpoint_steps(steps))
    bs = int(batch_size)
    # The whole training stream at once: steps × batch × 64 int64 tokens (32 MB for 2000 steps).
    data = torch.from_numpy(synthetic_sequences(steps * bs, vocab_size=c["vocab_size"],
                                                seq_len=c["seq_len"], seed=seed))
    os.makedirs(folder, exist_ok=True)
    log: list[dict] = []
    recent: list[float] = []

    def save(step: int) -> None:
        model.save_pretrained(os.path.join(folder, f"step{step}"), safe_serialization=True)
        log.append({"step": step, "loss": (sum(recent) / len(recent)) if recent else None})
        recent.clear()

    save(0)
    bar = tqdm(range(1, steps + 1), desc="training", unit="step", disable=not progress)
    for step in bar:
        for g in opt.param_groups:
            g["lr"] = _lr_at(step - 1, lr=c["lr"], warmup=c["warmup"], total=steps)
        batch = data[(step - 1) * bs: step * bs]
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        recent.append(float(loss.detach()))
        if step % 50 == 0:
            bar.set_postfix(loss=f"{recent[-1]:.3f}")
        if step in save_at:
            save(step)
    bar.close()
    write_file(os.path.join(folder, "train_log.json"), (json.dumps(log, indent=1) + "\n").encode())
    return log


def describe_phases(rows: list[dict], *, layer: str | None = None, pooling: str = "last") -> list[str]:
    """Plain-language description of what RankMe and α did along the steps of one layer
    (default: the final layer after the norm). Says which of the paper's three phases showed
    and which did not, with the numbers."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("pooling") == pooling
          and r.get("step") is not None and r.get("rankme") is not None]
    if layer is None:
        names = {r["layer"] for r in ok}
        layer = "last" if "last" in names else (sorted(names)[-1] if names else None)
    ok = sorted((r for r in ok if r["layer"] == layer), key=lambda r: r["step"])
    if len(ok) < 3:
        return [f"too few checkpoints for layer {layer!r} to describe phases"]
    steps = [r["step"] for r in ok]
    rk = [r["rankme"] for r in ok]
    al = [r.get("alpha") for r in ok]
    lines = [f"layer {layer}, {pooling} pooling; RankMe (li2025) and α-ReQ by step:"]
    lines.append("  " + "  ".join(f"{s}:{v:.1f}" for s, v in zip(steps, rk)))
    lines.append("  " + "  ".join(f"{s}:{a:.2f}" for s, a in zip(steps, al) if a is not None))
    # Which phases showed: the same detector as `geomfast phases` (smoothing in log-step,
    # significance against the trajectory's noise), so a phase is never read into noise.
    from .phases import PHASES, detect_phases

    res = detect_phases(steps, rk, al)
    found = {p.kind: p for p in res.phases}
    for kind in PHASES:
        label = {"warmup_collapse": "warm-up collapse"}.get(kind, kind.replace("_", "-"))
        p = found.get(kind)
        if p is None:
            lines.append(f"- {label}: not seen.")
            continue
        a_txt = ""
        if p.alpha_start is not None and p.alpha_end is not None:
            a_txt = f"; α {p.alpha_start:.2f} → {p.alpha_end:.2f}"
            if p.alpha_agrees is False:
                a_txt += " (α does not move the opposite way)"
        lines.append(f"- {label}: SEEN from step {p.start_step} to {p.end_step}: RankMe "
                     f"{p.rankme_start:.1f} → {p.rankme_end:.1f}{a_txt}.")
    lines += [f"  note: {n}" for n in res.notes]
    return lines


_MARKER = "demo.json"


def _claim_folder(out: str, config: dict) -> None:
    """The demo's folder: new, or one an earlier demo wrote. Same settings: resumed (training is
    seeded, so the checkpoints come out the same and the trace skips what is done). Other
    settings: that run's checkpoints and results are removed first, or they would be taken for
    this run's. Anything else is refused (never overwritten)."""
    import json
    import shutil

    if os.path.exists(out) and not os.path.isdir(out):
        raise ValueError(f"[demo] out {out!r} is a file, expected a folder (new, or an earlier demo's)")
    marker = os.path.join(out, _MARKER)
    if os.path.isdir(out) and os.listdir(out):
        if not os.path.isfile(marker):
            raise ValueError(f"[demo] out {out!r} is not empty and holds no {_MARKER}: expected a new folder "
                             "or one an earlier demo wrote (nothing was changed)")
        with open(marker) as f:
            before = json.load(f)
        if before != json.loads(json.dumps(config)):
            shutil.rmtree(os.path.join(out, "checkpoints"), ignore_errors=True)
            for name in ("results.db", "results.db-wal", "results.db-shm", "geometry.png", "summary.txt"):
                if os.path.exists(os.path.join(out, name)):
                    os.remove(os.path.join(out, name))
    os.makedirs(out, exist_ok=True)
    write_file(marker, (json.dumps(config, indent=1, sort_keys=True) + "\n").encode())


def run_demo(out: str = "geomfast-demo", *, steps: int = DEMO["steps"], threads: int | None = None,
             progress: bool = True, batch_size: int = DEMO["batch_size"]) -> dict:
    """Train, checkpoint, trace, plot and summarise. Returns a dict with the paths, timings
    and the summary text."""
    import torch

    from .plot import plot_results
    from .store import ResultStore
    from .sweep import trace

    if int(steps) < 1:
        raise ValueError(f"[demo] steps must be >= 1, got {steps}")
    if threads is not None and int(threads) < 1:
        raise ValueError(f"[demo] threads must be >= 1, got {threads}")
    _claim_folder(out, {**DEMO, "steps": int(steps), "batch_size": int(batch_size)})
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    # One thread by default: the model's matrices are small (2048 × 64), and on a shared 2-core
    # machine two threads measured 4× slower per step than one (OpenMP waits on busy cores).
    torch.set_num_threads(threads or 1)
    t0 = time.perf_counter()
    ck_dir = os.path.join(out, "checkpoints")
    db = os.path.join(out, "results.db")
    log = train_tiny_gpt_neox(ck_dir, steps=steps, progress=progress, batch_size=batch_size)
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    summary = trace(ck_dir, dataset="synthetic", out=db, n_samples=DEMO["eval_samples"],
                    seed=DEMO["eval_seed"], layers="embed,0,last", pooling="last",
                    fit_range=DEMO["fit_range"], batch_size=128, local_files_only=True,
                    progress=progress, command=["geomfast", "demo", "--out", out])
    t_trace = time.perf_counter() - t1
    png = plot_results(db, os.path.join(out, "geometry.png"),
                       title=f"geomfast demo: tiny GPT-NeoX (d=64, |V|=2048), {steps} steps")
    with ResultStore(db, readonly=True) as store:
        rows = store.rows()
    losses = {e["step"]: e["loss"] for e in log}
    lines = [
        "geomfast demo — tiny GPT-NeoX trained on the built-in synthetic corpus",
        f"model: d=64, 2 layers, 4 heads, |V|=2048; AdamW lr 3e-3, 100 warm-up steps, cosine "
        f"decay; batch {batch_size} × 64 tokens; {steps} steps; {len(log)} checkpoints",
        f"traced on {DEMO['eval_samples']} held-out sequences, last token; α fit on indices "
        f"{DEMO['fit_range'][0]}..{DEMO['fit_range'][1] - 1}",
        "training loss (mean since the previous checkpoint): " + "  ".join(
            f"{s}:{v:.2f}" for s, v in losses.items() if v is not None),
        *describe_phases(rows),
        f"time: training {t_train:.1f} s, tracing {t_trace:.1f} s, total "
        f"{time.perf_counter() - t0:.1f} s on {torch.get_num_threads()} thread(s)",
        f"files: {db}, {png}, {ck_dir}/step*",
        str(summary),
    ]
    text = "\n".join(lines)
    write_file(os.path.join(out, "summary.txt"), (text + "\n").encode())
    return {"db": db, "plot": png, "checkpoints": ck_dir, "summary": text,
            "train_s": t_train, "trace_s": t_trace, "total_s": time.perf_counter() - t0}
