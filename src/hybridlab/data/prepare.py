"""The data stage: make the corpus (synthetic, or real text tokenized and packed), write verified shards, build the
NIAH set, the RULER-style eval sets and the probing set, and write the manifest last.

Dispatches on `cfg.data.source`: synthetic (default, offline) or text (real corpora: corpora.py, real.py for
the tokenizer, groups.py for the parallel, resumable preparation of each group, mix.py for the shares).
Real text is prepared in three steps that the workflow runs as separate jobs and `prepare` runs in turn: the
tokenizer, every group (finished groups are kept), then the mix, the eval sets and the manifest. Idempotent: a
folder whose manifest has the same fingerprint (data and eval settings, context, tokenizer, groups, input
files, format version) is left as it is; otherwise its old files are replaced, the manifest going first so a
half-rewritten folder is never taken as complete.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
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
from hybridlab.data.synthetic import N_SPECIAL, CorpusSpec, SyntheticCorpus
from hybridlab.io import read_json, sha256_file, write_json

log = logging.getLogger("hybridlab")
SEQS_PER_SHARD = 4096
FORMAT = 3  # bump when generation or layout changes, so old folders are rebuilt (3: needles between sentences)
SOURCES = ("synthetic", "text")


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


def data_fingerprint(cfg: DictConfig, parts: list[str] = ()) -> str:
    """The fingerprint of a data folder: data and eval settings, context, format, the haystack file's content,
    and for real text the fingerprints of the tokenizer and of every group (`parts`)."""
    e = cfg.eval
    relevant = {"format": FORMAT, "data": OmegaConf.to_container(cfg.data, resolve=True),
                "context": int(cfg.scale.context),
                "eval": [eval_lengths(cfg), e.niah_samples, list(e.niah_depth_range), list(e.get("ruler_tasks", [])),
                         e.get("ruler_samples", 0), e.get("probe_samples", 0), e.get("eval_seed", 0)],
                "inputs": [sha256_file(haystack_path(e.haystack_file))] if e.get("haystack_file") else []}
    if parts:
        relevant["parts"] = list(parts)
    return hashlib.sha256(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


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


def _synthetic(cfg: DictConfig, out: Path, workers: int) -> dict:
    corpus = build_corpus(cfg)
    context = int(cfg.scale.context)
    dtypes = {"tokens": token_dtype(corpus.vocab.size), "dist": np.dtype(np.uint16 if context < 2**16 else np.int32)}
    splits = {split: _write_split(out, split, corpus.sequences(split, int(n), context, workers), int(n) * context,
                                  dtypes)
              for split, n in (("train", cfg.data.n_train_seqs), ("val", cfg.data.n_val_seqs))}
    v = corpus.vocab
    spec = json.dumps([N_SPECIAL, v.n_keys, v.n_values, v.n_words])  # the token id layout
    return {"splits": splits, "vocab_size": corpus.vocab.size, "seed": int(cfg.data.corpus_seed),
            "corpus_seed": int(cfg.data.corpus_seed),
            "language": SyntheticLanguage(corpus, cfg.eval.get("haystack_file")),
            "tokenizer": {"kind": "synthetic", "hash": hashlib.sha256(spec.encode()).hexdigest()[:16]}}


def prepare_tokenizer(cfg: DictConfig, out: str | Path) -> str:
    """Step 1 of real text: the tokenizer in `out` (reused when up to date); returns its fingerprint."""
    from hybridlab.data.real import TOKENIZER_DONE, build_tokenizer

    build_tokenizer(cfg.data, Path(out))
    return read_json(Path(out) / TOKENIZER_DONE)["fingerprint"]


def prepare_groups(cfg: DictConfig, out: str | Path, workers: int = 1, only: list[str] | None = None) -> list[dict]:
    """Step 2 of real text: every group (`corpus/GGGGG`; or those in `only`), each kept if already finished."""
    from hybridlab.data.corpora import group_ids
    from hybridlab.data.groups import prepare_group, tokenizer_pool

    ids = group_ids(cfg.data)
    for gid in only or []:
        if gid not in ids:
            raise _error("--group", gid, f"one of the {len(ids)} groups, e.g. {ids[0]}")
    records = []
    pool = tokenizer_pool(cfg.data, Path(out), workers)
    with pool or contextlib.nullcontext():
        for gid in only or ids:
            name, g = gid.rsplit("/", 1)
            records.append(prepare_group(cfg.data, int(cfg.scale.context), name, int(g), out, pool))
            log.info("group %s: %s", gid, {s["split"] + "_" + s["class"]: s["tokens"]["shape"][0]
                                           for s in records[-1]["streams"]})
    return records


def _real(cfg: DictConfig, out: Path, records: list[dict]) -> dict:
    """Step 3 of real text: the mix of the groups' rows, the eval haystack, LongPPL key masks."""
    from hybridlab.data import mix, real
    from hybridlab.data.real import TOKENIZER_DONE

    d = cfg.data
    tok = real.open_tokenizer(d, out)
    tok_info = read_json(out / TOKENIZER_DONE)
    splits, report = mix.select(d, records)
    haystack_file = cfg.eval.get("haystack_file")
    if haystack_file:
        stream = tok.encode(haystack_text(haystack_file))
    else:  # the held-out documents, without their separators
        from hybridlab.data.shards import load_array

        val = np.concatenate([np.asarray(load_array(out, e["tokens"])[slice(*e["rows"])]).ravel()
                              for e in splits["val"]])
        stream = val[val != tok.bos]
    result = {"splits": splits, "vocab_size": int(tok_info["vocab_size"]), "seed": int(d.seed),
              "language": TextLanguage(tok, stream, int(d.seed)),
              "tokenizer": {"kind": tok_info["kind"], "hash": tok.hash, "file": real.TOKENIZER_FILE,
                            "tokenizer_vocab": tok.vocab_size},
              "documents": mix.document_counts(records), "mix": report,
              "long_doc_min_tokens": max(1, int(round(float(d.long_doc_min) * int(cfg.scale.context))))}
    if OmegaConf.select(cfg, "data.longppl.reference"):
        split = "longppl" if "longppl" in splits else "val"
        result["longppl"] = _longppl_keys(cfg, out, split, splits[split])
    return result


