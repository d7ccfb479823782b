"""One preparation group of a real-text corpus: stream its documents, tokenize them in parallel processes, sort
each into its (split, class) stream, pack the streams into `context`-token rows and append them to token
shards, then write the group's record last.

Memory is bounded by the batches in flight (2 per worker process, READ_CHARS characters each) and one
row block per stream, whatever the corpus size. The output is a function of (config, tokenizer, group) alone:
batches are tokenized in any order by any number of processes but consumed in document order, and a group
stops once every stream it feeds is full, so `--workers 1` and `--workers 8` write identical bytes.

Files of group g of corpus c (`groups/{c}/`):
  {g:05d}_{split}_{class}.npy   uint16/uint32 [n, context]: `BOS doc BOS doc ...` cut into rows
  {g:05d}.json                  the record, written last: its fingerprint, the shard entries, document and
                                token counts; its presence means the group is finished (a re-run keeps it)
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from omegaconf import DictConfig
from tqdm import tqdm

from hybridlab.data import corpora as corp
from hybridlab.data.real import TOKENIZER_DONE, TOKENIZER_FILE, open_tokenizer
from hybridlab.data.shards import NpyWriter, token_dtype
from hybridlab.io import read_json, sha256_file, write_json

log = logging.getLogger("hybridlab")
READ_CHARS = 1 << 20  # characters per tokenization batch (a few hundred web documents)
FLUSH_ROWS = 64  # rows packed per write of a stream
FORMAT = 1  # bump when what a group writes changes, so old groups are rebuilt


def group_dir(out: Path, corpus: str) -> Path:
    return Path(out) / "groups" / corpus


def record_path(out: Path, corpus: str, g: int) -> Path:
    return group_dir(out, corpus) / f"{g:05d}.json"


def long_min(data_cfg: DictConfig, context: int) -> int:
    """Tokens from which a document counts as long."""
    return max(1, int(round(float(data_cfg.long_doc_min) * context)))


def group_fingerprint(data_cfg: DictConfig, context: int, corpus: corp.Corpus, g: int, tokenizer_hash: str,
                      inputs: list[str]) -> str:
    """Everything group g's bytes depend on: format, corpus, quotas, context, class boundary, hold-out seed,
    tokenizer and the content of its local input files."""
    parts = {"format": FORMAT, "corpus": corpus.spec(), "group": g, "context": context,
             "long_min": long_min(data_cfg, context), "seed": int(data_cfg.seed), "tokenizer": tokenizer_hash,
             "quotas": sorted([*k, v] for k, v in corp.group_quotas(data_cfg, corpus).items()),
             "inputs": [sha256_file(p) for p in inputs]}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


class _Stream:
    """One (split, class) stream of a group: documents joined as `BOS doc BOS doc ...`, cut into rows, appended
    to its shard until `quota` rows are written."""

    def __init__(self, writer: NpyWriter, context: int, bos: int, quota: int):
        self.writer, self.context, self.bos, self.quota = writer, context, bos, quota
        self.parts: list[np.ndarray] = []
        self.pending = 0
        self.docs = self.doc_tokens = 0

    @property
    def full(self) -> bool:
        return self.writer.rows * self.context + self.pending >= self.quota * self.context

    def add(self, ids: np.ndarray) -> None:
        self.parts += [np.array([self.bos], dtype=ids.dtype), ids]
        self.pending += 1 + len(ids)
        self.docs += 1
        self.doc_tokens += len(ids)
        if self.pending >= FLUSH_ROWS * self.context:
            self._flush()

    def _flush(self) -> None:
        n = min(self.pending // self.context, self.quota - self.writer.rows)
        if n <= 0:
            return
        flat = np.concatenate(self.parts)
        self.writer.append(flat[:n * self.context].reshape(n, self.context))
        rest = flat[n * self.context:] if self.writer.rows < self.quota else flat[:0]
        self.parts, self.pending = [rest], len(rest)

    def close(self) -> int:
        """Write the last full rows; return the tokens left over (the incomplete tail, dropped)."""
        self._flush()
        return self.pending


_TOKENIZER = None


def _init_worker(folder: str, data_cfg: dict, parent: int) -> None:
    global _TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one core per process: processes are the parallelism
    import threading
    import time

    from omegaconf import OmegaConf

    def orphaned() -> None:  # a killed parent cannot shut the pool down: leave with it
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=orphaned, daemon=True).start()
    _TOKENIZER = open_tokenizer(OmegaConf.create(data_cfg), Path(folder))


def _encode(texts: list[str]) -> list[np.ndarray]:
    return _TOKENIZER.encode_batch(texts, dtype=np.uint32)


def _batches(texts: Iterable[tuple[str, str | None]]) -> Iterator[list[tuple[str, str | None]]]:
    """(split, text or None for a skipped document) pairs in batches of about READ_CHARS characters."""
    batch, chars = [], 0
    for item in texts:
        batch.append(item)
        chars += len(item[1] or "")
        if chars >= READ_CHARS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_with(encode, batch: list[tuple[str, str | None]]):
    """The encoded documents of a batch, None where a document was skipped."""
    ids = iter(encode([t for _, t in batch if t is not None]))
    return [None if t is None else next(ids) for _, t in batch]


def tokenizer_pool(data_cfg: DictConfig, out: Path, workers: int) -> ProcessPoolExecutor | None:
    """`workers` processes that tokenize with the data folder's tokenizer (None for one: tokenize inline).
    Spawned, not forked: the parent's tokenizer threads must not be copied mid-flight."""
    if workers <= 1:
        return None
    import multiprocessing

    from omegaconf import OmegaConf

    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
                               initargs=(str(out), OmegaConf.to_container(data_cfg, resolve=True), os.getpid()))
    pool.workers = workers  # the in-flight window is sized by it
    return pool


