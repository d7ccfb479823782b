"""Head masking: NIAH accuracy with the top-k retrieval heads silenced, against k random heads.

A head is masked by zeroing its slice of the attention output before the output projection (a forward
pre-hook on the layer's `proj`, so the model code stays unchanged and every backend is covered). Random heads
are drawn from the attention heads outside the top-k set (so "random" never re-masks a retrieval head), with
a generator seeded by (run seed, k, draw); accuracies are averaged over eval.masking_draws draws.

Output (masking.csv, columns MASKING_COLUMNS), at the final checkpoint, for each NIAH length of
eval.masking_lengths (fractions of the context):
  k = 0, heads = none     the unmasked model
  k > 0, heads = top      the k full-attention heads of highest needle mass on the final checkpoint masked
  k > 0, heads = random   k random non-top heads masked (mean over draws)
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import numpy as np
import pandas as pd
import torch

from hybridlab.analysis.retrieval import attention_heads
from hybridlab.analysis.schemas import MASKING_COLUMNS
from hybridlab.evals.evaluate import niah_accuracy
from hybridlab.models import HybridLM


@contextlib.contextmanager
def mask_heads(model: HybridLM, heads: dict[int, list[int]]) -> Iterator[None]:
    """Within the block, the listed heads of each attention layer output zeros (before the output projection)."""
    handles = []
    for layer, hs in heads.items():
        mixer = model.blocks[layer].mixer
        if not model.blocks[layer].spec.is_attention:
            raise ValueError(f"layer {layer} is not an attention layer; only attention heads can be masked")
        keep = torch.ones(mixer.n_heads, mixer.head_dim)
        keep[list(hs)] = 0.0
        keep = keep.flatten()

        def hook(_module, args, keep=keep):
            x = args[0]
            return (x * keep.to(device=x.device, dtype=x.dtype),)

        handles.append(mixer.proj.register_forward_pre_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def as_layer_dict(heads: list[tuple[int, int]]) -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for layer, head in heads:
        out.setdefault(layer, []).append(head)
    return out


def masking_table(model: HybridLM, niah: dict, top: list[tuple[int, int]], ks: list[int], draws: int,
                  seed: int, batch: int, device: torch.device, base: dict) -> pd.DataFrame:
    """NIAH accuracy per length (niah: length -> NiahSet) with top or random heads masked; see the docstring."""
    others = [hd for hd in attention_heads(model) if hd not in set(top)]
    rows = []

    def add(k: int, kind: str, masks: list[list[tuple[int, int]]]) -> None:
        for length, ds in niah.items():
            accs = []
            for heads in masks:
                with mask_heads(model, as_layer_dict(heads)):
                    accs.append(niah_accuracy(model, ds, batch, device))
            rows.append({**base, "k": k, "heads": kind, "length": length, "metric": "niah_acc",
                         "value": float(np.mean(accs))})

    add(0, "none", [[]])
    for k in ks:
        if k > len(top) or k > len(others):
            continue
        add(k, "top", [top[:k]])
        rngs = (np.random.default_rng([seed, k, d]) for d in range(draws))
        add(k, "random", [[others[i] for i in rng.choice(len(others), size=k, replace=False)] for rng in rngs])
    return pd.DataFrame(rows, columns=list(MASKING_COLUMNS))
