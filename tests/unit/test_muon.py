"""Tests for hybridlab.train.muon: Muon/AdamW math against plain references, routing, training, resume."""

import copy
import io
import math

import pytest
import torch
from torch import nn

from hybridlab.train.muon import MuonAdamW, build_optimizers, newton_schulz, split_params

torch.set_num_threads(1)


def reference_orthogonalise(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Quintic Newton-Schulz written out plainly, float32."""
    a, b, c = 3.4445, -4.7750, 2.0315
    transpose = g.shape[0] > g.shape[1]
    x = g.T if transpose else g
    x = x / torch.linalg.matrix_norm(x, ord="fro")
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * (s @ s)) @ x
    return x.T if transpose else x


def reference_muon_steps(w, grads, lr, wd, mu, adjust):
    """Muon with Nesterov momentum, decoupled decay and the shape factor, one matrix, plainly."""
    rows, cols = w.shape
    scale = {
        "original": math.sqrt(max(1.0, rows / cols)),
        "match_rms_adamw": 0.2 * math.sqrt(max(rows, cols)),
    }
    w, m = w.clone(), torch.zeros_like(w)
    for g in grads:
        m = mu * m + (1 - mu) * g
        u = (1 - mu) * g + mu * m
        w = w * (1 - lr * wd) - lr * scale[adjust] * reference_orthogonalise(u)
    return w


def test_newton_schulz_matches_reference():
    torch.manual_seed(0)
    for shape in [(16, 40), (40, 16), (24, 24)]:
        g = torch.randn(*shape)
        torch.testing.assert_close(newton_schulz(g), reference_orthogonalise(g), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(32, 96), (96, 32)])
def test_newton_schulz_singular_values_in_band(shape):
    torch.manual_seed(1)
    sv = torch.linalg.svdvals(newton_schulz(torch.randn(*shape) * 123.0))
    # The 5-step quintic is tuned for speed, not convergence: singular values land near 1, about [0.68, 1.13].
    assert sv.min() > 0.65 and sv.max() < 1.2


@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_muon_update_matches_plain_reference(adjust, shape):
    torch.manual_seed(2)
    w0 = torch.randn(*shape)
    grads = [torch.randn(*shape) for _ in range(3)]
    p = nn.Parameter(w0.clone())
    opt = MuonAdamW(
        [p], lr=0.02, weight_decay=0.1, use_muon=True, momentum=0.9, adjust_lr_fn=adjust, ns_dtype="float32"
    )
    for g in grads:
        p.grad = g.clone()
        opt.step()
    expected = reference_muon_steps(w0, grads, lr=0.02, wd=0.1, mu=0.9, adjust=adjust)
    torch.testing.assert_close(p.detach(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch.optim.Muon needs torch >= 2.9")
@pytest.mark.parametrize("adjust", ["original", "match_rms_adamw"])
@pytest.mark.parametrize("shape", [(12, 20), (20, 12)])
def test_muon_update_matches_torch_muon(adjust, shape):
    # torch.optim.Muon always orthogonalises in bfloat16, so compare with ns_dtype="bfloat16".
    torch.manual_seed(3)
    ours = nn.Parameter(torch.randn(*shape))
    theirs = nn.Parameter(ours.detach().clone())
    opt_ours = MuonAdamW(
        [ours], lr=0.02, weight_decay=0.1, use_muon=True, adjust_lr_fn=adjust, ns_dtype="bfloat16"
    )
    opt_theirs = torch.optim.Muon([theirs], lr=0.02, weight_decay=0.1, adjust_lr_fn=adjust)
    for _ in range(3):
        g = torch.randn(*shape)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-6)


def test_adamw_groups_match_torch_adamw():
    torch.manual_seed(4)
    ours = nn.Parameter(torch.randn(7, 5))
    theirs = nn.Parameter(ours.detach().clone())
    opt_ours = MuonAdamW([ours], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95))
    opt_theirs = torch.optim.AdamW([theirs], lr=0.01, weight_decay=0.1, betas=(0.9, 0.95), foreach=False)
    for _ in range(4):
        g = torch.randn(7, 5)
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)


class Toy(nn.Module):
    def __init__(self, vocab: int = 11, width: int = 8):
        super().__init__()
        self.embedding = nn.Embedding(vocab, width)
        self.conv = nn.Conv1d(width, width, 3, groups=width)
        self.attn_norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, 2 * width)
        self.out = nn.Linear(2 * width, width, bias=False)
        self.final_norm = nn.RMSNorm(width)
        self.lm_head = nn.Linear(width, vocab, bias=False)


def test_split_params_routes_by_name_and_shape():
    toy = Toy()
    toy.out.weight._no_weight_decay = True
    routes = {k: [n for n, _ in v] for k, v in split_params(toy.named_parameters()).items()}
    assert routes["hidden"] == ["proj.weight"]
    assert sorted(routes["other"]) == sorted(
        ["embedding.weight", "conv.weight", "conv.bias", "attn_norm.weight", "attn_norm.bias", "proj.bias",
         "out.weight", "final_norm.weight", "lm_head.weight"]
    )


def test_build_optimizers_groups_and_scheduler():
    opt = build_optimizers(Toy(), lr=1e-3, muon_lr=2e-2, weight_decay=0.1)
    by_name = {g["name"]: g for g in opt.param_groups}
    assert by_name["muon"]["use_muon"] and by_name["muon"]["lr"] == 2e-2
    assert by_name["muon"]["weight_decay"] == 0.1 and by_name["adamw"]["weight_decay"] == 0.0
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 0.5)
    assert sched.get_last_lr() == [1e-2, 5e-4]


def test_invalid_groups_raise():
    with pytest.raises(ValueError, match="2-D"):
        MuonAdamW([nn.Parameter(torch.zeros(2, 3, 4))], use_muon=True)
    with pytest.raises(ValueError, match="adjust_lr_fn"):
        MuonAdamW([nn.Parameter(torch.zeros(2, 3))], use_muon=True, adjust_lr_fn="bogus")


TEACHER = torch.linspace(-1.0, 1.0, 6).unsqueeze(1)


def regression_model() -> nn.Module:
    torch.manual_seed(5)
    return nn.Sequential(
        nn.Linear(6, 16), nn.LayerNorm(16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)
    )


def regression_step(model, opt, step):
    gen = torch.Generator().manual_seed(100 + step)
    x = torch.randn(32, 6, generator=gen)
    y = torch.tanh(x @ TEACHER)
    opt.zero_grad()
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    opt.step()
    return loss.item()


def test_tiny_regression_trains():
    model = regression_model()
    opt = build_optimizers(model, lr=1e-2, muon_lr=1e-2, weight_decay=0.0)
    losses = [regression_step(model, opt, s) for s in range(60)]
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])


def test_state_dict_round_trip_gives_identical_updates():
    model = regression_model()
    opt = build_optimizers(model, lr=1e-2, muon_lr=1e-2, weight_decay=0.1)
    for s in range(3):
        regression_step(model, opt, s)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)

    resumed = copy.deepcopy(regression_model())
    resumed.load_state_dict(saved["model"])
    resumed_opt = build_optimizers(resumed, lr=1e-2, muon_lr=1e-2, weight_decay=0.1)
    resumed_opt.load_state_dict(saved["opt"])
    for s in range(3, 6):
        regression_step(model, opt, s)
        regression_step(resumed, resumed_opt, s)
    for a, b in zip(model.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_only_hidden_matrices_are_decayed_in_the_lm(smoke_cfg, optimizer):
    """Embeddings, output head, norms, conv filters and the Mamba decay parameters get no weight decay; the
    blocks' weight matrices do, on the AdamW path and the Muon path alike."""
    from hybridlab.models import build_model
    from hybridlab.train.lit import LitLM

    cfg = smoke_cfg("mamba2", 0, f"train.optimizer={optimizer}")
    model = build_model(cfg, 50)
    opt = LitLM(model, cfg).configure_optimizers()["optimizer"]
    decay = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert set(decay) == {id(p) for p in names.values()}
    for name, p in names.items():
        hidden = name.startswith("blocks.") and p.ndim == 2
        assert decay[id(p)] == (cfg.train.weight_decay if hidden else 0.0), name
