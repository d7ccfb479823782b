"""Tests for hybridlab.figures.scaling_grid: Fig. 2 with the fitted law and its band, the scaling-fit table with
its warnings, the grid's C1 check against hand-computed gaps, the report; and the mini_grid preset's plan."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_figures import ONSETS, assert_png, synthetic_tables, write_tables

from hybridlab.analysis.scaling_uncertainty import fit_table
from hybridlab.figures import scaling_grid
from hybridlab.figures.tables import Tables

CONTEXT = 256
SIZES = {"G1": 1.0e6, "G2": 2.0e6, "G3": 4.5e6}
KS = (4, 8, 16, 32)
# log(LongPPL) per variant: SWA-128's gap to Full shrinks with tokens, SWA-2048's grows.
LAWS = {"full": (60.0, 0.25, 800.0, 0.33), "swa128": (60.0, 0.25, 1000.0, 0.33), "swa2048": (60.0, 0.25, 40.0, 0.1)}


def law(variant: str, n, d):
    b, alpha, c, beta = LAWS[variant]
    return b / np.asarray(n) ** alpha + c / np.asarray(d) ** beta


def grid_tables(noise: float = 0.0, n_boot: int = 10) -> Tables:
    """A 3-size x 4-budget grid of three variants with known laws, fitted like the workflow does it."""
    rng = np.random.default_rng(0)
    rows = []
    for size, n in SIZES.items():
        for v in LAWS:
            for step, k in enumerate(KS, 1):
                d = k * n
                y = law(v, n, d) * np.exp(rng.normal(0, noise))
                rows += [(size, k, v, 0, step, d, "log_longppl", CONTEXT, y),
                         (size, k, v, 0, step, d, "val_loss", CONTEXT, 2.0 + 100.0 / d**0.3)]
    budgets = pd.DataFrame(rows, columns=["size", "budget_k", "variant", "seed", "step", "tokens", "metric",
                                          "length", "value"])
    points = budgets[budgets["metric"] == "log_longppl"].assign(N=budgets["size"].map(SIZES))
    points = points.rename(columns={"tokens": "D", "value": "loss"})[["variant", "size", "N", "D", "loss"]]
    fit = fit_table(points, n_boot=n_boot, profile_points=3)
    info = {"name": "grid", "context": CONTEXT, "ref_context": 16384, "variants": list(LAWS), "seeds": [0],
            "sizes": list(SIZES),
            "runs": [{"size": s, "variant": v, "non_embedding_params": n} for s, n in SIZES.items() for v in LAWS]}
    frames = {"eval": budgets.drop(columns="budget_k"), "budgets": budgets, "scaling_fit": fit.summary,
              "scaling_draws": fit.draws}
    return Tables(info=info, frames=frames)


@pytest.fixture(scope="module")
def exact() -> Tables:
    return grid_tables()


def test_fig2_draws_budget_points_the_fitted_law_and_its_band(exact, tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    from matplotlib.collections import PolyCollection

    captured = []
    monkeypatch.setattr(scaling_grid, "save", lambda fig, out, name: captured.append(fig) or [])
    t = exact
    scaling_grid.fig2_scaling(t.frames["eval"], tmp_path, CONTEXT, t.frames["scaling_fit"], t.n_params(),
                              t.frames["budgets"], t.frames["scaling_draws"])
    axes = captured[0].axes
    assert len(axes) == 6
    assert [ax.get_title() for ax in axes[:3]] == ["size G1", "size G2", "size G3 (held out of the fit)"]
    lower = axes[3:]  # the log(LongPPL) row
    dashed = [ln for ax in lower for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 3 * len(LAWS) and not [ln for ax in axes[:3] for ln in ax.get_lines()
                                                 if ln.get_linestyle() == "--"]
    bands = [c for ax in lower for c in ax.collections if isinstance(c, PolyCollection)]
    assert len(bands) == 3 * len(LAWS)
    first = next(ln for ln in lower[0].get_lines() if ln.get_linestyle() == "--")  # Full at G1
    x, y = first.get_xdata(), first.get_ydata()
    np.testing.assert_allclose(y, law("full", SIZES["G1"], x), rtol=1e-4)  # the fit recovers the exact law
    points = next(ln for ln in lower[0].get_lines() if ln.get_marker() == "o")
    np.testing.assert_allclose(points.get_xdata(), [k * SIZES["G1"] for k in KS])
    plt.close("all")


def test_fig2_without_a_grid_still_draws_checkpoints_and_curves(tmp_path, monkeypatch):
    captured = []
    monkeypatch.setattr(scaling_grid, "save", lambda fig, out, name: captured.append(fig) or [])
    t = synthetic_tables({"swa128": ONSETS["swa128"], "full": ONSETS["full"]}, sizes=True)
    scaling_grid.fig2_scaling(t.frames["eval"], tmp_path, CONTEXT, t.frames["scaling_fit"], t.n_params())
    axes = captured[0].axes
    assert len(axes) == 4 and [ax.get_title() for ax in axes[:2]] == ["size S0", "size S1"]
    dashed = [ln for ax in axes for ln in ax.get_lines() if ln.get_linestyle() == "--"]
    assert len(dashed) == 4  # a fitted curve per variant in each size's log(LongPPL) panel
    curve = next(ln for ln in axes[2].get_lines() if ln.get_linestyle() == "--")
    d = curve.get_xdata()[0]
    assert curve.get_ydata()[0] == pytest.approx(60.0 / t.n_params()[("S0", "swa128")] ** 0.25 + 20.0 / d**0.3)


def test_c1_grid_check_matches_hand_computed_gaps(exact):
    rows = scaling_grid.c1_grid_rows(exact).set_index(["size", "quantity"])
    for size, n in SIZES.items():
        small, large = KS[0] * n, KS[-1] * n
        for v, reading in (("swa128", "shrinks"), ("swa2048", "grows")):
            r = rows.loc[(size, f"gap {v} - full")]
            gap = [law(v, n, d) - law("full", n, d) for d in (small, large)]
            assert r["at_small"] == pytest.approx(gap[0], rel=1e-9) and r["at_large"] == pytest.approx(gap[1])
            assert r["abs_change"] == pytest.approx(abs(gap[1]) - abs(gap[0]))
            # exact data: every bootstrap draw is the exact law, so the interval is the point itself
            assert r["abs_change_low"] == pytest.approx(r["abs_change"], abs=1e-4)
            assert r["abs_change_high"] == pytest.approx(r["abs_change"], abs=1e-4)
            assert r["reading"] == reading
        spread = rows.loc[(size, "spread (max - min over variants)")]
        values = [[law(v, n, d) for v in LAWS] for d in (small, large)]
        assert spread["at_small"] == pytest.approx(max(values[0]) - min(values[0]))
        assert spread["at_large"] == pytest.approx(max(values[1]) - min(values[1]))


def test_c1_intervals_widen_with_noise_and_cover_the_measured_gap():
    t = grid_tables(noise=0.01, n_boot=20)
    rows = scaling_grid.c1_grid_rows(t)
    gaps = rows[rows["quantity"] == "gap swa128 - full"]
    assert (gaps["at_large_high"] - gaps["at_large_low"] > 0.01).all()
    inside = (gaps["at_small_low"] <= gaps["at_small"]) & (gaps["at_small"] <= gaps["at_small_high"])
    assert inside.sum() >= 2  # the measured gap is noisy; the fitted band covers it at most sizes


def test_tables_say_what_is_missing_without_a_grid():
    t = synthetic_tables()
    fit_table_, c1 = scaling_grid.scaling_tables(Tables(info=t.info, frames={"eval": t.frames["eval"]}))
    assert "no scaling grid" in fit_table_.note and "no scaling grid" in c1.note


def test_report_shows_the_fit_table_warnings_and_the_c1_check(exact, tmp_path):
    from hybridlab.figures.build import build_all

    folder = write_tables(exact, tmp_path / "tables")
    build_all("grid", folder, tmp_path / "paper")
    report = (tmp_path / "paper" / "report.md").read_text()
    assert "Table 3: the scaling-law fit" in report and "Table 4: C1 read off the scaling grid" in report
    assert "G3 (4 points)" in report  # the held-out size, named
    assert "| G1 | gap swa2048 - full |" in report and "grows" in report and "shrinks" in report
    assert "![fig2_scaling]" in report
    assert_png(tmp_path / "paper" / "figures" / "fig2_scaling.png")
    shown = pd.read_csv(tmp_path / "paper" / "tables" / "table3_scaling.csv")
    assert set(shown["variant"]) == set(LAWS)


def test_warnings_reach_the_report_table(exact):
    warning = pd.DataFrame([{"variant": "swa128", "form": "no_constant", "kind": "warning",
                             "name": "alpha = 0.3 ends on its upper bound 0.3: test", "value": 0.3}])
    t = Tables(info=exact.info, frames={**exact.frames,
                                        "scaling_fit": pd.concat([exact.frames["scaling_fit"], warning])})
    table = scaling_grid.scaling_fit_table(t)
    assert "**Warnings:** swa128 (no_constant): alpha = 0.3 ends on its upper bound" in table.note
    assert table.display.set_index("variant").loc["swa128", "warnings"].startswith("alpha = 0.3 ends")
    assert table.display.set_index("variant").loc["full", "warnings"] == "none"


def test_mini_grid_preset_plans_the_grid_and_takes_its_corpus_from_mini(tmp_path):
    import torch

    from hybridlab.config import load_config
    from hybridlab.models import build_model
    from hybridlab.train.run import branch_plan, resolve_budget

    grid, mini = load_config("mini_grid"), load_config("mini")
    assert grid.data == mini.data  # composed from scale/mini.yaml: one corpus, one place
    assert list(grid.scale.variants) == ["full", "swa128", "swa2048", "lightning"]
    assert len(grid.train.budgets_k) >= 4 and grid.train.schedule == "wsd"
    counts = []
    for size in grid.scale.sizes:
        cfg = load_config("mini_grid", "full", 0, None, size)
        with torch.device("meta"):
            n = build_model(cfg, 8).non_embedding_params()
        counts.append(n)
        plan = branch_plan(resolve_budget(cfg, n), n)
        assert len(plan) == len(grid.train.budgets_k)  # every budget point is a decay branch
    assert len(counts) >= 3 and max(counts) / min(counts) >= 4.0
    root = Path(__file__).resolve().parents[2]
    # empty results and paper folders: a checkout's own paper/report.md would leave nothing to plan
    out = subprocess.run([sys.executable, "-m", "snakemake", "-n", "--config", "scale=mini_grid",
                          f"results_dir={tmp_path / 'results'}", f"paper_dir={tmp_path / 'paper'}"], cwd=root,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    jobs = dict(line.split() for line in out.stdout.splitlines()
                if len(line.split()) == 2 and line.split()[1].isdigit())
    n_runs = len(grid.scale.sizes) * len(grid.scale.variants)
    # the branches of each stable run in one job (train.group_branches), each budget still evaluated on its own
    assert grid.train.group_branches and "train_branch" not in jobs
    assert int(jobs["train"]) == n_runs and int(jobs["train_branches_0"]) == n_runs
    assert int(jobs["evaluate_branch"]) == n_runs * len(grid.train.budgets_k)
    assert int(jobs["scaling_fit"]) == 1 and int(jobs["figures"]) == 1
