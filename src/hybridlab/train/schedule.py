"""Token budgets, step counts, LR multipliers and the WSD branching plan for the scaling grid.

Conventions used throughout:
  - A "step" is one optimizer update. Steps are 0-based: update `s` is the (s+1)-th update, and a checkpoint
    "at step s" holds the state after s updates (so the checkpoint at step `total` is the end of training).
  - The batch size is the GLOBAL batch in sequences (summed over devices and accumulation), so tokens per
    step = global_batch * context. `grad_accum_for` derives the accumulation from the per-device micro batch.
  - Step counts round UP: a budget of T tokens takes ceil(T / tokens_per_step) steps, so a run never trains on
    fewer tokens than its budget and overshoots by less than one step's tokens.
  - LR multipliers are pure functions of the update index `s`, meant for `torch.optim.lr_scheduler.LambdaLR`.
    Warmup is linear, (s + 1) / warmup, reaching 1 at update warmup - 1. Decays start at exactly 1 at their
    first update and reach `final_ratio` exactly at their last update, so WSD branches are continuous with
    the stable run at the fork.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

DECAY_SHAPES = ("linear", "sqrt", "cosine")


def budget_tokens(k: float, n_params: int) -> int:
    """Token budget D = k * N (N: non-embedding parameters), rounded to the nearest token."""
    if k <= 0 or n_params <= 0:
        raise ValueError(f"budget_tokens: k and n_params must be > 0, got k={k}, n_params={n_params}")
    return int(round(k * n_params))


def tokens_per_step(global_batch: int, context: int) -> int:
    """Tokens consumed by one optimizer update: global batch (sequences) times context length."""
    if global_batch <= 0 or context <= 0:
        raise ValueError(f"global_batch and context must be > 0, got {global_batch}, {context}")
    return global_batch * context


def tokens_to_steps(tokens: int, global_batch: int, context: int) -> int:
    """Optimizer steps to train on at least `tokens` tokens: ceil(tokens / (global_batch * context))."""
    if tokens < 0:
        raise ValueError(f"tokens_to_steps: tokens must be >= 0, got {tokens}")
    return -(-tokens // tokens_per_step(global_batch, context))


def grad_accum_for(global_batch: int, micro_batch: int, world_size: int = 1) -> int:
    """Gradient-accumulation steps so that micro_batch * world_size * accum == global_batch."""
    if global_batch <= 0 or micro_batch <= 0 or world_size <= 0:
        raise ValueError(
            f"global_batch, micro_batch and world_size must be > 0, got {global_batch}, {micro_batch}, "
            f"{world_size}"
        )
    per_pass = micro_batch * world_size
    if global_batch % per_pass:
        raise ValueError(
            f"global_batch={global_batch} is not divisible by micro_batch * world_size = {micro_batch} * "
            f"{world_size} = {per_pass}; choose a global batch that is a multiple of {per_pass}"
        )
    return global_batch // per_pass


def _check_step(step: int, warmup: int, final_ratio: float) -> None:
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0, got {warmup}")
    if not 0.0 <= final_ratio <= 1.0:
        raise ValueError(f"final_ratio must be in [0, 1], got {final_ratio}")


def _progress(step: int, start: int, length: int) -> float:
    """0 at update `start`, 1 at update `start + length - 1` (1 throughout when length is 1)."""
    if length <= 1:
        return 1.0
    return min(1.0, (step - start) / (length - 1))


def warmup_cosine(step: int, total: int, warmup: int = 0, final_ratio: float = 0.0) -> float:
    """Linear warmup, then cosine from 1 (update `warmup`) to `final_ratio` (update total - 1 and after)."""
    _check_step(step, warmup, final_ratio)
    if total <= warmup:
        raise ValueError(f"warmup_cosine: total ({total}) must exceed warmup ({warmup})")
    if step < warmup:
        return (step + 1) / warmup
    p = _progress(step, warmup, total - warmup)
    return final_ratio + (1.0 - final_ratio) * 0.5 * (1.0 + math.cos(math.pi * p))


def wsd(
    step: int,
    stable_end: int,
    decay_steps: int,
    warmup: int = 0,
    final_ratio: float = 0.0,
    decay_shape: str = "linear",
) -> float:
    """Warmup-stable-decay: linear warmup, 1 until update `stable_end`, then a decay over `decay_steps`
    updates (stable_end .. stable_end + decay_steps - 1) from 1 to `final_ratio`, and `final_ratio` after.

    Decay shapes, with p going 0 -> 1 over the decay: linear 1 - p; sqrt 1 - sqrt(p);
    cosine (1 + cos(pi p)) / 2; each mapped onto [final_ratio, 1].
    """
    _check_step(step, warmup, final_ratio)
    if decay_shape not in DECAY_SHAPES:
        raise ValueError(f"decay_shape={decay_shape!r} is not one of {DECAY_SHAPES}")
    if decay_steps < 1 or stable_end < warmup:
        raise ValueError(
            f"wsd: need decay_steps >= 1 and stable_end >= warmup, got decay_steps={decay_steps}, "
            f"stable_end={stable_end}, warmup={warmup}"
        )
    if step < warmup:
        return (step + 1) / warmup
    if step < stable_end:
        return 1.0
    p = _progress(step, stable_end, decay_steps)
    if decay_shape == "linear":
        shape = 1.0 - p
    elif decay_shape == "sqrt":
        shape = 1.0 - math.sqrt(p)
    else:
        shape = 0.5 * (1.0 + math.cos(math.pi * p))
    return final_ratio + (1.0 - final_ratio) * shape


@dataclass(frozen=True)
class Branch:
    """One budget's decay branch: loads the stable run's checkpoint at `fork_step` and runs updates
    fork_step .. end_step - 1 with the WSD decay (`wsd(s, fork_step, decay_steps, ...)`)."""

    budget_tokens: int
    fork_step: int
    end_step: int
    decay_steps: int

    def multiplier(
        self, step: int, warmup: int = 0, final_ratio: float = 0.0, decay_shape: str = "linear"
    ) -> float:
        """LR multiplier of update `step` on this branch (equal to the stable run's before the fork)."""
        return wsd(step, self.fork_step, self.decay_steps, warmup, final_ratio, decay_shape)


def wsd_branch_plan(
    budgets_tokens: Sequence[int], tokens_per_step: int, decay_frac: float, warmup: int = 0
) -> list[Branch]:
    """Plan one stable run and one decay branch per budget, sorted by budget.

    end_step = ceil(budget / tokens_per_step) (the module's rounding rule); decay_steps =
    max(1, round(decay_frac * end_step)); fork_step = end_step - decay_steps. The stable run (multiplier 1
    after warmup) must reach the largest fork step (`stable_steps`) and checkpoint every fork step
    (`stable_checkpoints`); the largest budget's branch then finishes the longest run.
    """
    if not 0.0 < decay_frac <= 1.0:
        raise ValueError(f"decay_frac must be in (0, 1], got {decay_frac}")
    if tokens_per_step <= 0:
        raise ValueError(f"tokens_per_step must be > 0, got {tokens_per_step}")
    budgets = sorted(budgets_tokens)
    if not budgets or budgets[0] <= 0 or len(set(budgets)) != len(budgets):
        raise ValueError(f"budgets_tokens must be distinct positive token counts, got {list(budgets_tokens)}")
    plan = []
    for budget in budgets:
        end = -(-budget // tokens_per_step)
        decay = max(1, int(round(decay_frac * end)))
        fork = end - decay
        if fork < warmup:
            raise ValueError(
                f"budget {budget} tokens: fork step {fork} falls inside the warmup ({warmup} steps); "
                f"lower decay_frac or the warmup, or raise the budget"
            )
        plan.append(Branch(budget, fork, end, decay))
    ends = [b.end_step for b in plan]
    if len(set(ends)) != len(ends):
        raise ValueError(f"two budgets round to the same end step ({ends}); tokens_per_step is too coarse")
    return plan


def stable_steps(plan: Sequence[Branch]) -> int:
    """Updates the shared stable run must complete: the largest fork step."""
    return max(b.fork_step for b in plan)


def cost_saving(plan: Sequence[Branch]) -> dict[str, float]:
    """Compare the WSD plan with one independent (warmup-)cosine run per budget, in optimizer steps.

    branch_plan_steps = stable_steps(plan) + sum(decay_steps)   (the stable run, then each branch's decay)
    independent_steps = sum(end_step)                           (each budget trained from scratch)
    saving = 1 - branch_plan_steps / independent_steps;  speedup = independent_steps / branch_plan_steps.
    """
    branch_steps = stable_steps(plan) + sum(b.decay_steps for b in plan)
    independent = sum(b.end_step for b in plan)
    return {
        "stable_steps": float(stable_steps(plan)),
        "decay_steps": float(sum(b.decay_steps for b in plan)),
        "branch_plan_steps": float(branch_steps),
        "independent_steps": float(independent),
        "saving": 1.0 - branch_steps / independent,
        "speedup": independent / branch_steps,
    }


def log_spaced_checkpoints(total_steps: int, n: int, first: int = 1) -> list[int]:
    """`min(n, total_steps - first + 1)` distinct steps from `first` to `total_steps` (both included), spaced
    as evenly as possible in log(step); crowded early steps are pushed up by one until they are distinct."""
    if not 1 <= first <= total_steps or n < 1:
        raise ValueError(
            f"need 1 <= first <= total_steps and n >= 1, got first={first}, total_steps={total_steps}, n={n}"
        )
    n = min(n, total_steps - first + 1)
    if n == 1:
        return [total_steps]
    ratio = total_steps / first
    steps: list[int] = []
    for i in range(n):
        target = round(first * ratio ** (i / (n - 1)))
        lowest = steps[-1] + 1 if steps else first
        steps.append(min(max(target, lowest), total_steps - (n - 1 - i)))
    return steps


def merge_steps(*step_lists: Iterable[int]) -> list[int]:
    """Sorted union of step lists (e.g. log-spaced checkpoints and fork steps)."""
    return sorted({int(s) for steps in step_lists for s in steps})


def stable_checkpoints(plan: Sequence[Branch], n_log: int = 0, first: int = 1) -> list[int]:
    """Checkpoint steps for the stable run: every fork step, plus `n_log` log-spaced steps up to its end."""
    end = stable_steps(plan)
    extra = log_spaced_checkpoints(end, n_log, min(first, end)) if n_log and end >= 1 else []
    return merge_steps((b.fork_step for b in plan), extra)
