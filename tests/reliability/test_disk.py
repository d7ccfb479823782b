"""A write that fails (a full disk, simulated) leaves the previous good output intact and no temporary file behind,
and the CLI says which file could not be written (exit code 2)."""

from __future__ import annotations

import errno
import os
import resource
import signal
import subprocess
from io import BytesIO

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab import io
from hybridlab.cli import main

from .helpers import BIN, ENV

ENOSPC = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def leftovers(folder) -> list:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def half_then_full_disk(write, obj_first: bool = True):
    """Wrap a writer (torch.save(obj, file) or np.save(file, obj)) so it writes half its bytes, then fails with
    ENOSPC, as a full disk does in the middle of a write."""
    def failing(*args, **kwargs):
        obj, dest = args[:2] if obj_first else args[1::-1]
        buf = BytesIO()
        write(*((obj, buf) if obj_first else (buf, obj)), *args[2:], **kwargs)
        half = buf.getvalue()[: len(buf.getvalue()) // 2]
        if hasattr(dest, "write"):
            dest.write(half)
        else:
            with open(dest, "wb") as f:
                f.write(half)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    return failing


def test_failed_rename_keeps_the_old_table(tmp_path, monkeypatch):
    path = tmp_path / "eval.csv"
    good = pd.DataFrame({"metric": ["a"], "value": [1.0]})
    io.write_table(path, good)
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(ENOSPC))
    with pytest.raises(OSError) as e:
        io.write_table(path, pd.DataFrame({"metric": ["b"] * 100, "value": [2.0] * 100}))
    assert e.value.errno == errno.ENOSPC
    assert path.read_text() == good.to_csv(index=False) and leftovers(tmp_path) == []


def test_failed_write_keeps_the_old_json_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "train_done.json"
    io.write_json(path, {"steps": 8})
    real = io.Path.write_bytes

    def half(self, data):
        real(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(io.Path, "write_bytes", half)
    with pytest.raises(OSError) as e:
        io.write_json(path, {"steps": 16, "padding": "x" * 1000})
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(path)  # the message names the file
    assert io.read_json(path) == {"steps": 8} and leftovers(tmp_path) == []


def test_failed_checkpoint_save_keeps_the_old_checkpoint(tmp_path, monkeypatch):
    from hybridlab.train import lit

    model = torch.nn.Linear(4, 4)
    good = lit.save_weights(model, tmp_path, step=1, tokens=8)
    before = good.read_bytes()
    monkeypatch.setattr(torch, "save", half_then_full_disk(torch.save))
    with torch.no_grad():
        model.weight.add_(1.0)
    with pytest.raises(OSError):
        lit.save_weights(model, tmp_path, step=1, tokens=8)
    assert good.read_bytes() == before and leftovers(tmp_path) == []
    torch.load(good, weights_only=True)


def test_failed_shard_save_keeps_the_old_shard(tmp_path, monkeypatch):
    from hybridlab.data import shards

    path = tmp_path / "train_tokens_000.npy"
    shards.save_array(path, np.arange(64, dtype=np.uint16).reshape(4, 16))
    before = path.read_bytes()
    monkeypatch.setattr(np, "save", half_then_full_disk(np.save, obj_first=False))
    with pytest.raises(OSError):
        shards.save_array(path, np.zeros((400, 16), dtype=np.uint16))
    assert path.read_bytes() == before and leftovers(tmp_path) == []


def test_cli_names_the_file_it_could_not_write(tmp_path, monkeypatch, capsys):
    src = tmp_path / "a.csv"
    io.write_table(src, pd.DataFrame([{"variant": "full", "seed": 0, "step": 1, "tokens": 8, "metric": "m",
                                       "length": 128, "value": 1.0}]))
    out = tmp_path / "out.csv"
    monkeypatch.setattr(io.os, "replace", lambda *a: (_ for _ in ()).throw(ENOSPC))
    assert main(["aggregate", "--kind", "eval", "--out", str(out), str(src)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "No space left on device" in err and str(out) in err, err
    assert not out.exists() and leftovers(tmp_path) == []


@pytest.mark.slow
def test_real_write_limit_keeps_the_previous_output(tmp_path):
    """A real failing write: the kernel refuses to grow any file past 4 KiB (RLIMIT_FSIZE; EFBIG, as a quota or a
    full disk would refuse) while `hybridlab aggregate` writes a bigger table over a good one."""
    cols = ["variant", "seed", "step", "tokens", "metric", "length", "value"]
    row = {"variant": "full", "seed": 0, "step": 1, "tokens": 8, "metric": "val_loss", "length": 128, "value": 1.5}
    inputs = []
    for i in range(4):
        path = tmp_path / f"in{i}.csv"
        io.write_table(path, pd.DataFrame([{**row, "seed": i, "step": j} for j in range(60)], columns=cols))
        inputs.append(str(path))
    out = tmp_path / "tables" / "eval.csv"
    out.parent.mkdir()
    io.write_table(out, pd.DataFrame([row], columns=cols))
    good = out.read_bytes()

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failing write() instead of a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))

    proc = subprocess.run([str(BIN / "hybridlab"), "aggregate", "--kind", "eval", "--out", str(out), *inputs],
                          capture_output=True, text=True, env=ENV, preexec_fn=limit, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "File too large" in lines[0] and str(out) in lines[0], proc.stderr
    assert out.read_bytes() == good and leftovers(out.parent) == []
