"""Causal self-attention with per-head sliding windows, attention sinks, RoPE or NoPE, and three backends.

One module serves full attention, SWA(w) and head-wise mixing: `windows` holds one entry per head (None is
full causal). Backends, chosen by `select_backend` unless forced:
  flash  flash-attn's `window_size` (CUDA, when importable, uniform windows),
  flex   FlexAttention with a block mask (CUDA; compiled once per shape),
  sdpa   scaled_dot_product_attention with an explicit boolean mask (everywhere; the reference).
The mask rule lives in one place, `allowed`, used by every backend and by the analyses.
"""

from __future__ import annotations

import functools
import importlib.util
import logging

import torch
import torch.nn.functional as F
from torch import Tensor, nn

log = logging.getLogger("hybridlab")
BACKENDS = ("auto", "sdpa", "flex", "flash")


def allowed(q_pos: Tensor, k_pos: Tensor, window: Tensor, sinks: int) -> Tensor:
    """Boolean [H, Tq, Tk] mask: causal, within the head's window (window <= 0 means full), or a sink key."""
    diff = q_pos[:, None] - k_pos[None, :]
    causal = diff >= 0
    w = window.to(diff.device)[:, None, None]
    in_window = (w <= 0) | (diff[None] < w)
    sink = (k_pos < sinks)[None, None, :]
    return causal[None] & (in_window | sink)


def rope_angles(pos: Tensor, dim: int, theta: float) -> tuple[Tensor, Tensor]:
    inv = theta ** (-torch.arange(0, dim, 2, device=pos.device, dtype=torch.float32) / dim)
    ang = pos.to(torch.float32)[:, None] * inv[None, :]
    return ang.cos(), ang.sin()


