"""Recurrent mixers: chunked ops agree with the step-by-step recurrences (values and gradients), windows are
exact, and each mixer is causal, decodes incrementally, respects its window and counts its parameters."""

import logging

import pytest
import torch
import torch.nn.functional as F

from hybridlab.models.recurrent import MIXERS, build_recurrent_mixer, fla_backend, lightning, ops, which_backend

torch.set_num_threads(1)
F64 = torch.float64


def _inputs(B=2, H=3, T=37, Dk=8, Dv=5, dtype=F64, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)

    q, v = rand(B, H, T, Dk), rand(B, H, T, Dv)
    k = F.normalize(rand(B, H, T, Dk), dim=-1)  # unit keys keep the delta rule contractive
    g = F.logsigmoid(rand(B, H, T) + 2.0)
    beta = torch.sigmoid(rand(B, H, T))
    h0 = rand(B, H, Dk, Dv)
    return q, k, v, g, beta, h0


def _pair(op):
    if op == "simple_gla":
        return (lambda q, k, v, g, beta, **kw: ops.simple_gla_recurrent(q, k, v, g, **kw),
                lambda q, k, v, g, beta, chunk=8, **kw: ops.simple_gla_chunked(q, k, v, g, chunk, **kw))
    return (lambda q, k, v, g, beta, **kw: ops.gated_delta_recurrent(q, k, v, g, beta, **kw),
            lambda q, k, v, g, beta, chunk=8, **kw: ops.gated_delta_chunked(q, k, v, g, beta, chunk, **kw))


