"""Seeds trained in one stacked step (train.stack_seeds) end where their own runs end, each with its own folder,
and their resume points are each run's own: a stacked run resumes stacked or alone."""

import json

import pandas as pd
import pytest
import torch

from hybridlab.train.run import train, train_group
from tests.unit.test_train import TINY, data_dir  # noqa: F401 (data_dir: a fixture)

STACK = [*TINY, "train.stack_seeds=true"]


def weights(run_dir):
    return {p.name: torch.load(p, weights_only=True)["model"] for p in sorted((run_dir / "ckpt").glob("tokens_*.pt"))}


def assert_close_runs(a, b):
    """Two runs of one seed agree: the same checkpoints, losses within 1e-4, and weights equal to float32 rounding
    amplified by AdamW. Adam divides by a gradient's running RMS, so an entry whose gradient is near zero turns a
    rounding difference (the stacked matrix products sum in another order) into a visible one: at most one entry
    in a thousand may differ beyond rtol 1e-4 / atol 2e-5, and none by more than 1e-3. A wrong data order, weight
    decay, clipping or initialisation moves most entries."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()  # the same trajectory checkpoints
    for name in wa:
        assert wa[name].keys() == wb[name].keys()
        for k in wa[name]:
            x, y = wa[name][k], wb[name][k]
            off = ((x - y).abs() > 2e-5 + 1e-4 * y.abs()).float().mean().item()
            assert off <= 1e-3 and (x - y).abs().max() <= 1e-3, (name, k, off, (x - y).abs().max().item())
    ma, mb = pd.read_csv(a / "metrics.csv"), pd.read_csv(b / "metrics.csv")
    assert list(ma["step"]) == list(mb["step"])
    assert (ma["loss"] - mb["loss"]).abs().max() < 1e-4


@pytest.mark.parametrize("variant", ["full", "swa128_nope", "gdn", "mamba2"])
def test_stacked_seeds_equal_their_own_runs(tmp_path, data_dir, smoke_cfg, variant):  # noqa: F811
    """Each run of the stack (its seed, data order, clipping, weight decay) ends where it ends alone."""
    cfgs = [smoke_cfg(variant, seed, *STACK, "train.steps=5") for seed in (0, 1, 2)]
    dirs = [tmp_path / f"stack{s}" for s in (0, 1, 2)]
    summaries = train_group(cfgs, data_dir, dirs)
    assert [s["steps"] for s in summaries] == [5, 5, 5]
    for seed, d in enumerate(dirs):
        for f in ("provenance.json", "train_done.json", "metrics.csv", "sessions.jsonl", "last.ckpt"):
            assert (d / f).exists(), f
        assert json.loads((d / "provenance.json").read_text())["seed"] == seed
        assert json.loads((d / "sessions.jsonl").read_text().splitlines()[-1])["stacked"] == 3
        alone = tmp_path / f"alone{seed}"
        train(smoke_cfg(variant, seed, *TINY, "train.steps=5"), data_dir, alone)
        assert_close_runs(d, alone)
    w0, w1 = weights(dirs[0]), weights(dirs[1])
    last = sorted(w0)[-1]
    assert not torch.allclose(w0[last]["embed.weight"], w1[last]["embed.weight"])


def test_stacked_resume_points_are_each_runs_own(tmp_path, data_dir, smoke_cfg):  # noqa: F811
    """Stopped stacked runs resume stacked (bit-equal to uninterrupted), and one of them resumes alone."""
    full = [smoke_cfg("full", s, *STACK, "train.steps=8", "train.last_every=3") for s in (0, 1)]
    stop = [smoke_cfg("full", s, *STACK, "train.steps=8", "train.last_every=3", "train.stop_after=5")
            for s in (0, 1)]
    ref = [tmp_path / f"ref{s}" for s in (0, 1)]
    train_group(full, data_dir, ref)
    run = [tmp_path / f"run{s}" for s in (0, 1)]
    train_group(stop, data_dir, run)
    assert not any((d / "train_done.json").exists() for d in run)
    assert all(torch.load(d / "last.ckpt", weights_only=True)["global_step"] == 5 for d in run)
    solo = tmp_path / "solo1"  # a copy of run 1's folder, resumed by the one-run path
    import shutil

    shutil.copytree(run[1], solo)
    train_group(full, data_dir, run)
    for a, b in zip(ref, run, strict=True):
        wa, wb = weights(a), weights(b)
        assert wa.keys() == wb.keys()
        for name in wa:
            assert all(torch.equal(wa[name][k], wb[name][k]) for k in wa[name]), name
        pd.testing.assert_frame_equal(pd.read_csv(a / "metrics.csv")[["step", "loss"]],
                                      pd.read_csv(b / "metrics.csv")[["step", "loss"]])
    train(smoke_cfg("full", 1, *TINY, "train.steps=8", "train.last_every=3"), data_dir, solo)
    assert_close_runs(solo, ref[1])


def test_unstackable_groups_train_one_after_another(tmp_path, data_dir, smoke_cfg, caplog):  # noqa: F811
    """Runs that cannot stack (here: Muon) say why and train one after another, as before."""
    from hybridlab.train.stacked import why_not_stacked

    cfgs = [smoke_cfg("full", s, *STACK, "train.steps=3", "train.optimizer=muon") for s in (0, 1)]
    assert "optimizer" in why_not_stacked(cfgs)
    assert why_not_stacked([smoke_cfg("gdn", s, *STACK) for s in (0, 1)]) is None
    assert "differ in more than their seed" in why_not_stacked(
        [smoke_cfg("full", 0, *STACK), smoke_cfg("full", 1, *STACK, "train.lr=1e-3")])
    assert why_not_stacked([smoke_cfg("full", s, *STACK) for s in (0, 1)]) is None
    with caplog.at_level("INFO", logger="hybridlab"):
        summaries = train_group(cfgs, data_dir, [tmp_path / "g0", tmp_path / "g1"])
    assert [s["steps"] for s in summaries] == [3, 3]
    assert "the runs train one after another" in caplog.text


def test_per_model_clipping_equals_clipping_each_model():
    from hybridlab.train.stacked import clip_per_model

    torch.manual_seed(0)
    grads = [torch.randn(3, 5, 4) * torch.tensor([0.1, 5.0, 1.0]).view(3, 1, 1), torch.randn(3, 7)]
    params = [torch.nn.Parameter(torch.zeros_like(g)) for g in grads]
    for p, g in zip(params, grads, strict=True):
        p.grad = g.clone()
    norms = clip_per_model(params, 1.0, 3)
    for m in range(3):
        own = [torch.nn.Parameter(torch.zeros_like(g[m])) for g in grads]
        for p, g in zip(own, grads, strict=True):
            p.grad = g[m].clone()
        total = torch.nn.utils.clip_grad_norm_(own, 1.0)
        torch.testing.assert_close(norms[m], total)
        for p, q in zip(params, own, strict=True):
            torch.testing.assert_close(p.grad[m], q.grad)


def test_split_and_merge_are_inverse():
    from hybridlab.digest import DIGEST_KEY
    from hybridlab.identity import IDENTITY_KEY
    from hybridlab.train.stacked import RECORDER_KEY, StackedRecorder, merge_checkpoints, split_checkpoint

    blob = {"global_step": 3, "epoch": 0, "loops": {"x": 1},
            "state_dict": {"model.w": torch.randn(2, 4, 3), "model.buf": torch.ones(5)},
            "optimizer_states": [{"param_groups": [{"params": [0], "lr": 0.1}],
                                  "state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.randn(2, 4, 3)}}}],
            "lr_schedulers": [{"last_epoch": 3}],
            "callbacks": {StackedRecorder.__qualname__: {"rows": [[{"step": 1, "loss": 2.0}], [{"step": 1,
                                                                                                "loss": 3.0}]]}}}
    parts = [split_checkpoint(blob, g, 2, {"model.w"}, f"id{g}") for g in (0, 1)]
    assert parts[1]["state_dict"]["model.w"].shape == (4, 3)
    assert parts[1]["callbacks"][RECORDER_KEY]["rows"][0]["loss"] == 3.0
    assert parts[0][IDENTITY_KEY] == "id0" and parts[0][DIGEST_KEY] != parts[1][DIGEST_KEY]
    back = merge_checkpoints(parts, {"model.w"})
    assert torch.equal(back["state_dict"]["model.w"], blob["state_dict"]["model.w"])
    assert torch.equal(back["optimizer_states"][0]["state"][0]["exp_avg"],
                       blob["optimizer_states"][0]["state"][0]["exp_avg"])
    assert back["callbacks"] == blob["callbacks"]
    parts[1]["global_step"] = 4
    with pytest.raises(ValueError, match="different steps"):
        merge_checkpoints(parts, {"model.w"})


def test_a_stack_that_cannot_fit_is_refused_naming_the_key(tmp_path, data_dir, smoke_cfg, monkeypatch):  # noqa: F811
    """Each run fits alone but three stacked do not: refused before anything is written, naming stack_seeds."""
    import hybridlab.train.memory as memory
    from hybridlab.config import ConfigError

    cfgs = [smoke_cfg("full", s, *STACK, "train.steps=3") for s in (0, 1, 2)]
    need = memory.training_bytes(cfgs[0], 501)
    monkeypatch.setattr(memory, "device_bytes", lambda cfg: (2 * need, "a test device"))
    dirs = [tmp_path / f"s{s}" for s in (0, 1, 2)]
    with pytest.raises(ConfigError, match=r"train.stack_seeds.*3 stacked runs need at least.*a test device"):
        train_group(cfgs, data_dir, dirs)
    assert not any((d / "provenance.json").exists() for d in dirs)
