"""Checksums of the tensors inside a checkpoint, so a flipped byte in a readable file is still detected.

A checkpoint carries the digest of its own tensors (`DIGEST_KEY`); loading recomputes and compares it.
The digest lives inside the file (not in a sidecar) so the two can never be replaced separately.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import torch

DIGEST_KEY = "hybridlab_sha256"


def _tensors(obj: Any, prefix: str = ""):
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k in sorted(obj, key=str):
            yield from _tensors(obj[k], f"{prefix}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}/{i}")


def tensor_digest(obj: Any) -> str:
    """sha256 over every tensor in a nested dict/list: its path, dtype, shape and raw bytes."""
    h = hashlib.sha256()
    for path, t in _tensors(obj):
        h.update(f"{path}|{t.dtype}|{tuple(t.shape)}".encode())
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def load_verified(path: str | Path, covered: tuple[str, ...]) -> dict:
    """torch.load(weights_only=True) plus the digest check over the `covered` keys; CorruptFileError names the
    file when it is unreadable, holds a pickled object, or its tensors differ from what was saved."""
    import pickle

    from hybridlab.io import CorruptFileError

    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, ValueError, OSError, pickle.UnpicklingError) as e:
        first_line = (str(e).splitlines() or [""])[0]
        raise CorruptFileError(path, f"unreadable checkpoint ({type(e).__name__}: {first_line})") from None
    if not isinstance(blob, dict):
        raise CorruptFileError(path, "not a checkpoint dictionary")
    expected = blob.get(DIGEST_KEY)
    if expected is None:
        raise CorruptFileError(path, f"no {DIGEST_KEY} checksum (written by another program or an old version)")
    if tensor_digest({k: blob.get(k) for k in covered}) != expected:
        raise CorruptFileError(path, "tensor checksum mismatch (the file was altered)")
    return blob
