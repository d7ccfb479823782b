"""Mamba-2 mixer (SSD): a scalar data-dependent decay per head, a short causal conv and a gated output.

in_proj(x) -> z (gate), xBC, dt;  x, B, C = SiLU(conv(xBC));  dt = softplus(dt + dt_bias);
g = -exp(A_log) dt;  y = SSD(q=C, k=B, v=x dt, g) + D x;  out = out_proj(RMSNorm(y * SiLU(z))).
B and C have d_state (default head_dim) channels per group; n_groups groups (default 1) are shared by the
heads, as in Mamba-2. The value head width is inner_dim / n_heads.
`window` W limits the SSD to the last W positions; through the conv (kernel K) an output then depends on the
last W + K - 1 input tokens.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridlab.models.recurrent import fla_backend, ops
from hybridlab.models.recurrent.layers import (
    GatedRMSNorm,
    ShortConv,
    at_least_fp32,
    check_call,
    decay_parameters,
    per_sample,
    resolve_inner_dim,
)


class Mamba2(nn.Module):
    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        layer_idx: int = 0,
        n_layers: int = 1,
        inner_dim: int | None = None,
        conv_size: int = 4,
        backend: str = "auto",
        d_state: int | None = None,
        n_groups: int = 1,
        chunk: int = ops.CHUNK,
        norm_eps: float = 1e-6,
    ):
        """layer_idx and n_layers are accepted for a uniform signature and unused."""
        super().__init__()
        if n_groups < 1 or n_heads % n_groups:
            raise ValueError(f"n_groups must divide n_heads={n_heads}, got {n_groups}")
        fla_backend.check_backend(backend)
        self.n_heads, self.n_groups = n_heads, n_groups
        self.d_state = head_dim if d_state is None else d_state
        self.inner_dim = resolve_inner_dim(n_heads, head_dim, inner_dim)
        self.backend, self.chunk = backend, chunk
        bc = 2 * n_groups * self.d_state
        self.in_proj = nn.Linear(d_model, 2 * self.inner_dim + bc + n_heads, bias=False)
        self.conv = ShortConv(self.inner_dim + bc, conv_size, bias=True)
        self.A_log, self.dt_bias = decay_parameters(n_heads)
        self.D = nn.Parameter(torch.ones(n_heads))
        self.D._no_weight_decay = True
        self.norm = GatedRMSNorm(self.inner_dim, self.inner_dim // n_heads, gate_first=True, eps=norm_eps)
        self.out_proj = nn.Linear(self.inner_dim, d_model, bias=False)

    @property
    def residual_out(self) -> nn.Linear:
        """The projection that writes into the residual stream (the model scales its initialisation)."""
        return self.out_proj

    def forward(
        self, x: Tensor, state: dict | None = None, return_state: bool = False, window: int | None = None
    ) -> Tensor | tuple[Tensor, dict]:
        """x [B, T, d_model] -> y [B, T, d_model]; state {"ssm": [B, H, N, P] fp32, "conv": [B, K-1, C]}."""
        check_call(state, return_state, window)
        B, T, _ = x.shape
        H, G, N = self.n_heads, self.n_groups, self.d_state
        z, xbc, dt = self.in_proj(x).split([self.inner_dim, self.inner_dim + 2 * G * N, H], dim=-1)
        xbc, conv_tail = self.conv(xbc, None if state is None else state["conv"])
        xs, b, c = xbc.split([self.inner_dim, G * N, G * N], dim=-1)
        xs = xs.view(B, T, H, -1).transpose(1, 2)
        b, c = (t.view(B, T, G, N).repeat_interleave(H // G, dim=2).transpose(1, 2) for t in (b, c))
        dt = F.softplus(at_least_fp32(dt) + per_sample(self.dt_bias, B)[:, None, :]).transpose(1, 2)  # [B, H, T]
        g = -at_least_fp32(per_sample(self.A_log, B)).exp()[:, :, None] * dt
        o, ssm = fla_backend.simple_gla(
            c, b, (xs * dt[..., None]).to(xs.dtype), g, None if state is None else state["ssm"],
            backend=self.backend, window=window, chunk=self.chunk,
        )
        y = o + per_sample(self.D, B)[:, :, None, None].to(o.dtype) * xs
        y = self.out_proj(self.norm(y.transpose(1, 2).reshape(B, T, self.inner_dim), z))
        return (y, {"ssm": ssm, "conv": conv_tail}) if return_state else y

    @staticmethod
    def param_count(
        d_model: int,
        n_heads: int,
        head_dim: int,
        inner_dim: int | None = None,
        conv_size: int = 4,
        *,
        d_state: int | None = None,
        n_groups: int = 1,
    ) -> int:
        inner = resolve_inner_dim(n_heads, head_dim, inner_dim)
        bc = 2 * n_groups * (head_dim if d_state is None else d_state)
        in_proj = d_model * (2 * inner + bc + n_heads)
        conv = (inner + bc) * (conv_size + 1)
        return in_proj + conv + 3 * n_heads + inner + inner * d_model

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs per sequence: 2 T d (2 inner + 2 G N + H) for in_proj, 2 T inner d for out_proj,
        2 T K (inner + 2 G N) for the conv, plus H * ops.simple_gla_flops(T, N, P, chunk) =
        H [2 T C (N + P) + 4 T N P] with N = d_state, P = inner / H."""
        T, d, H = seq_len, self.in_proj.in_features, self.n_heads
        bc = 2 * self.n_groups * self.d_state
        proj = 2 * T * d * (2 * self.inner_dim + bc + H) + 2 * T * self.inner_dim * d
        conv = 2 * T * self.conv.kernel_size * (self.inner_dim + bc)
        return proj + conv + H * ops.simple_gla_flops(T, self.d_state, self.inner_dim // H, self.chunk)
