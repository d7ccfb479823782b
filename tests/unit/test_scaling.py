"""Tests for hybridlab.analysis.scaling: parameter recovery, metrics, holdout, table reading, tidy output."""

import numpy as np
import pandas as pd
import pytest

from hybridlab.analysis.scaling import fit_scaling_law, fit_table, read_scaling_table

TRUE = {"B": 60.0, "alpha": 0.25, "C": 800.0, "beta": 0.33}
SIZES = {"S1": 1.5e7, "S2": 3.1e7, "S3": 6.5e7, "S4": 1.04e8, "S5": 4.77e8}
KS = (100, 200, 300, 400, 500, 1000)


def synthetic(noise: float = 0.0, seed: int = 0, E: float = 0.0) -> pd.DataFrame:
    rows = [(size, n, k * n) for size, n in SIZES.items() for k in KS]
    df = pd.DataFrame(rows, columns=["size", "N", "D"])
    y = TRUE["B"] / df["N"] ** TRUE["alpha"] + TRUE["C"] / df["D"] ** TRUE["beta"] + E
    df["loss"] = y * np.exp(np.random.default_rng(seed).normal(0.0, noise, len(df)))
    return df


def assert_recovers(params, rel=0.10, abs_exp=0.02):
    assert params["alpha"] == pytest.approx(TRUE["alpha"], abs=abs_exp)
    assert params["beta"] == pytest.approx(TRUE["beta"], abs=abs_exp)
    assert params["B"] == pytest.approx(TRUE["B"], rel=rel)
    assert params["C"] == pytest.approx(TRUE["C"], rel=rel)


def test_noiseless_fit_is_exact_with_perfect_metrics():
    df = synthetic()
    fit = fit_scaling_law(df)
    assert_recovers(fit.params, rel=1e-3, abs_exp=1e-4)
    assert fit.n_holdout == len(KS) and fit.n_train == len(df) - len(KS)
    assert fit.holdout_n == SIZES["S5"]
    for split in ("train", "holdout"):
        for space in ("log", "loss", "ppl"):
            assert fit.metrics[f"{split}_{space}_r2"] > 0.9999
            assert fit.metrics[f"{split}_{space}_rmse"] < 1e-3
            assert fit.metrics[f"{split}_{space}_mae"] < 1e-3
    np.testing.assert_allclose(fit.predict(df["N"], df["D"]), df["loss"], rtol=1e-5)


def test_recovers_parameters_under_small_noise():
    fit = fit_scaling_law(synthetic(noise=5e-4, seed=1))
    assert_recovers(fit.params)
    assert 0.99 < fit.metrics["train_log_r2"] <= 1.0
    assert fit.metrics["holdout_ppl_rmse"] < 0.05


def test_constant_form_recovers_E():
    fit = fit_scaling_law(synthetic(noise=2e-4, seed=2, E=0.9), form="constant")
    assert fit.params["E"] == pytest.approx(0.9, rel=0.02)
    assert_recovers(fit.params)


def test_free_alpha_and_no_holdout():
    fit = fit_scaling_law(synthetic(), alpha_bounds=None, holdout=None)
    assert fit.params["alpha"] == pytest.approx(TRUE["alpha"], abs=1e-3)
    assert fit.n_holdout == 0 and fit.holdout_n is None
    assert not any(key.startswith("holdout") for key in fit.metrics)


def test_bad_inputs_raise():
    df = synthetic()
    with pytest.raises(ValueError, match="form"):
        fit_scaling_law(df, form="power")
    with pytest.raises(ValueError, match="missing"):
        fit_scaling_law(df, y_col="value")
    with pytest.raises(ValueError, match="training rows for 4 parameters"):
        fit_scaling_law(pd.concat([df.head(4), df.tail(2)]))
    with pytest.raises(ValueError, match="2 distinct N"):
        fit_scaling_law(df[df["size"].isin(["S1", "S5"])])
    with pytest.raises(ValueError, match="alpha_bounds"):
        fit_scaling_law(df, alpha_bounds=(0.3, 0.2))


def test_read_simple_tsv(tmp_path):
    path = tmp_path / "swa128.tsv"
    path.write_text("size\tN\tD\tloss\nS1\t14999424\t3.0e9\t20.74\nS4\t104427264\t1.099e11\t4.27\n")
    table = read_scaling_table(path, log_values=True)
    assert list(table.columns) == ["size", "N", "D", "loss"]
    assert table["D"].tolist() == [3.0e9, 1.099e11]
    assert table["loss"].tolist() == pytest.approx([np.log(20.74), np.log(4.27)])


def tidy_table(path, metrics=("log_longppl",)):
    rows = []
    for variant, offset in (("full", 0.0), ("swa128", 0.05)):
        for _, r in synthetic().iterrows():
            for metric in metrics:
                rows.append((variant, r["size"], r["N"], r["D"], metric, r["loss"] + offset))
    pd.DataFrame(rows, columns=["variant", "size", "N", "tokens", "metric", "value"]).to_csv(
        path, index=False
    )


def test_read_tidy_csv_selects_metric(tmp_path):
    path = tmp_path / "results.csv"
    tidy_table(path, metrics=("log_longppl", "c4_loss"))
    with pytest.raises(ValueError, match="metric="):
        read_scaling_table(path)
    table = read_scaling_table(path, metric="log_longppl", variant="swa128")
    assert list(table.columns) == ["variant", "size", "N", "D", "loss"]
    assert len(table) == len(SIZES) * len(KS) and set(table["variant"]) == {"swa128"}


def test_fit_table_is_tidy(tmp_path):
    path = tmp_path / "results.csv"
    tidy_table(path)
    out = fit_table(read_scaling_table(path))
    assert list(out.columns) == ["variant", "form", "kind", "name", "value"]
    assert set(out["variant"]) == {"full", "swa128"}
    full = out[(out["variant"] == "full") & (out["kind"] == "param")].set_index("name")["value"]
    assert full["alpha"] == pytest.approx(TRUE["alpha"], abs=1e-3)
    assert {"holdout_log_r2", "train_ppl_mae"} <= set(out["name"])
