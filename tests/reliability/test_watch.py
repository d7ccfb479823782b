"""A running training can be watched: metrics.csv exists from the start and grows row by row (with the learning
rate of every parameter group), the job log gets one progress line per logged row and each Lightning message
once; inside a SLURM job the run stops with a resume point before its time limit and requeues itself. Every
check looks at the run while it waits at a chosen step (helpers.PauseAt): no timing."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pandas as pd
import pytest

from hybridlab.analysis.schemas import TRAIN_COLUMNS

from .helpers import PauseAt, exit_code, fork_cli, run_cli, train_argv, wait_for
from .test_interrupt import saved_step


@pytest.mark.slow
def test_metrics_csv_exists_and_grows_during_a_run_with_one_progress_line_per_row(tmp_path, tiny_data):
    run, log = tmp_path / "run", tmp_path / "train.log"
    pause = PauseAt(tmp_path, (2, 5))
    proc = fork_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=8", "train.last_every=100"), log, pause)
    for step in pause.steps:
        wait_for(pause.ready(step), proc, log)
        table = pd.read_csv(run / "metrics.csv")
        assert list(table["step"]) == list(range(1, step + 1)), table
        assert list(table.columns) == [*TRAIN_COLUMNS, "lr_decay", "lr_no_decay"]
        assert (table["lr_decay"] == table["lr"]).all() and (table["lr_no_decay"] == table["lr"]).all()
        pause.go(step).touch()
    assert exit_code(proc) == 0, log.read_text()[-3000:]
    assert list(pd.read_csv(run / "metrics.csv")["step"]) == list(range(1, 9))

    text = log.read_text()
    progress = re.findall(r"^INFO step (\d+)/8 \(\d+%\) loss [\d.]+ lr_decay=\S+ lr_no_decay=\S+ \S+ tokens/s "
                          r"elapsed \d+:\d\d:\d\d eta (?:\?|\d+:\d\d:\d\d)$", text, flags=re.M)
    assert progress == [str(s) for s in range(1, 9)], text  # train.log_every=1: one line per step
    assert text.count("GPU available: False") == 1, text  # each Lightning line once, in the CLI's format
    assert "weights_only" not in text and "Tip:" not in text, text


def test_every_parameter_group_has_its_learning_rate(tmp_path, tiny_data):
    run = tmp_path / "muon"
    argv = train_argv(tiny_data, run, "full", 0, "train.steps=3", "train.optimizer=muon", "train.lr=0.003",
                      "train.muon_lr=0.02")
    assert run_cli(argv, tmp_path / "muon.log") == 0
    table = pd.read_csv(run / "metrics.csv")
    assert {"lr_muon", "lr_adamw"} <= set(table.columns)
    assert ((table["lr_muon"] / table["lr_adamw"]).round(9) == round(0.02 / 0.003, 9)).all(), table


def test_a_logged_loss_is_the_mean_of_its_own_micro_batches_whatever_log_every(tmp_path, tiny_data):
    """The row of step s is the same whether every step is logged or only every third (gradient accumulation:
    four micro-batches per step)."""
    tables = {}
    for every in (1, 3):
        run = tmp_path / f"every{every}"
        argv = train_argv(tiny_data, run, "full", 0, "train.steps=6", "train.micro_batch_size=2",
                          f"train.log_every={every}", "train.n_checkpoints=2")
        assert run_cli(argv, tmp_path / f"every{every}.log") == 0
        tables[every] = pd.read_csv(run / "metrics.csv").set_index("step")
    assert list(tables[3].index) == [1, 3, 6]  # the checkpoint steps are logged too
    pd.testing.assert_series_equal(tables[3]["loss"], tables[1]["loss"].loc[[1, 3, 6]])


def _fake(folder: Path, name: str, body: str) -> None:
    path = folder / name
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)


@pytest.mark.slow
def test_inside_slurm_a_run_stops_before_its_time_limit_and_requeues_itself(tmp_path, tiny_data):
    """A SLURM job whose limit is 60 s away (squeue's end time; the margin is 2 min): the run stops at its first
    step boundary with a resume point and asks `scontrol requeue` for its own job (fakes of both commands)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    end = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(time.time() + 60))
    _fake(bin_dir, "squeue", f'[ "$*" = "-h -j 4242 -o %e" ] && echo {end}')
    _fake(bin_dir, "scontrol", f'echo "$*" >> {tmp_path / "scontrol.txt"}')

    def inside_slurm() -> None:
        os.environ.update(SLURM_JOB_ID="4242", SLURM_NTASKS="1", SLURM_JOB_NAME="hybridlab_test",
                          PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}")

    run, log = tmp_path / "run", tmp_path / "train.log"
    proc = fork_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=8", "train.last_every=100"), log,
                    inside_slurm)
    code = exit_code(proc)
    text = log.read_text()
    assert code == 128 + signal.SIGUSR1, text[-3000:]
    assert saved_step(run / "last.ckpt") == 1, text
    assert "stopping with a resume point before the SLURM time limit" in text
    assert (tmp_path / "scontrol.txt").read_text() == "requeue 4242\n"
    assert "SLURM job 4242 requeued" in text
    session = json.loads((run / "sessions.jsonl").read_text())
    assert (session["to_step"], session["ended"], session["slurm_job"]) == (1, "SLURM time limit near", "4242")
    assert not list(run.glob("hpc_ckpt_*.ckpt")) and not (run / "train_done.json").exists()


def test_train_logger_switch_logs_the_same_rows_and_names_a_missing_package(tmp_path, tiny_data):
    run = tmp_path / "csv"
    argv = train_argv(tiny_data, run, "full", 0, "train.steps=3", "train.logger=csv")
    assert run_cli(argv, tmp_path / "csv.log") == 0
    view = pd.read_csv(run / "logs" / "version_0" / "metrics.csv")
    pd.testing.assert_frame_equal(view[["step", "loss", "lr_decay"]], pd.read_csv(run / "metrics.csv")[
        ["step", "loss", "lr_decay"]])
    if importlib.util.find_spec("tensorboard") is None and importlib.util.find_spec("tensorboardX") is None:
        log = tmp_path / "tb.log"
        assert run_cli(train_argv(tiny_data, tmp_path / "tb", "full", 0, "train.steps=3", "train.logger=tensorboard"),
                       log) == 2
        assert "train.logger': got 'tensorboard'; allowed: none or csv: the tensorboard package is not installed" in (
            log.read_text())
