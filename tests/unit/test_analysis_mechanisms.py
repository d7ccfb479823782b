"""Probing, gradient influence and the receptive-field constraint, each with a known answer."""

import numpy as np
import pytest
import torch

from hybridlab.analysis.gradinf import grad_influence
from hybridlab.analysis.probe import last_token_features, probe_accuracy
from hybridlab.analysis.receptive import constraints, receptive_windows
from hybridlab.evals.evaluate import bucket_means, token_losses
from hybridlab.models import HybridLM, LayerSpec, ModelShape, Receptive

CPU = torch.device("cpu")
VOCAB = 50


def tiny_model(windows: list[tuple], seed: int = 0) -> HybridLM:
    torch.manual_seed(seed)
    shape = ModelShape(vocab_size=VOCAB, d_model=32, n_layers=len(windows), n_heads=2, head_dim=16, d_ff=64)
    layout = [LayerSpec("attn", "full" if w == (None, None) else "efficient", True, w) for w in windows]
    model = HybridLM(shape, layout).eval()
    with torch.no_grad():  # larger weights than the init, so every layer visibly matters
        for p in model.parameters():
            p.mul_(4.0)
    return model


def test_probe_reaches_one_on_separable_features_and_chance_on_random_labels():
    rng = np.random.default_rng(0)
    labels = np.arange(400) % 8
    separable = np.eye(8)[labels] * 3.0 + rng.normal(0, 0.1, (400, 8))
    assert probe_accuracy(np.hstack([separable, rng.normal(size=(400, 8))]), labels) == 1.0
    noise_acc = probe_accuracy(rng.normal(size=(400, 16)), rng.permutation(labels))
    assert noise_acc < 0.3  # chance is 1/8


def test_last_token_features_are_the_residual_stream_and_its_deltas():
    model = tiny_model([(None, None), (4, 4)])
    tokens = np.random.default_rng(0).integers(0, VOCAB, (5, 12))
    feats = last_token_features(model, tokens, batch=2, device=CPU)
    assert feats["resid"].shape == feats["delta"].shape == (2, 5, 32)
    _, hidden = model(torch.from_numpy(tokens), return_hidden=True)
    np.testing.assert_allclose(feats["resid"][1], hidden[2][:, -1].detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(feats["delta"].sum(0), (hidden[2] - hidden[0])[:, -1].detach().numpy(),
                               rtol=1e-4, atol=1e-5)


def test_gradient_influence_vanishes_beyond_the_receptive_field():
    window, layers, last_n, t = 3, 2, 3, 32
    model = tiny_model([(window, window)] * layers)
    tokens = np.random.default_rng(0).integers(0, VOCAB, (4, t))
    g = grad_influence(model, tokens, last_n=last_n, batch=2, device=CPU).numpy()  # g[d - 1]
    reach = last_n + layers * (window - 1)  # furthest distance d any target position can see
    assert g.shape == (t,)
    assert (g[:reach] > 0).all() and (g[reach:] == 0).all()
    assert all(p.requires_grad for p in model.parameters())  # restored


def test_gradient_influence_of_full_attention_reaches_the_start():
    model = tiny_model([(None, None)])
    g = grad_influence(model, np.random.default_rng(1).integers(0, VOCAB, (2, 24)), 20, 2, CPU).numpy()
    assert (g > 0).all()


def test_receptive_constraint_at_the_full_length_is_unconstrained_and_smaller_windows_are_not():
    model = tiny_model([(None, None), (4, 4), (None, None), (4, 4)])
    tokens = np.random.default_rng(0).integers(0, VOCAB, (3, 40))
    base = token_losses(model, tokens, 2, CPU)
    for rec in (Receptive(full=40), Receptive(efficient=40), Receptive(full=64, efficient=64)):
        torch.testing.assert_close(token_losses(model, tokens, 2, CPU, rec), base)
    assert not torch.allclose(token_losses(model, tokens, 2, CPU, Receptive(full=4)), base)
    assert not torch.allclose(token_losses(model, tokens, 2, CPU, Receptive(efficient=2)), base)
    # W above an SWA layer's own window leaves it as it is
    torch.testing.assert_close(token_losses(model, tokens, 2, CPU, Receptive(efficient=8)), base)


def test_receptive_windows_and_constraint_rows():
    assert receptive_windows([1 / 16, 0.125, 0.25, 0.5, 0.001], 256) == [1, 16, 32, 64, 128]
    rows = constraints([16, 32], 256)
    assert [(c, w) for c, w, _ in rows] == [("none", 256), ("full", 16), ("efficient", 16), ("full", 32),
                                            ("efficient", 32)]
    assert rows[1][2] == Receptive(full=16) and rows[2][2] == Receptive(efficient=16)


def test_bucket_means_by_position():
    values = torch.arange(1.0, 65.0)[None].repeat(2, 1)  # value == 1-based position, positions 1..64
    out = bucket_means(values, first=16)
    assert list(out) == [16, 32, 64]
    assert out[16] == pytest.approx(8.5) and out[32] == pytest.approx(24.5) and out[64] == pytest.approx(48.5)
    assert list(bucket_means(values[:, :63], first=16, size=64)) == [16, 32, 64]  # 63 predicted positions
    assert list(bucket_means(values[:, :5], first=1)) == [1, 2, 4, 5]
