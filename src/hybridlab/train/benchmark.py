"""Training-throughput benchmark for any (variant, size, context) on the current device.

Times optimizer steps (forward, backward, fused AdamW update) in bf16 autocast on CUDA (fp32 on CPU) after
warm-up, as training runs them (TF32 float32 matmuls on CUDA, torch.compile when asked), and reports tokens/s,
MFU from the model's own per-module FLOP count (not 6N: SWA and recurrent mixers count what they compute), peak
memory and the attention / recurrent backends that ran. Speed only: the tests check correctness elsewhere.

Modes beside the plain one:
  concurrent  N processes of the same benchmark on one device at once (how the DAG's parallel jobs share a card):
              each warms up, waits at a barrier, then times `steps` steps; the row's tokens/s is the total
              tokens over the span from the first start to the last end (`concurrent_run`).
  ensemble    G models of the row's variant (seeds 0..G-1) batched into one step (hybridlab.train.ensemble):
              each model gets `batch` sequences; tokens/s counts all G models' tokens.
  profile     a torch.profiler trace of a few steps after the timed ones: the device time per kernel, summed
              by name, written as a table beside the benchmark CSV (`profile_table`).
Each row carries the date, the card and the software versions, so a table is a dated, pinned record.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from hybridlab.config import load_config
from hybridlab.models import build_model
from hybridlab.models.attention import select_backend
from hybridlab.train.run import compile_model, git_commit, peak_flops

COLUMNS = ("date", "variant", "size", "context", "batch", "vocab", "compile", "concurrent", "ensemble", "overrides",
           "device",
           "attn_backend", "mixer_backend", "tokens_per_s", "step_ms", "mfu", "peak_mem_gb", "non_embedding_params",
           "versions", "status")


def versions() -> str:
    """torch, Triton, CUDA, Python and the git commit, one string."""
    try:
        import triton

        tri = triton.__version__
    except ImportError:
        tri = "-"
    return (f"torch {torch.__version__} triton {tri} cuda {torch.version.cuda or '-'} "
            f"python {platform.python_version()} commit {git_commit()[:10]}")


def backends(model) -> tuple[str, str]:
    attn, mixers = set(), set()
    for block in model.blocks:
        if block.spec.is_attention:
            attn.add(select_backend(block.mixer.backend, next(model.parameters()).device, block.mixer.windows,
                                    block.mixer.sinks))
        else:
            from hybridlab.models.recurrent import which_backend

            op = "gated_delta" if block.spec.kind == "gdn" else "simple_gla"
            mixers.add(f"{block.spec.kind}:{which_backend(op)}")
    return ",".join(sorted(attn)) or "-", ",".join(sorted(mixers)) or "-"


def scale_vocab(scale: str) -> int:
    """The vocabulary a scale trains with: the synthetic corpus's, or data.vocab_size for real text."""
    from hybridlab.data.synthetic import CorpusSpec

    cfg = load_config(scale)
    return CorpusSpec.from_config(cfg.data).vocab.size if cfg.data.source == "synthetic" else int(cfg.data.vocab_size)


