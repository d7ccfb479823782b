"""CUDA checks of the recurrent mixers' fast path and of compiled training steps; skipped without a GPU.

The chunked ops on CUDA run their chunk-to-chunk state passing in the Triton kernel (hybridlab_kernels.chunk_state,
TF32 products): values and gradients against the step-by-step recurrence in float64 on the CPU. Compiled models
(FlexAttention windows, the kernel's graph break) against the same model run eagerly.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from hybridlab.config import load_config
from hybridlab.models import build_model
from hybridlab.models.recurrent import ops

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double().cpu() - b.double().cpu()).norm() / b.double().cpu().norm()).item()


def inputs(B=2, H=4, T=300, Dk=64, Dv=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, v = torch.randn(B, H, T, Dk, generator=g, dtype=torch.float64), torch.randn(B, H, T, Dv, generator=g,
                                                                                    dtype=torch.float64)
    k = F.normalize(torch.randn(B, H, T, Dk, generator=g, dtype=torch.float64), dim=-1)
    gate = F.logsigmoid(torch.randn(B, H, T, generator=g, dtype=torch.float64) + 3.0)
    beta = torch.sigmoid(torch.randn(B, H, T, generator=g, dtype=torch.float64))
    return q, k, v, gate, beta


@pytest.mark.parametrize("op", ["simple_gla", "gated_delta"])
def test_chunked_ops_on_cuda_match_the_recurrence(op):
    q, k, v, gate, beta = inputs()
    args = (q, k, v, gate) if op == "simple_gla" else (q, k, v, gate, beta)
    recurrent = ops.simple_gla_recurrent if op == "simple_gla" else ops.gated_delta_recurrent
    chunked = ops.simple_gla_chunked if op == "simple_gla" else ops.gated_delta_chunked
    leaves64 = [x.clone().requires_grad_() for x in args]
    o_ref, s_ref = recurrent(*leaves64, scale=0.125)
    (o_ref.square().sum() + s_ref.sum()).backward()
    leaves = [x.float().cuda().requires_grad_() for x in args]
    o, s = chunked(*leaves, scale=0.125)
    (o.square().sum() + s.sum()).backward()
    assert rel(o, o_ref) < 5e-3 and rel(s, s_ref) < 5e-3
    for a, b in zip(leaves, leaves64, strict=True):
        assert torch.isfinite(a.grad).all() and rel(a.grad, b.grad) < 1e-2


@pytest.mark.parametrize("variant", ["swa128", "gdn", "mamba2", "lightning", "swa128_headwise"])
def test_compiled_model_matches_eager(variant):
    cfg = load_config("mini", variant, 0, ["model.n_layers=4"])
    torch.manual_seed(0)
    model = build_model(cfg, 300).cuda()
    x = torch.randint(0, 300, (2, 1024), device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(x).float()
        compiled = torch.compile(model)(x).float()
    assert rel(compiled, eager) < 2e-2
