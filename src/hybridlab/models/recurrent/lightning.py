"""Lightning Attention mixer, the layer of Lightning Attention-2 as MiniMax-01 publishes it.

Reference: MiniMax, "MiniMax-01: Scaling Foundation Models with Lightning Attention" (arXiv 2501.08313), and its
released modelling code (MiniMaxText01LightningAttention; the slopes of Qin et al., "Lightning Attention-2",
arXiv 2401.04658, which the paper's authors trained with the `lightning_attn` kernels):

    q, k, v = SiLU(W_q x), SiLU(W_k x), SiLU(W_v x)            (no 1/sqrt(d) scale)
    S_t = exp(-s_h) S_{t-1} + k_t^T v_t,  o_t = q_t S_t        (a fixed decay per head and layer)
    y = W_o (sigmoid(W_g x) * RMSNorm(o))                       (RMSNorm over the whole inner width)

The decay rate s_h of head h in layer l of an L-layer stack is the ALiBi slope of the head (`alibi_slopes`)
times (1 - l / (L - 1) + 1e-5) (times (1 + 1e-5) when L = 1): deeper layers decay more slowly and the last one
hardly at all. There is no short convolution, so `window` W makes each output depend on exactly the last W
input tokens.
"""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from hybridlab.models.recurrent import fla_backend, ops
from hybridlab.models.recurrent.layers import GatedRMSNorm, at_least_fp32, check_call, resolve_inner_dim


def alibi_slopes(n_heads: int) -> list[float]:
    """ALiBi's per-head slopes: 2^(-8 (h+1) / n) for a power-of-two n; otherwise those of the closest smaller
    power of two followed by every other slope of twice that count (Press et al., as Lightning Attention uses)."""
    if n_heads < 1:
        raise ValueError(f"n_heads must be >= 1, got {n_heads}")
    if math.log2(n_heads).is_integer():
        return [2.0 ** (-8.0 * (h + 1) / n_heads) for h in range(n_heads)]
    base = 2 ** math.floor(math.log2(n_heads))
    return alibi_slopes(base) + alibi_slopes(2 * base)[0::2][:n_heads - base]


def decay_rates(n_heads: int, layer_idx: int, n_layers: int) -> list[float]:
    """s_h of every head of layer `layer_idx` (0-based) in an `n_layers`-layer stack; the decay is exp(-s_h)."""
    if not 0 <= layer_idx < max(n_layers, 1):
        raise ValueError(f"layer_idx must be in [0, {n_layers}), got {layer_idx}")
    depth = 1 + 1e-5 if n_layers <= 1 else 1 - layer_idx / (n_layers - 1) + 1e-5
    return [s * depth for s in alibi_slopes(n_heads)]


class LightningAttention(nn.Module):
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
        """head_dim is the q/k width per head; inner_dim (default n_heads * head_dim) the value width; layer_idx
        and n_layers place the layer in the stack (they set the decays). conv_size is accepted for a uniform
        signature and unused."""
        super().__init__()
        fla_backend.check_backend(backend)
        self.n_heads, self.head_dim = n_heads, head_dim
        self.inner_dim = resolve_inner_dim(n_heads, head_dim, inner_dim)
        self.backend, self.chunk = backend, chunk
        self.rates = decay_rates(n_heads, layer_idx, n_layers)
        self.q_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(d_model, n_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(d_model, self.inner_dim, bias=False)
        self.g_proj = nn.Linear(d_model, self.inner_dim, bias=False)
        self.norm = GatedRMSNorm(self.inner_dim, self.inner_dim, act="sigmoid", eps=norm_eps)
        self.o_proj = nn.Linear(self.inner_dim, d_model, bias=False)

    @property
    def residual_out(self) -> nn.Linear:
        """The projection that writes into the residual stream (the model scales its initialisation)."""
        return self.o_proj

    def forward(
        self, x: Tensor, state: dict | None = None, return_state: bool = False, window: int | None = None
    ) -> Tensor | tuple[Tensor, dict]:
        """x [B, T, d_model] -> y [B, T, d_model]; state {"ssm": [B, H, Dk, Dv] fp32}."""
        check_call(state, return_state, window)
        B, T, _ = x.shape
        H = self.n_heads
        q, k, v = (F.silu(p(x)).view(B, T, H, -1).transpose(1, 2) for p in (self.q_proj, self.k_proj, self.v_proj))
        # Computed here, not held in a buffer, so that casting the module to bf16 never rounds the decays.
        rates = torch.tensor(self.rates, device=x.device, dtype=at_least_fp32(x).dtype)
        g = (-rates)[None, :, None].expand(B, H, T)
        o, ssm = fla_backend.simple_gla(
            q, k, v, g, None if state is None else state["ssm"],
            scale=1.0, backend=self.backend, window=window, chunk=self.chunk,
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
