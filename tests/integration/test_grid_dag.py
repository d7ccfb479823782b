"""The scaling grid's DAG end to end on the CPU, at the smallest size that exercises every grid rule: three tiny
sizes x Full and SWA-128 x three WSD budgets, the branches of each stable run in one job (train.group_branches),
then the budget table, the fit of L(N, D) with its bootstrap, Fig. 2 and the C1 check read off the grid.

train.steps is set below the steps the budget gives (as scale mini_grid inherits mini's 1500): the run's length
must come from the budget in every job, which a first GPU run of the grid found broken in train-branch."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from tests.integration.test_smoke_dag import snakemake

pytestmark = pytest.mark.integration

SIZES = ["tiny_w32", "tiny_w48", "tiny"]
BUDGETS = [0.2, 0.4, 0.8]
OVERRIDES = ["train.schedule=wsd", "train.warmup_steps=2", "train.steps=5", "train.budget_k=0.8",
             "train.budgets_k=[0.2,0.4,0.8]", "train.group_branches=true", "scale.variants=[full,swa128]",
             f"scale.sizes=[{','.join(SIZES)}]"]


def config_args() -> list[str]:
    return ["scale=smoke", "results_dir=results", "paper_dir=paper", f"overrides={json.dumps(OVERRIDES)}"]


@pytest.fixture(scope="module")
def grid_run(tmp_path_factory):
    work = tmp_path_factory.mktemp("grid")
    proc = snakemake(work, "--config", *config_args())
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return work


def test_branches_train_in_one_job_per_stable_run_and_end_on_their_budgets(grid_run):
    res = grid_run / "results" / "smoke"
    logs = sorted(p.name for p in (res / "logs").iterdir())
    assert len([n for n in logs if n.startswith("train_branches_")]) == len(SIZES) * 2
    assert not [n for n in logs if n.startswith("train_branch_")]  # no job per budget
    per_step = 16 * 256
    for size in SIZES:
        for variant in ("full", "swa128"):
            run = res / "runs" / size / variant / "seed0"
            stable = json.loads((run / "train_done.json").read_text())
            n = stable["non_embedding_params"]
            assert stable["steps"] == math.ceil(BUDGETS[-1] * n / per_step) > 5  # the budget, not train.steps
            for k in BUDGETS:
                branch = json.loads((run / f"budget{k}" / "train_done.json").read_text())
                assert branch["steps"] == math.ceil(k * n / per_step)
                assert branch["tokens"] >= int(k * n) > branch["tokens"] - per_step
                assert (run / f"budget{k}" / "eval.csv").exists()


def test_the_fit_figure_and_c1_check_come_from_every_budget_point(grid_run):
    tables, paper = grid_run / "results" / "smoke" / "tables", grid_run / "paper" / "smoke"
    budgets = pd.read_csv(tables / "budgets.csv")
    points = budgets[["size", "budget_k", "variant"]].drop_duplicates()
    assert len(points) == len(SIZES) * len(BUDGETS) * 2
    fit = pd.read_csv(tables / "scaling_fit.csv")
    params = fit[fit.kind == "param"]
    for variant in ("full", "swa128"):
        got = set(params[params.variant == variant].name)
        assert {"alpha", "beta", "B", "C"} <= got, (variant, got)
    assert len(pd.read_csv(tables / "scaling_draws.csv")) > 0  # the bootstrap behind the intervals
    png = paper / "figures" / "fig2_scaling.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    report = (paper / "report.md").read_text()
    table4 = report.split("### Table 4: C1 read off the scaling grid")[1].split("###")[0]
    for size in SIZES:
        assert f"| {size} | gap swa128 - full | k=0.2: " in table4 and "k=0.8: " in table4


def test_second_grid_run_is_a_noop(grid_run):
    proc = snakemake(grid_run, "--dry-run", "--config", *config_args())
    assert proc.returncode == 0 and "Nothing to be done" in proc.stdout + proc.stderr