@torch.library.custom_op("hybridlab::rope_table", mutates_args=())
def rope_table(offset: int, length: int, dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    """cos and sin ([length, dim / 2], float32) of positions offset .. offset + length - 1: `rope_angles` behind an
    opaque op, so that torch.compile computes the table once per layer instead of fusing the trigonometry into
    every element of q and k (a mini step on the H200 spent 35% of its GPU time there; results/benchmarks/
    2026-12-01_h200_mechanism)."""
    return rope_angles(torch.arange(offset, offset + length, device=device), dim, theta)


@rope_table.register_fake
def _(offset: int, length: int, dim: int, theta: float, device: torch.device) -> tuple[Tensor, Tensor]:
    return (torch.empty(length, dim // 2, device=device, dtype=torch.float32),
            torch.empty(length, dim // 2, device=device, dtype=torch.float32))


def rotate(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of a [B, H, T, D] tensor by the angles of a [T, D/2] table."""
    x1, x2 = x.float().chunk(2, dim=-1)
    out = torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)
    return out.to(x.dtype)


def apply_rope(x: Tensor, pos: Tensor, theta: float) -> Tensor:
    """Rotate pairs (x[..., :d/2], x[..., d/2:]) of a [B, H, T, D] tensor by position-dependent angles."""
    return rotate(x, *rope_angles(pos, x.shape[-1], theta))


# Looked up once at import: an importlib call inside a compiled forward would break Dynamo's graph at every SWA
# layer (seen on the H200: a resumed graph after each backend choice).
_FLASH = importlib.util.find_spec("flash_attn") is not None


def _flash_available() -> bool:
    return _FLASH


def select_backend(requested: str, device: torch.device, windows: tuple[int | None, ...], sinks: int = 0) -> str:
    """The backend that runs these heads: `requested`, or under "auto" the fastest that computes them exactly.
    flash-attn has no attention sinks, so windows with sinks never go to it (a forced "flash" is refused)."""
    if requested not in BACKENDS:
        from hybridlab.config import ConfigError

        raise ConfigError("model.attn_backend", requested, ", ".join(BACKENDS))
    if requested == "flash" and sinks > 0:
        from hybridlab.config import ConfigError

        raise ConfigError("model.attn_backend", requested, f"sdpa, flex or auto: flash-attn cannot attend to the "
                          f"{sinks} sink tokens of variant.sinks")
    if requested != "auto":
        return requested
    if device.type != "cuda":
        return "sdpa"
    if all(w is None for w in windows):
        return "sdpa"  # causal SDPA dispatches to its own flash kernel
    if len(set(windows)) == 1 and sinks == 0 and _flash_available():
        return "flash"
    return "flex"


@functools.lru_cache(maxsize=64)
def _flex_block_mask(t: int, windows: tuple[int, ...], sinks: int, device: str):
    from torch.nn.attention.flex_attention import create_block_mask

    w = torch.tensor(windows, device=device)

    def mask_mod(b, h, q, k):
        win = w[h]
        return (q >= k) & ((win <= 0) | (q - k < win) | (k < sinks))

    return create_block_mask(mask_mod, B=None, H=len(windows), Q_LEN=t, KV_LEN=t, device=device)


@functools.cache
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # One compiled kernel per (length, dtype, grad mode, sinks, RoPE/NoPE strides): an evaluation over many
    # lengths passes dynamo's default limit of 8 recompiles, after which flex falls back to its unfused eager
    # form that materialises [B, H, T, T] scores. Allow enough kernels for a whole evaluation suite.
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    return torch.compile(flex_attention, dynamic=False)


class Attention(nn.Module):
    """Multi-head causal attention; `windows` per head (None = full), `sinks` always-visible first keys."""

    def __init__(self, d_model: int, n_heads: int, head_dim: int, windows: tuple[int | None, ...],
                 rope: bool | tuple[bool, ...], rope_theta: float = 10000.0, sinks: int = 0, backend: str = "auto"):
        """`rope`: RoPE on every head, on none, or per head (a tuple: head-wise mixing of RoPE and NoPE heads)."""
        super().__init__()
        rope_heads = tuple(rope) if isinstance(rope, tuple | list) else (bool(rope),) * n_heads
        if len(windows) != n_heads or len(rope_heads) != n_heads:
            raise ValueError(f"windows ({len(windows)}) and rope ({len(rope_heads)}) need one entry per head "
                             f"({n_heads})")
        self.n_heads, self.head_dim = n_heads, head_dim
        self.windows, self.rope_heads, self.rope_theta, self.sinks = windows, rope_heads, rope_theta, sinks
        self.backend = backend
        self.qkv = nn.Linear(d_model, 3 * n_heads * head_dim, bias=False)
        self.proj = nn.Linear(n_heads * head_dim, d_model, bias=False)

    @property
    def residual_out(self) -> nn.Linear:
        """The projection that writes into the residual stream (the model scales its initialisation)."""
        return self.proj

    def effective_windows(self, limit_full: int | None = None, limit_windowed: int | None = None) -> tuple:
        """Per-head windows after a receptive-field constraint on the full heads or the windowed heads."""
        out = []
        for w in self.windows:
            limit = limit_full if w is None else limit_windowed
            out.append(w if limit is None else (limit if w is None else min(w, limit)))
        return tuple(out)

    def forward(self, x: Tensor, *, windows: tuple | None = None, pos_offset: int = 0,
                cache: dict | None = None, capture: dict | None = None) -> Tensor:
        b, t, _ = x.shape
        windows = self.windows if windows is None else windows
        q, k, v = self.qkv(x).view(b, t, 3, self.n_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        pos = torch.arange(pos_offset, pos_offset + t, device=x.device)
        if self.rope:
            table = rope_table(pos_offset, t, self.head_dim, float(self.rope_theta), x.device)
            q, k = self._rotate(q, table), self._rotate(k, table)
        k_pos = pos
        if cache is not None:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
                k_pos = torch.cat([cache["pos"], pos])
            cache.update(zip(("k", "v", "pos"), self._trim(k, v, k_pos, windows, int(pos[-1])), strict=True))
        if capture is not None:
            capture.update(q=q.detach(), k=k.detach(), q_pos=pos, k_pos=k_pos)
        y = self._attend(q, k, v, pos, k_pos, windows, cached=cache is not None)
        return self.proj(y.transpose(1, 2).reshape(b, t, -1))

    @property
    def rope(self) -> bool:
        """Whether any head uses RoPE."""
        return any(self.rope_heads)

    def _rotate(self, x: Tensor, table: tuple[Tensor, Tensor]) -> Tensor:
        """RoPE on the heads that use it ([B, H, T, D]); NoPE heads pass through unchanged."""
        rotated = rotate(x, *table)
        if all(self.rope_heads):
            return rotated
        use = torch.tensor(self.rope_heads, device=x.device)[None, :, None, None]
        return torch.where(use, rotated, x)

    def _trim(self, k: Tensor, v: Tensor, k_pos: Tensor, windows: tuple, last: int):
        """Rolling cache: when every head is windowed, drop keys no future query can see (sinks stay)."""
        if any(w is None for w in windows):
            return k, v, k_pos
        keep = (k_pos > last - max(windows)) | (k_pos < self.sinks)
        return k[:, :, keep], v[:, :, keep], k_pos[keep]

    def _attend(self, q, k, v, q_pos, k_pos, windows, cached: bool) -> Tensor:
        full = all(w is None for w in windows)
        backend = "sdpa" if cached else select_backend(self.backend, q.device, windows, self.sinks)
        if backend == "sdpa":
            if full and not cached:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            win = torch.tensor([0 if w is None else w for w in windows])
            mask = allowed(q_pos, k_pos, win, self.sinks)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask[None])
        if backend == "flash":
            from flash_attn import flash_attn_func

            w = windows[0]
            win = (-1, 0) if w is None else (w - 1, 0)
            out = flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), causal=True,
                                  window_size=win)
            return out.transpose(1, 2)
        if backend == "flex":
            wins = tuple(0 if w is None else w for w in windows)
            block_mask = _flex_block_mask(q.shape[2], wins, self.sinks, str(q.device))
            return _compiled_flex()(q, k, v, block_mask=block_mask)
        raise AssertionError(backend)

    def flops(self, seq_len: int, windows: tuple | None = None) -> int:
        """Forward FLOPs for one sequence: projections plus QK^T and AV over the keys each query sees."""
        windows = self.windows if windows is None else windows
        inner = self.n_heads * self.head_dim
        d_model = self.qkv.in_features
        proj = 2 * seq_len * d_model * 3 * inner + 2 * seq_len * inner * d_model
        pairs = sum(visible_keys(seq_len, w, self.sinks) for w in windows)
        return proj + 2 * 2 * self.head_dim * pairs


def visible_keys(seq_len: int, window: int | None, sinks: int = 0) -> int:
    """Number of (query, key) pairs a causal head with this window computes over one sequence."""
    if window is None or window >= seq_len:
        return seq_len * (seq_len + 1) // 2
    inside = window * (window + 1) // 2 + (seq_len - window) * window
    extra_sinks = sum(max(0, min(sinks, t - window + 1)) for t in range(window, seq_len)) if sinks else 0
    return inside + extra_sinks

