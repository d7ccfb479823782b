"""The authors' released scaling fit reproduced on their released data, and the default procedure against it.

Fixture: tests/unit/data/swa128_longppl.tsv is src/scaling/data/swa128_longppl.tsv of
thunlp/rethinking-hybrid-attention (commit 38051d2), byte for byte: SWA-128's LongPPL per size and budget (facts).

RELEASED_SCRIPT holds what the released src/scaling/fit_scaling.py printed for
`--input swa128_longppl.tsv --formula no_constant --validate --longppl` (it trains on S1..S3 and validates on
S4). It was obtained once, by hand, by running a scratch transcription of that script's no_constant path
outside this repository (/tmp, never committed) with the lock's numpy 2.4.6 and scipy 1.17.1 on the 2-core CPU
machine, printing the fitted values with repr. The objective is the release's Huber loss at its final
parameters (it does not print it; the transcription did).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from hybridlab.analysis.scaling import fit_scaling_law
from hybridlab.analysis.scaling_input import read_scaling_table
from hybridlab.cli import main

RELEASED_TSV = Path(__file__).parent / "data" / "swa128_longppl.tsv"
RELEASED_SCRIPT = {
    "B": 104.85350887811565,
    "C": 2951.0101929626794,
    "alpha": 0.24754702893750793,
    "beta": 0.35508868007404126,
    "objective": 2.0681374873335423e-4,
    "train_loss_r2": 0.9841979348537718,
    "holdout_loss_r2": 0.9633058452161627,
    "holdout_loss_rmse": 0.029532722882472762,
    "holdout_loss_mae": 0.023195146529142823,
}


@pytest.fixture(scope="module")
def released_fit():
    table = read_scaling_table(RELEASED_TSV, log_values=True)  # the file as released: LongPPL, "200.11n"
    return fit_scaling_law(table, procedure="released")


def test_released_procedure_reproduces_the_released_script(released_fit):
    fit = released_fit
    assert fit.params["alpha"] == pytest.approx(RELEASED_SCRIPT["alpha"], abs=0.005)
    assert fit.params["beta"] == pytest.approx(RELEASED_SCRIPT["beta"], abs=0.005)
    assert fit.params["B"] == pytest.approx(RELEASED_SCRIPT["B"], rel=0.05)
    assert fit.params["C"] == pytest.approx(RELEASED_SCRIPT["C"], rel=0.05)
    assert fit.objective == pytest.approx(RELEASED_SCRIPT["objective"], rel=1e-3)
    assert fit.holdout_n == 104427264 and (fit.n_train, fit.n_holdout) == (17, 6)  # S4 held out, as --validate
    for key in ("train_loss_r2", "holdout_loss_r2", "holdout_loss_rmse", "holdout_loss_mae"):
        assert fit.metrics[key] == pytest.approx(RELEASED_SCRIPT[key], rel=1e-3), key
    assert fit.info["n_starts"] == 6 * 6 * 8 * 6  # the release's grid of starts


def test_default_beats_the_released_procedure_and_reports_intervals(released_fit, tmp_path, capsys):
    out, draws = tmp_path / "fit.csv", tmp_path / "draws.csv"
    assert main(["scaling-fit", "--table", str(RELEASED_TSV), "--log-values", "--forms", "no_constant",
                 "--bootstrap", "40", "--out", str(out), "--draws-out", str(draws)]) == 0
    printed = capsys.readouterr().out
    fit = pd.read_csv(out).set_index("name")
    value = fit["value"]
    assert value["objective"] <= released_fit.objective and value["objective"] <= RELEASED_SCRIPT["objective"]
    assert value["released_procedure"] == 0
    for name in ("B", "alpha", "C", "beta"):  # a 95% bootstrap interval for every parameter, around the estimate
        low, high = value[f"{name}_low"], value[f"{name}_high"]
        assert fit.loc[f"{name}_low", "kind"] == "ci" and low <= value[name] <= high and low < high, name
    assert value["boot_ok"] == 40 and len(pd.read_csv(draws)) == 40
    warnings = fit.index[fit["kind"] == "warning"].tolist()
    assert any(w.startswith("alpha = 0.3 ends on its upper bound 0.3") for w in warnings)  # the finding
    assert "WARNING: alpha = 0.3 ends on its upper bound" in printed and "alpha = 0.3 [0.2" in printed


def test_the_released_optimum_is_not_the_minimum_and_the_profile_says_so(released_fit):
    from hybridlab.analysis.scaling_uncertainty import fit_warnings, profile_alpha

    profile = profile_alpha(released_fit, n_points=11)
    assert profile.minimum < released_fit.objective * 0.99  # 2.017e-4 at alpha = 0.3 against 2.068e-4
    lo, hi = profile.interval
    assert hi == pytest.approx(0.3) and lo < released_fit.params["alpha"]
    texts = [t for t, _ in fit_warnings(released_fit, profile)]
    assert any("released procedure stopped 2.5% above the objective's minimum" in t for t in texts)
    assert any("reaches its upper bound 0.3" in t for t in texts)
