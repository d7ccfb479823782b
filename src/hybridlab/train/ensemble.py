"""Several runs' models as one module: the runs batched into one step (issue 15's fourth option).

A mini model (3.4M parameters, 32 x 1024 tokens a step) leaves an H200 mostly idle: the step is bound by the host
(Python, launches). `stack_models` turns G models of one shape into one module whose step does the work of all G:
every parameterised leaf (nn.Linear, nn.Embedding, nn.RMSNorm) becomes one module holding the G weights stacked
([G, ...]) and applying model g's weights to the g-th block of the batch, while everything between them
(attention kernels, RoPE, the residual stream) runs on the folded batch [G x B, ...] as it is. So the forward of
the stacked module on the G batches concatenated equals the G models' forwards, each gradient block equals that
model's own gradient (the losses are summed), and any element-wise optimizer (AdamW) on the stacked parameters
updates each model as it would alone.

The recurrent mixers stack too: their short convolutions (ShortConv: the G models' channels side by side in one
depthwise convolution) and gated norms (GatedRMSNorm) have stacked forms, and their per-head vectors (A_log,
dt_bias, D), which the mixers read through `per_sample`, become [G, H] with one row per model. Any other parameter
outside these leaves is refused by name. Used by `hybridlab benchmark --ensemble G` and by training
(`train.stack_seeds`, hybridlab.train.stacked).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from hybridlab.models.recurrent.layers import GatedRMSNorm, ShortConv

STACKABLE = (nn.Linear, nn.Embedding, nn.RMSNorm, ShortConv, GatedRMSNorm)
# 1-D per-head parameters the recurrent mixers read through layers.per_sample: stacked as [G, H].
PER_SAMPLE_VECTORS = ("A_log", "dt_bias", "D")


class StackedLinear(nn.Module):
    def __init__(self, mods: list[nn.Linear]):
        super().__init__()
        self.g = len(mods)
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [G, out, in]
        self.bias = None if mods[0].bias is None else nn.Parameter(torch.stack([m.bias.detach() for m in mods]))

    def forward(self, x: Tensor) -> Tensor:
        lead = x.shape[:-1]
        y = torch.bmm(x.reshape(self.g, -1, x.shape[-1]), self.weight.transpose(1, 2))
        if self.bias is not None:
            y = y + self.bias[:, None, :]
        return y.reshape(*lead, -1)


class StackedEmbedding(nn.Module):
    def __init__(self, mods: list[nn.Embedding]):
        super().__init__()
        self.g, self.n = len(mods), mods[0].num_embeddings
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [G, V, d]

    def forward(self, idx: Tensor) -> Tensor:
        offset = torch.arange(self.g, device=idx.device).repeat_interleave(idx.shape[0] // self.g) * self.n
        flat = self.weight.reshape(self.g * self.n, -1)
        return nn.functional.embedding(idx + offset.view(-1, *([1] * (idx.dim() - 1))), flat)


class StackedRMSNorm(nn.Module):
    def __init__(self, mods: list[nn.RMSNorm]):
        super().__init__()
        self.g, self.eps, self.shape = len(mods), mods[0].eps, tuple(mods[0].normalized_shape)
        if len(self.shape) != 1 or mods[0].weight is None:
            raise ValueError("StackedRMSNorm: only RMSNorm over the last dimension with a weight")
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [G, d]

    def forward(self, x: Tensor) -> Tensor:
        y = nn.functional.rms_norm(x.reshape(self.g, -1, x.shape[-1]), self.shape, None, self.eps)
        return (y * self.weight[:, None, :]).reshape(x.shape)


class StackedShortConv(ShortConv):
    """G causal depthwise convolutions as one with G x C channels: model g's channels convolve block g's inputs."""

    def __init__(self, mods: list[ShortConv]):
        nn.Module.__init__(self)
        self.g, self.kernel_size = len(mods), mods[0].kernel_size
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [G, C, 1, K]
        self.bias = None if mods[0].bias is None else nn.Parameter(torch.stack([m.bias.detach() for m in mods]))

    def convolve(self, xx: Tensor) -> Tensor:
        gb, length, c = xx.shape
        side = xx.view(self.g, gb // self.g, length, c).permute(1, 2, 0, 3).reshape(gb // self.g, length, -1)
        bias = None if self.bias is None else self.bias.reshape(-1)
        y = nn.functional.conv1d(side.transpose(1, 2), self.weight.reshape(-1, 1, self.kernel_size), bias,
                                 groups=self.g * c).transpose(1, 2)  # [B, T, G x C]
        return y.reshape(gb // self.g, -1, self.g, c).permute(2, 0, 1, 3).reshape(gb, -1, c)


class StackedGatedRMSNorm(GatedRMSNorm):
    """G gated norms: the normalisation as it is, then model g's channel weights on block g."""

    def __init__(self, mods: list[GatedRMSNorm]):
        nn.Module.__init__(self)
        m = mods[0]
        self.g, self.head_dim, self.gate_first, self.eps, self.act = len(mods), m.head_dim, m.gate_first, m.eps, m.act
        self.weight = nn.Parameter(torch.stack([m.weight.detach() for m in mods]))  # [G, dim]

    def scale(self, h: Tensor) -> Tensor:
        return (h.reshape(self.g, -1, h.shape[-1]) * self.weight[:, None, :]).reshape(h.shape)


