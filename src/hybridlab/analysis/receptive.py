"""Receptive-field constraint at inference (paper Fig. 3): losses with one class of layers limited to the last
W tokens.

`constrained = full` limits every full-attention head to a window of W keys; `constrained = efficient` limits
the efficient layers (SWA heads to min(own window, W), recurrent mixers to the last W tokens);
`constrained = none` is the unconstrained model (window = the context). For the Full variant every layer is
full attention, so `full` constrains the whole model and `efficient` changes nothing (its rows equal `none`).
W runs over eval.receptive_windows, fractions of the training context.

Output (receptive.csv, columns RECEPTIVE_COLUMNS), at the final checkpoint: metrics log_longppl, val_loss and
val_loss_local (see evals/evaluate.py) on the validation sequences.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from hybridlab.analysis.schemas import RECEPTIVE_COLUMNS
from hybridlab.evals.evaluate import load_val, val_losses
from hybridlab.models import Receptive
from hybridlab.progress import Progress


def receptive_windows(fractions, context: int) -> list[int]:
    """Windows in tokens (>= 1) from fractions of the context, sorted and deduplicated."""
    return sorted({max(1, round(float(f) * context)) for f in fractions})


def constraints(windows: list[int], context: int) -> list[tuple[str, int, Receptive]]:
    """(constrained, window, Receptive) for the unconstrained model and each class at each window."""
    out = [("none", context, Receptive())]
    for w in windows:
        out += [("full", w, Receptive(full=w)), ("efficient", w, Receptive(efficient=w))]
    return out


def receptive_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    from hybridlab.data.shards import read_manifest
    from hybridlab.evals.checkpoints import load_final, pick_device

    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    context = int(manifest["context"])
    val = load_val(cfg, data_dir)
    model, info = load_final(cfg, run_dir, manifest["vocab_size"], device)
    base = {"variant": cfg.variant.name, "seed": int(cfg.seed), **info}
    rows = []
    cases = constraints(receptive_windows(cfg.eval.receptive_windows, context), context)
    progress = Progress("receptive constraint", len(cases))
    for constrained, window, receptive in cases:
        progress.start(f"{constrained} layers, window {window}")
        _, metrics = val_losses(model, val, int(cfg.eval.batch_size), device, receptive)
        for metric, value in metrics.items():
            rows.append({**base, "constrained": constrained, "window": window, "metric": metric, "value": value})
    progress.done()
    return pd.DataFrame(rows, columns=list(RECEPTIVE_COLUMNS))
