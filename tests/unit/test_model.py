"""The hybrid LM: shapes, causality, incremental decoding equals the full forward, receptive constraint."""

import pytest
import torch

from hybridlab.config import variant_names
from hybridlab.models import Receptive, build_model

VOCAB = 101


@pytest.fixture(params=variant_names())
def model(request, smoke_cfg):
    torch.manual_seed(0)
    return build_model(smoke_cfg(request.param), VOCAB).eval()


def test_forward_shape_and_causality(model):
    x = torch.randint(0, VOCAB, (2, 40))
    y = model(x)
    assert y.shape == (2, 40, VOCAB)
    x2 = x.clone()
    x2[:, 30] = (x2[:, 30] + 1) % VOCAB
    torch.testing.assert_close(model(x2)[:, :30], y[:, :30])


def test_incremental_decoding_matches_full_forward(model):
    x = torch.randint(0, VOCAB, (2, 48))
    full = model(x)
    cache = model.new_cache()
    pieces = [model(x[:, :7], cache=cache)]
    for t in range(7, 48):
        pieces.append(model(x[:, t:t + 1], cache=cache, pos_offset=t))
    torch.testing.assert_close(torch.cat(pieces, 1), full, rtol=1e-4, atol=1e-5)


def test_receptive_constraint_at_full_length_is_identity(model):
    # Recurrent mixers' short convolutions reach conv_size - 1 tokens beyond their window, hence the margin.
    x = torch.randint(0, VOCAB, (1, 32))
    torch.testing.assert_close(model(x, receptive=Receptive(full=40, efficient=40)), model(x))


def test_variants_of_one_size_are_parameter_matched(smoke_cfg):
    full = build_model(smoke_cfg("full"), VOCAB).non_embedding_params()
    for name in variant_names():
        n = build_model(smoke_cfg(name), VOCAB).non_embedding_params()
        assert abs(n - full) / full < 0.02, (name, n, full)


def test_receptive_constraint_limits_full_layers(smoke_cfg):
    torch.manual_seed(0)
    m = build_model(smoke_cfg("full"), VOCAB).eval()
    x = torch.randint(0, VOCAB, (1, 40))
    x2 = x.clone()
    x2[0, 0] = (x2[0, 0] + 1) % VOCAB
    r = Receptive(full=8)
    # With every layer limited to 8 tokens, the last output (4 layers deep: 4*7 < 39) cannot see token 0.
    torch.testing.assert_close(m(x2, receptive=r)[:, -1], m(x, receptive=r)[:, -1])
    assert not torch.allclose(m(x2)[:, -1], m(x)[:, -1])


def test_generate_is_greedy(model):
    x = torch.randint(0, VOCAB, (1, 10))
    out = model.generate(x, 5)
    seq = x
    for i in range(5):
        nxt = model(seq)[:, -1].argmax(-1)
        assert int(nxt) == int(out[0, i])
        seq = torch.cat([seq, nxt[:, None]], 1)


def test_flops_exceed_six_n_approximation_only_through_attention(smoke_cfg):
    m = build_model(smoke_cfg("full"), VOCAB)
    t = 64
    matmul = 2 * t * (m.non_embedding_params() - sum(p.numel() for n, p in m.named_parameters() if "norm" in n))
    head = 2 * t * m.shape.d_model * VOCAB
    attn = 4 * m.shape.head_dim * m.shape.n_heads * (t * (t + 1) // 2) * m.shape.n_layers
    assert m.flops_per_sequence(t) == matmul + head + attn


@pytest.mark.parametrize("variant", ["swa128", "lightning", "mamba2", "gdn"])
def test_only_residual_outputs_get_the_residual_init_scale(smoke_cfg, variant):
    """Every input projection of every mixer starts at std 0.02 like attention's qkv; the projections that
    write into the residual stream (mixer outputs, MLP down) at 0.02 / sqrt(2 L)."""
    torch.manual_seed(0)
    model = build_model(smoke_cfg(variant), VOCAB)
    residual = {id(b.mixer.residual_out.weight) for b in model.blocks} | {id(b.mlp.down.weight) for b in model.blocks}
    scaled = 0.02 / (2 * len(model.blocks)) ** 0.5
    linears = [(n, m.weight) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(residual) == 2 * len(model.blocks)
    for name, w in linears:
        expected = scaled if id(w) in residual else 0.02
        assert abs(w.std().item() / expected - 1) < 0.3, (name, w.std().item(), expected)


@pytest.mark.parametrize("variant", ["swa128_headwise", "gdn"])
def test_the_forward_compiles_without_graph_breaks_but_the_state_kernel(smoke_cfg, variant):
    """Dynamo sees one graph for attention models; recurrent mixers break it only where the chunk-state kernel
    is called (its launch is opaque to Dynamo by design)."""
    import torch._dynamo as dynamo

    model = build_model(smoke_cfg(variant, 0, "model.attn_backend=sdpa"), VOCAB)
    explained = dynamo.explain(model)(torch.randint(0, VOCAB, (1, 80)))
    reasons = [str(b.reason) for b in explained.break_reasons]
    assert all("chunk_state" in r for r in reasons), reasons
    assert bool(reasons) == (variant == "gdn")
