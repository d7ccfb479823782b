"""Tests of hybridlab_kernels.attn_stats: reference vs a dense softmax, Triton vs reference, known answers.

Triton-backend tests run the compiled kernels on a GPU, or the CPU interpreter otherwise (see conftest.py).
Tolerances: float32 inputs 1e-5 on mass and entropy; 16-bit inputs 1e-2, because the reference and the
kernel may sum the float32 products of 16-bit values in different orders and the brief fixes that margin.
"""

from __future__ import annotations

import math

import pytest
import torch
from hybridlab_kernels import (
    AttnStats,
    attention_stats,
    attention_stats_reference,
    attention_stats_triton,
)

torch.set_num_threads(1)

TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 1e-2}


def make_inputs(B: int, H: int, Q: int, T: int, D: int, *, dtype=torch.float32, device="cpu", seed=0,
                per_batch_pos=False, head_target=False, min_pos=0):
    """Random q, k, query positions in [min_pos, T) (always including T-1, and min_pos when Q allows) and a
    sparse needle mask."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(B, H, Q, D, generator=g) * 2.0  # wider scores than N(0, 1): peaked and flat heads both
    k = torch.randn(B, H, T, D, generator=g)

    def positions() -> torch.Tensor:
        pos = min_pos + torch.randperm(T - min_pos, generator=g)[:Q]
        pos[0] = T - 1
        if Q > 1:
            pos[1] = min_pos
        return pos

    q_pos = torch.stack([positions() for _ in range(B)]) if per_batch_pos else positions()
    target = torch.rand((B, H, T) if head_target else (B, T), generator=g) < 0.15
    return (q.to(device=device, dtype=dtype), k.to(device=device, dtype=dtype), q_pos.to(device),
            target.to(device))


def dense_stats(q, k, q_pos, target, *, scale=None, window=None, sink=0):
    """The obvious computation, materialising the masked [B, H, Q, T] softmax in float64.

    Returns (mass, entropy, masked scores); disallowed scores are -inf.
    """
    B, H, Q, D = q.shape
    T = k.shape[2]
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    s = torch.einsum("bhqd,bhtd->bhqt", q.double(), k.double()) * scale
    p = (q_pos if q_pos.dim() == 2 else q_pos.expand(B, Q))[:, None, :, None]
    if window is None:
        w = torch.full((H,), T)
    elif isinstance(window, int):
        w = torch.full((H,), window)
    else:
        w = window
    w = w.to(q.device)[None, :, None, None]
    j = torch.arange(T, device=q.device)
    allowed = (j <= p) & ((p - j < w) | (j < sink))
    s = s.masked_fill(~allowed, float("-inf"))
    probs = torch.softmax(s, dim=-1)
    tgt = (target if target.dim() == 3 else target[:, None]).double()[:, :, None, :]
    return (probs * tgt).sum(-1), -torch.special.xlogy(probs, probs).sum(-1), s


def assert_top1_is_a_max(top1: torch.Tensor, scores: torch.Tensor, atol: float) -> None:
    """top1 must point at an allowed key whose score is within atol of the best (ties may go either way)."""
    chosen = scores.gather(-1, top1.long().unsqueeze(-1)).squeeze(-1)
    assert torch.isfinite(chosen).all(), "top1 points at a masked key"
    gap = (scores.max(-1).values - chosen).max().item()
    assert gap <= atol, f"top1 score is {gap} below the max"


def assert_matches_dense(stats: AttnStats, dense, tol: float, top1_atol: float) -> None:
    mass, entropy, scores = dense
    assert stats.mass.shape == stats.entropy.shape == stats.top1.shape == mass.shape
    assert stats.top1.dtype == torch.int64
    torch.testing.assert_close(stats.mass.double().cpu(), mass.cpu(), atol=tol, rtol=0)
    torch.testing.assert_close(stats.entropy.double().cpu(), entropy.cpu(), atol=tol, rtol=0)
    assert_top1_is_a_max(stats.top1.cpu(), scores.cpu(), top1_atol)


# (shape and layout of the inputs, masking options); shared by the reference and the Triton tests.
CASES = {
    "full": (dict(B=2, H=3, Q=5, T=97, D=16), {}),
    "q1_odd_t": (dict(B=1, H=2, Q=1, T=77, D=20), {}),
    "single_key": (dict(B=1, H=1, Q=1, T=1, D=8), {}),
    "window": (dict(B=1, H=3, Q=6, T=130, D=16), dict(window=16)),
    "window_sink": (dict(B=1, H=2, Q=7, T=150, D=16), dict(window=16, sink=4)),
    "per_head_window": (dict(B=2, H=3, Q=5, T=120, D=16), dict(window=torch.tensor([8, 1000, 1]))),
    "per_batch_pos_head_target": (dict(B=2, H=2, Q=6, T=90, D=24, per_batch_pos=True, head_target=True),
                                  dict(window=torch.tensor([30, 90]), sink=2)),
    "many_queries": (dict(B=1, H=1, Q=20, T=200, D=32), dict(scale=0.3)),
    # All queries late: the kernel visits the sink blocks, skips the middle ones, then walks the window.
    "late_window_sink": (dict(B=2, H=2, Q=3, T=200, D=16, min_pos=150), dict(window=16, sink=5)),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("case", list(CASES))
def test_reference_matches_dense(case, dtype):
    shape, opts = CASES[case]
    q, k, q_pos, target = make_inputs(**shape, dtype=dtype)
    stats = attention_stats_reference(q, k, q_pos, target, chunk_size=16, **opts)
    expected_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    assert stats.mass.dtype == stats.entropy.dtype == expected_dtype
    assert_matches_dense(stats, dense_stats(q, k, q_pos, target, **opts), TOL[dtype], top1_atol=TOL[dtype])


def test_reference_chunk_size_does_not_change_result():
    q, k, q_pos, target = make_inputs(B=1, H=2, Q=4, T=100, D=16)
    a = attention_stats_reference(q, k, q_pos, target, window=20, sink=3, chunk_size=7)
    b = attention_stats_reference(q, k, q_pos, target, window=20, sink=3, chunk_size=4096)
    torch.testing.assert_close(a.mass, b.mass, atol=1e-6, rtol=0)
    torch.testing.assert_close(a.entropy, b.entropy, atol=1e-6, rtol=0)


TRITON_CASES = [
    *[(case, torch.float32, None) for case in CASES],
    ("window_sink", torch.float32, 3),  # key range cut in 3 splits, merged by the combine kernel
    ("late_window_sink", torch.float32, 3),
    ("full", torch.float32, 4),
    ("full", torch.bfloat16, None),
    ("per_head_window", torch.float16, 2),
]


@pytest.mark.parametrize(("case", "dtype", "num_splits"), TRITON_CASES,
                         ids=[f"{c}-{str(d)[6:]}-splits{s}" for c, d, s in TRITON_CASES])
def test_triton_matches_reference(triton_device, case, dtype, num_splits):
    shape, opts = CASES[case]
    q, k, q_pos, target = make_inputs(**shape, dtype=dtype, device=triton_device)
    got = attention_stats_triton(q, k, q_pos, target, num_splits=num_splits, **opts)
    ref = attention_stats_reference(q, k, q_pos, target, **opts)
    tol = TOL[dtype]
    assert got.mass.dtype == got.entropy.dtype == torch.float32 and got.top1.dtype == torch.int64
    torch.testing.assert_close(got.mass, ref.mass, atol=tol, rtol=0)
    torch.testing.assert_close(got.entropy, ref.entropy, atol=tol, rtol=0)
    _, _, scores = dense_stats(q, k, q_pos, target, **opts)
    assert_top1_is_a_max(got.top1.cpu(), scores.cpu(), atol=1e-4)


def _run(backend: str, request, q, k, q_pos, target, **opts) -> AttnStats:
    if backend == "triton":
        device = request.getfixturevalue("triton_device")
        q, k, q_pos, target = q.to(device), k.to(device), q_pos.to(device), target.to(device)
    stats = attention_stats(q, k, q_pos, target, backend=backend, **opts)
    return AttnStats(stats.mass.cpu(), stats.entropy.cpu(), stats.top1.cpu())


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_needle_gets_all_the_mass(backend, request):
    """One key is aligned with the query and much longer than the rest: the query attends only to it."""
    T, D, needle = 200, 16, 37
    g = torch.Generator().manual_seed(1)
    k = 0.1 * torch.randn(1, 1, T, D, generator=g)
    k[0, 0, needle, 0] = 10.0
    q = torch.zeros(1, 1, 2, D)
    q[..., 0] = 10.0  # needle score 100 / sqrt(16) = 25; the others are about 0.25
    q_pos = torch.tensor([150, 30])  # the second query comes before the needle
    target = torch.zeros(1, T, dtype=torch.bool)
    target[0, needle] = True

    full = _run(backend, request, q, k, q_pos, target)
    assert full.mass[0, 0, 0] > 1 - 1e-6 and full.entropy[0, 0, 0] < 1e-5 and full.top1[0, 0, 0] == needle
    assert full.mass[0, 0, 1] == 0.0 and full.top1[0, 0, 1] != needle
    windowed = _run(backend, request, q, k, q_pos, target, window=10)  # 150 - 37 >= 10: out of the window
    assert windowed.mass[0, 0, 0] == 0.0
    assert 141 <= windowed.top1[0, 0, 0] <= 150
    sunk = _run(backend, request, q, k, q_pos, target, window=10, sink=40)  # ... but inside the sink
    assert sunk.mass[0, 0, 0] > 1 - 1e-6 and sunk.top1[0, 0, 0] == needle


@pytest.mark.parametrize("backend", ["reference", "triton"])
@pytest.mark.parametrize(("window", "sink", "visible"), [
    (None, 0, list(range(0, 181))),
    (10, 0, list(range(171, 181))),
    (10, 4, [0, 1, 2, 3, *range(171, 181)]),
    (1, 0, [180]),
])
def test_zero_query_is_uniform_over_visible_keys(backend, request, window, sink, visible):
    """A zero query scores every key 0: entropy = log(#visible), mass = share of visible needles,
    top1 = the first visible key (ties go to the earliest key)."""
    T, D, needles = 200, 8, (2, 30, 175, 190)
    q = torch.zeros(1, 2, 1, D)
    k = torch.randn(1, 2, T, D, generator=torch.Generator().manual_seed(2))
    target = torch.zeros(1, T, dtype=torch.bool)
    target[0, list(needles)] = True
    stats = _run(backend, request, q, k, torch.tensor([180]), target, window=window, sink=sink)
    n_needles = sum(1 for j in needles if j in visible)
    expected_entropy = torch.full((1, 2, 1), math.log(len(visible)))
    torch.testing.assert_close(stats.entropy, expected_entropy, atol=1e-6, rtol=0)
    torch.testing.assert_close(stats.mass, torch.full((1, 2, 1), n_needles / len(visible)), atol=1e-6, rtol=0)
    assert (stats.top1 == visible[0]).all()


def test_auto_backend_on_cpu_is_the_reference():
    q, k, q_pos, target = make_inputs(B=1, H=2, Q=3, T=40, D=8)
    auto = attention_stats(q, k, q_pos, target, window=8)
    ref = attention_stats_reference(q, k, q_pos, target, window=8)
    assert torch.equal(auto.mass, ref.mass) and torch.equal(auto.top1, ref.top1)


@pytest.mark.parametrize(("change", "error", "match"), [
    (dict(q_pos=torch.tensor([0, 40])), ValueError, "q_pos must lie in"),
    (dict(q_pos=torch.tensor([0, 1, 2])), ValueError, "q_pos must be"),
    (dict(target=torch.zeros(1, 39, dtype=torch.bool)), ValueError, "target must be"),
    (dict(target=torch.zeros(1, 40)), TypeError, "bool mask"),
    (dict(window=0), ValueError, "window sizes must be >= 1"),
    (dict(window=torch.tensor([8])), ValueError, "per-head window"),
    (dict(sink=-1), ValueError, "sink must be"),
    (dict(backend="flash"), ValueError, "backend must be"),
    (dict(k=torch.zeros(1, 2, 40, 4)), ValueError, "does not match"),
])
def test_bad_inputs_name_the_problem(change, error, match):
    args = dict(q=torch.zeros(1, 2, 2, 8), k=torch.zeros(1, 2, 40, 8), q_pos=torch.tensor([0, 39]),
                target=torch.zeros(1, 40, dtype=torch.bool))
    args.update(change)
    with pytest.raises(error, match=match):
        attention_stats(**args)


def test_triton_rejects_float64():
    q, k, q_pos, target = make_inputs(B=1, H=1, Q=1, T=8, D=8, dtype=torch.float64)
    with pytest.raises(TypeError, match="backend='reference'"):
        attention_stats_triton(q, k, q_pos, target)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(("dtype", "D", "Q"), [(torch.float32, 64, 8), (torch.bfloat16, 64, 8),
                                               (torch.bfloat16, 128, 300), (torch.float16, 256, 8)])
def test_triton_matches_reference_on_gpu(triton_device, dtype, D, Q):
    T, H = 4096, 4
    q, k, q_pos, target = make_inputs(B=2, H=H, Q=Q, T=T, D=D, dtype=dtype, device="cuda", seed=3)
    opts = dict(window=torch.tensor([128, T, 512, 10**9]), sink=4)
    ref = attention_stats_reference(q, k, q_pos, target, **opts)
    _, _, scores = dense_stats(q, k, q_pos, target, **opts)
    tol = 1e-4 if dtype == torch.float32 else TOL[dtype]
    for num_splits in (None, 1):
        got = attention_stats_triton(q, k, q_pos, target, num_splits=num_splits, **opts)
        torch.testing.assert_close(got.mass, ref.mass, atol=tol, rtol=0)
        torch.testing.assert_close(got.entropy, ref.entropy, atol=tol, rtol=0)
        assert_top1_is_a_max(got.top1, scores, atol=1e-3)
    auto = attention_stats(q, k, q_pos, target, **opts)
    torch.testing.assert_close(auto.entropy, ref.entropy, atol=tol, rtol=0)
