"""Building a model from a composed config: layout, parameter-matched mixer widths, the hybrid LM."""

from __future__ import annotations

from hybridlab.models.hybrid import HybridLM, ModelShape
from hybridlab.models.layout import build_layout


def match_inner_dim(kind: str, d_model: int, n_heads: int, head_dim: int) -> int:
    """The recurrent mixer's inner (value) width whose parameter count is closest to an attention layer's
    (q, k, v, o: 4 * d_model * n_heads * head_dim), over multiples of n_heads: parameter-matched variants."""
    from hybridlab.models.recurrent import MIXERS

    target = 4 * d_model * n_heads * head_dim
    count = MIXERS[kind].param_count
    candidates = range(n_heads, 8 * n_heads * head_dim + 1, n_heads)
    return min(candidates, key=lambda inner: abs(count(d_model, n_heads, head_dim, inner) - target))


def model_shape(cfg, vocab_size: int) -> ModelShape:
    m = cfg.model
    layout = build_layout(cfg.variant, cfg.model, cfg.scale)
    recurrent = {s.kind for s in layout if not s.is_attention}
    return ModelShape(vocab_size=vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
                      head_dim=m.head_dim, d_ff=m.d_ff, rope_theta=float(m.rope_theta),
                      attn_backend=m.attn_backend, mixer_backend=m.mixer_backend,
                      mixer_inner={k: match_inner_dim(k, m.d_model, m.n_heads, m.head_dim) for k in recurrent})


def build_model(cfg, vocab_size: int) -> HybridLM:
    """The model for a composed run config (scale + variant) and a vocabulary size."""
    return HybridLM(model_shape(cfg, vocab_size), build_layout(cfg.variant, cfg.model, cfg.scale))
