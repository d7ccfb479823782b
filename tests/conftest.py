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
