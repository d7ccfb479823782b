"""CUDA checks of the attention backends and of every variant at a 4K context; skipped without a GPU.

Run on the H100 (torch 2.11, CUDA 13): `python -m pytest -q -m gpu tests/gpu`. FlexAttention is compared with
the SDPA reference (outputs and gradients, fp32 and bf16 autocast, one attention layer and a whole model), `auto`
must pick the fused kernels, and every variant in `variant_names()` runs forward and backward in bf16 at 4K
(the acceptance item). Errors are relative norm errors |a - b| / |b| between the two backends.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F
from omegaconf import DictConfig
from torch import Tensor, nn

from hybridlab.config import load_config, variant_names
from hybridlab.models import build_model
from hybridlab.models.attention import Attention, select_backend

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

DEVICE = "cuda"
VOCAB = 32000
# fp32: both backends accumulate in fp32, so they differ by ~1e-6 (TF32 anywhere would show as ~1e-3).
# bf16: q, k, v and the probabilities carry 8 mantissa bits, rounded in a different order by each backend.
TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2}
CASES = {  # name: (window per head, None = full causal; attention sinks; RoPE)
    "causal": ((None,) * 4, 0, True),
    "swa16": ((16,) * 4, 0, True),
    "swa128": ((128,) * 4, 0, True),
    "headwise": ((16, 128, None, None), 0, True),
    "sinks": ((16,) * 4, 4, True),
    "nope": ((None, None, 16, 16), 0, False),
}


@pytest.fixture(autouse=True)
def _fresh_compile():
    """Every test compiles its own flex kernels: past dynamo's recompile limit (8 per function), or on a
    suppressed compile error, flex_attention would fall back to its unfused eager version without failing, and
    the tests would no longer check the fused kernel."""
    torch._dynamo.reset()
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, suppress_errors=False):
        yield


def rel_err(a: Tensor, b: Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def s1_config(variant: str, context: int, *overrides: str) -> DictConfig:
    return load_config("paper", variant, 0, [f"scale.context={context}", *overrides], "S1")


def lm_step(model: nn.Module, tokens: Tensor, bf16: bool) -> tuple[Tensor, Tensor]:
    """Logits and next-token loss of one forward; the backward leaves the gradients in the parameters."""
    with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=bf16):
        logits = model(tokens[:, :-1])
    loss = F.cross_entropy(logits.flatten(0, 1).float(), tokens[:, 1:].flatten())
    loss.backward()
    return logits, loss


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("t", [200, 256])  # block masks work in 128-token blocks: with a partial last one and without
@pytest.mark.parametrize("case", CASES)
def test_flex_matches_sdpa(case: str, t: int, dtype: torch.dtype):
    windows, sinks, rope = CASES[case]
    torch.manual_seed(0)
    sdpa, flex = (Attention(128, 4, 64, windows, rope, sinks=sinks, backend=b).to(DEVICE) for b in ("sdpa", "flex"))
    flex.load_state_dict(sdpa.state_dict())
    x = torch.randn(2, t, 128, device=DEVICE, requires_grad=True)
    cotangent = torch.randn(2, t, 128, device=DEVICE)
    results = []
    for attn in (sdpa, flex):
        with torch.autocast(DEVICE, dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = attn(x)
        loss = (out.float() * cotangent).sum()
        results.append((out, *torch.autograd.grad(loss, [x, attn.qkv.weight, attn.proj.weight])))
    for name, ref, got in zip(("output", "grad x", "grad qkv", "grad proj"), *results, strict=True):
        err = rel_err(got, ref)
        assert err < TOL[dtype], f"{name}: {err:.2e}"


def test_auto_picks_sdpa_for_full_attention_and_a_fused_kernel_for_windows():
    cuda = torch.device(DEVICE)
    uniform = "flash" if importlib.util.find_spec("flash_attn") else "flex"
    assert select_backend("auto", cuda, (None,) * 6) == "sdpa"
    assert select_backend("auto", cuda, (128,) * 6) == uniform
    assert select_backend("auto", cuda, (128,) * 3 + (None,) * 3) == "flex"  # flash-attn takes one window


@pytest.mark.parametrize("variant", variant_names())
def test_variant_runs_forward_and_backward_in_bf16_at_4k(variant: str):
    torch.manual_seed(0)
    model = build_model(s1_config(variant, 4096, "model.mixer_backend=torch"), VOCAB).to(DEVICE)
    _, loss = lm_step(model, torch.randint(0, VOCAB, (1, 4097), device=DEVICE), bf16=True)
    assert torch.isfinite(loss)
    grads = {n: p.grad for n, p in model.named_parameters() if p.requires_grad}
    bad = [n for n, g in grads.items() if g is None or not g.isfinite().all()]
    assert not bad, f"missing or non-finite gradients: {bad}"


def test_model_with_flex_matches_sdpa_in_fp32():
    """swa128 at context 512 with every attention layer on one backend; ref_context=512 keeps the window at 128
    (scaled from 16K it would be 4 tokens, inside a single block)."""
    torch.manual_seed(0)
    sdpa, flex = (build_model(s1_config("swa128", 512, "scale.ref_context=512", f"model.attn_backend={b}"),
                              VOCAB).to(DEVICE) for b in ("sdpa", "flex"))
    assert {spec.windows for spec in sdpa.layout} == {(128,) * 6, (None,) * 6}
    flex.load_state_dict(sdpa.state_dict())
    tokens = torch.randint(0, VOCAB, (2, 513), device=DEVICE)
    (ref, _), (got, _) = (lm_step(m, tokens, bf16=False) for m in (sdpa, flex))
    assert rel_err(got, ref) < TOL[torch.float32]
    for (name, p), q in zip(sdpa.named_parameters(), flex.parameters(), strict=True):
        err = rel_err(q.grad, p.grad)
        assert err < TOL[torch.float32], f"grad {name}: {err:.2e}"
