"""Gated DeltaNet mixer: the delta rule with a data-dependent decay alpha and write strength beta.

q, k, v = SiLU(conv(W_qkv x)); q, k L2-normalised per head; beta = sigmoid(W_b x);
g = log alpha = -exp(A_log) softplus(W_a x + dt_bias);
S_t = (I - beta_t k_t^T k_t) alpha_t S_{t-1} + beta_t k_t^T v_t, o_t = q_t S_t / sqrt(Dk);
y = o_proj(RMSNorm(o) * SiLU(W_g x)).
`window` W limits the delta rule to the last W positions (exactly, by restarting it; evaluation only); through
the conv (kernel K) an output then depends on the last W + K - 1 input tokens.
"""

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


class GatedDeltaNet(nn.Module):
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
        chunk: int = ops.CHUNK,
        norm_eps: float = 1e-6,
    ):
        """head_dim is the q/k width per head; inner_dim (default n_heads * head_dim) the value width.
        layer_idx and n_layers are accepted for a uniform signature and unused."""
        super().__init__()
        fla_backend.check_backend(backend)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.inner_dim = resolve_inner_dim(n_heads, head_dim, inner_dim)
        self.backend, self.chunk = backend, chunk
        self.qk_dim = n_heads * head_dim
        self.qkv_proj = nn.Linear(d_model, 2 * self.qk_dim + self.inner_dim, bias=False)
        self.conv = ShortConv(2 * self.qk_dim + self.inner_dim, conv_size)  # = separate q, k, v convs
        self.a_proj = nn.Linear(d_model, n_heads, bias=False)
        self.b_proj = nn.Linear(d_model, n_heads, bias=False)
        self.g_proj = nn.Linear(d_model, self.inner_dim, bias=False)
        self.A_log, self.dt_bias = decay_parameters(n_heads)
        self.norm = GatedRMSNorm(self.inner_dim, self.inner_dim // n_heads, eps=norm_eps)
        self.o_proj = nn.Linear(self.inner_dim, d_model, bias=False)

    @property
    def residual_out(self) -> nn.Linear:
        """The projection that writes into the residual stream (the model scales its initialisation)."""
        return self.o_proj

    def forward(
        self, x: Tensor, state: dict | None = None, return_state: bool = False, window: int | None = None
    ) -> Tensor | tuple[Tensor, dict]:
        """x [B, T, d_model] -> y [B, T, d_model]; state {"ssm": [B, H, Dk, Dv] fp32, "conv": [B, K-1, C]}."""
        check_call(state, return_state, window)
        B, T, _ = x.shape
        H = self.n_heads
        qkv, conv_tail = self.conv(self.qkv_proj(x), None if state is None else state["conv"])
        q, k, v = qkv.split([self.qk_dim, self.qk_dim, self.inner_dim], dim=-1)
        q, k, v = (t.view(B, T, H, -1).transpose(1, 2) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1, eps=1e-6), F.normalize(k, dim=-1, eps=1e-6)
        beta = self.b_proj(x).sigmoid().transpose(1, 2)
        a = at_least_fp32(self.a_proj(x))
        A_log, dt_bias = (per_sample(p, B)[:, None, :] for p in (self.A_log, self.dt_bias))  # [B or 1, 1, H]
        g = (-at_least_fp32(A_log).exp() * F.softplus(a + dt_bias)).transpose(1, 2)
        o, ssm = fla_backend.gated_delta(
            q, k, v, g, beta, None if state is None else state["ssm"],
            scale=self.head_dim**-0.5, backend=self.backend, window=window, chunk=self.chunk,
        )
        y = self.o_proj(self.norm(o.transpose(1, 2).reshape(B, T, self.inner_dim), self.g_proj(x)))
        return (y, {"ssm": ssm, "conv": conv_tail}) if return_state else y

    @staticmethod
    def param_count(
        d_model: int, n_heads: int, head_dim: int, inner_dim: int | None = None, conv_size: int = 4
    ) -> int:
        inner = resolve_inner_dim(n_heads, head_dim, inner_dim)
        qkv = 2 * n_heads * head_dim + inner
        return d_model * (qkv + 2 * n_heads + inner) + qkv * conv_size + 2 * n_heads + inner + inner * d_model

    def flops(self, seq_len: int) -> int:
        """Forward FLOPs per sequence: 2 T d (2 H Dk + 2 inner + 2 H) for the q, k, v, gate, a, b
        projections, 2 T inner d for o_proj, 2 T K (2 H Dk + inner) for the convs, plus
        H * ops.gated_delta_flops(T, Dk, Dv, chunk) = H [T C (5 Dk + 3 Dv) + 6 T Dk Dv], Dv = inner / H."""
        T, d, H = seq_len, self.qkv_proj.in_features, self.n_heads
        qkv = 2 * self.qk_dim + self.inner_dim
        proj = 2 * T * d * (qkv + self.inner_dim + 2 * H) + 2 * T * self.inner_dim * d
        conv = 2 * T * self.conv.kernel_size * qkv
        return proj + conv + H * ops.gated_delta_flops(T, self.head_dim, self.inner_dim // H, self.chunk)
