"""The data stage: generate the corpus, pack it into verified shards, build the NIAH eval sets.

Idempotent: if the folder already holds a manifest for the same config, nothing is rewritten.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hybridlab.data.niah import make_niah
from hybridlab.data.shards import MANIFEST, save_array, token_dtype
from hybridlab.data.synthetic import CorpusSpec, SyntheticCorpus
from hybridlab.io import read_json, write_json

log = logging.getLogger("hybridlab")
SEQS_PER_SHARD = 4096


def niah_lengths(cfg: DictConfig) -> list[int]:
    """Eval lengths in tokens: fractions of the training context (> 1 means beyond the training length)."""
    return sorted({max(8, int(round(f * cfg.scale.context))) for f in cfg.eval.niah_lengths})


def data_fingerprint(cfg: DictConfig) -> str:
    relevant = {"data": OmegaConf.to_container(cfg.data, resolve=True), "context": cfg.scale.context,
                "niah": [niah_lengths(cfg), cfg.eval.niah_samples, list(cfg.eval.niah_depths)]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def build_corpus(cfg: DictConfig) -> SyntheticCorpus:
    if cfg.data.source != "synthetic":
        from hybridlab.config import ConfigError

        raise ConfigError("data.source", cfg.data.source, "synthetic")
    return SyntheticCorpus(CorpusSpec.from_config(cfg.data))


def prepare(cfg: DictConfig, out: str | Path) -> dict:
    out = Path(out)
    fingerprint = data_fingerprint(cfg)
    if (out / MANIFEST).exists() and read_json(out / MANIFEST).get("fingerprint") == fingerprint:
        log.info("data in %s is up to date (fingerprint %s)", out, fingerprint)
        return read_json(out / MANIFEST)
    corpus = build_corpus(cfg)
    context = int(cfg.scale.context)
    dtype = token_dtype(corpus.vocab.size)
    splits: dict[str, list] = {}
    for split, n in (("train", cfg.data.n_train_seqs), ("val", cfg.data.n_val_seqs)):
        bar = tqdm(total=n * context, desc=f"data {split}", unit="tok", unit_scale=True, leave=False)
        chunks_t, chunks_d = [], []
        for tokens, dist in corpus.sequences(split, n, context):
            chunks_t.append(tokens.astype(dtype))
            chunks_d.append(dist)
            bar.update(tokens.size)
        bar.close()
        tokens, dist = np.concatenate(chunks_t), np.concatenate(chunks_d)
        splits[split] = [
            {"tokens": save_array(out / f"{split}_tokens_{i:03d}.npy", tokens[s:s + SEQS_PER_SHARD]),
             "dist": save_array(out / f"{split}_dist_{i:03d}.npy", dist[s:s + SEQS_PER_SHARD])}
            for i, s in enumerate(range(0, len(tokens), SEQS_PER_SHARD))
        ]
    niah = {}
    for length in niah_lengths(cfg):
        ds = make_niah(corpus, length, int(cfg.eval.niah_samples), list(cfg.eval.niah_depths), seed=0)
        niah[str(length)] = {k: save_array(out / f"niah_{length}_{k}.npy", v) for k, v in ds.to_npz().items()}
    manifest = {
        "source": "synthetic", "fingerprint": fingerprint, "vocab_size": corpus.vocab.size,
        "context": context, "corpus_seed": int(cfg.data.corpus_seed),
        "tokenizer": {"kind": "synthetic", "hash": fingerprint},
        "tokens": {s: sum(e["tokens"]["shape"][0] * context for e in v) for s, v in splits.items()},
        "long_threshold": int(round(cfg.data.long_threshold * context)),
        "splits": splits, "niah": niah,
    }
    write_json(out / MANIFEST, manifest)
    return manifest
