"""Layer-wise probing (paper Fig. 4): which of 8 magic numbers was hidden, read from the residual stream.

Probing set: the data folder's `probe` eval set at the training context (data/evalsets.py: NIAH inputs whose
hidden value is one of 8 fixed candidates, label 0..7, ending at the question; eval.probe_samples per length).

Features at the last token (the query position), for each layer l = 0..n_layers-1:
  resid   the residual stream after block l
  delta   what block l added to it (after minus before)
Probe: standardised features, scikit-learn logistic regression (C = eval.probe_C, lbfgs), trained on a
stratified split and scored on the held-out eval.probe_test_fraction (fixed random_state). Standardising
keeps C meaning the same thing at every depth, where the stream's scale grows.

Output (probe.csv, columns PROBE_COLUMNS): metric probe_acc at the final checkpoint (every checkpoint with
eval.probe_all_checkpoints).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from hybridlab.analysis.schemas import PROBE_COLUMNS
from hybridlab.evals.evaluate import autocast
from hybridlab.models import HybridLM

FEATURES = ("resid", "delta")
SPLIT_SEED = 0  # one train/test split for every run, so runs are compared on the same held-out samples


def load_probe_set(data_dir: str | Path, length: int) -> tuple[np.ndarray, np.ndarray]:
    """(tokens [n, length], labels [n]) of the data folder's probing set."""
    from hybridlab.data.evalsets import load_evalset

    try:
        ds = load_evalset(data_dir, "probe", length)
    except KeyError as e:
        raise FileNotFoundError(f"{e.args[0]}: the probing set is built by prepare-data when "
                                "eval.probe_samples > 0") from None
    return ds.tokens, ds.label.astype(np.int64)


@torch.no_grad()
def last_token_features(model: HybridLM, tokens: np.ndarray, batch: int,
                        device: torch.device) -> dict[str, np.ndarray]:
    """resid and delta at the last position, each [n_layers, n, d_model] float32."""
    out: dict[str, list] = {f: [] for f in FEATURES}
    for i in range(0, len(tokens), batch):
        x = torch.from_numpy(np.array(tokens[i:i + batch], dtype=np.int64)).to(device)
        with autocast(device):
            _, hidden = model(x, return_hidden=True)
        h = torch.stack([s[:, -1].float() for s in hidden])  # [n_layers + 1, b, d]
        out["resid"].append(h[1:].cpu())
        out["delta"].append((h[1:] - h[:-1]).cpu())
    return {f: torch.cat(v, dim=1).numpy() for f, v in out.items()}


def probe_accuracy(features: np.ndarray, labels: np.ndarray, C: float = 0.1, test_fraction: float = 0.3,
                   seed: int = SPLIT_SEED) -> float:
    """Held-out accuracy of a logistic-regression probe on standardised features (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    stratify = labels if np.unique(labels, return_counts=True)[1].min() >= 2 else None  # needs 2 per class
    x_tr, x_te, y_tr, y_te = train_test_split(features, labels, test_size=test_fraction, random_state=seed,
                                              stratify=stratify)
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=2000))
    with threadpool_limits(limits=1):  # tiny problems: threaded BLAS only adds contention
        clf.fit(x_tr, y_tr)
        return float(clf.score(x_te, y_te))


def probe_rows(model: HybridLM, tokens: np.ndarray, labels: np.ndarray, cfg, device: torch.device,
               base: dict) -> list[dict]:
    feats = last_token_features(model, tokens, int(cfg.eval.batch_size), device)
    rows = []
    for feature, arr in feats.items():
        for layer in range(arr.shape[0]):
            acc = probe_accuracy(arr[layer], labels, float(cfg.eval.probe_C), float(cfg.eval.probe_test_fraction))
            rows.append({**base, "layer": layer, "feature": feature, "metric": "probe_acc", "value": acc})
    return rows


def probe_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    from hybridlab.data.shards import read_manifest
    from hybridlab.evals.checkpoints import pick_device, selected_checkpoints

    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    tokens, labels = load_probe_set(data_dir, int(manifest["context"]))
    vocab = manifest["vocab_size"]
    models = selected_checkpoints(cfg, run_dir, vocab, device, bool(cfg.eval.probe_all_checkpoints))
    rows = []
    for model, info in models:
        rows += probe_rows(model, tokens, labels, cfg, device, {"variant": cfg.variant.name, "seed": int(cfg.seed),
                                                                **info})
    return pd.DataFrame(rows, columns=list(PROBE_COLUMNS))
