"""Fixtures of the reliability tests: a prepared TINY data folder and a finished TINY run (shared; a test that
damages one works on a copy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from .helpers import TINY, run_cli, train_argv


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared data folder for TINY (shared: tests that damage data copy it first)."""
    from hybridlab.config import load_config
    from hybridlab.data.prepare import prepare

    out = tmp_path_factory.mktemp("tiny_data")
    prepare(load_config("smoke", "full", 0, list(TINY)), out)
    return out


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory, tiny_data) -> Path:
    """A finished TINY run (swa128, seed 0, 8 steps) for the corruption and safety tests."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert run_cli(train_argv(tiny_data, run, "swa128", 0, "train.steps=8"), run.parent / "train.log") == 0
    return run
