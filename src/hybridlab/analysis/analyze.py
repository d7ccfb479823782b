"""`hybridlab analyze`: one pass over a run's checkpoints for every head-level analysis.

Per checkpoint, the NIAH set at the training context gives the head scores (analysis/retrieval.py) and the
Q/K weights are kept; after the pass, the final checkpoint's top eval.top_heads full-attention heads (by needle
mass) are the traced retrieval heads, the trajectories follow those that formed (analysis/trajectory.py), the
onset is read off the full heads' needle mass, and the final model, still loaded, is re-evaluated on NIAH with
its top full-attention heads masked (analysis/masking.py).

Returns the tables heads, trajectory, traced, onset and masking (schemas in analysis/schemas.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from hybridlab.analysis.masking import masking_table
from hybridlab.analysis.retrieval import attention_heads, head_scores, heads_table, top_heads
from hybridlab.analysis.trajectory import CheckpointRecord, onset_table, qk_weights, traced_table, trajectory_table
from hybridlab.config import ConfigError
from hybridlab.data.niah import load_niah
from hybridlab.data.shards import read_manifest
from hybridlab.evals.checkpoints import iter_checkpoints, pick_device

log = logging.getLogger("hybridlab")
N_LAST_QUERIES = 4  # the trajectories' entropy is averaged over the last 4 query positions, as in the paper


def masking_sets(cfg, data_dir: str | Path, manifest: dict) -> dict:
    """The NIAH sets of eval.masking_lengths (fractions of the context), by length; checked before any work."""
    context = int(manifest["context"])
    lengths = sorted({max(8, round(float(f) * context)) for f in cfg.eval.masking_lengths})
    if any(str(n) not in manifest["niah"] for n in lengths):
        raise ConfigError("eval.masking_lengths", list(cfg.eval.masking_lengths),
                          f"fractions of the context with a NIAH set (lengths {sorted(manifest['niah'], key=int)})")
    return {n: load_niah(data_dir, n) for n in lengths}


def analyze_run(cfg, data_dir: str | Path, run_dir: str | Path) -> dict[str, pd.DataFrame]:
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    length = int(manifest["context"])
    ds = load_niah(data_dir, length)
    masking_niah = masking_sets(cfg, data_dir, manifest)
    batch = int(cfg.eval.batch_size)
    run = {"variant": cfg.variant.name, "seed": int(cfg.seed)}
    history, heads = [], []
    for model, info in iter_checkpoints(cfg, run_dir, manifest["vocab_size"], device):
        scores = head_scores(model, ds.tokens, ds.needle_pos, batch, device, n_last=N_LAST_QUERIES,
                             query_from_end=int(cfg.eval.get("retrieval_query_from_end", 1)),
                             span=str(cfg.eval.get("needle_span", "first")), needle_len=ds.needle_len)
        history.append(CheckpointRecord(info, scores, qk_weights(model)))
        heads.append(heads_table(model, scores, {**run, **info}, length))
    # `model` now holds the final checkpoint (iter_checkpoints loads each into the same module, oldest first)
    final = history[-1]
    ks = [int(k) for k in cfg.eval.masking_k]
    threshold = float(cfg.eval.onset_threshold)
    top = top_heads(final.scores, max([int(cfg.eval.top_heads), *ks]), attention_heads(model, "full"))
    traced = traced_table(history, top[:int(cfg.eval.top_heads)], model, run, threshold)
    formed = [(int(r.layer), int(r.head)) for r in traced.itertuples() if r.formed]
    log.info("final checkpoint: NIAH with the top heads masked (k = %s, %d random draws)", ks, cfg.eval.masking_draws)
    return {
        "heads": pd.concat(heads, ignore_index=True),
        "trajectory": trajectory_table(history, formed, run, length),
        "traced": traced,
        "onset": onset_table(history, model, run, threshold),
        "masking": masking_table(model, masking_niah, top, ks, int(cfg.eval.masking_draws), int(cfg.seed), batch,
                                 device, {**run, **final.info}),
    }
