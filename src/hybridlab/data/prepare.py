"""The data stage: make the corpus (synthetic, or real text tokenized and packed), write verified shards, build the
NIAH set, the RULER-style eval sets and the probing set, and write the manifest last.

Dispatches on `cfg.data.source`: synthetic (default, offline), hf or files (real.py). Idempotent: a folder
whose manifest has the same fingerprint (data and eval settings, context, input files, format version) is left
as it is; otherwise its old files are replaced, the manifest going first so a half-rewritten folder is never
taken as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from hybridlab.data.evalsets import (
    TASKS,
    SyntheticLanguage,
    TextLanguage,
    TooShort,
    haystack_path,
    haystack_text,
    make_evalset,
)
from hybridlab.data.niah import make_niah
from hybridlab.data.shards import MANIFEST, save_array, token_dtype
from hybridlab.data.synthetic import N_SPECIAL, SPLITS, CorpusSpec, SyntheticCorpus
from hybridlab.io import read_json, sha256_file, write_json

log = logging.getLogger("hybridlab")
SEQS_PER_SHARD = 4096
FORMAT = 3  # bump when generation or layout changes, so old folders are rebuilt (3: needles between sentences)
SOURCES = ("synthetic", "hf", "files")


def _error(key: str, value, allowed: str):
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


def eval_lengths(cfg: DictConfig) -> list[int]:
    """Eval lengths in tokens: fractions of the training context (> 1 means beyond the training length)."""
    return sorted({max(8, int(round(f * cfg.scale.context))) for f in cfg.eval.niah_lengths})


def eval_tasks(cfg: DictConfig) -> list[str]:
    tasks = list(cfg.eval.get("ruler_tasks", []))
    for t in tasks:
        if t not in TASKS or t == "probe":
            raise _error("eval.ruler_tasks", t, ", ".join(x for x in TASKS if x != "probe"))
    return tasks


def data_fingerprint(cfg: DictConfig) -> str:
    e = cfg.eval
    relevant = {"format": FORMAT, "data": OmegaConf.to_container(cfg.data, resolve=True),
                "context": int(cfg.scale.context),
                "eval": [eval_lengths(cfg), e.niah_samples, list(e.niah_depths), list(e.get("ruler_tasks", [])),
                         e.get("ruler_samples", 0), e.get("probe_samples", 0), e.get("eval_seed", 0)],
                "inputs": [sha256_file(p) for p in _input_files(cfg)]}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def _input_files(cfg: DictConfig) -> list[str]:
    """Local files whose content defines the data (hashed into the fingerprint)."""
    files = []
    if cfg.eval.get("haystack_file"):
        files.append(str(haystack_path(cfg.eval.haystack_file)))
    if cfg.data.source == "files":
        from hybridlab.data.real import resolve_files

        files += resolve_files(list(cfg.data.files))
    tok_path = OmegaConf.select(cfg, "data.tokenizer.path")
    if cfg.data.source != "synthetic" and tok_path:
        from hybridlab.data.real import tokenizer_file

        files.append(str(tokenizer_file(tok_path)))
    return files


def build_corpus(cfg: DictConfig) -> SyntheticCorpus:
    if cfg.data.source != "synthetic":
        raise _error("data.source", cfg.data.source, "synthetic (this function builds the synthetic corpus)")
    try:
        return SyntheticCorpus(CorpusSpec.from_config(cfg.data))
    except TypeError as e:
        raise _error("data", OmegaConf.to_container(cfg.data), f"the keys of CorpusSpec ({e})") from None


class _ShardWriter:
    """Streams [n, context] chunks of one split into shards of SEQS_PER_SHARD sequences."""

    def __init__(self, out: Path, split: str, dtypes: dict[str, np.dtype]):
        self.out, self.split, self.dtypes = out, split, dtypes
        self.buf: dict[str, list[np.ndarray]] = {k: [] for k in dtypes}
        self.rows, self.entries = 0, []

    def add(self, **arrays: np.ndarray) -> None:
        for k, a in arrays.items():
            self.buf[k].append(a.astype(self.dtypes[k]))
        self.rows += len(next(iter(arrays.values())))
        while self.rows >= SEQS_PER_SHARD:
            self._flush(SEQS_PER_SHARD)

    def _flush(self, n: int) -> None:
        i = len(self.entries)
        entry = {}
        for k, parts in self.buf.items():
            a = np.concatenate(parts)
            entry[k] = save_array(self.out / f"{self.split}_{k}_{i:03d}.npy", a[:n])
            self.buf[k] = [a[n:]] if len(a) > n else []
        self.rows -= n
        self.entries.append(entry)

    def close(self) -> list[dict]:
        if self.rows:
            self._flush(self.rows)
        return self.entries


def _write_split(out: Path, split: str, chunks: Iterable[tuple[np.ndarray, np.ndarray]], n_tokens: int,
                 dtypes: dict[str, np.dtype]) -> list[dict]:
    writer = _ShardWriter(out, split, dtypes)
    with tqdm(total=n_tokens, desc=f"data {split}", unit="tok", unit_scale=True, leave=False) as bar:
        for tokens, dist in chunks:
            writer.add(tokens=tokens, dist=dist)
            bar.update(tokens.size)
    return writer.close()


def _rows(tokens: np.ndarray, chunk: int = 256) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    for s in range(0, len(tokens), chunk):
        t = tokens[s:s + chunk]
        yield t, np.zeros(t.shape, dtype=np.uint8)


def _synthetic(cfg: DictConfig, out: Path) -> dict:
    corpus = build_corpus(cfg)
    context = int(cfg.scale.context)
    dtypes = {"tokens": token_dtype(corpus.vocab.size), "dist": np.dtype(np.uint16 if context < 2**16 else np.int32)}
    splits = {split: _write_split(out, split, corpus.sequences(split, int(n), context), int(n) * context, dtypes)
              for split, n in (("train", cfg.data.n_train_seqs), ("val", cfg.data.n_val_seqs))}
    v = corpus.vocab
    spec = json.dumps([N_SPECIAL, v.n_keys, v.n_values, v.n_words])  # the token id layout
    return {"splits": splits, "vocab_size": corpus.vocab.size, "seed": int(cfg.data.corpus_seed),
            "corpus_seed": int(cfg.data.corpus_seed),
            "language": SyntheticLanguage(corpus, cfg.eval.get("haystack_file")),
            "tokenizer": {"kind": "synthetic", "hash": hashlib.sha256(spec.encode()).hexdigest()[:16]}}


def _real(cfg: DictConfig, out: Path) -> dict:
    from hybridlab.data import real

    d, context = cfg.data, int(cfg.scale.context)
    seed = int(d.seed)
    train_docs, val_docs = real.split_documents(real.documents(d), float(d.val_fraction), seed)
    if not train_docs or not val_docs:
        raise _error("data.val_fraction", d.val_fraction,
                     f"a fraction leaving documents on both sides (got {len(train_docs)} train, {len(val_docs)} val)")
    tok = real.build_tokenizer(d, train_docs, out)
    dtypes = {"tokens": token_dtype(tok.vocab_size), "dist": np.dtype(np.uint8)}
    long_min = max(1, int(round(float(d.long_doc_min) * context)))
    splits, val_tokens = {}, None
    for split, docs, n in (("train", train_docs, d.n_train_seqs), ("val", val_docs, d.n_val_seqs)):
        ids = real.tokenize(tok, docs, f"tokenize {split}")
        rows = real.pack(ids, context, tok.bos, int(n), long_min, float(d.long_fraction),
                         np.random.default_rng([seed, SPLITS[split]]))
        if len(rows) == 0:
            raise _error("data.n_" + split + "_seqs", n, f"a corpus with at least one {context}-token {split} sequence")
        if len(rows) < int(n):
            log.warning("%s: only %d of %d sequences (the corpus is too small)", split, len(rows), int(n))
        splits[split] = _write_split(out, split, _rows(rows), rows.size, dtypes)
        if split == "val":
            val_tokens, val_ids = rows, ids
    haystack_file = cfg.eval.get("haystack_file")
    stream = tok.encode(haystack_text(haystack_file)) if haystack_file else np.concatenate(val_ids)
    result = {"splits": splits, "vocab_size": tok.vocab_size, "seed": seed,
              "language": TextLanguage(tok, stream, seed),
              "tokenizer": {"kind": "pretrained" if d.tokenizer.get("path") else "bpe", "hash": tok.hash,
                            "file": real.TOKENIZER_FILE},
              "documents": {"train": len(train_docs), "val": len(val_docs)}}
    ref = OmegaConf.select(cfg, "data.longppl.reference")
    if ref:
        result["longppl"] = _longppl_keys(cfg, out, splits["val"], val_tokens)
    return result


def _longppl_keys(cfg: DictConfig, out: Path, val_entries: list[dict], val_tokens: np.ndarray) -> dict:
    """Key-token masks of the val split from the reference model, one `key` array per val shard."""
    from hybridlab.data.longppl import key_token_mask, load_reference

    lp = cfg.data.longppl
    scorer = load_reference(lp.reference, lp.get("device", "cpu"), lp.get("block"))
    start = 0
    for i, entry in enumerate(tqdm(val_entries, desc="longppl keys", leave=False)):
        n = entry["tokens"]["shape"][0]
        mask = key_token_mask(scorer, val_tokens[start:start + n], int(lp.short_window),
                              float(lp.gain_threshold), lp.get("logprob_floor"))
        entry["key"] = save_array(out / f"val_key_{i:03d}.npy", mask)
        start += n
    return {k: lp[k] for k in ("reference", "short_window", "gain_threshold", "logprob_floor") if k in lp}


def _eval_sets(cfg: DictConfig, out: Path, lang, dtype: np.dtype) -> tuple[dict, dict, list[str]]:
    e, seed = cfg.eval, int(cfg.eval.get("eval_seed", 0))
    depths = list(e.niah_depths)

    def save(prefix: str, arrays: dict[str, np.ndarray]) -> dict:
        return {k: save_array(out / f"{prefix}_{k}.npy", v.astype(dtype) if k == "tokens" else v, out)
                for k, v in arrays.items()}

    niah, evalsets, skipped = {}, {}, []
    jobs = [(t, int(e.ruler_samples)) for t in eval_tasks(cfg)]
    if int(e.get("probe_samples", 0)) > 0:
        jobs.append(("probe", int(e.probe_samples)))
    lengths = eval_lengths(cfg)
    with tqdm(total=len(lengths) * (1 + len(jobs)), desc="eval sets", leave=False) as bar:
        for length in lengths:
            ds = make_niah(lang, length, int(e.niah_samples), depths, seed)
            niah[str(length)] = save(f"niah_{length}", ds.to_npz())
            bar.update()
            for task, n in jobs:
                try:
                    es = make_evalset(lang, task, length, n, seed, depths)
                except TooShort as err:  # e.g. four English questions at a quarter of a small context
                    log.warning("eval set %s at length %d skipped: %s", task, length, err)
                    skipped.append(f"{task}@{length}")
                else:
                    evalsets.setdefault(task, {})[str(length)] = save(f"evalsets/{task}_{length}", es.arrays())
                bar.update()
    return niah, evalsets, skipped


def _listed_files(manifest: dict) -> set[str]:
    """Every file name a manifest lists (any dict with a `file` key, at any depth)."""
    found: set[str] = set()

    def walk(x) -> None:
        if isinstance(x, dict):
            if "file" in x and "sha256" in x:
                found.add(x["file"])
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    walk(manifest)
    return found


def prepare(cfg: DictConfig, out: str | Path) -> dict:
    out = Path(out)
    source = cfg.data.source
    if source not in SOURCES:
        raise _error("data.source", source, ", ".join(SOURCES))
    fingerprint = data_fingerprint(cfg)
    old = read_json(out / MANIFEST) if (out / MANIFEST).exists() else None
    if old is not None and old.get("fingerprint") == fingerprint:
        log.info("data in %s is up to date (fingerprint %s)", out, fingerprint)
        return old
    out.mkdir(parents=True, exist_ok=True)
    if old is not None:
        (out / MANIFEST).unlink()
    built = _synthetic(cfg, out) if source == "synthetic" else _real(cfg, out)
    context = int(cfg.scale.context)
    lang = built.pop("language")
    dtype = token_dtype(built["vocab_size"])
    niah, evalsets, skipped = _eval_sets(cfg, out, lang, dtype)
    long_threshold = int(round(cfg.data.long_threshold * context))
    splits = built.pop("splits")
    manifest = {
        "format": FORMAT, "source": source, "fingerprint": fingerprint, "context": context,
        "sequences": {s: sum(e["tokens"]["shape"][0] for e in v) for s, v in splits.items()},
        "tokens": {s: sum(e["tokens"]["shape"][0] * context for e in v) for s, v in splits.items()},
        "key_tokens": _key_counts(out, splits, long_threshold),
        "long_threshold": long_threshold, "splits": splits, "niah": niah, "evalsets": evalsets,
        "evalsets_skipped": skipped, **_haystack_entry(cfg), **built,
    }
    write_json(out / MANIFEST, manifest)
    if old is not None:
        for name in _listed_files(old) - _listed_files(manifest):
            with contextlib.suppress(FileNotFoundError):
                (out / name).unlink()
    return manifest


def _haystack_entry(cfg: DictConfig) -> dict:
    """The user's haystack file, as the manifest records it (its expanded path and sha256), if there is one."""
    value = cfg.eval.get("haystack_file")
    if not value:
        return {}
    path = haystack_path(value)
    return {"haystack_file": {"path": str(path), "sha256": sha256_file(path)}}


def _key_counts(out: Path, splits: dict, long_threshold: int) -> dict[str, int]:
    """Per split, how many tokens are LongPPL key tokens (dist >= long_threshold, or the reference's mask)."""
    counts = {}
    for split, entries in splits.items():
        n = 0
        for e in entries:
            if "key" in e:
                n += int(np.load(out / e["key"]["file"], mmap_mode="r").sum())
            else:
                n += int((np.load(out / e["dist"]["file"], mmap_mode="r") >= max(1, long_threshold)).sum())
        counts[split] = n
    return counts
