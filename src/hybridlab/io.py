"""Atomic file writes and verified reads shared by every stage.

A write goes to a temporary name in the same folder (`.NAME.XXXX.tmp`), is flushed to disk and renamed into
place, so a killed job or a full disk never leaves a half-written output under the final name (and an earlier
good file stays intact). A temporary file left by a killed writer is removed by the next write of the same name.
Files get the mode the umask gives any new file (group-readable under the usual 022 or 027), not mkstemp's 0600.
A rebuilt folder (`replaced_folder`: the figures, an exported model) is written beside the old one and swapped
in only when complete.
Reads check what they can: JSON parses, a table is complete (every row has every field, the file ends with a
newline), has the documented columns and numbers where numbers belong.
"""

from __future__ import annotations

import contextlib
import csv
import glob
import hashlib
import json
import os
import shutil
import tempfile
import threading
from collections.abc import Iterator
from io import StringIO
from pathlib import Path
from typing import Any


class CorruptFileError(RuntimeError):
    """A file failed its checksum, shape or schema check."""

    def __init__(self, path: str | Path, why: str):
        super().__init__(f"{path}: {why}")
        self.path = str(path)


def _fsync(path: str | Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask() -> int:
    """The process's umask, read without changing it (Linux /proc) where possible."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    with _UMASK_LOCK:  # elsewhere: set and restore it (no file is created by this module meanwhile)
        mask = os.umask(0o22)
        os.umask(mask)
    return mask


_UMASK_LOCK = threading.Lock()


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success flush it to disk and rename it over `path`, on failure
    remove it. An OSError without a file name (ENOSPC from a write) is re-raised naming `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):  # left by a killed writer of this name
        with contextlib.suppress(FileNotFoundError):
            stale.unlink()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes 0600: the result gets the mode any new file would
    try:
        yield Path(tmp)
        _fsync(tmp)  # the data is on disk before the name points at it (a crash never leaves an empty file)
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # the rename on disk too; best effort (some file systems refuse)
            _fsync(path.parent)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None and e.errno is not None:
            raise type(e)(e.errno, e.strerror or os.strerror(e.errno), str(path)) from e
        raise


@contextlib.contextmanager
def replaced_folder(path: str | Path, carry: bool = True) -> Iterator[Path]:
    """Yield a new folder beside `path` to fill; on success it replaces `path` in two renames (with `carry`, the
    old folder's top-level entries that the new one lacks are carried over, as hard links); on failure (or a kill)
    it is removed and `path` stays as it was. A rebuild cut short between the two renames is undone by the next
    one (the old folder put back)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    olds = sorted(path.parent.glob(f".{glob.escape(path.name)}.old-*"))
    if olds and not path.exists():
        os.rename(olds.pop(), path)
    for stale in [*olds, *path.parent.glob(f".{glob.escape(path.name)}.new-*")]:
        shutil.rmtree(stale, ignore_errors=True)
    new = Path(tempfile.mkdtemp(prefix=f".{path.name}.new-", dir=path.parent))
    os.chmod(new, 0o777 & ~umask())
    try:
        yield new
        old = path.parent / f".{path.name}.old-{os.getpid()}"
        if path.exists():
            for entry in path.iterdir() if carry else ():  # e.g. a Snakemake report kept in a paper folder
                if (new / entry.name).exists():
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, new / entry.name, symlinks=True, copy_function=os.link)
                else:
                    os.link(entry, new / entry.name, follow_symlinks=False)
            os.rename(path, old)
        os.rename(new, path)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(data)


def write_json(path: str | Path, obj: Any) -> None:
    write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: str | Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CorruptFileError(path, f"not valid JSON ({e})") from None


def write_table(path: str | Path, df: Any) -> None:
    """Write a pandas DataFrame as CSV, atomically."""
    write_bytes(path, df.to_csv(index=False).encode())


def _check_complete(path: str | Path) -> None:
    """A table written by write_table ends with a newline and every row has as many fields as the header;
    a truncated file fails one or the other (pandas would fill the missing fields with NaN)."""
    raw = Path(path).read_bytes()
    if raw and not raw.endswith(b"\n"):
        raise CorruptFileError(path, "truncated table (the last line is incomplete)")
    try:
        rows = csv.reader(StringIO(raw.decode(), newline=""))
        header = next(rows, [])
        for line, row in enumerate(rows, start=2):
            if len(row) != len(header):
                raise CorruptFileError(path, f"line {line} has {len(row)} fields, the header {len(header)}")
    except (UnicodeDecodeError, csv.Error) as e:
        raise CorruptFileError(path, f"unreadable table ({e})") from None


# Columns that hold numbers wherever a documented table has them (analysis/schemas.py; NaN is allowed).
NUMERIC_COLUMNS = ("seed", "step", "tokens", "layer", "head", "length", "value", "loss", "lr")


def read_table(path: str | Path, columns: list[str] | tuple[str, ...]) -> Any:
    """Read a CSV result table and check it is complete, has the documented columns and holds numbers in
    NUMERIC_COLUMNS (text there means an altered or garbled file)."""
    import pandas as pd

    _check_complete(path)
    try:
        df = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise CorruptFileError(path, f"unreadable table ({e})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise CorruptFileError(path, f"missing columns {missing}; has {list(df.columns)}")
    for col in (c for c in NUMERIC_COLUMNS if c in df.columns):
        bad = pd.to_numeric(df[col], errors="coerce").isna() & df[col].notna()
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise CorruptFileError(path, f"column {col!r} must hold numbers; line {i + 2} has {df[col].iloc[i]!r}")
    return df


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()
