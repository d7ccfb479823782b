"""Packed token shards: fixed-length sequences as .npy arrays (memory-mapped on load) plus a manifest.

Layout of a data folder (docs/data.md has the manifest schema):
  manifest.json               source, fingerprint, vocab size, seed, context, tokenizer hash, token counts, and
                              an entry {file, shape, dtype, sha256} for every array below
  {split}_tokens_{i:03d}.npy  uint16/uint32 [n_seqs, context] token ids (synthetic corpus)
  {split}_dist_{i:03d}.npy    [n_seqs, context] distance from each token to its source (0: none):
                              tokens[t] == tokens[t - dist[t]] (synthetic only; real text has no dist arrays)
  groups/{corpus}/{g}_{split}_{class}.npy  uint16/uint32 [n, context] one preparation group's rows (real text);
                              a split's shard entry may use a prefix of them (`rows`)
  {split}_key_{i:03d}.npy     bool [n_seqs, context] LongPPL key tokens from a reference model (real text only)
  tokenizer.json              the tokenizer (real text only)
  niah_{length}_{array}.npy   the single-needle NIAH set (niah.py)
  evalsets/{task}_{length}_{array}.npy  RULER-style sets and the probing set (evalsets.py)
The manifest is written last, so its presence means the folder is complete. Loading verifies every checksum
(in parallel threads), shape and dtype and raises CorruptFileError naming the file that fails. A split of
several shards loads as `SplitRows`: the memory-mapped shards indexed as one read-only [n, context] array, so
training on 100B tokens maps them instead of reading them into memory.
"""

from __future__ import annotations

import contextlib
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from hybridlab.io import CorruptFileError, atomic_path, read_json, sha256_file

MANIFEST = "manifest.json"
NPY_HEADER = 128  # bytes: room for any [n, context] shape, so a growing file's header is rewritten in place


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max + 1 else np.dtype(np.uint32)


def _npy_header(shape: tuple[int, ...], dtype: np.dtype) -> bytes:
    """A .npy (version 1.0) header of exactly NPY_HEADER bytes for a C-order array."""
    d = f"{{'descr': {np.lib.format.dtype_to_descr(np.dtype(dtype))!r}, 'fortran_order': False, 'shape': {shape!r}, }}"
    body = d.ljust(NPY_HEADER - 10 - 1) + "\n"
    if len(body) != NPY_HEADER - 10:
        raise ValueError(f"shape {shape} does not fit a {NPY_HEADER}-byte .npy header")
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(body)) + body.encode("latin1")


class NpyWriter:
    """Rows appended to a .npy file as they come (memory: the rows of one append), written under a temporary
    name and renamed into place on a clean exit, so a killed writer leaves no file under the final name.

        with NpyWriter(path, np.uint16, context) as w:
            w.append(rows)
        entry = w.entry  # the manifest entry {file, shape, dtype, sha256}, `file` relative to `root`
    """

    def __init__(self, path: Path, dtype, row_len: int, root: Path | None = None):
        self.path, self.dtype, self.row_len, self.root = Path(path), np.dtype(dtype).newbyteorder("<"), row_len, root
        self.rows, self.entry = 0, None
        self._stack = contextlib.ExitStack()

    def __enter__(self) -> NpyWriter:
        tmp = self._stack.enter_context(atomic_path(self.path))
        self._f = self._stack.enter_context(open(tmp, "wb"))
        self._f.write(_npy_header((0, self.row_len), self.dtype))
        return self

    def append(self, rows: np.ndarray) -> None:
        if rows.ndim != 2 or rows.shape[1] != self.row_len:
            raise ValueError(f"{self.path}: rows of shape {rows.shape}, expected [n, {self.row_len}]")
        self._f.write(np.ascontiguousarray(rows, dtype=self.dtype).tobytes())
        self.rows += len(rows)

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            self._f.seek(0)
            self._f.write(_npy_header((self.rows, self.row_len), self.dtype))
        self._stack.__exit__(*exc)
        if exc[0] is None:
            name = self.path.relative_to(self.root).as_posix() if self.root is not None else self.path.name
            self.entry = {"file": name, "shape": [self.rows, self.row_len], "dtype": str(self.dtype),
                          "sha256": sha256_file(self.path)}


def save_array(path: Path, array: np.ndarray, root: Path | None = None) -> dict:
    """Save one array atomically; return its manifest entry (`file` relative to `root`, default its folder)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    name = path.relative_to(root).as_posix() if root is not None else path.name
    return {"file": name, "shape": list(array.shape), "dtype": str(array.dtype), "sha256": sha256_file(path)}


def member(folder: str | Path, name) -> Path:
    """`folder / name` for a file a manifest lists; CorruptFileError if the name leads outside the folder (an
    absolute path, `..`, or through a link to a folder elsewhere): a tampered manifest never reads or removes
    files that are not the folder's."""
    folder = Path(folder)
    rel = Path(name) if isinstance(name, str) and name else None
    if rel is None or rel.is_absolute() or ".." in rel.parts:
        raise CorruptFileError(folder / MANIFEST, f"lists {name!r}, a path outside the data folder")
    path = folder / rel
    if not path.parent.resolve().is_relative_to(folder.resolve()):
        raise CorruptFileError(folder / MANIFEST, f"lists {name!r}, which leads outside the data folder through "
                               "a link")
    return path


