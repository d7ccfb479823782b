"""Tests for hybridlab.train.schedule: budgets, step rounding, LR multipliers, WSD plans, checkpoints."""

import math

import pytest

from hybridlab.train.schedule import (
    Branch,
    budget_tokens,
    cost_saving,
    grad_accum_for,
    log_spaced_checkpoints,
    merge_steps,
    stable_checkpoints,
    stable_steps,
    tokens_to_steps,
    warmup_cosine,
    wsd,
    wsd_branch_plan,
)


def test_budget_and_steps_round_up():
    assert budget_tokens(100, 14_999_424) == 1_499_942_400
    assert tokens_to_steps(16 * 1024, global_batch=4, context=4096) == 1
    assert tokens_to_steps(16 * 1024 + 1, global_batch=4, context=4096) == 2
    assert tokens_to_steps(0, global_batch=4, context=4096) == 0


def test_grad_accum_for():
    assert grad_accum_for(global_batch=64, micro_batch=4, world_size=2) == 8
    with pytest.raises(ValueError, match="not divisible"):
        grad_accum_for(global_batch=60, micro_batch=4, world_size=2)


def test_warmup_cosine_endpoints():
    total, warmup = 100, 10
    assert warmup_cosine(0, total, warmup, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(warmup - 1, total, warmup, 0.1) == 1.0
    assert warmup_cosine(warmup, total, warmup, 0.1) == 1.0
    assert warmup_cosine(total - 1, total, warmup, 0.1) == pytest.approx(0.1)
    assert warmup_cosine(total + 5, total, warmup, 0.1) == pytest.approx(0.1)
    mid = warmup + (total - warmup - 1) / 2
    assert warmup_cosine(int(mid), total, warmup, 0.0) == pytest.approx(0.5, abs=0.02)
    values = [warmup_cosine(s, total, warmup, 0.1) for s in range(warmup, total)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))


@pytest.mark.parametrize("shape", ["linear", "sqrt", "cosine"])
def test_wsd_phases_and_endpoints(shape):
    warmup, stable_end, decay = 5, 50, 20
    values = [wsd(s, stable_end, decay, warmup, 0.05, shape) for s in range(stable_end + decay + 3)]
    assert values[0] == pytest.approx(1 / warmup)
    assert values[warmup - 1 : stable_end + 1] == [1.0] * (stable_end - warmup + 2)
    assert values[stable_end + decay - 1] == pytest.approx(0.05)
    assert values[-1] == pytest.approx(0.05)
    decay_part = values[stable_end : stable_end + decay]
    assert all(a > b for a, b in zip(decay_part, decay_part[1:], strict=False))


def test_wsd_rejects_bad_shape():
    with pytest.raises(ValueError, match="decay_shape"):
        wsd(0, 10, 5, decay_shape="exp")


TOKENS_PER_STEP = 1000


def test_branch_ends_land_on_budgets():
    # Multiples of tokens_per_step end exactly there; others round up (never train on fewer tokens).
    budgets = [50_000, 120_000, 200_500, 333_333]
    plan = wsd_branch_plan(budgets, TOKENS_PER_STEP, decay_frac=0.2)
    assert [b.budget_tokens for b in plan] == sorted(budgets)
    assert [b.end_step for b in plan] == [50, 120, 201, 334]
    for b in plan:
        assert b.end_step == tokens_to_steps(b.budget_tokens, global_batch=1, context=TOKENS_PER_STEP)
        assert 0 <= b.end_step * TOKENS_PER_STEP - b.budget_tokens < TOKENS_PER_STEP
        assert 0 <= b.fork_step < b.end_step
        assert b.fork_step + b.decay_steps == b.end_step
        assert b.decay_steps == round(0.2 * b.end_step)


@pytest.mark.parametrize("shape", ["linear", "sqrt", "cosine"])
def test_branch_multiplier_continuous_at_fork(shape):
    plan = wsd_branch_plan([40_000, 100_000, 250_000], TOKENS_PER_STEP, decay_frac=0.25, warmup=10)
    longest = plan[-1]
    for b in plan:
        # Before its fork a branch follows the stable run, which is what the longest branch does there too.
        for s in range(b.fork_step + 1):
            assert b.multiplier(s, 10, 0.0, shape) == longest.multiplier(s, 10, 0.0, shape)
        assert b.multiplier(b.fork_step, 10, 0.0, shape) == 1.0
        assert b.multiplier(b.end_step - 1, 10, 0.0, shape) == pytest.approx(0.0, abs=1e-12)
        step_change = b.multiplier(b.fork_step, 10, 0.0, shape) - b.multiplier(
            b.fork_step + 1, 10, 0.0, shape
        )
        assert 0 < step_change <= math.sqrt(1 / (b.decay_steps - 1)) + 1e-12


def test_branch_plan_validation():
    with pytest.raises(ValueError, match="warmup"):
        wsd_branch_plan([10_000], TOKENS_PER_STEP, decay_frac=0.5, warmup=8)
    with pytest.raises(ValueError, match="distinct"):
        wsd_branch_plan([10_000, 10_000], TOKENS_PER_STEP, decay_frac=0.2)
    with pytest.raises(ValueError, match="same end step"):
        wsd_branch_plan([10_001, 10_500], TOKENS_PER_STEP, decay_frac=0.2)


def test_cost_saving_formula():
    plan = [Branch(100, 80, 100, 20), Branch(200, 160, 200, 40), Branch(300, 240, 300, 60)]
    cost = cost_saving(plan)
    assert stable_steps(plan) == 240
    assert cost["branch_plan_steps"] == 240 + 120
    assert cost["independent_steps"] == 600
    assert cost["saving"] == pytest.approx(1 - 360 / 600)
    assert cost["speedup"] == pytest.approx(600 / 360)


def test_log_spaced_checkpoints():
    steps = log_spaced_checkpoints(10_000, 12, first=10)
    assert len(steps) == 12 and steps[0] == 10 and steps[-1] == 10_000
    assert steps == sorted(set(steps))
    ratios = [b / a for a, b in zip(steps, steps[1:], strict=False)]
    assert max(ratios) / min(ratios) < 1.1
    crowded = log_spaced_checkpoints(20, 15)
    assert len(crowded) == 15 and crowded == sorted(set(crowded)) and crowded[-1] == 20
    assert log_spaced_checkpoints(5, 10) == [1, 2, 3, 4, 5]
    assert log_spaced_checkpoints(7, 1) == [7]


def test_stable_checkpoints_include_every_fork():
    plan = wsd_branch_plan([30_000, 90_000, 270_000], TOKENS_PER_STEP, decay_frac=0.2)
    steps = stable_checkpoints(plan, n_log=8, first=1)
    assert {b.fork_step for b in plan} <= set(steps)
    assert steps[-1] == stable_steps(plan) == plan[-1].fork_step
    assert steps == merge_steps(steps, [plan[0].fork_step])
