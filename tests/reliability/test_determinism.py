"""The same seed on the same CPU gives identical loss curves (metrics.csv) and result tables (eval.csv); a
different seed gives different ones."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from .helpers import TINY, run_cli, train_argv

LOSS_COLUMNS = ["step", "tokens", "loss", "lr"]  # the rest are timings


def train_and_evaluate(data: Path, run: Path, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    if not (run / "train_done.json").exists():
        assert run_cli(train_argv(data, run, "swa128", seed, "train.steps=8"), run.parent / f"{run.name}.log") == 0
    out = run.parent / f"{run.name}_eval.csv"
    argv = ["evaluate", "--variant", "swa128", "--seed", str(seed), "--data", str(data), "--run", str(run),
            "--out", str(out), *TINY, "train.steps=8"]
    assert run_cli(argv, run.parent / f"{run.name}_eval.log") == 0
    return pd.read_csv(run / "metrics.csv")[LOSS_COLUMNS], pd.read_csv(out)


@pytest.mark.slow
def test_same_seed_same_results_different_seed_different(tmp_path, tiny_data, trained_run):
    loss_a, eval_a = train_and_evaluate(tiny_data, trained_run, 0)  # the shared run: swa128, seed 0, 8 steps
    loss_b, eval_b = train_and_evaluate(tiny_data, tmp_path / "again", 0)
    loss_c, eval_c = train_and_evaluate(tiny_data, tmp_path / "seed1", 1)

    pd.testing.assert_frame_equal(loss_a, loss_b, check_exact=True)
    pd.testing.assert_frame_equal(eval_a, eval_b, check_exact=True)
    assert len(eval_a) > 0 and eval_a["value"].notna().any()

    assert not loss_a["loss"].equals(loss_c["loss"])
    both = eval_a.merge(eval_c, on=["step", "tokens", "metric", "length"], suffixes=("_a", "_c"))
    assert len(both) == len(eval_a)
    both = both.dropna(subset=["value_a", "value_c"])
    assert (both["value_a"] != both["value_c"]).any()
