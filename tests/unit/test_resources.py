"""Job sizes from the scale and the model size: the shape-based parameter and FLOP counts agree with the real
models, bigger work asks for more, and no request leaves the documented bounds."""

from __future__ import annotations

import pytest
import torch

from hybridlab.config import load_config, scale_plan, variant_names
from hybridlab.resources import (
    GROUPED_KINDS,
    KINDS,
    LM_EVAL_S,
    MAX_RUNTIME,
    MIN_RUNTIME,
    job_size,
    model_cost,
    planned_size,
)

# One variant per kind of layer mix (the SWA variants have Full's parameters and fewer FLOPs).
MIXER_VARIANTS = ("full", "swa128_headwise", "lightning", "mamba2", "gdn")


@pytest.mark.parametrize("scale, size", [("smoke", "tiny"), ("mini", "mini"), ("paper", "S1"), ("paper", "S5")])
def test_shape_counts_match_the_model_and_bound_every_variants_flops(scale, size):
    from hybridlab.models import build_model

    ctx = int(load_config(scale, "full", 0, [], size).scale.context)
    for variant in MIXER_VARIANTS:
        cfg = load_config(scale, variant, 0, [], size)
        cost = model_cost(cfg)
        with torch.device("meta"):
            model = build_model(cfg, _vocab(cfg))
        assert abs(cost.non_embedding - model.non_embedding_params()) <= 0.004 * model.non_embedding_params(), variant
        total = sum(p.numel() for p in model.parameters())
        assert abs(cost.params - total) <= 0.004 * total, variant
        assert cost.flops_per_token * ctx >= model.flops_per_sequence(ctx), variant  # an upper bound


def test_mixer_variants_cover_every_mixer():
    mixers = {load_config("smoke", v, 0, []).variant.get("efficient", "none") for v in variant_names()}
    assert mixers <= {load_config("smoke", v, 0, []).variant.get("efficient", "none") for v in MIXER_VARIANTS}


def _vocab(cfg) -> int:
    from hybridlab.resources import vocab_size

    return vocab_size(cfg)


def test_bigger_models_and_more_runs_ask_for_more():
    s1, s5 = (planned_size("paper", (), size, "train") for size in ("S1", "S5"))
    assert s5.mem_mb > s1.mem_mb
    e1, e5 = (planned_size("paper", (), size, "evaluate") for size in ("S1", "S5"))
    assert e5.mem_mb > e1.mem_mb and e5.runtime > e1.runtime
    one, eight = (planned_size("mini", (), "mini", "train", n) for n in (1, 8))
    assert eight.runtime > one.runtime and eight.mem_mb == one.mem_mb
    b100, b500 = (planned_size("paper", (), "S1", "train_branch", 1, k) for k in (100.0, 500.0))
    assert b500.runtime > b100.runtime
    assert planned_size("paper", (), "S1", "evaluate_branch").runtime < e1.runtime  # one checkpoint, not all


def test_long_trainings_ask_for_the_slice_limit_and_gpu_scales_feed_their_loader_workers():
    cfg = load_config("paper", "full", 0, [], "S5")
    train = job_size(cfg, "train")
    assert train.runtime == MAX_RUNTIME  # ~100B tokens: trained in slices
    assert train.threads == 1 + int(cfg.train.num_workers)
    assert job_size(cfg, "evaluate").threads == 1


@pytest.mark.parametrize("scale", ["smoke", "mini", "paper"])
def test_every_kind_stays_within_the_bounds(scale):
    plan = scale_plan(scale)
    for size in plan["sizes"]:
        for kind in KINDS:
            got = planned_size(scale, (), size, kind, 1, 100.0 if kind == "train_branch" else None)
            assert 1 <= got.threads <= 16 and got.mem_mb % 512 == 0 and got.mem_mb >= 512, (size, kind, got)
            assert MIN_RUNTIME <= got.runtime <= MAX_RUNTIME, (size, kind, got)


def test_a_grouped_evaluation_asks_for_all_its_runs_work_and_lm_eval_for_its_allowance():
    parts = [planned_size("paper", (), "S5", kind) for kind in GROUPED_KINDS]
    one, two = (planned_size("paper", (), "S5", "evaluate_group", n) for n in (1, 2))
    assert one.runtime >= max(p.runtime for p in parts) and two.runtime > one.runtime
    assert one.mem_mb == two.mem_mb == planned_size("paper", (), "S5", "evaluate").mem_mb  # one model at a time
    assert planned_size("paper", (), "S1", "lm_eval").runtime >= LM_EVAL_S / 60


def test_smoke_jobs_ask_for_a_laptop():
    # no budget branches at the smoke scale; lm_eval only when eval.lm_eval.run names tasks (none at smoke)
    for kind in set(KINDS) - {"train_branch", "lm_eval"}:
        got = planned_size("smoke", (), "tiny", kind)
        assert got.threads <= 2 and got.mem_mb <= 4096 and got.runtime <= 60, (kind, got)


def test_an_unknown_kind_names_the_allowed_ones():
    with pytest.raises(ValueError, match="allowed: prepare_data, train"):
        job_size(load_config("smoke", "full", 0, []), "tables")
