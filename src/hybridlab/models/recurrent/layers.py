"""Pieces shared by the recurrent mixers: causal short conv, gated per-head RMSNorm, decay init, checks."""

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ShortConv(nn.Module):
    """Causal depthwise conv over time (kernel K), then SiLU; its decoding state is the last K-1 inputs."""

    def __init__(self, channels: int, kernel_size: int, bias: bool = False):
        super().__init__()
        if kernel_size < 1:
            raise ValueError(f"conv_size must be >= 1, got {kernel_size}")
        self.kernel_size = kernel_size
        bound = 1 / math.sqrt(kernel_size)  # nn.Conv1d's default for a depthwise kernel
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(channels).uniform_(-bound, bound)) if bias else None

    def forward(self, x: Tensor, tail: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x [B, T, C], tail [B, K-1, C] (previous inputs; zeros at the start) -> (y [B, T, C], new tail)."""
        B, T, C = x.shape
        if tail is None:
            tail = x.new_zeros(B, self.kernel_size - 1, C)
        xx = torch.cat([tail.to(x.dtype), x], dim=1)
        return F.silu(self.convolve(xx)), xx[:, xx.shape[1] - (self.kernel_size - 1):]

    def convolve(self, xx: Tensor) -> Tensor:
        """The depthwise convolution of xx [B, K-1+T, C] (valid part: [B, T, C])."""
        return F.conv1d(xx.transpose(1, 2), self.weight, self.bias, groups=xx.shape[-1]).transpose(1, 2)


class GatedRMSNorm(nn.Module):
    """RMSNorm over each head's channels with a per-channel weight, combined with a gate z.

    gate_first=False: norm(o) * act(z) (Gated DeltaNet, Lightning);
    gate_first=True: norm(o * act(z)) (Mamba-2).
    """

    def __init__(
        self, dim: int, head_dim: int, act: str = "silu", gate_first: bool = False, eps: float = 1e-6
    ):
        super().__init__()
        self.head_dim, self.gate_first, self.eps = head_dim, gate_first, eps
        self.act = {"silu": F.silu, "sigmoid": torch.sigmoid}[act]
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, o: Tensor, z: Tensor) -> Tensor:
        gate = self.act(at_least_fp32(z))
        h = at_least_fp32(o) * gate if self.gate_first else at_least_fp32(o)
        h = h.unflatten(-1, (-1, self.head_dim))
        h = self.scale((h * torch.rsqrt(h.square().mean(-1, keepdim=True) + self.eps)).flatten(-2))
        return (h if self.gate_first else h * gate).to(o.dtype)

    def scale(self, h: Tensor) -> Tensor:
        """The per-channel weight applied to the normalised h [..., dim]."""
        return h * self.weight


def per_sample(p: Tensor, batch: int) -> Tensor:
    """A per-head parameter vector for a batch: p [H] -> [1, H] (broadcasts over the batch). Where several models'
    vectors are stacked into one ([G, H], hybridlab.train.ensemble, the batch being the G models' blocks one after
    another), each sample gets its own model's row: [batch, H]."""
    if p.dim() == 1:
        return p[None]
    return p.repeat_interleave(batch // p.shape[0], dim=0)


def at_least_fp32(x: Tensor) -> Tensor:
    """x in fp32, or fp64 where it already is: norms and decays never run in half precision."""
    return x if x.dtype == torch.float64 else x.float()


def resolve_inner_dim(n_heads: int, head_dim: int, inner_dim: int | None) -> int:
    """Width of the value path; defaults to n_heads * head_dim and must split evenly into heads."""
    inner_dim = n_heads * head_dim if inner_dim is None else inner_dim
    if inner_dim < n_heads or inner_dim % n_heads:
        raise ValueError(f"inner_dim must be a positive multiple of n_heads={n_heads}, got {inner_dim}")
    return inner_dim


def check_call(state: dict | None, return_state: bool, window: int | None) -> None:
    if window is not None and (state is not None or return_state):
        raise ValueError("window is an evaluation-only restriction of a whole sequence: no state in or out")


def decay_parameters(
    n_heads: int, dt_min: float = 1e-3, dt_max: float = 0.1
) -> tuple[nn.Parameter, nn.Parameter]:
    """Mamba-2's initialisation of the data-dependent decay g = -exp(A_log) * softplus(a + dt_bias):
    A ~ U[1, 16] stored as log A; dt_bias = softplus^-1(dt), dt log-uniform in [dt_min, dt_max].
    Both are flagged `_no_weight_decay` (the Mamba convention) for the optimizer's parameter groups."""
    A_log = torch.empty(n_heads).uniform_(1, 16).log()
    log_dt = torch.rand(n_heads) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)
    dt = log_dt.exp().clamp_min(1e-4)
    dt_bias = dt + torch.log(-torch.expm1(-dt))
    params = nn.Parameter(A_log), nn.Parameter(dt_bias)
    for p in params:
        p._no_weight_decay = True
    return params
