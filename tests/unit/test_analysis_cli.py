"""The per-run analysis subcommands end to end on a tiny data folder and a two-checkpoint run, their table
schemas, aggregation of the new kinds, and `scaling-fit` on a TSV with a known law."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab.analysis.schemas import RUN_FILES, TABLES
from hybridlab.cli import main
from hybridlab.config import load_config
from hybridlab.models import build_model
from hybridlab.train.lit import save_weights

OVERRIDES = ["scale.context=64", "data.n_train_seqs=8", "data.n_val_seqs=8", "eval.niah_samples=8",
             "eval.niah_lengths=[1.0]", "eval.ruler_tasks=[niah_single,niah_multivalue]", "eval.ruler_samples=4",
             "eval.probe_samples=64", "eval.val_batches=1", "eval.gradinf_samples=2", "eval.masking_draws=2",
             "eval.onset_threshold=1e-6"]  # random weights: every head's mass crosses this, so all trace
VARIANT = "swa128"


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("analysis")
    data, run_dir = root / "data", root / "runs" / "tiny" / VARIANT / "seed0"
    assert main(["prepare-data", "--out", str(data), *OVERRIDES]) == 0
    cfg = load_config("smoke", VARIANT, 0, OVERRIDES)
    torch.manual_seed(0)
    model = build_model(cfg, 501)
    (run_dir / "ckpt").mkdir(parents=True)
    for step in (2, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.01 * torch.randn_like(p))
        save_weights(model, run_dir / "ckpt", step, step * 64)
    (run_dir / "train_done.json").write_text('{"steps": 4}')  # evaluation only reads finished runs
    args = ["--variant", VARIANT, "--data", str(data), "--run", str(run_dir), *OVERRIDES]
    out = {kind: run_dir / name for kind, name in RUN_FILES.items()}
    for cmd in ("evaluate", "receptive", "probe", "gradinf"):
        kind = "eval" if cmd == "evaluate" else cmd
        assert main([cmd, "--out", str(out[kind]), *args]) == 0
    extra = [f"--{k}={out[k]}" for k in ("trajectory", "traced", "onset", "masking")]
    assert main(["analyze", "--out", str(out["heads"]), *extra, *args]) == 0
    out["args"] = args
    return out


def test_only_full_attention_heads_are_traced_and_unformed_runs_have_no_trajectory(run, tmp_path):
    traced = pd.read_csv(run["traced"])
    assert len(traced) == 4 and set(traced["role"]) == {"full"} and set(traced["layer"]) <= {1, 3}
    assert traced["formed"].all() and (traced["final_mass"].diff().dropna() <= 0).all()
    out = {k: tmp_path / f"{k}.csv" for k in ("heads", "trajectory", "traced")}
    assert main(["analyze", "--out", str(out["heads"]), f"--trajectory={out['trajectory']}",
                 f"--traced={out['traced']}", *run["args"], "eval.onset_threshold=0.999"]) == 0
    assert pd.read_csv(out["trajectory"]).empty  # no head crossed 0.999: nothing is traced over training
    unformed = pd.read_csv(out["traced"])
    assert len(unformed) == 4 and not unformed["formed"].any() and np.isinf(unformed["onset_tokens"]).all()


def test_every_table_has_its_schema_and_rows(run):
    for kind, columns in TABLES.items():
        df = pd.read_csv(run[kind])
        assert list(df.columns) == list(columns), kind
        assert len(df) > 0 and (df["variant"] == VARIANT).all(), kind


def test_tables_hold_the_documented_metrics(run):
    ev = pd.read_csv(run["eval"])
    assert {"loss_by_pos", "ruler_niah_single", "ruler_niah_multivalue", "niah_acc"} <= set(ev["metric"])
    assert ev[ev["metric"] == "loss_by_pos"]["length"].max() == 64
    heads = pd.read_csv(run["heads"])
    assert "copy_score" in set(heads["metric"]) and set(heads["role"]) == {"full", "efficient"}
    rec = pd.read_csv(run["receptive"])
    assert set(rec["constrained"]) == {"none", "full", "efficient"} and rec["step"].unique().tolist() == [4]
    assert sorted(rec[rec["constrained"] == "full"]["window"].unique()) == [4, 8, 16, 32]
    traj = pd.read_csv(run["trajectory"])
    assert traj[["layer", "head"]].drop_duplicates().shape[0] == 4
    assert (traj[(traj["step"] == 4) & traj["metric"].str.endswith("l2")]["value"] == 0).all()
    onset = pd.read_csv(run["onset"])
    assert set(onset["selection"]) == {"strongest", "any_full"}
    assert set(pd.read_csv(run["masking"])["heads"]) == {"none", "top", "random"}
    probe = pd.read_csv(run["probe"])
    assert set(probe["feature"]) == {"resid", "delta"} and probe["value"].between(0, 1).all()
    g = pd.read_csv(run["gradinf"])
    assert g["distance"].tolist() == [1, 2, 4, 8, 16, 32, 64] and (g["value"] >= 0).all()


def test_aggregate_adds_the_size_of_a_new_kind(run, tmp_path):
    out = tmp_path / "probe.csv"
    assert main(["aggregate", "--kind", "probe", "--out", str(out), str(run["probe"])]) == 0
    assert (pd.read_csv(out)["size"] == "tiny").all()


def test_scaling_fit_recovers_a_known_law(tmp_path):
    sizes = {"S1": 1.5e7, "S2": 3.1e7, "S3": 6.5e7, "S4": 1.0e8}
    rows = [(s, n, k * n) for s, n in sizes.items() for k in (100, 200, 400, 1000)]
    df = pd.DataFrame(rows, columns=["size", "N", "D"])
    df["loss"] = 60 / df["N"] ** 0.25 + 800 / df["D"] ** 0.33
    df.to_csv(tmp_path / "law.tsv", sep="\t", index=False)
    out = tmp_path / "fit.csv"
    assert main(["scaling-fit", "--table", str(tmp_path / "law.tsv"), "--out", str(out), "--forms",
                 "no_constant", "--bootstrap", "0", "--profile-points", "0"]) == 0
    fit = pd.read_csv(out).set_index("name")["value"]
    assert fit["alpha"] == pytest.approx(0.25, abs=0.01) and fit["beta"] == pytest.approx(0.33, abs=0.01)
    assert fit["holdout_log_r2"] > 0.99


def test_scaling_fit_reads_an_eval_table_and_explains_what_is_missing(run, tmp_path, capsys):
    out = tmp_path / "fit.csv"
    with pytest.raises(SystemExit, match="2"):
        main(["scaling-fit", "--table", str(run["eval"]), "--scale", "smoke", "--out", str(out)])
    assert "training rows" in capsys.readouterr().err  # one size: nothing to fit, and it says so
    from hybridlab.analysis.scaling_input import load_scaling_input

    table = load_scaling_input(run["eval"], scale="smoke")
    assert list(table.columns) == ["variant", "size", "N", "D", "loss"]
    assert (table["size"] == "tiny").all() and table["D"].tolist() == [128, 256]
    assert np.isfinite(table["N"]).all()


def test_evaluate_group_writes_exactly_the_tables_of_the_single_stages(run, tmp_path):
    """One process for every per-run stage of several runs gives, per run, the files the single stages give."""
    import shutil

    src = run["eval"].parent
    runs = [tmp_path / "runs" / "tiny" / VARIANT / f"seed{i}" for i in (0, 1)]
    for r in runs:
        r.parent.mkdir(parents=True, exist_ok=True)
        shutil.copytree(src / "ckpt", r / "ckpt")
        shutil.copy(src / "train_done.json", r / "train_done.json")
    data = run["args"][run["args"].index("--data") + 1]
    assert main(["evaluate-group", *OVERRIDES, "--variant", VARIANT, "--seeds", "0", "0", "--data", data,
                 "--runs", *map(str, runs)]) == 2  # seeds must be distinct: refused, nothing written
    assert not (runs[0] / "eval.csv").exists()
    assert main(["evaluate-group", *OVERRIDES, "--variant", VARIANT, "--seeds", "0", "1", "--data", data,
                 "--runs", *map(str, runs)]) == 0
    for kind, name in RUN_FILES.items():
        expected = pd.read_csv(run[kind])
        pd.testing.assert_frame_equal(pd.read_csv(runs[0] / name), expected, check_exact=False, rtol=1e-6)
        assert (pd.read_csv(runs[1] / name)["seed"] == 1).all(), kind
