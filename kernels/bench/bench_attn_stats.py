"""Benchmark attention statistics on one CUDA device: Triton kernel vs chunked reference vs eager attention.

For each context length T and number of query positions Q (B=1, H=8, D=64, bfloat16 inputs, full causal
attention unless --window is given) it times the three ways of computing (mass, entropy, top1) with
triton.testing.do_bench (median ms) and records the peak memory each allocates beyond its inputs:
  triton     hybridlab_kernels.attention_stats_triton (streaming, no T x T matrix)
  reference  hybridlab_kernels.attention_stats_reference (streaming over key chunks, PyTorch)
  eager      q @ k^T, mask, softmax, then the statistics from the materialised [B, H, Q, T] matrix
Query positions are spread evenly up to T - 1, so Q=4 means the last token and three earlier ones.
Prints a Markdown table and writes a CSV (atomically) with the GPU name, versions, date and commit.

    python kernels/bench/bench_attn_stats.py --out paper/tables/bench_attn_stats.csv
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import math
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch
import triton
from triton.testing import do_bench

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from hybridlab_kernels import AttnStats, attention_stats_reference, attention_stats_triton  # noqa: E402

FIELDS = ["T", "Q", "method", "median_ms", "peak_extra_mib", "max_abs_err_mass", "max_abs_err_entropy",
          "status", "B", "H", "D", "dtype", "window", "gpu", "torch", "triton", "date", "commit"]


def eager_stats(q, k, q_pos, target, *, window: int | None = None) -> AttnStats:
    """Materialise the masked softmax [B, H, Q, T] in float32 and read the statistics off it."""
    T = k.shape[2]
    s = torch.matmul(q, k.transpose(-1, -2)).float() / math.sqrt(q.shape[-1])
    j = torch.arange(T, device=q.device)
    p = q_pos[None, None, :, None]
    allowed = j <= p
    if window is not None:
        allowed &= p - j < window
    s = s.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(s, dim=-1)
    mass = (probs * target[:, None, None, :]).sum(-1)
    entropy = -torch.special.xlogy(probs, probs).sum(-1)
    return AttnStats(mass=mass, entropy=entropy, top1=s.argmax(-1))


def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                             timeout=10, cwd=Path(__file__).parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def measure(fn: Callable[[], AttnStats]) -> tuple[float, float, AttnStats]:
    """(median ms, peak MiB allocated beyond what was live before, one result)."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    result = fn()
    torch.cuda.synchronize()
    peak = (torch.cuda.max_memory_allocated() - before) / 2**20
    ms = do_bench(fn, warmup=10, rep=50, return_mode="median")
    return ms, peak, result


def bench_case(T: int, Q: int, k, target, args: argparse.Namespace, meta: dict) -> list[dict]:
    """Rows for one (T, Q): the reference first, since the others' errors are measured against it."""
    device = k.device
    g = torch.Generator(device=device).manual_seed(Q)
    q_pos = ((torch.arange(1, Q + 1, device=device) * T) // Q - 1).clamp(0, T - 1)
    q = torch.randn(args.batch, args.heads, Q, args.head_dim, device=device, generator=g).bfloat16() * 2.0
    methods = {
        "reference": lambda: attention_stats_reference(q, k, q_pos, target, window=args.window),
        "triton": lambda: attention_stats_triton(q, k, q_pos, target, window=args.window),
        "eager": lambda: eager_stats(q, k, q_pos, target, window=args.window),
    }
    rows, ref = [], None
    for name, fn in methods.items():
        row = {"T": T, "Q": Q, "method": name, **meta}
        try:
            ms, peak, out = measure(fn)
        except torch.OutOfMemoryError:
            torch.cuda.empty_cache()
            rows.append({**row, "status": "OOM"})
            print(f"T={T} Q={Q} {name}: OOM", flush=True)
            continue
        ref = out if name == "reference" else ref
        if ref is not None:
            row["max_abs_err_mass"] = (out.mass.float() - ref.mass).abs().max().item()
            row["max_abs_err_entropy"] = (out.entropy.float() - ref.entropy).abs().max().item()
        rows.append({**row, "median_ms": round(ms, 4), "peak_extra_mib": round(peak, 1), "status": "ok"})
        print(f"T={T} Q={Q} {name}: {ms:.3f} ms, {peak:.1f} MiB", flush=True)
    return rows


def run(args: argparse.Namespace) -> list[dict]:
    device = torch.device("cuda")
    meta = {"B": args.batch, "H": args.heads, "D": args.head_dim, "dtype": "bfloat16",
            "window": args.window if args.window is not None else "full",
            "gpu": torch.cuda.get_device_name(device), "torch": torch.__version__,
            "triton": triton.__version__, "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ"),
            "commit": git_commit()}
    rows = []
    for T in args.T:
        g = torch.Generator(device=device).manual_seed(T)
        k = torch.randn(args.batch, args.heads, T, args.head_dim, device=device, generator=g).bfloat16()
        target = torch.zeros(args.batch, T, dtype=torch.bool, device=device)
        target[:, T // 3: T // 3 + 32] = True  # a 32-token needle a third of the way in
        for Q in args.Q:
            rows += bench_case(T, Q, k, target, args, meta)
        del k, target
        torch.cuda.empty_cache()
    return rows


def markdown(rows: list[dict]) -> str:
    cols = ["T", "Q", "method", "median_ms", "peak_extra_mib", "max_abs_err_mass", "max_abs_err_entropy",
            "status"]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        cells = []
        for c in cols:
            v = r.get(c, "")
            cells.append(f"{v:.2e}" if c.startswith("max_abs_err") and v != "" else str(v))
        lines.append("| " + " | ".join(cells) + " |")
    first = rows[0]
    head = (f"GPU {first['gpu']}, torch {first['torch']}, triton {first['triton']}, "
            f"B={first['B']} H={first['H']} D={first['D']} bf16, window {first['window']}, "
            f"{first['date']}, commit {first['commit']}")
    return head + "\n\n" + "\n".join(lines)


def write_csv_atomic(rows: list[dict], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="CSV file to write")
    parser.add_argument("--T", type=int, nargs="+", default=[16384, 32768], help="context lengths")
    parser.add_argument("--Q", type=int, nargs="+", default=[4, 256], help="numbers of query positions")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--window", type=int, default=None, help="sliding window (default: full causal)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench_attn_stats needs a CUDA device; none found", file=sys.stderr)
        return 2
    rows = run(args)
    print(markdown(rows))
    write_csv_atomic(rows, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
