"""Per-checkpoint evaluation: validation loss, LongPPL, loss by position, NIAH accuracy by length (including
lengths beyond training) and the RULER-style suite.

Output: a tidy table, one row per (checkpoint, metric, length) with columns EVAL_COLUMNS.
  val_loss         mean next-token loss over the first eval.val_batches * eval.batch_size validation sequences
  val_loss_local   the same over tokens that need no retrieval (the short-context loss; on real text, where
                   every token's `dist` is 0, it equals val_loss)
  log_longppl      mean loss over the LongPPL key tokens (log of LongPPL): exact on the synthetic corpus
                   (recalled values whose source lies beyond data.long_threshold), the reference model's
                   selection on real text (data/longppl.py); NaN when real text has no key-token mask
  loss_by_pos      mean loss of the tokens at positions (length/2, length] (the log perplexity by position; the
                   first bucket holds every position <= eval.pos_bucket_min)
  niah_acc         synthetic corpus: fraction of NIAH samples whose final prediction is the needle's value
                   (greedy argmax; the value is one token). Real text: RULER's scoring of the whole answer
                   string: greedy generation (with the model's caches) of the answer's length plus
                   eval.gen_extra_tokens tokens, decoded; a sample scores when the 7-digit value occurs in it
                   (evals/generation.py), so a model that only gets the first of its 4 BPE tokens scores 0. At
                   every checkpoint at the training length, at the other lengths on every checkpoint or only the
                   final one (eval.niah_lengths_all_checkpoints)
  ruler_<task>     each RULER-style eval set of the data folder (data/evalsets.py), by length. Synthetic corpus:
                   per sample the fraction of its answer tokens predicted under teacher forcing (argmax at
                   answer_pos - 1), averaged over samples; with single-token values this is RULER's
                   string_match_all. Real text: string_match_all of the generated continuation of the question
                   (as niah_acc) against every value of the answer. At every checkpoint, or only the final one
                   unless eval.ruler_all_checkpoints.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from hybridlab.analysis.schemas import EVAL_COLUMNS
from hybridlab.data.evalsets import EvalSet, load_evalset
from hybridlab.data.niah import load_niah
from hybridlab.data.shards import load_key_mask, load_split, read_manifest
from hybridlab.evals.checkpoints import iter_checkpoints, list_checkpoints, pick_device
from hybridlab.evals.generation import autocast, generated_scores
from hybridlab.models import HybridLM, Receptive

log = logging.getLogger("hybridlab")


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


@dataclass
class ValSet:
    tokens: np.ndarray  # [n, T]
    dist: np.ndarray  # [n, T] distance to each token's source (0: needs no retrieval)
    key: np.ndarray | None  # [n, T] bool LongPPL key tokens; None for real text without a reference's mask
    longppl_tokens: np.ndarray | None = None  # [n, T] a LongPPL split of its own (real text: GovReport); `key`
    # is then over these tokens, else over `tokens`


def load_val(cfg, data_dir: str | Path) -> ValSet:
    """The evaluation's validation sequences: the first eval.val_batches * eval.batch_size of the val split, and
    as many of the data folder's `longppl` split when it has one (the paper data: C4 for the short-context loss,
    GovReport for LongPPL), whose key-token mask then gives log_longppl."""
    n = int(cfg.eval.val_batches) * int(cfg.eval.batch_size)
    tokens, dist = load_split(data_dir, "val")
    lp_split = "longppl" if "longppl" in read_manifest(data_dir)["splits"] else "val"
    longppl_tokens = np.asarray(load_split(data_dir, "longppl")[0][:n]) if lp_split == "longppl" else None
    try:
        key = np.asarray(load_key_mask(data_dir, lp_split)[:n])
    except KeyError as e:
        log.warning("%s: log_longppl will be NaN", e.args[0])
        key = None
    return ValSet(tokens[:n], dist[:n], key, longppl_tokens)


def loss_metrics(losses: torch.Tensor, val: ValSet, longppl_losses: torch.Tensor | None = None) -> dict[str, float]:
    """val_loss, val_loss_local and log_longppl of per-token losses [n, T-1] (column i predicts token i + 1);
    log_longppl from `longppl_losses` (the losses of val.longppl_tokens) when the val set has a LongPPL split."""
    local = torch.from_numpy(np.asarray(val.dist[:, 1:]) == 0)
    key = None if val.key is None else torch.from_numpy(val.key[:, 1:])
    lp = losses if val.longppl_tokens is None else longppl_losses
    return {"val_loss": losses.mean().item(), "val_loss_local": losses[local].mean().item(),
            "log_longppl": lp[key].mean().item() if key is not None and lp is not None and key.any()
            else float("nan")}


def val_losses(model: HybridLM, val: ValSet, batch: int, device: torch.device,
               receptive: Receptive | None = None) -> tuple[torch.Tensor, dict[str, float]]:
    """Per-token losses of the val tokens and `loss_metrics` (one more pass over the LongPPL split if any)."""
    losses = token_losses(model, val.tokens, batch, device, receptive)
    lp = (None if val.longppl_tokens is None
          else token_losses(model, val.longppl_tokens, batch, device, receptive))
    return losses, loss_metrics(losses, val, lp)


def position_buckets(context: int, first: int) -> list[int]:
    """Upper bounds of the position buckets: `first`, then doublings, the last one clipped to the context."""
    bounds = [min(first, context)]
    while bounds[-1] < context:
        bounds.append(min(2 * bounds[-1], context))
    return bounds


def bucket_means(values: torch.Tensor, first: int, size: int | None = None) -> dict[int, float]:
    """Mean of values[..., i] per bucket of the 1-based index i + 1: (0, first], then (u/2, u] up to `size`
    (default: the last index); keys are the buckets' upper bounds, empty buckets are left out."""
    index = torch.arange(1, values.shape[-1] + 1)
    out, low = {}, 0
    for high in position_buckets(size or values.shape[-1], first):
        sel = (index > low) & (index <= high)
        if sel.any():
            out[high] = values[..., sel].mean().item()
        low = high
    return out


