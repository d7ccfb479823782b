"""Training on CPU: a few steps run and write the run folder; stopping and resuming ends where an
uninterrupted run ends (bit-equal weights and losses)."""

import pandas as pd
import pytest
import torch

from hybridlab.config import variant_names
from hybridlab.data.prepare import prepare
from hybridlab.train.run import train

TINY = ["data.n_train_seqs=48", "data.n_val_seqs=8", "eval.niah_samples=4", "train.batch_size=4",
        "train.micro_batch_size=2", "train.log_every=1", "train.n_checkpoints=3", "train.warmup_steps=2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from hybridlab.config import load_config

    out = tmp_path_factory.mktemp("data")
    prepare(load_config("smoke", "full", 0, TINY), out)
    return out


def final_weights(run_dir):
    path = sorted((run_dir / "ckpt").glob("tokens_*.pt"))[-1]
    return torch.load(path, weights_only=True)["model"]


@pytest.mark.parametrize("variant", variant_names())  # a few steps of every variant
def test_train_writes_run_folder(tmp_path, data_dir, smoke_cfg, variant):
    run = tmp_path / variant
    summary = train(smoke_cfg(variant, 0, *TINY, "train.steps=6"), data_dir, run)
    assert summary["steps"] == 6
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["step"]) == [1, 2, 3, 4, 5, 6]
    assert metrics["loss"].notna().all()
    assert len(list((run / "ckpt").glob("tokens_*.pt"))) == 3
    assert (run / "provenance.json").exists() and (run / "train_done.json").exists()
    assert train(smoke_cfg(variant, 0, *TINY, "train.steps=6"), data_dir, run) == summary  # no-op rerun


def test_resume_equals_uninterrupted(tmp_path, data_dir, smoke_cfg):
    cfg = smoke_cfg("swa128", 0, *TINY, "train.steps=8", "train.last_every=3")
    ref = tmp_path / "ref"
    train(cfg, data_dir, ref)
    run = tmp_path / "resumed"
    # Stop after 5 steps: the last.ckpt of step 3 is the resume point; steps 4..8 are redone.
    train(smoke_cfg("swa128", 0, *TINY, "train.steps=8", "train.last_every=3", "train.stop_after=5"), data_dir, run)
    assert not (run / "train_done.json").exists()
    train(cfg, data_dir, run)
    a, b = final_weights(ref), final_weights(run)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    pd.testing.assert_frame_equal(pd.read_csv(ref / "metrics.csv")[["step", "loss"]],
                                  pd.read_csv(run / "metrics.csv")[["step", "loss"]])


def test_different_seeds_differ(tmp_path, data_dir, smoke_cfg):
    for seed in (0, 1):
        train(smoke_cfg("full", seed, *TINY, "train.steps=4"), data_dir, tmp_path / str(seed))
    a, b = final_weights(tmp_path / "0"), final_weights(tmp_path / "1")
    assert not torch.equal(a["embed.weight"], b["embed.weight"])


def test_nan_guard_stops_with_step_and_keeps_last_good_checkpoint(tmp_path, data_dir, smoke_cfg, monkeypatch):
    from hybridlab.models.hybrid import HybridLM
    from hybridlab.train.lit import NonFiniteLossError

    calls = {"n": 0}
    forward = HybridLM.forward

    def poisoned(self, *args, **kw):
        calls["n"] += 1
        out = forward(self, *args, **kw)
        return out * float("nan") if calls["n"] > 8 else out  # micro-batches 9+ (steps 5+) go non-finite

    monkeypatch.setattr(HybridLM, "forward", poisoned)
    run = tmp_path / "nan"
    with pytest.raises(NonFiniteLossError, match="at step 4"):
        train(smoke_cfg("full", 0, *TINY, "train.steps=8", "train.last_every=2"), data_dir, run)
    good = torch.load(run / "last.ckpt", weights_only=True)
    assert good["global_step"] == 4
    assert not (run / "train_done.json").exists()


