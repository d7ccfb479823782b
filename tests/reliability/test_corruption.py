"""A truncated, altered or missing token shard, checkpoint or result table is detected with one clear error that
names the file (exit code 2), and nothing downstream runs on it: no output is written, no run is marked done."""

from __future__ import annotations

import shutil
import zipfile
from pathlib import Path

import pytest
import torch

from hybridlab.cli import main

from .helpers import TINY, run_cli, train_argv


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def flip_byte(path: Path, offset: int | None = None) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_tensor_byte(path: Path) -> None:
    """Alter one byte inside the largest tensor of a torch.save archive: the zip stays readable."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:  # data starts after the 30-byte local header, the name and the extra field
        f.seek(info.header_offset + 26)
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    flip_byte(path, info.header_offset + 30 + name_len + extra_len + info.file_size // 2)


DAMAGE = {"truncated": truncate, "altered": flip_byte, "missing": Path.unlink, "empty": lambda p: p.write_bytes(b"")}


def assert_rejected(argv: list[str], path: Path, capsys) -> None:
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error: " in err and str(path) in err, err


@pytest.fixture
def data(tmp_path, tiny_data) -> Path:
    return Path(shutil.copytree(tiny_data, tmp_path / "data"))


@pytest.fixture
def run(tmp_path, trained_run) -> Path:
    return Path(shutil.copytree(trained_run, tmp_path / "run"))


def evaluate_argv(data: Path, run: Path, out: Path) -> list[str]:
    return ["evaluate", "--variant", "swa128", "--seed", "0", "--data", str(data), "--run", str(run), "--out",
            str(out), *TINY, "train.steps=8"]


# --- token shards and the manifest ------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "altered", "missing"])
def test_damaged_train_shard_stops_training(tmp_path, data, damage, capsys):
    shard = data / "train_tokens_000.npy"
    DAMAGE[damage](shard)
    run = tmp_path / "run"
    assert_rejected(train_argv(data, run, "full", 0, "train.steps=2", "train.warmup_steps=1"), shard, capsys)
    assert not (run / "train_done.json").exists() and not list(run.glob("ckpt/*.pt"))


@pytest.mark.parametrize("name", ["val_tokens_000.npy", "val_dist_000.npy", "niah"])
def test_damaged_eval_data_stops_evaluation(tmp_path, data, trained_run, name, capsys):
    path = next(data.rglob("niah_*tokens*.npy")) if name == "niah" else data / name
    flip_byte(path)
    out = tmp_path / "eval.csv"
    assert_rejected(evaluate_argv(data, trained_run, out), path, capsys)
    assert not out.exists()


@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_manifest_is_named(tmp_path, data, damage, capsys):
    DAMAGE[damage](data / "manifest.json")
    argv = train_argv(data, tmp_path / "run", "full", 0, "train.steps=2", "train.warmup_steps=1")
    assert_rejected(argv, data / "manifest.json", capsys)


# --- trajectory checkpoints -------------------------------------------------------------------------------------

@pytest.mark.parametrize("damage", ["truncated", "empty"])
def test_damaged_checkpoint_stops_evaluation(tmp_path, data, run, damage, capsys):
    ckpt = sorted((run / "ckpt").glob("tokens_*.pt"))[0]
    DAMAGE[damage](ckpt)
    out = tmp_path / "eval.csv"
    assert_rejected(evaluate_argv(data, run, out), ckpt, capsys)
    assert not out.exists()


def test_altered_checkpoint_tensor_is_detected(tmp_path, data, run, capsys):
    ckpt = sorted((run / "ckpt").glob("tokens_*.pt"))[0]
    flip_tensor_byte(ckpt)
    torch.load(ckpt, weights_only=True)  # the zip itself stays readable: only a checksum can tell
    assert_rejected(evaluate_argv(data, run, tmp_path / "eval.csv"), ckpt, capsys)


def test_unfinished_run_is_not_evaluated(tmp_path, data, run, capsys):
    (run / "train_done.json").unlink()
    out = tmp_path / "eval.csv"
    assert_rejected(evaluate_argv(data, run, out), run / "train_done.json", capsys)
    assert not out.exists()


# --- last.ckpt (resume) -----------------------------------------------------------------------------------------

def unfinished(run: Path) -> Path:
    """The run as an interrupted one looks: no train_done.json or metrics.csv yet, last.ckpt to resume from."""
    for name in ("train_done.json", "metrics.csv"):
        (run / name).unlink()
    return run / "last.ckpt"


def test_truncated_last_ckpt_never_resumes(tmp_path, tiny_data, run):
    truncate(unfinished(run))
    rc = run_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=8"), tmp_path / "train.log")
    assert rc != 0 and not (run / "train_done.json").exists()


def test_truncated_last_ckpt_is_named(tiny_data, run, capsys):
    last = unfinished(run)
    truncate(last)
    assert_rejected(train_argv(tiny_data, run, "swa128", 0, "train.steps=8"), last, capsys)


def test_altered_last_ckpt_is_detected(tmp_path, tiny_data, run):
    flip_tensor_byte(unfinished(run))
    rc = run_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=8"), tmp_path / "train.log")
    assert rc == 2 and "last.ckpt" in (tmp_path / "train.log").read_text()


# --- result tables ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eval_table(tmp_path_factory, tiny_data, trained_run) -> Path:
    out = tmp_path_factory.mktemp("eval") / "eval.csv"
    assert run_cli(evaluate_argv(tiny_data, trained_run, out), out.with_suffix(".log")) == 0
    return out


def alter_value(text: str) -> str:
    """The `value` of the first row becomes '1.2x5': a flipped character in a number."""
    lines = text.splitlines()
    lines[1] = lines[1].rsplit(",", 1)[0] + ",1.2x5"
    return "\n".join(lines) + "\n"


TABLE_DAMAGE = {
    "truncated mid-row": lambda t: t[: len(t) // 2],
    "last row cut short": lambda t: t.rstrip("\n").rsplit(",", 2)[0] + "\n",
    "altered number": alter_value,
    "missing column": lambda t: "\n".join(",".join(r.split(",")[:-1]) for r in t.splitlines()) + "\n",
    "empty": lambda t: "",
    "binary garbage": lambda t: "\x00\xff\xfe" * 10,
}


@pytest.mark.parametrize("damage", list(TABLE_DAMAGE))
def test_damaged_table_stops_aggregation(tmp_path, eval_table, damage, capsys):
    bad = tmp_path / "runs" / "swa128" / "seed0" / "eval.csv"
    bad.parent.mkdir(parents=True)
    bad.write_text(TABLE_DAMAGE[damage](eval_table.read_text()))
    out = tmp_path / "tables" / "eval.csv"
    assert_rejected(["aggregate", "--kind", "eval", "--out", str(out), str(eval_table), str(bad)], bad, capsys)
    assert not out.exists()


def test_data_for_another_context_is_a_config_error(tmp_path, tiny_data, capsys):
    argv = [a for a in train_argv(tiny_data, tmp_path / "run", "full", 0, "train.steps=2", "train.warmup_steps=1")
            if "scale.context" not in a]
    assert main(argv) == 2  # the folder holds context-128 sequences, the run wants the smoke scale's 256
    err = capsys.readouterr().err
    assert "config key 'scale.context': got 256" in err and str(tiny_data) in err, err
