"""Tests for hybridlab.analysis.scaling, scaling_uncertainty and scaling_input: parameter recovery, metrics,
holdout, table reading, bootstrap intervals, the profile over alpha, warnings, tidy output."""

import numpy as np
import pandas as pd
import pytest

from hybridlab.analysis.scaling import fit_scaling_law, log_predict
from hybridlab.analysis.scaling_input import read_scaling_table
from hybridlab.analysis.scaling_uncertainty import (
    bootstrap,
    fit_table,
    fit_warnings,
    fits_wide,
    prediction_band,
    profile_alpha,
)

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
    with pytest.raises(ValueError, match="procedure='scipy' is not one of"):
        fit_scaling_law(df, procedure="scipy")
    with pytest.raises(ValueError, match="alpha_bounds='paper'"):
        fit_scaling_law(df, alpha_bounds="paper")


def test_alpha_bounds_follow_the_procedure():
    from hybridlab.analysis.scaling import AUTO, resolve_alpha_bounds

    assert resolve_alpha_bounds(AUTO, "no_constant", "default") == (0.2, 0.3)
    assert resolve_alpha_bounds(AUTO, "no_constant", "released") == (0.2, 0.3)
    assert resolve_alpha_bounds(AUTO, "constant", "released") == (0.0, None)  # the release leaves it free there
    assert resolve_alpha_bounds(None, "constant", "default") == (0.0, None)
    assert resolve_alpha_bounds((0.1, 0.5), "constant", "released") == (0.1, 0.5)


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
    tables = fit_table(read_scaling_table(path), n_boot=10, profile_points=3)
    out = tables.summary
    assert list(out.columns) == ["variant", "form", "kind", "name", "value"]
    assert not out.duplicated(["variant", "form", "name"]).any()  # a name is unique within a fit
    assert list(tables.draws.columns) == ["variant", "form", "replicate", "B", "alpha", "C", "beta", "E", "objective"]
    assert tables.draws.groupby("variant").size().tolist() == [10, 10]
    assert set(out["variant"]) == {"full", "swa128"}
    full = out[(out["variant"] == "full") & (out["kind"] == "param")].set_index("name")["value"]
    assert full["alpha"] == pytest.approx(TRUE["alpha"], abs=1e-3)
    assert {"holdout_log_r2", "train_ppl_mae"} <= set(out["name"])


def test_read_released_layout_as_released(tmp_path):
    path = tmp_path / "released.tsv"
    path.write_text("model_size\ttoken_multiplier\tn\tloss\nS1\t200.110938n\t14999424\t20.7426\n"
                    "S2\t103.607842n\t31470080\t13.0709\n")
    table = read_scaling_table(path, log_values=True)
    assert list(table.columns) == ["size", "N", "D", "loss"] and table["size"].tolist() == ["S1", "S2"]
    assert table["D"].tolist() == [200.110938 * 14999424, 103.607842 * 31470080]
    assert table["loss"].tolist() == pytest.approx([np.log(20.7426), np.log(13.0709)])
    path.write_text("model_size\ttoken_multiplier\tn\tloss\nS1\t200 tokens\t14999424\t20.7\n")
    with pytest.raises(ValueError, match="row 2: token_multiplier '200 tokens'"):
        read_scaling_table(path)


def test_bootstrap_intervals_cover_the_truth_and_resample_sizes():
    fit = fit_scaling_law(synthetic(noise=3e-3, seed=3))
    boot = bootstrap(fit, n_boot=40, seed=1)
    assert len(boot.draws) == 40 and boot.redrawn == 0
    for name in ("alpha", "beta", "B", "C"):
        low, high = boot.interval(name)
        assert low <= fit.params[name] <= high, name
    assert boot.interval("beta")[0] < TRUE["beta"] < boot.interval("beta")[1]
    assert bootstrap(fit, n_boot=8, seed=1).draws.equals(boot.draws.head(8))  # the seed fixes the draws
    three = fit_scaling_law(synthetic(noise=3e-3, seed=3).query("size in ['S1', 'S2', 'S3']"))
    by_size = bootstrap(three, n_boot=20, resample="sizes", seed=2)
    assert len(by_size.draws) == 20 and by_size.redrawn > 0  # 2 training sizes: half the draws hold only one
    with pytest.raises(ValueError, match="resample"):
        bootstrap(fit, resample="rows")


def test_profile_finds_the_true_alpha_and_no_warning_on_clean_data():
    fit = fit_scaling_law(synthetic(noise=5e-3, seed=4), alpha_bounds=(0.1, 0.4))
    profile = profile_alpha(fit, n_points=31)
    curve = profile.curve
    assert curve["alpha"].iloc[curve["objective"].idxmin()] == pytest.approx(TRUE["alpha"], abs=0.011)
    assert profile.minimum == pytest.approx(fit.objective, rel=1e-6)
    low, high = profile.interval
    assert 0.1 < low <= fit.params["alpha"] <= high < 0.4 and not profile.flat
    assert fit_warnings(fit, profile) == []