OPS = ["simple_gla", "gated_delta"]


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("T", [1, 8, 37])
@pytest.mark.parametrize("with_state", [False, True])
def test_chunked_matches_recurrent_fp64(op, T, with_state):
    q, k, v, g, beta, h0 = _inputs(T=T)
    rec, chunked = _pair(op)
    h0 = h0 if with_state else None
    o_r, s_r = rec(q, k, v, g, beta, initial_state=h0, scale=0.7)
    o_c, s_c = chunked(q, k, v, g, beta, initial_state=h0, scale=0.7)
    torch.testing.assert_close(o_c, o_r, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(s_c, s_r, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("op", OPS)
def test_chunked_matches_recurrent_fp32_and_keeps_dtype(op):
    q, k, v, g, beta, h0 = _inputs(dtype=torch.float32)
    rec, chunked = _pair(op)
    o_r, s_r = rec(q, k, v, g, beta, initial_state=h0)
    o_c, s_c = chunked(q, k, v, g, beta, chunk=16, initial_state=h0)
    torch.testing.assert_close(o_c, o_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(s_c, s_r, rtol=1e-5, atol=1e-5)
    o_half, s_half = chunked(*(x.bfloat16() for x in (q, k, v)), g, beta, chunk=16)
    assert o_half.dtype == torch.bfloat16 and s_half.dtype == torch.float32


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("decay_scale", [1.0, 30.0])
def test_many_chunks_and_strong_decay(op, decay_scale):
    """Many chunks (the chunk states are summed over up to 50 chunk log-decays) and decays strong enough
    that exp of a whole chunk's decay underflows in fp32: still equal to the recurrence, and finite."""
    q, k, v, g, beta, h0 = _inputs(B=1, H=2, T=200, seed=1)
    g = g * decay_scale
    rec, chunked = _pair(op)
    o_r, s_r = rec(q, k, v, g, beta, initial_state=h0)
    o_c, s_c = chunked(q, k, v, g, beta, chunk=4, initial_state=h0)
    torch.testing.assert_close(o_c, o_r, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(s_c, s_r, rtol=1e-9, atol=1e-9)
    o_32, s_32 = chunked(*(x.float() for x in (q, k, v, g, beta)), chunk=4, initial_state=h0.float())
    assert torch.isfinite(o_32).all() and torch.isfinite(s_32).all()
    torch.testing.assert_close(o_32.double(), o_r, rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("op", OPS)
def test_chunked_gradients_match_recurrent(op):
    leaves = [x.requires_grad_() for x in _inputs(B=1, H=2, T=11, Dk=4, Dv=3)]
    rec, chunked = _pair(op)
    grads = []
    for fn, kw in ((rec, {}), (chunked, {"chunk": 4})):
        o, s = fn(*leaves[:5], initial_state=leaves[5], **kw)
        loss = (o * torch.linspace(-1, 1, o.shape[-1], dtype=F64)).sum() + s.square().sum()
        grads.append(torch.autograd.grad(loss, leaves if op == "gated_delta" else leaves[:4] + leaves[5:]))
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("window", [1, 5, 8])
def test_window_equals_restarted_recurrence(op, window):
    q, k, v, g, beta, _ = _inputs(T=19)
    rec, chunked = _pair(op)
    o_w, state = chunked(q, k, v, g, beta, window=window)
    assert state is None
    for t in range(19):
        lo = max(0, t - window + 1)
        o_ref, _ = rec(*(x[:, :, lo:t + 1] for x in (q, k, v, g, beta)))
        torch.testing.assert_close(o_w[:, :, t], o_ref[:, :, -1], rtol=1e-10, atol=1e-10)
    o_full, _ = chunked(q, k, v, g, beta)
    o_wide, _ = chunked(q, k, v, g, beta, window=19)
    torch.testing.assert_close(o_wide, o_full, rtol=1e-10, atol=1e-10)


def test_window_rejects_initial_state_and_bad_values():
    q, k, v, g, beta, h0 = _inputs(T=4)
    with pytest.raises(ValueError, match="initial_state"):
        ops.simple_gla_chunked(q, k, v, g, initial_state=h0, window=2)
    with pytest.raises(ValueError, match="window"):
        ops.gated_delta_chunked(q, k, v, g, beta, window=0)


def test_flop_formulas():
    assert ops.simple_gla_flops(128, 16, 32, chunk=64) == 2 * 128 * 64 * 48 + 4 * 128 * 16 * 32
    assert ops.gated_delta_flops(128, 16, 32, chunk=64) == 128 * 64 * (5 * 16 + 3 * 32) + 6 * 128 * 16 * 32


# --------------------------------------------------------------------------------------------------- modules

D_MODEL, N_HEADS, HEAD_DIM, INNER, CONV, T_MOD = 16, 2, 4, 6, 3, 13
LOOKBACK = {"lightning": 0, "mamba2": CONV - 1, "gdn": CONV - 1}  # extra input reach of the short conv


def _mixer(kind, backend="torch", **kw):
    torch.manual_seed(0)
    m = build_recurrent_mixer(kind, D_MODEL, N_HEADS, HEAD_DIM, inner_dim=INNER, conv_size=CONV, chunk=4,
                              backend=backend, **kw)
    return m.double().eval()


def _x(T=T_MOD, B=2, seed=1):
    return torch.randn(B, T, D_MODEL, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_mixer_is_causal(kind):
    m, x = _mixer(kind), _x()
    y = m(x)
    assert y.shape == x.shape
    x2 = x.clone()
    x2[:, 7] += 1.0
    y2 = m(x2)
    torch.testing.assert_close(y2[:, :7], y[:, :7], rtol=0, atol=1e-12)
    assert (y2[:, 7] - y[:, 7]).abs().max() > 1e-6


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_incremental_decoding_matches_full_forward(kind):
    m, x = _mixer(kind), _x()
    y_full, state_full = m(x, return_state=True)
    for cuts in ([1] * T_MOD, [5, 1, 7], [2, 11]):
        state, ys, t = None, [], 0
        for n in cuts:
            y, state = m(x[:, t:t + n], state=state, return_state=True)
            ys.append(y)
            t += n
        torch.testing.assert_close(torch.cat(ys, dim=1), y_full, rtol=1e-10, atol=1e-10)
        for key in state_full:
            torch.testing.assert_close(state[key], state_full[key], rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(MIXERS))
@pytest.mark.parametrize("backend", ["recurrent", "auto"])
def test_backends_agree(kind, backend):
    x = _x()
    torch.testing.assert_close(_mixer(kind, backend)(x), _mixer(kind, "torch")(x), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_window_limits_receptive_field(kind):
    m, x, W = _mixer(kind), _x(), 4
    y = m(x, window=W)
    reach = W + LOOKBACK[kind]  # output t sees inputs t - reach + 1 .. t
    for p in (0, 3):
        x2 = x.clone()
        x2[:, p] += 1.0
        y2 = m(x2, window=W)
        torch.testing.assert_close(y2[:, p + reach:], y[:, p + reach:], rtol=0, atol=1e-12)
        assert (y2[:, p + reach - 1] - y[:, p + reach - 1]).abs().max() > 1e-6
    torch.testing.assert_close(m(x, window=T_MOD), m(x), rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="window"):
        m(x, window=W, return_state=True)


@pytest.mark.parametrize("kind", sorted(MIXERS))
@pytest.mark.parametrize("inner_dim", [None, 10])
def test_param_count_matches_numel(kind, inner_dim):
    m = build_recurrent_mixer(kind, 24, 2, 8, inner_dim=inner_dim, conv_size=4)
    assert MIXERS[kind].param_count(24, 2, 8, inner_dim, 4) == sum(p.numel() for p in m.parameters())


def test_mamba2_param_count_with_state_and_groups():
    kw = dict(d_state=5, n_groups=2)
    m = build_recurrent_mixer("mamba2", 24, 4, 8, inner_dim=12, conv_size=2, **kw)
    assert MIXERS["mamba2"].param_count(24, 4, 8, 12, 2, **kw) == sum(p.numel() for p in m.parameters())
    assert m(torch.randn(1, 5, 24)).shape == (1, 5, 24)


@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_flops_are_linear_in_length_past_one_chunk(kind):
    m = build_recurrent_mixer(kind, 32, 2, 8)
    assert m.flops(128) == 2 * m.flops(64) > 0


def test_bad_arguments_name_the_key():
    with pytest.raises(ValueError, match=r"mixer.*'rwkv'.*gdn.*lightning.*mamba2"):
        build_recurrent_mixer("rwkv", 16, 2, 4)
    with pytest.raises(ValueError, match="inner_dim"):
        build_recurrent_mixer("gdn", 16, 2, 4, inner_dim=7)
    with pytest.raises(ValueError, match="backend"):
        _mixer("lightning", backend="cuda")
    with pytest.raises(RuntimeError, match="not on CUDA"):
        _mixer("gdn", backend="fla")(_x(T=20))


def test_which_backend_reports_last_call():
    x = _x(T=20)
    _mixer("lightning", "recurrent")(x)
    assert which_backend("simple_gla") == "recurrent"
    _mixer("gdn", "auto")(x)
    assert which_backend("gated_delta") == "torch"


def test_bf16_forward_runs_and_keeps_dtype():
    for kind in sorted(MIXERS):
        m = _mixer(kind).float()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = m(_x(T=9).float())
        assert y.dtype == torch.bfloat16 and torch.isfinite(y).all()


# ------------------------------------------------------------------------------------------------ fla (GPU)

needs_fla = pytest.mark.skipif(
    not torch.cuda.is_available() or not fla_backend.fla_importable(), reason="needs CUDA and fla"
)


def _cuda_inputs(op, dtype, requires_grad=False):
    q, k, v, g, beta, h0 = (x.float().cuda() for x in _inputs(B=2, H=4, T=200, Dk=64, Dv=64, seed=3))
    ins = [q.to(dtype), k.to(dtype), v.to(dtype), g, beta.to(dtype) if op == "gated_delta" else None, h0]
    return [None if x is None else x.requires_grad_(requires_grad) for x in ins]


def _run(op, ins, backend):
    fn = fla_backend.simple_gla if op == "simple_gla" else fla_backend.gated_delta
    args = ins[:4] + ([ins[4]] if op == "gated_delta" else [])
    return fn(*args, ins[5], scale=64**-0.5, backend=backend)


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@needs_fla
@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fla_forward_matches_torch(op, dtype):
    ins = _cuda_inputs(op, dtype)
    with torch.no_grad():
        o_t, s_t = _run(op, ins, "torch")
        o_f, s_f = _run(op, ins, "fla")
    assert which_backend(op) == "fla"
    tol = 2e-2 if dtype == torch.bfloat16 else 2e-3
    assert _rel(o_f, o_t) < tol and _rel(s_f, s_t) < tol


@pytest.mark.gpu
@needs_fla
@pytest.mark.parametrize("op", OPS)
def test_fla_backward_matches_torch_or_falls_back(op, caplog):
    ins = _cuda_inputs(op, torch.bfloat16, requires_grad=True)
    grads = {}
    with caplog.at_level(logging.WARNING, logger="hybridlab"):
        for backend in ("torch", "auto"):
            o, s = _run(op, ins, backend)
            loss = o.float().square().sum() + s.sum()
            grads[backend] = torch.autograd.grad(loss, [x for x in ins if x is not None])
    _, bwd_fail = fla_backend._probe(op, ins[0].device, torch.bfloat16, 4, 64, 64)
    if bwd_fail is not None:
        assert which_backend(op) == "torch"
        assert any(op in r.getMessage() and "backward" in r.getMessage() for r in caplog.records)
        pytest.skip(f"fla backward refused here, fell back to PyTorch: {bwd_fail}")
    assert which_backend(op) == "fla"
    for a, b in zip(grads["auto"], grads["torch"], strict=True):
        assert _rel(a, b) < 5e-2


@pytest.mark.gpu
@needs_fla
@pytest.mark.parametrize("kind", sorted(MIXERS))
def test_mixers_on_cuda_match_torch_backend(kind):
    x = _x(T=150).float().cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        y_auto = _mixer(kind, "auto").float().cuda()(x)
        y_torch = _mixer(kind, "torch").float().cuda()(x)
    assert _rel(y_auto, y_torch) < 3e-2


# ------------------------------------------------------------------------ Lightning Attention as published


def test_alibi_slopes_and_depth_factor():
    assert lightning.alibi_slopes(4) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8]
    # 6 heads: the 4-head slopes, then slopes 1 and 3 of the 8-head set (2^-1, 2^-3)
    assert lightning.alibi_slopes(6) == [2.0**-2, 2.0**-4, 2.0**-6, 2.0**-8, 2.0**-1, 2.0**-3]
    first, middle, last = (lightning.decay_rates(4, layer, 4) for layer in (0, 2, 3))
    assert first == pytest.approx([s * (1 + 1e-5) for s in lightning.alibi_slopes(4)])
    assert middle == pytest.approx([s * (1 / 3 + 1e-5) for s in lightning.alibi_slopes(4)])
    assert max(last) < 1e-5  # the last layer hardly decays: deep layers remember longer
    assert lightning.decay_rates(2, 0, 1) == pytest.approx([s * (1 + 1e-5) for s in lightning.alibi_slopes(2)])


@pytest.mark.parametrize("layer_idx", [0, 2])
def test_lightning_matches_an_independent_step_by_step_form(layer_idx):
    """The module against the published layer written out token by token: SiLU(q, k, v), S_t = exp(-s) S_{t-1}
    + k_t^T v_t, o_t = q_t S_t unscaled, then sigmoid(gate) * RMSNorm(o) over the whole inner width, W_o."""
    torch.manual_seed(0)
    m = build_recurrent_mixer("lightning", D_MODEL, N_HEADS, HEAD_DIM, inner_dim=INNER, chunk=4,
                              layer_idx=layer_idx, n_layers=4, backend="torch").double()
    x = _x()
    B, T, H = x.shape[0], x.shape[1], N_HEADS
    q, k, v = (F.silu(p(x)).view(B, T, H, -1) for p in (m.q_proj, m.k_proj, m.v_proj))
    decay = torch.exp(-torch.tensor(lightning.decay_rates(H, layer_idx, 4), dtype=F64))
    S = torch.zeros(B, H, HEAD_DIM, INNER // H, dtype=F64)
    outs = []
    for t in range(T):
        S = decay[None, :, None, None] * S + k[:, t, :, :, None] * v[:, t, :, None, :]
        outs.append(torch.einsum("bhk,bhkv->bhv", q[:, t], S).reshape(B, -1))
    o = torch.stack(outs, dim=1)
    normed = o * torch.rsqrt(o.square().mean(-1, keepdim=True) + 1e-6) * m.norm.weight
    expected = m.o_proj(torch.sigmoid(m.g_proj(x)) * normed)
    torch.testing.assert_close(m(x), expected, rtol=1e-10, atol=1e-10)


def test_lightning_decay_depends_on_depth_in_the_model(smoke_cfg):
    from hybridlab.models import build_model

    model = build_model(smoke_cfg("lightning"), 50)
    mixers = [b.mixer for b in model.blocks if not b.spec.is_attention]
    layers = [i for i, b in enumerate(model.blocks) if not b.spec.is_attention]
    assert [m.rates for m in mixers] == [lightning.decay_rates(N, i, len(model.blocks))
                                         for m, i, N in zip(mixers, layers, [model.shape.n_heads] * 2, strict=True)]
    assert mixers[0].rates[0] > mixers[1].rates[0]