def _setup(variant: str, size: str, context: int, batch: int, vocab: int, scale: str, compile: bool,
           overrides: tuple[str, ...], ensemble: int = 1):
    cfg = load_config(scale, variant, 0, [f"scale.context={context}", *overrides], size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type == "cuda":
        torch.set_float32_matmul_precision("high")  # as training sets it
    torch.manual_seed(0)
    model = build_model(cfg, vocab).to(device)
    trained = model
    if ensemble > 1:
        from hybridlab.train.ensemble import stack_models

        members = [model]
        for g in range(1, ensemble):
            torch.manual_seed(g)
            members.append(build_model(cfg, vocab).to(device))
        trained = stack_models(members)
    step_model = compile_model(trained, cfg.train.get("compile_mode")) if compile else trained
    opt = torch.optim.AdamW(trained.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randint(0, vocab, (ensemble * batch, context + 1), device=device)
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)

    def step():
        with amp:
            logits = step_model(x[:, :-1])
        per_token = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), x[:, 1:].flatten(),
                                                      reduction="none")
        loss = per_token.view(ensemble, -1).mean(1).sum()  # each model's mean loss; the sum keeps them apart
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    return model, device, step


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def benchmark(variant: str, size: str, context: int, batch: int = 1, steps: int = 5, warmup: int = 3,
              vocab: int = 32000, scale: str = "paper", compile: bool = False,
              overrides: tuple[str, ...] = (), profile: str | Path | None = None, barrier: Path | None = None,
              ensemble: int = 1) -> dict:
    """One row of COLUMNS; `overrides` are Hydra overrides applied after the context (e.g.
    model.mixer_backend=torch, model.d_ff=4416). `profile`: also write the kernel-time table there.
    `barrier`: a folder; after warm-up, write `ready.<pid>` there and wait for its file `go` (concurrent mode)."""
    row = {"date": datetime.date.today().isoformat(), "variant": variant, "size": size, "context": context,
           "batch": batch, "vocab": vocab, "compile": compile, "concurrent": 1, "ensemble": ensemble,
           "overrides": " ".join(overrides), "versions": versions(), "steps": steps}
    try:
        model, device, step = _setup(variant, size, context, batch, vocab, scale, compile, overrides, ensemble)
    except ValueError as e:
        if ensemble > 1 and str(e).startswith("stack_models"):
            return {**row, "status": f"not stackable: {e}"}
        raise
    row["device"] = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    row["non_embedding_params"] = model.non_embedding_params()
    try:
        for _ in range(warmup):
            step()
        _sync(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        if barrier is not None:
            _wait_at(Path(barrier))
        t0 = time.perf_counter()
        start_wall = time.time()
        for _ in range(steps):
            step()
        _sync(device)
        dt = (time.perf_counter() - t0) / steps
        row.update(start=start_wall, end=time.time())
        if profile is not None:
            profile_table(step, device).to_csv(profile, index=False)
    except torch.OutOfMemoryError:
        return {**row, "status": "out of memory"}
    flops = 3 * model.flops_per_sequence(context) * batch * ensemble
    peak = peak_flops()
    row["attn_backend"], row["mixer_backend"] = backends(model)
    return {**row, "tokens_per_s": ensemble * batch * context / dt, "step_ms": dt * 1e3,
            "mfu": flops / dt / peak if peak else float("nan"),
            "peak_mem_gb": torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan"),
            "status": "ok"}


def _wait_at(folder: Path, timeout: float = 900.0) -> None:
    (folder / f"ready.{os.getpid()}").touch()
    deadline = time.time() + timeout
    while not (folder / "go").exists():
        if time.time() > deadline:
            raise TimeoutError(f"{folder}: no 'go' within {timeout:.0f} s")
        time.sleep(0.05)


def profile_table(step, device: torch.device, n_steps: int = 3, top: int = 40):
    """Device (CUDA; CPU without a GPU) time per kernel name over `n_steps` steps, largest first, with each
    kernel's share of the total: where a step's time goes."""
    import pandas as pd
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(n_steps):
            step()
        _sync(device)
    key = "device_time_total" if device.type == "cuda" else "self_cpu_time_total"
    rows = [{"kernel": e.key, "calls": e.count, "time_ms": getattr(e, key, 0.0) / 1e3 / n_steps}
            for e in prof.key_averages()]
    df = pd.DataFrame(rows)
    df = df[df["time_ms"] > 0].sort_values("time_ms", ascending=False)
    df["share"] = df["time_ms"] / df["time_ms"].sum()
    return df.head(top).reset_index(drop=True)


def concurrent_run(n: int, args: list[str], workdir: Path) -> dict:
    """`n` child processes of `hybridlab benchmark ARGS --barrier DIR --child-json FILE` at once; released
    together after all have warmed up. Returns one row: the total tokens over the common span, per device."""
    workdir.mkdir(parents=True, exist_ok=True)
    barrier = workdir / "barrier"
    barrier.mkdir(exist_ok=True)
    for f in barrier.iterdir():
        f.unlink()
    outs = [workdir / f"child{i}.json" for i in range(n)]
    procs = [subprocess.Popen([sys.executable, "-m", "hybridlab.cli", "benchmark", *args, "--barrier", str(barrier),
                               "--child-json", str(out)]) for out in outs]
    try:
        while len(list(barrier.glob("ready.*"))) < n:
            if any(p.poll() not in (None, 0) for p in procs):
                raise RuntimeError("a concurrent benchmark child failed before the barrier")
            time.sleep(0.1)
        (barrier / "go").touch()
        codes = [p.wait() for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    if any(codes):
        raise RuntimeError(f"concurrent benchmark children exited {codes}")
    rows = [json.loads(o.read_text()) for o in outs]
    if any(r["status"] != "ok" for r in rows):
        return {**rows[0], "concurrent": n, "status": "; ".join(sorted({r["status"] for r in rows}))}
    span = max(r["end"] for r in rows) - min(r["start"] for r in rows)
    tokens = sum(r["tokens_per_s"] * r["step_ms"] / 1e3 * r["steps"] for r in rows)
    return {**rows[0], "concurrent": n, "tokens_per_s": tokens / span,
            "step_ms": sum(r["step_ms"] for r in rows) / n,
            "mfu": sum(r["mfu"] for r in rows) * (tokens / span) / sum(r["tokens_per_s"] for r in rows),
            "peak_mem_gb": max(r["peak_mem_gb"] for r in rows)}
