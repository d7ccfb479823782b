"""The smoke DAG end to end in a temporary folder: every output exists and is well-formed, and a second run
is a no-op. This is the same DAG `make replicate` runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from hybridlab.cli import TABLE_COLUMNS
from hybridlab.config import scale_plan
from hybridlab.figures import FIGURE_NAMES

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration


def snakemake(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe if exe.exists() else shutil.which("snakemake")), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "--cores", "2", "--config", "results_dir=results", "paper_dir=paper",
           *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=1200, env=env)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("smoke")
    proc = snakemake(work)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return work


def test_every_output_exists_and_is_well_formed(smoke_run):
    plan = scale_plan("smoke")
    res, paper = smoke_run / "results" / "smoke", smoke_run / "paper" / "smoke"
    for kind, columns in TABLE_COLUMNS.items():
        df = pd.read_csv(res / "tables" / f"{kind}.csv")
        cols = list(df.columns)
        if kind == "train":  # the schema's columns, then the learning rate of each parameter group (lr_<group>)
            extra = [c for c in cols if c.startswith("lr_")]
            assert extra and cols[-len(extra):] == extra, cols
            cols = cols[:-len(extra)]
        assert cols[-len(columns):] == list(columns)
        if kind == "trajectory":  # rows only for traced heads that formed; a smoke run may form none
            continue
        assert len(df) > 0
        assert set(df["variant"]) == set(plan["variants"])
    traced = pd.read_csv(res / "tables" / "traced.csv")
    formed = traced[traced["formed"].astype(bool)]
    trajectory = pd.read_csv(res / "tables" / "trajectory.csv")
    assert set(map(tuple, trajectory[["variant", "seed", "layer", "head"]].drop_duplicates().values)) == \
        set(map(tuple, formed[["variant", "seed", "layer", "head"]].drop_duplicates().values))
    eval_df = pd.read_csv(res / "tables" / "eval.csv")
    assert {"val_loss", "val_loss_local", "log_longppl", "niah_acc"} <= set(eval_df["metric"])
    assert eval_df["value"].between(0, 20).all()
    info = json.loads((res / "tables" / "info.json").read_text())
    assert info["context"] == plan["context"]
    for name in FIGURE_NAMES:
        png = paper / "figures" / f"{name}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
        assert (paper / "figures" / f"{name}.pdf").read_bytes()[:4] == b"%PDF"
    report = (paper / "report.md").read_text()
    for name in FIGURE_NAMES:  # each figure has its section: the image, or why it is a placeholder at this scale
        assert f"### {name}" in report
        assert f"figures/{name}.png" in report or "No data at this scale" in report.split(f"### {name}")[1][:400]
    assert "## Claim checks" in report and (paper / "report.html").stat().st_size > 10_000
    assert "[smoke](smoke/report.md)" in (smoke_run / "paper" / "report.md").read_text()  # the index of reports


def test_second_run_is_a_noop(smoke_run):
    proc = snakemake(smoke_run, "--dry-run")
    assert proc.returncode == 0
    assert "Nothing to be done" in proc.stdout + proc.stderr
