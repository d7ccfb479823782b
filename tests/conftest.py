"""Shared test settings: one CPU thread per test process (CI machines have 2 cores) and small helpers."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("HYBRIDLAB_PROGRESS", "0")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    try:
        import torch
    except ImportError:
        yield
        return
    torch.set_num_threads(1)
    yield


@pytest.fixture
def smoke_cfg():
    """Factory for a composed smoke config with overrides."""
    from hybridlab.config import load_config

    def make(variant: str = "full", seed: int = 0, *overrides: str):
        return load_config("smoke", variant, seed, list(overrides))

    return make


@pytest.fixture(scope="session")
def finish_run():
    """Mark a folder of hand-made checkpoints (ckpt/tokens_*.pt) as the finished run of a config: the identity in
    provenance.json and the checkpoint list in train_done.json that `hybridlab train` writes, which the
    evaluations check (hybridlab.identity)."""
    from pathlib import Path

    def finish(run_dir, cfg) -> None:
        from hybridlab.identity import run_identity
        from hybridlab.io import write_json

        run_dir = Path(run_dir)
        write_json(run_dir / "provenance.json", {"identity": run_identity(cfg)})
        write_json(run_dir / "train_done.json",
                   {"checkpoints": sorted(p.name for p in (run_dir / "ckpt").glob("tokens_*.pt"))})

    return finish