def _longppl_keys(cfg: DictConfig, out: Path, split: str, entries: list[dict]) -> dict:
    """Key-token masks of a split from the reference model, one `key` array per shard entry."""
    from hybridlab.data.longppl import key_token_mask, load_reference
    from hybridlab.data.shards import load_array

    lp = cfg.data.longppl
    scorer = load_reference(lp.reference, lp.get("device", "cpu"), lp.get("block"))
    for i, entry in enumerate(tqdm(entries, desc="longppl keys", leave=False)):
        tokens = load_array(out, entry["tokens"])[slice(*entry.get("rows", [None]))]
        mask = key_token_mask(scorer, tokens, int(lp.short_window), float(lp.gain_threshold), lp.get("logprob_floor"))
        entry["key"] = save_array(out / f"{split}_key_{i:03d}.npy", mask)
    return {"split": split, **{k: lp[k] for k in ("reference", "short_window", "gain_threshold", "logprob_floor")
                               if k in lp}}


def _eval_sets(cfg: DictConfig, out: Path, lang, dtype: np.dtype) -> tuple[dict, dict, list[str]]:
    e, seed = cfg.eval, int(cfg.eval.get("eval_seed", 0))
    depth_range = tuple(e.niah_depth_range)

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
            ds = make_niah(lang, length, int(e.niah_samples), depth_range, seed)
            niah[str(length)] = save(f"niah_{length}", ds.to_npz())
            bar.update()
            for task, n in jobs:
                try:
                    es = make_evalset(lang, task, length, n, seed, depth_range)
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


