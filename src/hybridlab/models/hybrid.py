"""The hybrid language model: embeddings, a stack of (mixer, MLP) blocks laid out by a `LayerSpec` list, and
an untied output head. Reads top to bottom; the mixers live in attention.py and recurrent/.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from hybridlab.models.attention import Attention
from hybridlab.models.layout import LayerSpec


@dataclass
class ModelShape:
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    attn_backend: str = "auto"
    mixer_backend: str = "auto"
    mixer_inner: dict[str, int] = field(default_factory=dict)  # recurrent kind -> inner width (param match)


@dataclass
class Receptive:
    """Receptive-field constraint at inference: limit the full-attention heads and/or the efficient layers
    (SWA heads and recurrent mixers) to the last W tokens. None leaves that class unconstrained."""

    full: int | None = None
    efficient: int | None = None


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int):
        super().__init__()
        self.up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.down = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        a, b = self.up(x).chunk(2, dim=-1)
        return self.down(nn.functional.silu(a) * b)

    def flops(self, seq_len: int) -> int:
        return 2 * seq_len * (self.up.in_features * self.up.out_features + self.down.in_features
                              * self.down.out_features)


def build_mixer(spec: LayerSpec, shape: ModelShape, layer_idx: int) -> nn.Module:
    if spec.is_attention:
        return Attention(shape.d_model, shape.n_heads, shape.head_dim, spec.windows, spec.rope,
                         shape.rope_theta, spec.sinks, shape.attn_backend)
    from hybridlab.models.recurrent import build_recurrent_mixer

    return build_recurrent_mixer(spec.kind, shape.d_model, shape.n_heads, shape.head_dim, layer_idx=layer_idx,
                                 n_layers=shape.n_layers, inner_dim=shape.mixer_inner.get(spec.kind),
                                 backend=shape.mixer_backend)


class Block(nn.Module):
    def __init__(self, spec: LayerSpec, shape: ModelShape, layer_idx: int):
        super().__init__()
        self.spec = spec
        self.norm1 = nn.RMSNorm(shape.d_model)
        self.mixer = build_mixer(spec, shape, layer_idx)
        self.norm2 = nn.RMSNorm(shape.d_model)
        self.mlp = SwiGLU(shape.d_model, shape.d_ff)

    def mix(self, h: Tensor, receptive: Receptive, pos_offset: int, cache: dict | None,
            capture: dict | None) -> Tensor:
        if self.spec.is_attention:
            windows = self.mixer.effective_windows(receptive.full, receptive.efficient)
            return self.mixer(h, windows=windows, pos_offset=pos_offset, cache=cache, capture=capture)
        if cache is None:
            return self.mixer(h, window=receptive.efficient)
        y, state = self.mixer(h, state=cache.get("state"), return_state=True)
        cache["state"] = state
        return y

    def forward(self, x: Tensor, receptive: Receptive, pos_offset: int = 0, cache: dict | None = None,
                capture: dict | None = None) -> Tensor:
        x = x + self.mix(self.norm1(x), receptive, pos_offset, cache, capture)
        return x + self.mlp(self.norm2(x))


class HybridLM(nn.Module):
    def __init__(self, shape: ModelShape, layout: list[LayerSpec]):
        super().__init__()
        if len(layout) != shape.n_layers:
            raise ValueError(f"layout has {len(layout)} layers, shape says {shape.n_layers}")
        self.shape, self.layout = shape, layout
        self.embed = nn.Embedding(shape.vocab_size, shape.d_model)
        self.blocks = nn.ModuleList(Block(spec, shape, i) for i, spec in enumerate(layout))
        self.norm = nn.RMSNorm(shape.d_model)
        self.lm_head = nn.Linear(shape.d_model, shape.vocab_size, bias=False)
        self.apply(self._init)
        # GPT-2's residual scaling, on the projections that write into the residual stream only (each mixer's
        # output projection and the MLP's down projection); every input projection keeps std 0.02.
        for block in self.blocks:
            for out in (block.mixer.residual_out, block.mlp.down):
                nn.init.normal_(out.weight, std=0.02 / (2 * shape.n_layers) ** 0.5)

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, std=0.02)

    def forward(self, idx: Tensor, *, receptive: Receptive | None = None, pos_offset: int = 0,
                cache: list[dict] | None = None, capture: dict[int, dict] | None = None,
                return_hidden: bool = False) -> Tensor | tuple[Tensor, list[Tensor]]:
        """Logits [B, T, V]. `capture` maps layer index -> dict filled with that layer's q, k (post-RoPE) and
        positions; `cache` is one dict per layer for incremental decoding; `return_hidden` also returns the
        residual stream before each block and after the last one."""
        receptive = receptive or Receptive()
        x = self.embed(idx)
        hidden = [x]
        for i, block in enumerate(self.blocks):
            x = block(x, receptive, pos_offset, None if cache is None else cache[i],
                      None if capture is None else capture.get(i))
            hidden.append(x)
        logits = self.lm_head(self.norm(x))
        return (logits, hidden) if return_hidden else logits

    def new_cache(self) -> list[dict]:
        return [{} for _ in self.blocks]

    @torch.no_grad()
    def generate(self, idx: Tensor, n_new: int) -> Tensor:
        """Greedy decoding with per-layer state (KV cache, rolling SWA cache, recurrent state)."""
        cache = self.new_cache()
        logits = self(idx, cache=cache)
        out = [logits[:, -1].argmax(-1)]
        pos = idx.shape[1]
        for _ in range(n_new - 1):
            logits = self(out[-1][:, None], cache=cache, pos_offset=pos)
            out.append(logits[:, -1].argmax(-1))
            pos += 1
        return torch.stack(out, dim=1)

    def non_embedding_params(self) -> int:
        skip = {id(self.embed.weight), id(self.lm_head.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    def flops_per_sequence(self, seq_len: int) -> int:
        """Forward FLOPs of one sequence from each module's own count (a multiply-add is 2 FLOPs)."""
        total = 2 * seq_len * self.shape.d_model * self.shape.vocab_size  # output head
        for block in self.blocks:
            total += block.mixer.flops(seq_len) + block.mlp.flops(seq_len)
        return total
