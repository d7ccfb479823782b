"""Retrieval-head scores per (layer, head) and checkpoint, the paper's definition.

For each NIAH sample the query position is the final token (the key after `QRY`, where the model must emit
the needle's value); a head's score is the attention mass that position puts on the needle's value token,
averaged over samples. Entropy of the same attention distribution is reported alongside. Statistics stream
over keys (hybridlab_kernels.attention_stats: Triton on GPU, the PyTorch reference on CPU), so no T x T
matrix is built. Windowed (SWA) heads are scored within their window, like the model computes them.

Output: a tidy table with columns HEAD_COLUMNS; metric in {needle_mass, entropy, entropy_norm}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from hybridlab_kernels import attention_stats

from hybridlab.data.niah import load_niah
from hybridlab.data.shards import read_manifest
from hybridlab.evals.checkpoints import iter_checkpoints, pick_device
from hybridlab.evals.evaluate import autocast
from hybridlab.models import HybridLM

HEAD_COLUMNS = ("variant", "seed", "step", "tokens", "layer", "head", "role", "metric", "length", "value")


@torch.no_grad()
def head_scores(model: HybridLM, tokens: np.ndarray, needle_pos: np.ndarray, batch: int,
                device: torch.device) -> dict[str, np.ndarray]:
    """needle_mass and entropy, each [n_layers, n_heads] averaged over samples (NaN for recurrent layers)."""
    n_layers, n_heads = len(model.blocks), model.shape.n_heads
    sums = {m: np.zeros((n_layers, n_heads)) for m in ("needle_mass", "entropy")}
    attn_layers = [i for i, b in enumerate(model.blocks) if b.spec.is_attention]
    for i in range(0, len(tokens), batch):
        x = torch.from_numpy(tokens[i:i + batch]).to(device)
        b, t = x.shape
        capture = {li: {} for li in attn_layers}
        with autocast(device):
            model(x, capture=capture)
        target = torch.zeros(b, t, dtype=torch.bool, device=device)
        target[torch.arange(b), torch.from_numpy(needle_pos[i:i + batch]).to(device)] = True
        for li in attn_layers:
            cap, mixer = capture[li], model.blocks[li].mixer
            window = torch.tensor([t if w is None else w for w in mixer.windows], device=device)
            stats = attention_stats(cap["q"][:, :, -1:].float(), cap["k"].float(),
                                    cap["q_pos"][-1:].to(device), target, window=window, sink=mixer.sinks)
            sums["needle_mass"][li] += stats.mass[:, :, 0].sum(0).double().cpu().numpy()
            sums["entropy"][li] += stats.entropy[:, :, 0].sum(0).double().cpu().numpy()
    out = {k: v / len(tokens) for k, v in sums.items()}
    for li in set(range(n_layers)) - set(attn_layers):
        for v in out.values():
            v[li] = np.nan
    return out


def analyze_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    length = int(manifest["context"])
    ds = load_niah(data_dir, length)
    rows = []
    for model, info in iter_checkpoints(cfg, run_dir, manifest["vocab_size"], device):
        scores = head_scores(model, ds.tokens, ds.needle_pos, int(cfg.eval.batch_size), device)
        scores["entropy_norm"] = scores["entropy"] / np.log(length)
        for li, block in enumerate(model.blocks):
            if not block.spec.is_attention:
                continue
            for h in range(model.shape.n_heads):
                role = "full" if block.spec.windows[h] is None else "efficient"
                for metric, arr in scores.items():
                    rows.append({"variant": cfg.variant.name, "seed": int(cfg.seed), **info, "layer": li,
                                 "head": h, "role": role, "metric": metric, "length": length,
                                 "value": float(arr[li, h])})
    return pd.DataFrame(rows, columns=list(HEAD_COLUMNS))
