"""Per-checkpoint evaluation: validation loss, exact LongPPL on the synthetic key tokens, NIAH accuracy by
length (including lengths beyond training).

Output: a tidy table, one row per (checkpoint, metric, length) with columns EVAL_COLUMNS.
  val_loss         mean next-token loss over every validation token
  val_loss_local   the same over tokens that need no retrieval (the short-context loss)
  log_longppl      mean loss over key tokens whose source lies beyond data.long_threshold (log of LongPPL)
  niah_acc         fraction of NIAH samples whose final prediction is the needle's value (greedy argmax)
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hybridlab.data.niah import load_niah
from hybridlab.data.shards import load_split, read_manifest
from hybridlab.evals.checkpoints import iter_checkpoints, pick_device
from hybridlab.models import HybridLM, Receptive

EVAL_COLUMNS = ("variant", "seed", "step", "tokens", "metric", "length", "value")


def autocast(device: torch.device):
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast(
        "cpu", enabled=False)


@torch.no_grad()
def token_losses(model: HybridLM, tokens: np.ndarray, batch: int, device: torch.device,
                 receptive: Receptive | None = None) -> torch.Tensor:
    """Per-token next-token loss [N, T-1] (float32, on CPU)."""
    out = []
    for i in range(0, len(tokens), batch):
        x = torch.from_numpy(np.asarray(tokens[i:i + batch], dtype=np.int64)).to(device)
        with autocast(device):
            logits = model(x[:, :-1], receptive=receptive)
        out.append(F.cross_entropy(logits.float().transpose(1, 2), x[:, 1:], reduction="none").cpu())
    return torch.cat(out)


def loss_metrics(losses: torch.Tensor, dist: np.ndarray, long_threshold: int) -> dict[str, float]:
    d = torch.from_numpy(np.asarray(dist[:, 1:], dtype=np.int64))
    key = d >= long_threshold
    return {"val_loss": losses.mean().item(), "val_loss_local": losses[d == 0].mean().item(),
            "log_longppl": losses[key].mean().item() if key.any() else float("nan")}


@torch.no_grad()
def niah_accuracy(model: HybridLM, ds, batch: int, device: torch.device) -> float:
    correct = 0
    for i in range(0, len(ds.tokens), batch):
        x = torch.from_numpy(ds.tokens[i:i + batch]).to(device)
        with autocast(device):
            pred = model(x)[:, -1].argmax(-1).cpu().numpy()
        correct += int((pred == ds.answer[i:i + batch]).sum())
    return correct / len(ds.tokens)


def evaluate_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    n_val = int(cfg.eval.val_batches) * int(cfg.eval.batch_size)
    val_tokens, val_dist = load_split(data_dir, "val")
    val_tokens, val_dist = val_tokens[:n_val], val_dist[:n_val]
    niah = {int(n): load_niah(data_dir, int(n)) for n in manifest["niah"]}
    rows = []
    for model, info in iter_checkpoints(cfg, run_dir, manifest["vocab_size"], device):
        base = {"variant": cfg.variant.name, "seed": int(cfg.seed), **info}
        losses = token_losses(model, val_tokens, int(cfg.eval.batch_size), device)
        for metric, value in loss_metrics(losses, val_dist, manifest["long_threshold"]).items():
            rows.append({**base, "metric": metric, "length": manifest["context"], "value": value})
        for length, ds in niah.items():
            acc = niah_accuracy(model, ds, int(cfg.eval.batch_size), device)
            rows.append({**base, "metric": "niah_acc", "length": length, "value": acc})
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS))
