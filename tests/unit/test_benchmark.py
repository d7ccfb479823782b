"""The `benchmark` command on CPU: one row per (size, variant), written after every row, with the backends
that ran and the overrides applied. Speed is not checked here (benchmarks measure, tests check)."""

import pandas as pd

from hybridlab.cli import main
from hybridlab.train.benchmark import COLUMNS


def test_benchmark_rows_backends_and_overrides(tmp_path):
    out = tmp_path / "bench.csv"
    rc = main(["benchmark", "--variants", "swa128", "gdn", "--sizes", "S1", "--context", "64", "--batch", "1",
               "--steps", "1", "--set", "model.mixer_backend=torch", "model.d_ff=512", "--out", str(out)])
    assert rc == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS)
    assert list(table["variant"]) == ["swa128", "gdn"] and (table["status"] == "ok").all()
    assert (table["tokens_per_s"] > 0).all()
    assert (table["overrides"] == "model.mixer_backend=torch model.d_ff=512").all()
    assert table.loc[0, "attn_backend"] == "sdpa" and table.loc[0, "mixer_backend"] == "-"
    assert table.loc[1, "mixer_backend"] == "gdn:torch"
    # the d_ff override reached the model: fewer parameters than S1's preset shape (d_ff 1115)
    full_size = main(["benchmark", "--variants", "swa128", "--sizes", "S1", "--context", "64", "--steps", "1",
                      "--out", str(tmp_path / "b2.csv")])
    assert full_size == 0
    assert pd.read_csv(tmp_path / "b2.csv").loc[0, "non_embedding_params"] > table.loc[0, "non_embedding_params"]


def test_benchmark_mini_shape_concurrent_and_profile(tmp_path):
    """The mini scale's vocabulary by default, two processes released together (their total tokens/s), and a
    kernel-time profile table beside the CSV; each row dated and versioned."""
    out = tmp_path / "mini.csv"
    common = ["benchmark", "--scale", "mini", "--variants", "full", "--sizes", "tiny", "--context", "32",
              "--batch", "2", "--steps", "2", "--set", "train.steps=10", "train.warmup_steps=1"]
    assert main([*common, "--profile", "--out", str(out)]) == 0
    assert main([*common, "--concurrent", "2", "--out", str(tmp_path / "two.csv")]) == 0
    one, two = pd.read_csv(out), pd.read_csv(tmp_path / "two.csv")
    from hybridlab.train.benchmark import scale_vocab

    assert one.loc[0, "vocab"] == scale_vocab("mini") and one.loc[0, "versions"].startswith("torch ")
    assert two.loc[0, "concurrent"] == 2 and two.loc[0, "status"] == "ok" and two.loc[0, "tokens_per_s"] > 0
    profile = pd.read_csv(tmp_path / "mini_profile_tiny_full.csv")
    assert list(profile.columns) == ["kernel", "calls", "time_ms", "share"] and len(profile) > 0
    assert 0 < profile["share"].sum() <= 1 + 1e-9 and (profile["time_ms"].diff().dropna() <= 0).all()


def test_benchmark_ensemble_rows(tmp_path, monkeypatch):
    """--ensemble G: one row whose step trains G stacked models (tokens/s counts all of them; the step's FLOPs
    are G models'), recurrent variants stack too, and --ensemble with --concurrent is refused."""
    out = tmp_path / "ens.csv"
    common = ["benchmark", "--scale", "mini", "--variants", "full", "gdn", "--sizes", "tiny", "--context", "32",
              "--batch", "2", "--steps", "1", "--set", "train.steps=10", "train.warmup_steps=1"]
    assert main([*common, "--ensemble", "3", "--out", str(out)]) == 0
    table = pd.read_csv(out)
    assert list(table.columns) == list(COLUMNS)
    full, gdn = table.iloc[0], table.iloc[1]
    assert full["ensemble"] == 3 and full["status"] == "ok" and full["tokens_per_s"] > 0
    assert gdn["ensemble"] == 3 and gdn["status"] == "ok" and gdn["tokens_per_s"] > 0
    import pytest

    with pytest.raises(SystemExit, match="--ensemble"):
        main([*common, "--ensemble", "2", "--concurrent", "2"])
