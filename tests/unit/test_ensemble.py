"""Runs batched into one step (hybridlab.train.ensemble): the stacked module computes exactly what the separate
models compute, forward and gradients, and an AdamW step on it is each model's own step."""

import pytest
import torch

from hybridlab.models.factory import build_model
from hybridlab.train.ensemble import stack_models, unstack_state

VOCAB, G, B, T = 61, 3, 2, 24


def models(cfg, g=G):
    out = []
    for seed in range(g):
        torch.manual_seed(100 + seed)
        out.append(build_model(cfg, VOCAB))
    return out


def batches(g=G, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (g, B, T + 1), generator=gen)


def lm_loss(logits, y):
    return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())


@pytest.mark.parametrize("variant", ["full", "swa128", "swa128_nope", "swa128_headwise", "gdn", "mamba2",
                                     "lightning"])
def test_stacked_forward_and_gradients_equal_the_separate_models(smoke_cfg, variant):
    ms = models(smoke_cfg(variant, 0, "model.attn_backend=sdpa", "model.mixer_backend=torch"))
    stacked = stack_models(ms)
    data = batches()
    x, y = data[..., :-1], data[..., 1:]
    out = stacked(x.reshape(G * B, T)).reshape(G, B, T, VOCAB)
    for g, m in enumerate(ms):
        torch.testing.assert_close(out[g], m(x[g]), rtol=1e-5, atol=1e-5)
    sum(lm_loss(out[g], y[g]) for g in range(G)).backward()
    grads = dict(stacked.named_parameters())
    for g, m in enumerate(ms):
        lm_loss(m(x[g]), y[g]).backward()
        for name, p in m.named_parameters():
            torch.testing.assert_close(grads[name].grad[g], p.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_adamw_on_the_stack_is_each_models_own_step(smoke_cfg):
    """In float64: Adam divides by the gradient's running RMS, so float32 rounding differences of near-zero gradient
    entries (the stacked product sums in another order) would be amplified to whole update steps."""
    ms = [m.double() for m in models(smoke_cfg("full", 0, "model.attn_backend=sdpa"))]
    stacked = stack_models(ms)
    opt_s = torch.optim.AdamW(stacked.parameters(), lr=1e-2, weight_decay=0.1)
    opts = [torch.optim.AdamW(m.parameters(), lr=1e-2, weight_decay=0.1) for m in ms]
    for step in range(3):
        data = batches(seed=step)
        x, y = data[..., :-1], data[..., 1:]
        out = stacked(x.reshape(G * B, T)).reshape(G, B, T, VOCAB)
        sum(lm_loss(out[g], y[g]) for g in range(G)).backward()
        opt_s.step()
        opt_s.zero_grad()
        for g, (m, o) in enumerate(zip(ms, opts, strict=True)):
            lm_loss(m(x[g]), y[g]).backward()
            o.step()
            o.zero_grad()
    for g, m in enumerate(ms):
        state = unstack_state(stacked, g)
        for name, p in m.state_dict().items():
            torch.testing.assert_close(state[name], p, rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(unstack_state(stacked, 0)["embed.weight"], unstack_state(stacked, 1)["embed.weight"])


def test_a_parameter_outside_the_stackable_pieces_is_refused_by_name(smoke_cfg):
    ms = models(smoke_cfg("gdn", 0), g=2)
    for m in ms:
        m.blocks[0].mixer.extra = torch.nn.Parameter(torch.zeros(3))  # read by no per_sample: cannot stack
    with pytest.raises(ValueError, match=r"parameter 'blocks\.0\.mixer\.extra'"):
        stack_models(ms)


def test_stacked_short_conv_keeps_each_models_channels():
    """The G models' depthwise convolutions side by side equal each model's own, with and without bias."""
    from hybridlab.models.recurrent.layers import ShortConv
    from hybridlab.train.ensemble import StackedShortConv

    for bias in (False, True):
        torch.manual_seed(0)
        convs = [ShortConv(5, 4, bias=bias) for _ in range(G)]
        x = torch.randn(G, B, 7, 5)
        y, tail = StackedShortConv(convs)(x.reshape(G * B, 7, 5))
        for g, c in enumerate(convs):
            ref, ref_tail = c(x[g])
            torch.testing.assert_close(y.view(G, B, 7, 5)[g], ref)
            torch.testing.assert_close(tail.view(G, B, 3, 5)[g], ref_tail)