def test_wsd_branch_equals_an_independent_run_of_that_length(tmp_path, data_dir, smoke_cfg):
    """A decay branch forked from the stable run ends exactly on its budget and equals a WSD run trained to that
    budget from scratch (same data stream, same schedule): the branch saves the stable phase, not accuracy."""
    from hybridlab.train.run import branch_plan, resolve_budget, train_branch

    wsd = [*TINY, "train.schedule=wsd", "train.decay_frac=0.5", "train.warmup_steps=2"]
    # train.steps below the budget's steps, as scale mini_grid inherits mini's: the budget sets the length
    # (a fresh config for every call, as `hybridlab train-branch` loads one: train() resolves its own in place)
    def grid():
        return smoke_cfg("swa128", 0, *wsd, "train.steps=3", "train.budget_k=0.04", "train.budgets_k=[0.02,0.04]")

    stable = tmp_path / "stable"
    summary = train(grid(), data_dir, stable)
    n = summary["non_embedding_params"]
    plan = branch_plan(resolve_budget(grid(), n), n)
    assert [b.end_step for b in plan] == [5, 9] and [b.fork_step for b in plan] == [3, 5]
    assert summary["steps"] == 9 and (stable / "forks" / "step_00000003.ckpt").exists()

    branch = train_branch(grid(), data_dir, stable, 0.02, tmp_path / "budget0.02")
    assert branch["steps"] == 5 and branch["tokens"] >= int(0.02 * n) > branch["tokens"] - 4 * 256
    alone = tmp_path / "alone"
    train(smoke_cfg("swa128", 0, *wsd, "train.steps=5"), data_dir, alone)
    a, b = final_weights(alone), final_weights(tmp_path / "budget0.02")
    assert all(torch.equal(a[k], b[k]) for k in a)
    lr = pd.read_csv(tmp_path / "budget0.02" / "metrics.csv")["lr"]
    assert lr.iloc[-1] == pytest.approx(0.1 * 3e-3)  # the decay reaches final_lr_ratio * lr exactly at the budget

    top = train_branch(grid(), data_dir, stable, 0.04, tmp_path / "budget0.04")  # the stable run's own end
    assert top["steps"] == 9 and torch.equal(final_weights(stable)["embed.weight"],
                                             final_weights(tmp_path / "budget0.04")["embed.weight"])


def test_train_group_equals_separate_runs(tmp_path, data_dir, smoke_cfg):
    """Seeds trained one after another on one model object end exactly where their own runs end: each run
    loads its seed's initialisation and keeps its data order, folder and tables."""
    from hybridlab.train.run import train_group

    cfgs = [smoke_cfg("lightning", seed, *TINY, "train.steps=4") for seed in (0, 1)]
    train_group(cfgs, data_dir, [tmp_path / "g0", tmp_path / "g1"])
    for seed in (0, 1):
        train(cfgs[seed], data_dir, tmp_path / f"alone{seed}")
        a, b = final_weights(tmp_path / f"g{seed}"), final_weights(tmp_path / f"alone{seed}")
        assert all(torch.equal(a[k], b[k]) for k in a), seed
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / f"g{seed}" / "metrics.csv")[["step", "loss"]],
                                      pd.read_csv(tmp_path / f"alone{seed}" / "metrics.csv")[["step", "loss"]])
    assert not torch.equal(final_weights(tmp_path / "g0")["embed.weight"],
                           final_weights(tmp_path / "g1")["embed.weight"])


def test_compile_warm_up_input_has_the_training_steps_layout(data_dir, smoke_cfg):
    """The warm-up must compile what training runs: the same shape and the same strides as `batch[:, :-1]`."""
    from hybridlab.data.shards import load_split
    from hybridlab.train.lit import StepSampler, TokenDataset
    from hybridlab.train.run import warm_batch

    tokens, _ = load_split(data_dir, "train")
    sampler = StepSampler(len(tokens), 4, 4, 0, 1, lambda: 0)
    ds = TokenDataset(tokens)
    batch = torch.stack([ds[i] for i in next(iter(sampler))])[:, :-1]
    warm = warm_batch(50, 4, tokens.shape[1] - 1, torch.device("cpu"), torch.Generator().manual_seed(0))
    assert warm.shape == batch.shape and warm.stride() == batch.stride() and warm.dtype == batch.dtype


@pytest.mark.parametrize("mode,expected", [("default", None), ("reduce-overhead", "reduce-overhead"),
                                           ("max-autotune-no-cudagraphs", "max-autotune-no-cudagraphs")])
def test_compile_mode_reaches_torch_compile(tmp_path, data_dir, smoke_cfg, monkeypatch, mode, expected):
    """train.compile_mode is the mode training compiles with (recorded, the model left eager: the CPU has no
    CUDA graphs), and a mode torch does not have is a config error naming the key."""
    seen = []

    def fake_compile(model, mode=None, **kw):
        seen.append(mode)
        return model

    monkeypatch.setattr(torch, "compile", fake_compile)
    train(smoke_cfg("full", 0, *TINY, "train.steps=3", "train.compile=true", f"train.compile_mode={mode}"),
          data_dir, tmp_path / "run")
    assert seen == [expected]


def test_unknown_compile_mode_is_a_config_error(smoke_cfg):
    from hybridlab.config import ConfigError

    with pytest.raises(ConfigError, match=r"train\.compile_mode.*reduce-overhead"):
        smoke_cfg("full", 0, "train.compile_mode=cudagraphs")