def _encoded(batches: Iterator[list[tuple[str, str | None]]], tok, pool: ProcessPoolExecutor | None,
             ) -> Iterator[tuple[list[str], list[np.ndarray | None]]]:
    """(splits, token arrays) per batch, in order; tokenized by the pool with at most 2 batches per process in
    flight (so a slow consumer never lets the input run ahead into memory), or inline without one."""
    if pool is None:
        for b in batches:
            yield [s for s, _ in b], _encode_with(lambda texts: tok.encode_batch(texts, dtype=np.uint32), b)
        return
    window: deque = deque()
    try:
        for b in batches:
            window.append(([s for s, _ in b], pool.submit(_encode_with, _encode, b)))
            if len(window) >= 2 * pool.workers:
                splits, fut = window.popleft()
                yield splits, fut.result()
        while window:
            splits, fut = window.popleft()
            yield splits, fut.result()
    finally:  # stopped early (every stream full): drop what is still in flight
        for _, fut in window:
            fut.cancel()


def prepare_group(data_cfg: DictConfig, context: int, corpus_name: str, g: int, out: str | Path,
                  pool: ProcessPoolExecutor | None = None) -> dict:
    """Prepare group g of a corpus into `out/groups/` (the tokenizer must be in `out`), tokenizing in `pool`
    (`tokenizer_pool`; None: in this process); return its record. A finished group with the same fingerprint
    is kept as it is."""
    out = Path(out)
    corpus = next((c for c in corp.corpora(data_cfg) if c.name == corpus_name), None)
    if corpus is None:
        raise corp._error("corpus", corpus_name, ", ".join(c.name for c in corp.corpora(data_cfg)))
    tok_done = out / TOKENIZER_DONE
    if not tok_done.exists():
        raise FileNotFoundError(f"{out / TOKENIZER_FILE}: no tokenizer yet; prepare it first "
                                "(hybridlab prepare-data --tokenizer-only)")
    tok_info = read_json(tok_done)
    inputs = corp.local_inputs(corpus)
    if corpus.files:
        lo, hi = corp._part(len(inputs), corpus.groups, g)
        inputs = inputs[lo:hi]
    fingerprint = group_fingerprint(data_cfg, context, corpus, g, tok_info["hash"], inputs)
    record = record_path(out, corpus.name, g)
    if record.exists() and read_json(record).get("fingerprint") == fingerprint:
        return read_json(record)
    record.unlink(missing_ok=True)
    tok = open_tokenizer(data_cfg, out)
    dtype = token_dtype(int(tok_info["vocab_size"]))
    quotas = corp.group_quotas(data_cfg, corpus)
    lmin, seed = long_min(data_cfg, context), int(data_cfg.seed)
    folder = group_dir(out, corpus.name)
    folder.mkdir(parents=True, exist_ok=True)
    long_only = {split for split in {s for s, _ in quotas} if (split, "short") not in quotas}

    def routed() -> Iterator[tuple[str, str | None]]:
        for text in corp.group_texts(corpus, g):
            split = "val" if corp.held_out(text, seed, corpus.val_fraction) else corpus.role
            # fewer bytes than a long document has tokens, in a split that takes long ones only: not tokenized
            yield split, None if split in long_only and len(text.encode()) + 1 < lmin else text

    counts = {"read": 0, "skipped_short_bytes": 0, "dropped_class": 0, "dropped_full": 0}
    writers = {k: NpyWriter(folder / f"{g:05d}_{k[0]}_{k[1]}.npy", dtype, context, root=out) for k in quotas}
    with contextlib.ExitStack() as stack, tqdm(desc=f"{corpus.name}/{g:05d}", unit="tok", unit_scale=True,
                                               leave=False, disable=not sys.stderr.isatty()) as bar:
        for w in writers.values():
            stack.enter_context(w)
        streams = {k: _Stream(w, context, tok.bos, quotas[k]) for k, w in writers.items()}

        def consume() -> None:  # documents in order, until every stream is full
            for splits, ids in _encoded(_batches(routed()), tok, pool):
                for split, doc in zip(splits, ids, strict=True):
                    if all(s.full for s in streams.values()):
                        return
                    counts["read"] += 1
                    if doc is None:
                        counts["skipped_short_bytes"] += 1
                        continue
                    s = streams.get((split, "long" if len(doc) >= lmin else "short"))
                    if s is None:
                        counts["dropped_class"] += 1
                    elif s.full:
                        counts["dropped_full"] += 1
                    else:
                        s.add(doc)
                    bar.update(len(doc))

        consume()
        tails = {k: s.close() for k, s in streams.items()}
    result = {"fingerprint": fingerprint, "corpus": corpus.name, "group": g, "context": context, "documents": counts,
              "streams": [{"split": k[0], "class": k[1], "quota": quotas[k], "tokens": w.entry, "docs": streams[k].docs,
                           "doc_tokens": streams[k].doc_tokens, "tail_tokens_dropped": tails[k]}
                          for k, w in writers.items()]}
    write_json(record, result)
    return result
