"""How the final checkpoint's retrieval heads form over training: per-checkpoint trajectories and the onset.

Traced heads (traced.csv, columns TRACED_COLUMNS): the paper's target retrieval heads are the top-k heads by
needle mass on the final checkpoint; here the candidates are the full-attention heads only (every head of a
full layer, and the full heads of a head-wise mixed layer), where the paper's retrieval heads live: a windowed
head cannot retrieve beyond its window, and taking it would trace an SWA head of low mass as a "retrieval
head". Each traced head is listed with its layer, role, final mass and onset; it has formed when its needle mass
crossed eval.onset_threshold at some checkpoint.

Trajectories (trajectory.csv, columns TRAJECTORY_COLUMNS): for the traced heads that formed (none when no
full-attention retrieval head formed in the run), at every checkpoint:
  entropy, entropy_norm   attention entropy averaged over the last 4 query positions, and over log(length)
  q_l2, k_l2              L2 (Frobenius) distance of the head's Q or K projection slice to the final one's
  q_rel_l2, k_rel_l2      the same divided by the final slice's norm
  needle_mass             the paper's retrieval score
All distances are 0 at the final checkpoint by construction.

Onset (onset.csv, columns ONSET_COLUMNS): the first checkpoint at which needle mass exceeds
eval.onset_threshold, for two selections of full-attention heads (role full: every head of a full layer, and
the full heads of a head-wise mixed layer):
  strongest   the full head with the highest needle mass at the final checkpoint (its layer and head)
  any_full    the maximum over all full heads at each checkpoint (layer = head = -1)
Metrics: onset_tokens, onset_step (the first checkpoint above threshold), onset_tokens_interp and
onset_step_interp (linear interpolation of the needle mass in log tokens / log steps between that checkpoint
and the one before it; equal to the checkpoint value when the first checkpoint is already above). A head that
never crosses gets value inf and formed = False.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from hybridlab.analysis.retrieval import attention_heads
from hybridlab.analysis.schemas import ONSET_COLUMNS, TRACED_COLUMNS, TRAJECTORY_COLUMNS
from hybridlab.models import HybridLM


@dataclass
class CheckpointRecord:
    """What the trajectories need of one checkpoint: its step/tokens, head scores and Q/K weights."""

    info: dict  # step, tokens
    scores: dict[str, np.ndarray]  # retrieval.HEAD_METRICS, each [n_layers, n_heads]
    qk: dict[int, torch.Tensor]  # attention layer -> [2, n_heads, head_dim, d_model] (Q, K), float32 on CPU


def qk_weights(model: HybridLM) -> dict[int, torch.Tensor]:
    """A CPU copy of every attention layer's Q and K projection weights, split by head."""
    out = {}
    for li, block in enumerate(model.blocks):
        if block.spec.is_attention:
            m = block.mixer
            w = m.qkv.weight.detach().float().cpu().view(3, m.n_heads, m.head_dim, -1)  # the forward's split
            out[li] = w[:2].clone()
    return out


def weight_distances(w: torch.Tensor, w_final: torch.Tensor, head: int) -> dict[str, float]:
    """L2 and relative L2 distance of one head's Q and K slices ([2, H, D, d_model] tensors) to the final's."""
    out = {}
    for i, name in enumerate(("q", "k")):
        ref = w_final[i, head]
        dist = (w[i, head] - ref).norm().item()
        out[f"{name}_l2"] = dist
        out[f"{name}_rel_l2"] = dist / max(ref.norm().item(), 1e-12)
    return out


def trajectory_table(history: list[CheckpointRecord], heads: list[tuple[int, int]], base: dict,
                     length: int) -> pd.DataFrame:
    """Rows for `heads` at every checkpoint of `history` (oldest first; the last one is the reference)."""
    final = history[-1].qk
    rows = []
    for rec in history:
        for li, h in heads:
            metrics = {"entropy": rec.scores["entropy_last"][li, h],
                       "entropy_norm": rec.scores["entropy_last"][li, h] / np.log(length),
                       **weight_distances(rec.qk[li], final[li], h),
                       "needle_mass": rec.scores["needle_mass"][li, h]}
            rows += [{**base, **rec.info, "layer": li, "head": h, "metric": k, "value": float(v)}
                     for k, v in metrics.items()]
    return pd.DataFrame(rows, columns=list(TRAJECTORY_COLUMNS))


def traced_table(history: list[CheckpointRecord], heads: list[tuple[int, int]], model: HybridLM, base: dict,
                 threshold: float) -> pd.DataFrame:
    """One row per traced head (strongest first): layer, role, final needle mass, onset in tokens, formed."""
    from hybridlab.analysis.retrieval import head_role

    tokens = np.array([r.info["tokens"] for r in history])
    rows = []
    for rank, (li, h) in enumerate(heads):
        mass = np.array([r.scores["needle_mass"][li, h] for r in history])
        first, _ = onset(tokens, mass, threshold)
        rows.append({**base, "rank": rank, "layer": li, "head": h, "role": head_role(model, li, h),
                     "final_mass": float(mass[-1]), "onset_tokens": first, "formed": bool(np.isfinite(first))})
    return pd.DataFrame(rows, columns=list(TRACED_COLUMNS))


def onset(x: np.ndarray, mass: np.ndarray, threshold: float) -> tuple[float, float]:
    """(first x where mass > threshold, log-x interpolated crossing); (inf, inf) if it never crosses."""
    above = np.flatnonzero(np.asarray(mass) > threshold)
    if above.size == 0:
        return float("inf"), float("inf")
    i = int(above[0])
    if i == 0:
        return float(x[0]), float(x[0])
    x0, x1, m0, m1 = float(x[i - 1]), float(x[i]), float(mass[i - 1]), float(mass[i])
    frac = (threshold - m0) / (m1 - m0)
    if x0 > 0:
        return x1, float(np.exp(np.log(x0) + frac * (np.log(x1) - np.log(x0))))
    return x1, x0 + frac * (x1 - x0)


def onset_table(history: list[CheckpointRecord], model: HybridLM, base: dict, threshold: float) -> pd.DataFrame:
    """Onset rows of the strongest full head and of any full head; `base` holds variant and seed."""
    full = attention_heads(model, role="full")
    rows = []
    if not full:
        return pd.DataFrame(rows, columns=list(ONSET_COLUMNS))
    mass = np.array([[rec.scores["needle_mass"][li, h] for li, h in full] for rec in history])  # [C, heads]
    strongest = int(np.argmax(mass[-1]))
    x = {"tokens": np.array([r.info["tokens"] for r in history]), "step": np.array([r.info["step"] for r in history])}
    for selection, (li, h), curve in (("strongest", full[strongest], mass[:, strongest]),
                                      ("any_full", (-1, -1), mass.max(axis=1))):
        for unit, xs in x.items():
            first, interp = onset(xs, curve, threshold)
            for metric, value in ((f"onset_{unit}", first), (f"onset_{unit}_interp", interp)):
                rows.append({**base, "selection": selection, "layer": li, "head": h, "metric": metric,
                             "value": value, "formed": bool(np.isfinite(value))})
    return pd.DataFrame(rows, columns=list(ONSET_COLUMNS))