def prepare(cfg: DictConfig, out: str | Path, workers: int = 1) -> dict:
    """The whole data stage into `out` (the synthetic corpus generated in `workers` processes; for real text:
    the tokenizer, each group not yet finished, with `workers` tokenizer processes, then the mix); returns the
    manifest. The data never depend on `workers`."""
    out = Path(out)
    source = cfg.data.source
    if source not in SOURCES:
        raise _error("data.source", source, ", ".join(SOURCES))
    records: list[dict] = []
    parts: list[str] = []
    if source == "text":
        out.mkdir(parents=True, exist_ok=True)
        parts.append(prepare_tokenizer(cfg, out))
        records = prepare_groups(cfg, out, workers)
        parts += [r["fingerprint"] for r in records]
    fingerprint = data_fingerprint(cfg, parts)
    old = read_json(out / MANIFEST) if (out / MANIFEST).exists() else None
    if old is not None and old.get("fingerprint") == fingerprint:
        log.info("data in %s is up to date (fingerprint %s)", out, fingerprint)
        return old
    out.mkdir(parents=True, exist_ok=True)
    if old is not None:
        (out / MANIFEST).unlink()
    built = _synthetic(cfg, out, workers) if source == "synthetic" else _real(cfg, out, records)
    context = int(cfg.scale.context)
    lang = built.pop("language")
    dtype = token_dtype(built["vocab_size"])
    niah, evalsets, skipped = _eval_sets(cfg, out, lang, dtype)
    long_threshold = int(round(cfg.data.long_threshold * context))
    splits = built.pop("splits")
    manifest = {
        "format": FORMAT, "source": source, "fingerprint": fingerprint, "context": context,
        "sequences": {s: sum(_n_rows(e) for e in v) for s, v in splits.items()},
        "tokens": {s: sum(_n_rows(e) * context for e in v) for s, v in splits.items()},
        "key_tokens": _key_counts(out, splits, long_threshold),
        "long_threshold": long_threshold, "splits": splits, "niah": niah, "evalsets": evalsets,
        "evalsets_skipped": skipped, **_haystack_entry(cfg), **built,
    }
    write_json(out / MANIFEST, manifest)
    if old is not None:  # group files belong to their group records, which keep them while up to date
        for name in _listed_files(old) - _listed_files(manifest):
            if not name.startswith("groups/"):
                with contextlib.suppress(FileNotFoundError):
                    (out / name).unlink()
    if source == "text":
        _remove_stale_groups(out, records)
    return manifest


def _remove_stale_groups(out: Path, records: list[dict]) -> None:
    """Files under `groups/` that no current group record lists (groups of an earlier config)."""
    from hybridlab.data.groups import record_path

    keep = {(out / s["tokens"]["file"]).resolve() for r in records for s in r["streams"]}
    keep |= {record_path(out, r["corpus"], r["group"]).resolve() for r in records}
    for p in (out / "groups").rglob("*"):
        if p.is_file() and p.resolve() not in keep and not p.name.startswith("."):
            p.unlink()


def _n_rows(entry: dict) -> int:
    lo, hi = entry.get("rows", [0, entry["tokens"]["shape"][0]])
    return hi - lo
def _haystack_entry(cfg: DictConfig) -> dict:
    """The user's haystack file, as the manifest records it (its expanded path and sha256), if there is one."""
    value = cfg.eval.get("haystack_file")
    if not value:
        return {}
    path = haystack_path(value)
    return {"haystack_file": {"path": str(path), "sha256": sha256_file(path)}}


def _key_counts(out: Path, splits: dict, long_threshold: int) -> dict[str, int]:
    """Per split, how many tokens are LongPPL key tokens (dist >= long_threshold, or the reference's mask; none
    for real text without a mask)."""
    counts = {}
    for split, entries in splits.items():
        n = 0
        for e in entries:
            if "key" in e:
                n += int(np.load(out / e["key"]["file"], mmap_mode="r").sum())
            elif "dist" in e:
                n += int((np.load(out / e["dist"]["file"], mmap_mode="r") >= max(1, long_threshold)).sum())
        counts[split] = n
    return counts
