"""workflow/scripts/merge_tables.py: waves of disjoint variants merge into the preset's order; a run present
twice, or inputs from different presets, are refused."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "merge_tables.py"
INFO = {"name": "mini", "variants": ["full", "swa128", "gdn"], "seeds": [0, 1]}


def wave(folder: Path, variants: list[str], info: dict = INFO) -> Path:
    folder.mkdir(parents=True)
    rows = [{"size": "mini", "variant": v, "seed": s, "value": f"{v}{s}"} for v in variants for s in (1, 0)]
    pd.DataFrame(rows).to_csv(folder / "eval.csv", index=False)
    (folder / "info.json").write_text(json.dumps(info))
    return folder


def merge(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True)


def test_merges_in_preset_order(tmp_path):
    a, b = wave(tmp_path / "a", ["gdn"]), wave(tmp_path / "b", ["swa128", "full"])
    done = merge(tmp_path / "out", a, b)
    assert done.returncode == 0, done.stderr
    table = pd.read_csv(tmp_path / "out" / "eval.csv")
    assert list(table["value"]) == ["full0", "full1", "swa1280", "swa1281", "gdn0", "gdn1"]
    assert json.loads((tmp_path / "out" / "info.json").read_text()) == INFO


def test_refuses_a_run_in_two_inputs_and_different_presets(tmp_path):
    a, b = wave(tmp_path / "a", ["gdn", "full"]), wave(tmp_path / "b", ["full"])
    done = merge(tmp_path / "out", a, b)
    assert done.returncode != 0 and "('full', 0)" in done.stderr
    c = wave(tmp_path / "c", ["swa128"], {**INFO, "seeds": [0]})
    done = merge(tmp_path / "out2", a, c)
    assert done.returncode != 0 and "info.json differs" in done.stderr
