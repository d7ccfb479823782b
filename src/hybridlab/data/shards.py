"""Packed token shards: fixed-length sequences as .npy arrays (memory-mapped on load) plus a manifest.

Layout of a data folder (docs/data.md has the manifest schema):
  manifest.json               source, fingerprint, vocab size, seed, context, tokenizer hash, token counts, and
                              an entry {file, shape, dtype, sha256} for every array below
  {split}_tokens_{i:03d}.npy  uint16/int32 [n_seqs, context] token ids
  {split}_dist_{i:03d}.npy    [n_seqs, context] distance from each token to its source (0: none; all 0 for real
                              text): tokens[t] == tokens[t - dist[t]]
  val_key_{i:03d}.npy         bool [n_seqs, context] LongPPL key tokens from a reference model (real text only)
  tokenizer.json              the tokenizer (real text only)
  niah_{length}_{array}.npy   the single-needle NIAH set (niah.py)
  evalsets/{task}_{length}_{array}.npy  RULER-style sets and the probing set (evalsets.py)
The manifest is written last, so its presence means the folder is complete. Loading verifies every checksum,
shape and dtype and raises CorruptFileError naming the file that fails.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridlab.io import CorruptFileError, atomic_path, read_json, sha256_file

MANIFEST = "manifest.json"


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16) if vocab_size <= np.iinfo(np.uint16).max else np.dtype(np.int32)


def save_array(path: Path, array: np.ndarray, root: Path | None = None) -> dict:
    """Save one array atomically; return its manifest entry (`file` relative to `root`, default its folder)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)
    name = path.relative_to(root).as_posix() if root is not None else path.name
    return {"file": name, "shape": list(array.shape), "dtype": str(array.dtype), "sha256": sha256_file(path)}


def verify_file(folder: Path, entry: dict) -> Path:
    path = folder / entry["file"]
    if not path.exists():
        raise CorruptFileError(path, "listed in the manifest but missing")
    if sha256_file(path) != entry["sha256"]:
        raise CorruptFileError(path, "sha256 does not match the manifest (truncated or altered)")
    return path


def load_array(folder: Path, entry: dict, verify: bool = True) -> np.ndarray:
    path = verify_file(folder, entry) if verify else folder / entry["file"]
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


def load_split(folder: str | Path, split: str, verify: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Concatenated (tokens, dist) of a split, verified against the manifest."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    shards = manifest["splits"].get(split)
    if not shards:
        raise KeyError(f"{folder / MANIFEST}: no split {split!r}; has {sorted(manifest['splits'])}")
    tokens = [load_array(folder, s["tokens"], verify) for s in shards]
    dist = [load_array(folder, s["dist"], verify) for s in shards]
    if len(tokens) == 1:
        return tokens[0], dist[0]
    return np.concatenate(tokens), np.concatenate(dist)


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
