"""Hugging Face config of an exported hybridlab model (model_type "hybridlab"): the model shape and the
per-layer layout as plain data, plus an optional inference-time receptive-field constraint."""

from __future__ import annotations

from transformers import PretrainedConfig


class HybridLabConfig(PretrainedConfig):
    """shape: hybridlab.models.ModelShape's fields; layout: one LayerSpec per layer (kind, role, rope, windows
    (None = a full head), sinks); receptive_full / receptive_efficient: limit the full-attention heads or the
    efficient layers to the last W tokens at inference (None: unconstrained), like the paper's constraint
    models; checkpoint: where the weights came from (variant, seed, step, tokens, scale)."""

    model_type = "hybridlab"

    def __init__(self, shape: dict | None = None, layout: list[dict] | None = None,
                 receptive_full: int | None = None, receptive_efficient: int | None = None,
                 checkpoint: dict | None = None, **kwargs):
        self.shape, self.layout = dict(shape or {}), list(layout or [])
        self.receptive_full, self.receptive_efficient = receptive_full, receptive_efficient
        self.checkpoint = dict(checkpoint or {})
        if self.shape:  # the names generic tools read
            kwargs.setdefault("vocab_size", self.shape["vocab_size"])
            kwargs.setdefault("hidden_size", self.shape["d_model"])
            kwargs.setdefault("num_hidden_layers", self.shape["n_layers"])
            kwargs.setdefault("num_attention_heads", self.shape["n_heads"])
            kwargs.setdefault("head_dim", self.shape["head_dim"])
        kwargs.setdefault("tie_word_embeddings", False)
        super().__init__(**kwargs)
