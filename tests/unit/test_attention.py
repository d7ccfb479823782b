"""Attention: SDPA-with-mask backend against a plain softmax reference; causality; windows; NoPE; sinks."""

import pytest
import torch

from hybridlab.models.attention import Attention, allowed, apply_rope, visible_keys


def reference(attn: Attention, x: torch.Tensor, windows) -> torch.Tensor:
    """Materialised softmax attention written out by hand."""
    b, t, _ = x.shape
    q, k, v = attn.qkv(x).view(b, t, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    pos = torch.arange(t)
    if attn.rope:
        q, k = apply_rope(q, pos, attn.rope_theta), apply_rope(k, pos, attn.rope_theta)
    scores = q @ k.transpose(-1, -2) / attn.head_dim**0.5
    for h, w in enumerate(windows):
        for i in range(t):
            for j in range(t):
                ok = j <= i and (w is None or i - j < w or j < attn.sinks)
                if not ok:
                    scores[:, h, i, j] = float("-inf")
    y = scores.softmax(-1) @ v
    return attn.proj(y.transpose(1, 2).reshape(b, t, -1))


@pytest.mark.parametrize("windows, sinks, rope", [
    ((None,) * 4, 0, True), ((5,) * 4, 0, True), ((3, 3, None, None), 0, True), ((4,) * 4, 2, True),
    ((6,) * 4, 0, False),
])
def test_sdpa_matches_reference(windows, sinks, rope):
    torch.manual_seed(0)
    attn = Attention(32, 4, 8, windows, rope, sinks=sinks, backend="sdpa").double()
    x = torch.randn(2, 17, 32, dtype=torch.float64, requires_grad=True)
    out, ref = attn(x), reference(attn, x, windows)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    g1 = torch.autograd.grad(out.sum(), x)[0]
    g2 = torch.autograd.grad(ref.sum(), x)[0]
    torch.testing.assert_close(g1, g2, rtol=1e-9, atol=1e-9)


def test_causal_and_window():
    torch.manual_seed(0)
    attn = Attention(16, 2, 8, (4, 4), True)
    x = torch.randn(1, 20, 16)
    base = attn(x)
    x2 = x.clone()
    x2[0, 12] += 1.0
    changed = (attn(x2) - base).abs().amax(-1)[0] > 1e-6
    assert not changed[:12].any()            # causality: earlier outputs never change
    assert changed[12:16].all()              # within the window the change is seen
    assert not changed[16:].any()            # more than w back: never changes an SWA output


def test_nope_applies_no_rotation():
    """Without RoPE, attention is permutation-equivariant over the keys of a query's visible set."""
    torch.manual_seed(0)
    attn = Attention(16, 2, 8, (None, None), rope=False)
    cap_r, cap_n = {}, {}
    x = torch.randn(1, 6, 16)
    attn(x, capture=cap_n)
    q, k, _ = attn.qkv(x).view(1, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    torch.testing.assert_close(cap_n["q"], q)
    torch.testing.assert_close(cap_n["k"], k)
    Attention(16, 2, 8, (None, None), rope=True)(x, capture=cap_r)
    assert not torch.allclose(cap_r["k"][..., 1:, :], k[..., 1:, :])


def test_allowed_mask_counts_match_visible_keys():
    t = 50
    for w, sinks in [(None, 0), (7, 0), (7, 3)]:
        win = torch.tensor([0 if w is None else w])
        mask = allowed(torch.arange(t), torch.arange(t), win, sinks)
        assert int(mask.sum()) == visible_keys(t, w, sinks)


def test_flops_hand_count():
    attn = Attention(32, 4, 8, (None,) * 4, True)
    t = 10
    proj = 2 * t * 32 * 96 + 2 * t * 32 * 32
    assert attn.flops(t) == proj + 2 * 2 * 8 * 4 * (t * (t + 1) // 2)
    swa = Attention(32, 4, 8, (3,) * 4, True)
    assert swa.flops(t) == proj + 2 * 2 * 8 * 4 * (3 * 4 // 2 + 7 * 3)


def test_sinks_never_go_to_flash_attn(monkeypatch):
    """flash-attn's window has no attention sinks: windows with sinks take FlexAttention under auto, and a forced
    flash backend is a config error naming the key."""
    from hybridlab.config import ConfigError
    from hybridlab.models import attention

    monkeypatch.setattr(attention, "_flash_available", lambda: True)
    cuda = torch.device("cuda")
    assert attention.select_backend("auto", cuda, (16,) * 4, sinks=0) == "flash"
    assert attention.select_backend("auto", cuda, (16,) * 4, sinks=4) == "flex"
    with pytest.raises(ConfigError, match="model.attn_backend.*sink"):
        attention.select_backend("flash", cuda, (16,) * 4, sinks=4)


def test_headwise_layout_honours_full_rope(smoke_cfg):
    """Head-wise mixing with NoPE on its full heads: the full heads' queries and keys are not rotated, the SWA
    heads' are (RoPE kept on the windowed heads)."""
    from hybridlab.models import build_model

    model = build_model(smoke_cfg("swa128_headwise", 0, "variant.full_rope=false"), 50)
    attn = model.blocks[0].mixer
    full = [h for h, w in enumerate(attn.windows) if w is None]
    assert [attn.rope_heads[h] for h in full] == [False] * len(full) and any(attn.rope_heads)
    x = torch.randn(1, 12, attn.qkv.in_features)
    cap = {}
    attn(x, capture=cap)
    raw_q = attn.qkv(x).view(1, 12, 3, attn.n_heads, attn.head_dim).permute(2, 0, 3, 1, 4)[0]
    torch.testing.assert_close(cap["q"][:, full], raw_q[:, full])
    swa = [h for h in range(attn.n_heads) if h not in full]
    assert not torch.allclose(cap["q"][:, swa], raw_q[:, swa])


def test_rope_table_op_matches_the_angles_and_compiles():
    """The opaque table op gives rope_angles' values at any offset, passes torch's op checks, and a compiled
    attention layer that uses it matches the eager one (forward and gradients)."""
    from hybridlab.models.attention import rope_angles, rope_table

    cos, sin = rope_table(5, 7, 8, 10000.0, torch.device("cpu"))
    ref_cos, ref_sin = rope_angles(torch.arange(5, 12), 8, 10000.0)
    assert torch.equal(cos, ref_cos) and torch.equal(sin, ref_sin)
    torch.library.opcheck(rope_table, (3, 4, 8, 500.0, torch.device("cpu")))
    torch.manual_seed(0)
    attn = Attention(16, 2, 8, (None, 4), rope=(True, False), backend="sdpa")
    x = torch.randn(2, 12, 16, requires_grad=True)
    eager = attn(x, pos_offset=3)
    eager.square().sum().backward()
    g_eager = x.grad.clone()
    x.grad = None
    compiled = torch.compile(attn)(x, pos_offset=3)
    compiled.square().sum().backward()
    torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad, g_eager, rtol=1e-4, atol=1e-5)
