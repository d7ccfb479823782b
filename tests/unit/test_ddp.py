"""DDP on CPU (gloo, two processes launched by Lightning): a run over two devices sees the same global batches,
so it logs the same losses and ends at the same weights as a one-process run with gradient accumulation, up
to the summation order of the gradient all-reduce."""

import os
import subprocess
import sys

import pandas as pd
import pytest
import torch

from tests.unit.test_train import TINY, data_dir, final_weights  # noqa: F401 (data_dir: a fixture)

ARGS = ["--scale", "smoke", "--variant", "swa128", "--seed", "0", *TINY, "train.steps=5", "train.batch_size=4",
        "train.micro_batch_size=2", "train.lr=1e-2"]


def train_cli(data, out, *overrides):
    cmd = [sys.executable, "-m", "hybridlab.cli", "train", "--data", str(data), "--out", str(out), *ARGS,
           *overrides]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "HYBRIDLAB_PROGRESS": "0", "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tmp_path, data_dir):  # noqa: F811 (the imported fixture)
    train_cli(data_dir, tmp_path / "one", "train.devices=1")
    train_cli(data_dir, tmp_path / "two", "train.devices=2")
    one, two = (pd.read_csv(tmp_path / r / "metrics.csv") for r in ("one", "two"))
    assert list(one["step"]) == list(two["step"]) == [1, 2, 3, 4, 5]
    assert (one["tokens"] == two["tokens"]).all()
    torch.testing.assert_close(torch.tensor(two["loss"].values), torch.tensor(one["loss"].values),
                               rtol=1e-4, atol=1e-5)
    assert one["loss"].iloc[-1] < one["loss"].iloc[0]  # it trained: the comparison is not of two no-ops
    a, b = final_weights(tmp_path / "one"), final_weights(tmp_path / "two")
    for k in a:
        torch.testing.assert_close(b[k], a[k], rtol=1e-3, atol=1e-5, msg=k)