def verify_file(folder: Path, entry: dict) -> Path:
    path = member(folder, entry["file"])
    if not path.exists():
        raise CorruptFileError(path, "listed in the manifest but missing")
    if sha256_file(path) != entry["sha256"]:
        raise CorruptFileError(path, "sha256 does not match the manifest (truncated or altered)")
    return path


def load_array(folder: Path, entry: dict, verify: bool = True) -> np.ndarray:
    path = verify_file(folder, entry) if verify else member(folder, entry["file"])
    try:
        arr = np.load(path, mmap_mode="r")
    except (ValueError, OSError) as e:
        raise CorruptFileError(path, f"not a readable .npy array ({e})") from None
    if list(arr.shape) != list(entry["shape"]) or str(arr.dtype) != entry["dtype"]:
        raise CorruptFileError(path, f"shape/dtype {arr.shape}/{arr.dtype} differ from the manifest "
                               f"{entry['shape']}/{entry['dtype']}")
    return arr


def read_manifest(folder: str | Path) -> dict:
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.exists():
        raise FileNotFoundError(f"{path}: no manifest; run the data stage first (hybridlab prepare-data)")
    return read_json(path)


class SplitRows:
    """Memory-mapped shards indexed as one read-only [n, context] array: `rows[i]` is a row of its shard's
    map (what the training dataset reads per sequence), a slice or an index array gathers rows into memory, and
    `np.asarray(rows)` reads them all."""

    ndim = 2

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.shape = (int(self.offsets[-1]), int(parts[0].shape[1]))
        self.dtype = parts[0].dtype

    def __len__(self) -> int:
        return self.shape[0]

    def _row(self, i: int) -> np.ndarray:
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for {len(self)} rows")
        i %= len(self)
        k = int(np.searchsorted(self.offsets, i, side="right")) - 1
        return self.parts[k][i - self.offsets[k]]

    def __getitem__(self, index):
        if isinstance(index, tuple):
            rows, rest = index[0], index[1:]
            return self[rows][(slice(None), *rest) if not isinstance(rows, int | np.integer) else rest]
        if isinstance(index, int | np.integer):
            return self._row(int(index))
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            if step == 1:
                out = [p[max(start - a, 0):max(min(stop - a, len(p)), 0)] for p, a in zip(self.parts, self.offsets,
                                                                                          strict=False)]
                return np.concatenate(out) if out else np.zeros((0, self.shape[1]), self.dtype)
            index = np.arange(start, stop, step)
        idx = np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        return np.stack([self._row(int(i)) for i in idx.ravel()]).reshape(*idx.shape, self.shape[1]) if idx.size \
            else np.zeros((*idx.shape, self.shape[1]), self.dtype)

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        out = np.concatenate(self.parts)
        return out if dtype is None else out.astype(dtype)


def _verify_all(folder: Path, entries: list[dict]) -> None:
    """Checksums of many files at once: hashing releases the GIL, so threads read shards in parallel."""
    workers = min(8, len(entries), len(os.sched_getaffinity(0)))
    if workers <= 1:
        for e in entries:
            verify_file(folder, e)
        return
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda e: verify_file(folder, e), entries))


def _rows(folder: Path, shard: dict, key: str) -> np.ndarray:
    arr = load_array(folder, shard[key], verify=False)
    lo, hi = shard.get("rows", [0, len(arr)])
    return arr[lo:hi]


def load_split(folder: str | Path, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, dist) of a split, verified against the manifest: one shard's memory map, or `SplitRows` over
    several. Real text has no dist arrays: its dist is a read-only zero view of the tokens' shape."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = manifest["splits"].get(split)
    if not shards:
        raise KeyError(f"{folder / MANIFEST}: no split {split!r}; has {sorted(manifest['splits'])}")
    if verify:
        _verify_all(folder, [s[k] for s in shards for k in ("tokens", "dist") if k in s])

    def joined(key: str) -> np.ndarray:
        parts = [_rows(folder, s, key) for s in shards]
        return parts[0] if len(parts) == 1 else SplitRows(parts)

    tokens = joined("tokens")
    dist = joined("dist") if all("dist" in s for s in shards) else np.broadcast_to(np.zeros((), np.uint8),
                                                                                   tokens.shape)
    return tokens, dist


def load_key_mask(folder: str | Path, split: str, long_threshold: int | None = None,
                  verify: bool = True) -> np.ndarray:
    """Bool [n_seqs, context]: LongPPL key tokens of a split. Synthetic data: dist >= long_threshold (default
    the manifest's); real text: the reference model's mask (only the val split has one)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = manifest["splits"].get(split) or []
    if shards and all("key" in s for s in shards):
        return np.concatenate([np.asarray(load_array(folder, s["key"], verify)) for s in shards])
    if manifest.get("source", "synthetic") != "synthetic":
        raise KeyError(f"{folder / MANIFEST}: split {split!r} has no key-token mask (set data.longppl.reference "
                       "to select key tokens of real text)")
    threshold = manifest["long_threshold"] if long_threshold is None else long_threshold
    _, dist = load_split(folder, split, verify)
    return np.asarray(dist) >= max(1, threshold)