def test_warnings_for_a_bound_and_a_flat_profile():
    rows = [(size, n, k * n) for size, n in (("a", 1.0e7), ("b", 1.02e7), ("c", 1.0404e7)) for k in KS]
    df = pd.DataFrame(rows, columns=["size", "N", "D"])
    df["loss"] = (60 / df["N"] ** 0.4 + 800 / df["D"] ** 0.33) * np.exp(
        np.random.default_rng(5).normal(0, 2e-3, len(df)))
    fit = fit_scaling_law(df, holdout=None)  # sizes within 4%: B and alpha trade off almost exactly
    profile = profile_alpha(fit, n_points=11)
    texts = [t for t, _ in fit_warnings(fit, profile)]
    assert profile.flat and any("profile over alpha is flat" in t for t in texts)
    steep = synthetic(noise=1e-4, seed=6)
    steep["loss"] = 60 / steep["N"] ** 0.4 + 800 / steep["D"] ** 0.33  # true alpha 0.4 beyond [0.2, 0.3]
    fit = fit_scaling_law(steep)
    assert fit.params["alpha"] == pytest.approx(0.3)
    texts = [t for t, _ in fit_warnings(fit, profile_alpha(fit, n_points=11))]
    assert any(t.startswith("alpha = 0.3 ends on its upper bound 0.3") for t in texts)
    assert any("reaches its upper bound" in t for t in texts)


def test_summary_table_carries_intervals_profile_and_warnings():
    df = synthetic(noise=1e-4, seed=6)
    df["loss"] = 60 / df["N"] ** 0.4 + 800 / df["D"] ** 0.33
    tables = fit_table(df, n_boot=30, profile_points=7)
    out = tables.summary
    kinds = out.groupby("kind").size()
    assert kinds["ci"] == 8 and kinds["profile"] == 7 and kinds["warning"] >= 1
    wide = fits_wide(out).iloc[0]
    assert wide["alpha_low"] <= wide["alpha"] <= wide["alpha_high"] and wide["boot_ok"] == 30
    assert "ends on its upper bound" in wide["warnings"]


def test_prediction_band_against_a_simple_reference():
    fit = fit_scaling_law(synthetic(noise=3e-3, seed=7))
    draws = bootstrap(fit, n_boot=40, seed=0).draws.assign(form="no_constant")
    d = np.geomspace(1e9, 1e11, 7)
    low, high = prediction_band(draws, "no_constant", 3.1e7, d)
    reference = np.array([[r["B"] / 3.1e7 ** r["alpha"] + r["C"] / x ** r["beta"] for x in d]
                          for _, r in draws.iterrows()])
    np.testing.assert_allclose(low, np.quantile(reference, 0.025, axis=0), rtol=1e-10)
    np.testing.assert_allclose(high, np.quantile(reference, 0.975, axis=0), rtol=1e-10)
    assert np.all(low <= fit.predict(3.1e7, d)) and np.all(fit.predict(3.1e7, d) <= high)
    same = pd.DataFrame([{**fit.params, "form": "no_constant"}] * 3)
    low, high = prediction_band(same, "no_constant", 3.1e7, d)
    np.testing.assert_allclose(low, fit.predict(3.1e7, d), rtol=1e-12)
    np.testing.assert_allclose(np.exp(log_predict(fit.theta(), np.log(3.1e7), np.log(d))), high, rtol=1e-12)


def test_cli_names_a_bad_flag(tmp_path, capsys):
    from hybridlab.cli import main

    path = tmp_path / "law.tsv"
    synthetic().to_csv(path, sep="\t", index=False)
    for flag, value, allowed in (("--bootstrap", "1", "0 (off) or an integer >= 2"),
                                 ("--alpha-bounds", "0.2", "'LOW,HIGH'")):
        assert main(["scaling-fit", "--table", str(path), "--out", str(tmp_path / "fit.csv"), flag, value]) == 2
        err = capsys.readouterr().err
        assert f"config key '{flag}'" in err and allowed in err
    assert not (tmp_path / "fit.csv").exists()


def test_data_the_law_does_not_describe_give_warnings_not_overflow():
    """Full's budget points of the CPU run of mini_grid (shrunk to a few hundred steps, docs/scaling.md): at the
    largest size log(LongPPL) rises with tokens. Bootstrap refits then run off along C and beta together (C
    reached 1e219 and then overflowed before the optimiser got its box); the box stops them at exp(100), and
    the table says so."""
    from hybridlab.analysis.scaling import LOG_COEF_BOX

    rows = [("mini", 3410176.0, 172032, 3.8287), ("mini", 3410176.0, 342016, 4.1514),
            ("mini", 3410176.0, 512000, 4.5176), ("mini", 3410176.0, 684032, 5.2318),
            ("w128", 754816.0, 38912, 6.5282), ("w128", 754816.0, 75776, 5.4274), ("w128", 754816.0, 114688, 4.5756),
            ("w128", 754816.0, 151552, 3.9632), ("w192", 1771200.0, 90112, 4.3829), ("w192", 1771200.0, 178176, 3.8887),
            ("w192", 1771200.0, 266240, 4.0193), ("w192", 1771200.0, 354304, 4.2649)]
    df = pd.DataFrame(rows, columns=["size", "N", "D", "loss"])
    tables = fit_table(df, n_boot=30, profile_points=3)
    draws = tables.draws
    assert len(draws) == 30 and np.isfinite(draws[["B", "alpha", "C", "beta"]]).all().all()
    assert np.log(draws["C"]).max() == pytest.approx(LOG_COEF_BOX)
    warnings = tables.summary.loc[tables.summary["kind"] == "warning", "name"]
    assert warnings.str.contains("bootstrap refits ran off to the optimiser's box").any()
