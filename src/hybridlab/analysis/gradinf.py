"""Gradient influence G(d): how strongly the output depends on the input `d` tokens before the end.

For a sequence of T tokens with input embeddings e_0..e_{T-1}, the target is s = the logits summed over the
vocabulary and averaged over the last `last_n` positions (eval.gradinf_last, 20 as in the paper), and
    G(d) = mean over samples of || ds / d e_{T-d} ||_2,      d = 1..T  (d = 1 is the last token).
The gradient is taken with respect to the embedding output (a forward hook swaps in a leaf tensor), so the
model code is untouched; parameters are frozen for the pass. Samples are the first eval.gradinf_samples
validation sequences.

Output (gradinf.csv, columns GRADINF_COLUMNS): metric grad_influence, the mean of G(d) over log-spaced
distance buckets (d in (u/2, u], `distance` = u = 1, 2, 4, ..., T), at the final checkpoint (every checkpoint
with eval.gradinf_all_checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from hybridlab.analysis.schemas import GRADINF_COLUMNS
from hybridlab.evals.evaluate import autocast, bucket_means
from hybridlab.models import HybridLM


def grad_influence(model: HybridLM, tokens: np.ndarray, last_n: int, batch: int,
                   device: torch.device) -> torch.Tensor:
    """G(d) for d = 1..T as a float64 CPU tensor [T] (entry d - 1), averaged over the sequences of `tokens`."""
    total = None
    requires = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(False)
    try:
        for i in range(0, len(tokens), batch):
            x = torch.from_numpy(np.array(tokens[i:i + batch], dtype=np.int64)).to(device)
            emb = model.embed(x).detach().requires_grad_(True)
            handle = model.embed.register_forward_hook(lambda *_, e=emb: e)
            try:
                with torch.enable_grad(), autocast(device):
                    logits = model(x)
                    s = logits[:, -last_n:].float().sum(-1).mean(-1)  # one target per sample
                (grad,) = torch.autograd.grad(s.sum(), emb)  # samples are independent: one backward for all
            finally:
                handle.remove()
            norms = grad.float().norm(dim=-1).double().sum(0).flip(0).cpu()  # [T], index d - 1
            total = norms if total is None else total + norms
    finally:
        for p, r in zip(model.parameters(), requires, strict=True):
            p.requires_grad_(r)
    return total / len(tokens)


def gradinf_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    from hybridlab.data.shards import load_split, read_manifest
    from hybridlab.evals.checkpoints import pick_device, selected_checkpoints

    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    tokens = load_split(data_dir, "val")[0][:int(cfg.eval.gradinf_samples)]
    vocab = manifest["vocab_size"]
    models = selected_checkpoints(cfg, run_dir, vocab, device, bool(cfg.eval.gradinf_all_checkpoints))
    rows = []
    for model, info in models:
        g = grad_influence(model, tokens, int(cfg.eval.gradinf_last), int(cfg.eval.batch_size), device)
        base = {"variant": cfg.variant.name, "seed": int(cfg.seed), **info}
        rows += [{**base, "distance": d, "metric": "grad_influence", "value": v}
                 for d, v in bucket_means(g, first=1).items()]
    return pd.DataFrame(rows, columns=list(GRADINF_COLUMNS))
