"""Atomic file writes and verified reads shared by every stage.

A write goes to a temporary name in the same folder and is renamed into place, so a killed job or a full disk
never leaves a half-written output under the final name (and an earlier good file stays intact).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class CorruptFileError(RuntimeError):
    """A file failed its checksum, shape or schema check."""

    def __init__(self, path: str | Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = str(path)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`, on failure remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise CorruptFileError(path, f"not valid JSON ({e})") from None


def write_table(path: str | Path, df: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    write_bytes(path, df.to_csv(index=False).encode())


def read_table(path: str | Path, columns: list[str] | tuple[str, ...]) -> Any:
    """Read a CSV result table and check it has the documented columns."""
    import pandas as pd

    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"unreadable table ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CorruptFileError(path, f"missing columns {missing}; has {list(df.columns)}")
    return df


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