@torch.no_grad()
def ruler_score(model: HybridLM, ds: EvalSet, batch: int, device: torch.device) -> float:
    """Teacher-forced answer-token recall per sample (see the module docstring), averaged over samples."""
    total = 0.0
    for i in range(0, len(ds.tokens), batch):
        x = torch.from_numpy(np.array(ds.tokens[i:i + batch], dtype=np.int64)).to(device)
        pos = torch.from_numpy(np.array(ds.answer_pos[i:i + batch], dtype=np.int64)).to(device)
        answer = torch.from_numpy(np.array(ds.answer[i:i + batch], dtype=np.int64)).to(device)
        with autocast(device):
            pred = model(x).argmax(-1)
        valid = pos > 0
        hit = (pred.gather(1, (pos - 1).clamp(min=0)) == answer) & valid
        total += (hit.sum(1) / valid.sum(1).clamp(min=1)).sum().item()
    return total / len(ds.tokens)


def ruler_sets(data_dir: str | Path, manifest: dict) -> dict[tuple[str, int], EvalSet]:
    """Every RULER-style eval set of the data folder (the probing set aside), by (task, length)."""
    return {(task, int(n)): load_evalset(data_dir, task, int(n))
            for task, by_length in manifest.get("evalsets", {}).items() if task != "probe" for n in by_length}


@torch.no_grad()
def niah_accuracy(model: HybridLM, ds, batch: int, device: torch.device) -> float:
    correct = 0
    for i in range(0, len(ds.tokens), batch):
        x = torch.from_numpy(ds.tokens[i:i + batch]).to(device)
        with autocast(device):
            pred = model(x)[:, -1].argmax(-1).cpu().numpy()
        correct += int((pred == ds.answer[i:i + batch]).sum())
    return correct / len(ds.tokens)


def text_decoder(data_dir: str | Path, manifest: dict):
    """Token ids -> text with the data folder's tokenizer; None for the synthetic corpus (scored in token space)."""
    if manifest.get("tokenizer", {}).get("kind", "synthetic") == "synthetic":
        return None
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(data_dir) / manifest["tokenizer"]["file"]))
    return lambda ids: tok.decode(list(ids), skip_special_tokens=True)


def evaluate_run(cfg, data_dir: str | Path, run_dir: str | Path) -> pd.DataFrame:
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    batch = int(cfg.eval.batch_size)
    decode = text_decoder(data_dir, manifest)
    extra = int(cfg.eval.get("gen_extra_tokens", 16))
    val = load_val(cfg, data_dir)
    niah = {int(n): load_niah(data_dir, int(n)) for n in manifest["niah"]}
    ruler = ruler_sets(data_dir, manifest)
    n_ckpt = len(list_checkpoints(run_dir))
    rows = []
    for i, (model, info) in enumerate(iter_checkpoints(cfg, run_dir, manifest["vocab_size"], device)):
        base = {"variant": cfg.variant.name, "seed": int(cfg.seed), **info}
        losses, metrics = val_losses(model, val, batch, device)
        for metric, value in metrics.items():
            rows.append({**base, "metric": metric, "length": manifest["context"], "value": value})
        # column i of `losses` predicts the token at position i + 1, so the buckets are by position
        for high, value in bucket_means(losses, int(cfg.eval.pos_bucket_min), manifest["context"]).items():
            rows.append({**base, "metric": "loss_by_pos", "length": high, "value": value})
        last = i == n_ckpt - 1
        for length, ds in niah.items():
            if length != manifest["context"] and not (last or cfg.eval.get("niah_lengths_all_checkpoints", True)):
                continue
            if decode is None:
                acc = niah_accuracy(model, ds, batch, device)
            else:
                query = np.full(len(ds.tokens), ds.tokens.shape[1] - 1)
                acc = float(generated_scores(model, ds.tokens, query, ds.answers, decode, batch, device, extra).mean())
            rows.append({**base, "metric": "niah_acc", "length": length, "value": acc})
        if cfg.eval.ruler_all_checkpoints or last:
            for (task, length), ds in ruler.items():
                value = ruler_score(model, ds, batch, device) if decode is None else float(generated_scores(
                    model, ds.tokens, ds.query_pos, ds.answer, decode, batch, device, extra).mean())
                rows.append({**base, "metric": f"ruler_{task}", "length": length, "value": value})
    return pd.DataFrame(rows, columns=list(EVAL_COLUMNS))