def _stacked(mods: list[nn.Module]) -> nn.Module:
    kind = type(mods[0])
    if kind is nn.Linear:
        return StackedLinear(mods)
    if kind is nn.Embedding:
        return StackedEmbedding(mods)
    if kind is ShortConv:
        return StackedShortConv(mods)
    if kind is GatedRMSNorm:
        return StackedGatedRMSNorm(mods)
    return StackedRMSNorm(mods)


def _vectors(model: nn.Module) -> list[str]:
    """Names of the per-head vectors (PER_SAMPLE_VECTORS, 1-D) that sit directly on a module."""
    return [n for n, p in model.named_parameters() if n.rpartition(".")[2] in PER_SAMPLE_VECTORS and p.dim() == 1]


def stack_refusal(model: nn.Module) -> str | None:
    """None when `model` can be stacked; else why not: the first parameter outside the stackable leaves."""
    covered = set()
    for name, m in model.named_modules():
        if isinstance(m, STACKABLE):
            covered |= {f"{name}.{p}" if name else p for p, _ in m.named_parameters()}
    covered |= set(_vectors(model))
    loose = [n for n, _ in model.named_parameters() if n not in covered]
    if loose:
        return (f"parameter {loose[0]!r} is not in a Linear, Embedding, RMSNorm, ShortConv or GatedRMSNorm, nor "
                f"a per-head vector {PER_SAMPLE_VECTORS} ({len(loose)} such parameters)")
    return None


def stack_models(models: list[nn.Module]) -> nn.Module:
    """One module running `models` (same class and shape) on their batches concatenated along dim 0, model g on
    the g-th block. Raises ValueError naming the first parameter that sits outside the stackable leaves."""
    if len(models) < 1:
        raise ValueError("stack_models: no models")
    shapes = [[(n, p.shape) for n, p in m.named_parameters()] for m in models]
    if any(s != shapes[0] for s in shapes):
        raise ValueError("stack_models: the models differ in their parameters")
    refusal = stack_refusal(models[0])
    if refusal is not None:
        raise ValueError(f"stack_models: {refusal}")
    stacked = copy.deepcopy(models[0])
    names = [n for n, m in models[0].named_modules() if isinstance(m, STACKABLE)]
    for name in names:
        parent_name, _, leaf = name.rpartition(".")
        parent = stacked.get_submodule(parent_name) if parent_name else stacked
        setattr(parent, leaf, _stacked([m.get_submodule(name) for m in models]))
    for name in _vectors(models[0]):
        parent_name, _, leaf = name.rpartition(".")
        parent = stacked.get_submodule(parent_name) if parent_name else stacked
        setattr(parent, leaf, nn.Parameter(torch.stack([m.get_parameter(name).detach() for m in models])))
    return stacked


def unstack_state(stacked: nn.Module, g: int) -> dict[str, Tensor]:
    """Model g's state dict (the original parameter names) from a module made by `stack_models`."""
    params = {n for n, _ in stacked.named_parameters()}
    return {k: v[g] if k in params else v for k, v in stacked.state_dict().items()}
