"""Lightning Attention mixer: linear attention with a fixed per-head exponential decay (ALiBi-like slopes).

y = o_proj(RMSNorm(o) * sigmoid(W_g x)), o from S_t = exp(g_h) S_{t-1} + k_t^T v_t, o_t = q_t S_t / sqrt(Dk),
with g_h = -2^(-8 (h+1) / H) and q, k optionally passed through SiLU. There is no short convolution, so
`window` W makes each output depend on exactly the last W input tokens.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridlab.models.recurrent import fla_backend, ops
from hybridlab.models.recurrent.layers import GatedRMSNorm, at_least_fp32, check_call, resolve_inner_dim


class LightningAttention(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        inner_dim: int | None = None,
        conv_size: int = 4,
        backend: str = "auto",
        feature_map: str | None = "silu",
        chunk: int = ops.CHUNK,
        norm_eps: float = 1e-6,
    ):
        """head_dim is the q/k width per head; inner_dim (default n_heads * head_dim) the value width.
        conv_size is accepted for a uniform signature and unused."""
        super().__init__()
        if feature_map not in ("silu", None):
            raise ValueError(f"feature_map must be 'silu' or None, got {feature_map!r}")
        fla_backend.check_backend(backend)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.inner_dim = resolve_inner_dim(n_heads, head_dim, inner_dim)
        self.backend, self.feature_map, self.chunk = backend, feature_map, chunk
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.inner_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.inner_dim, bias=False)
        self.norm = GatedRMSNorm(self.inner_dim, self.inner_dim // n_heads, act="sigmoid", eps=norm_eps)
        self.o_proj = nn.Linear(self.inner_dim, d_model, bias=False)

    def forward(
        self, x: Tensor, state: dict | None = None, return_state: bool = False, window: int | None = None
    ) -> Tensor | tuple[Tensor, dict]:
        """x [B, T, d_model] -> y [B, T, d_model]; state {"ssm": [B, H, Dk, Dv] fp32}."""
        check_call(state, return_state, window)
        B, T, _ = x.shape
        H = self.n_heads
        q = self.q_proj(x).view(B, T, H, -1).transpose(1, 2)
        k = self.k_proj(x).view(B, T, H, -1).transpose(1, 2)
        v = self.v_proj(x).view(B, T, H, -1).transpose(1, 2)
        if self.feature_map == "silu":
            q, k = F.silu(q), F.silu(k)
        # Computed here, not held in a buffer, so that casting the module to bf16 never rounds the decays.
        heads = torch.arange(1, H + 1, device=x.device, dtype=at_least_fp32(x).dtype)
        g = (-(2.0 ** (-8.0 * heads / H)))[None, :, None].expand(B, H, T)
        o, ssm = fla_backend.simple_gla(
            q, k, v, g, None if state is None else state["ssm"],
            scale=self.head_dim**-0.5, backend=self.backend, window=window, chunk=self.chunk,
        )
        y = self.o_proj(self.norm(o.transpose(1, 2).reshape(B, T, self.inner_dim), self.g_proj(x)))
        return (y, {"ssm": ssm}) if return_state else y

    @staticmethod
    def param_count(
        d_model: int, n_heads: int, head_dim: int, inner_dim: int | None = None, conv_size: int = 4
    ) -> int:
        inner = resolve_inner_dim(n_heads, head_dim, inner_dim)
        return 2 * d_model * n_heads * head_dim + 3 * d_model * inner + inner

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs per sequence: 2 T (2 d H Dk + 3 d inner) for the q, k, v, gate and output projections
        plus H * ops.simple_gla_flops(T, Dk, Dv, chunk) = H [2 T C (Dk + Dv) + 4 T Dk Dv]."""
        d = self.q_proj.in_features
        proj = 2 * seq_len * (2 * d * self.n_heads * self.head_dim + 3 * d * self.inner_dim)
        d_v = self.inner_dim // self.n_heads
        return proj + self.n_heads * ops.simple_gla_flops(seq_len, self.head_dim, d_v, self.chunk)
