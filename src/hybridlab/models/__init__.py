"""Model definitions: layouts (layout.py), attention (attention.py), recurrent mixers (recurrent/) and the
hybrid LM (hybrid.py). `build_model` turns a composed config into a model."""

from __future__ import annotations

from hybridlab.models.hybrid import HybridLM, ModelShape, Receptive
from hybridlab.models.layout import LayerSpec, build_layout

__all__ = ["HybridLM", "LayerSpec", "ModelShape", "Receptive", "build_layout", "build_model", "model_shape"]


def model_shape(cfg, vocab_size: int) -> ModelShape:
    m = cfg.model
    return ModelShape(vocab_size=vocab_size, d_model=m.d_model, n_layers=m.n_layers, n_heads=m.n_heads,
                      head_dim=m.head_dim, d_ff=m.d_ff, rope_theta=float(m.rope_theta),
                      attn_backend=m.attn_backend, mixer_backend=m.mixer_backend)


def build_model(cfg, vocab_size: int) -> HybridLM:
    """The model for a composed run config (scale + variant) and a vocabulary size."""
    return HybridLM(model_shape(cfg, vocab_size), build_layout(cfg.variant, cfg.model, cfg.scale))
