"""Retrieval-head scores per (layer, head) and checkpoint: the paper's needle mass and Wu et al.'s copy score.

For each NIAH sample the query position is by default the final token (the key after `QRY`, where the model
must emit the needle's value) and the needle is its value's first token. The authors' released script
(thunlp/rethinking-hybrid-attention, src/tracing/find_retrieval_heads.py) differs on both: it queries at the
second-to-last token of the prompt and sums the mass over every token of the answer string. Both are options
(`query_from_end=2`, `span="answer"`; eval.retrieval_query_from_end and eval.needle_span), for real-text sets
whose values are several tokens long; on the synthetic grammar the value is one token and the question ends at
the key, so the defaults are the faithful reading there.
Per attention head, from one streaming pass over the keys of the last `n_last` query positions
(hybridlab_kernels.attention_stats: Triton on GPU, the PyTorch reference on CPU; no T x T matrix):
  needle_mass   attention mass the query position puts on the needle (the paper's score)
  entropy       entropy of the query position's attention distribution; entropy_norm = entropy / log(length)
  entropy_last  entropy averaged over the last `n_last` query positions (the trajectories' statistic)
  copy_score    Wu et al. (2024): the head scores when, at a step where the model reproduces a needle token,
                its top-1 attended key is that token's source and the model's own prediction equals it. Our
                needle is one value token, so there is one copy step per sample (the query position, whose
                next token is the needle value) and the score is the fraction of samples where both hold.
Each is averaged over samples. Windowed (SWA) heads are scored within their window, like the model computes
them; recurrent layers get NaN.

Output of `heads_table`: columns HEAD_COLUMNS; metric in {needle_mass, entropy, entropy_norm, copy_score}.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from hybridlab_kernels import attention_stats

from hybridlab.analysis.schemas import HEAD_COLUMNS
from hybridlab.evals.evaluate import autocast
from hybridlab.models import HybridLM

HEAD_METRICS = ("needle_mass", "entropy", "entropy_last", "copy_score")
TABLE_METRICS = ("needle_mass", "entropy", "entropy_norm", "copy_score")


def attention_layers(model: HybridLM) -> list[int]:
    return [i for i, b in enumerate(model.blocks) if b.spec.is_attention]


def head_windows(model: HybridLM, layer: int, length: int, device: torch.device) -> torch.Tensor:
    """The layer's per-head windows as the kernel takes them (a full head sees `length` keys)."""
    return torch.tensor([length if w is None else w for w in model.blocks[layer].mixer.windows], device=device)


SPANS = ("first", "answer")


@torch.no_grad()
def head_scores(model: HybridLM, tokens: np.ndarray, needle_pos: np.ndarray, batch: int, device: torch.device,
                n_last: int = 4, query_from_end: int = 1, span: str = "first",
                needle_len: np.ndarray | None = None) -> dict[str, np.ndarray]:
    """HEAD_METRICS, each [n_layers, n_heads] averaged over samples (NaN for recurrent layers). The query is the
    `query_from_end`-th token from the end (1: the last); the needle is its first value token (span "first") or
    its `needle_len` value tokens (span "answer")."""
    if span not in SPANS:
        raise ValueError(f"span must be one of {SPANS}, got {span!r}")
    if not 1 <= query_from_end <= n_last:
        raise ValueError(f"query_from_end must be in [1, n_last={n_last}], got {query_from_end}")
    lengths = np.ones(len(needle_pos), dtype=np.int64) if span == "first" or needle_len is None else needle_len
    n_layers, n_heads = len(model.blocks), model.shape.n_heads
    sums = {m: np.zeros((n_layers, n_heads)) for m in HEAD_METRICS}
    attn_layers = attention_layers(model)
    for i in range(0, len(tokens), batch):
        x = torch.from_numpy(np.array(tokens[i:i + batch], dtype=np.int64)).to(device)
        b, t = x.shape
        src = torch.from_numpy(np.asarray(needle_pos[i:i + batch], dtype=np.int64)).to(device)
        span_len = torch.from_numpy(np.asarray(lengths[i:i + batch], dtype=np.int64)).to(device)
        capture = {li: {} for li in attn_layers}
        with autocast(device):
            logits = model(x, capture=capture)
        copied = x[torch.arange(b, device=device), src]
        correct = logits[:, -query_from_end].argmax(-1) == copied  # the model reproduces the needle token
        offset = torch.arange(t, device=device)[None, :] - src[:, None]
        target = (offset >= 0) & (offset < span_len[:, None])
        q_last = min(n_last, t)
        for li in attn_layers:
            cap = capture[li]
            stats = attention_stats(cap["q"][:, :, -q_last:].float(), cap["k"].float(), cap["q_pos"][-q_last:],
                                    target, window=head_windows(model, li, t, device),
                                    sink=model.blocks[li].mixer.sinks)
            copy = (stats.top1[:, :, -query_from_end] == src[:, None]) & correct[:, None]
            per_sample = {"needle_mass": stats.mass[:, :, -query_from_end],
                          "entropy": stats.entropy[:, :, -query_from_end],
                          "entropy_last": stats.entropy.mean(-1), "copy_score": copy.float()}
            for m, v in per_sample.items():
                sums[m][li] += v.sum(0).double().cpu().numpy()
    out = {k: v / len(tokens) for k, v in sums.items()}
    for li in set(range(n_layers)) - set(attn_layers):
        for v in out.values():
            v[li] = np.nan
    return out


def head_role(model: HybridLM, layer: int, head: int) -> str:
    return "full" if model.blocks[layer].mixer.windows[head] is None else "efficient"


def attention_heads(model: HybridLM, role: str | None = None) -> list[tuple[int, int]]:
    """Every (layer, head) of the attention layers, optionally only those of one role (full | efficient)."""
    return [(li, h) for li in attention_layers(model) for h in range(model.shape.n_heads)
            if role is None or head_role(model, li, h) == role]


def heads_table(model: HybridLM, scores: dict[str, np.ndarray], base: dict, length: int) -> pd.DataFrame:
    """Tidy rows of one checkpoint's scores; `base` holds variant, seed, step and tokens."""
    values = {"needle_mass": scores["needle_mass"], "entropy": scores["entropy"],
              "entropy_norm": scores["entropy"] / np.log(length), "copy_score": scores["copy_score"]}
    rows = [{**base, "layer": li, "head": h, "role": head_role(model, li, h), "metric": metric, "length": length,
             "value": float(values[metric][li, h])}
            for li, h in attention_heads(model) for metric in TABLE_METRICS]
    return pd.DataFrame(rows, columns=list(HEAD_COLUMNS))


def top_heads(scores: dict[str, np.ndarray], k: int,
              candidates: list[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
    """The k (layer, head) pairs of highest needle mass, strongest first, among `candidates` (default: every
    scored head). The target retrieval heads are the top full-attention heads (`attention_heads(model,
    "full")`)."""
    mass = scores["needle_mass"]
    allowed = None if candidates is None else set(candidates)
    order = [tuple(int(i) for i in np.unravel_index(j, mass.shape))
             for j in np.argsort(-np.nan_to_num(mass, nan=-np.inf), axis=None, kind="stable")
             if np.isfinite(mass.flat[j])]
    return [hd for hd in order if allowed is None or hd in allowed][:k]
