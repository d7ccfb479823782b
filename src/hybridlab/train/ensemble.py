"""Several runs' models as one module: the runs batched into one step (issue 15's fourth option).

A mini model (3.4M parameters, 32 x 1024 tokens a step) leaves an H200 mostly idle: the step is bound by the host
(Python, launches). `stack_models` turns G models of one shape into one module whose step does the work of all G:
every parameterised leaf (nn.Linear, nn.Embedding, nn.RMSNorm) becomes one module holding the G weights stacked
([G, ...]) and applying model g's weights to the g-th block of the batch, while everything between them
(attention kernels, RoPE, the residual stream) runs on the folded batch [G x B, ...] as it is. So the forward of
the stacked module on the G batches concatenated equals the G models' forwards, each gradient block equals that
model's own gradient (the losses are summed), and any element-wise optimizer (AdamW) on the stacked parameters
updates each model as it would alone.

Only models whose parameters all sit in those three leaf kinds can be stacked (the attention variants); the
recurrent mixers' own parameters (convolutions, decay and gate terms) are refused by name. Used by `hybridlab
benchmark --ensemble G` to measure what batching runs buys before training is built on it.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

STACKABLE = (nn.Linear, nn.Embedding, nn.RMSNorm)


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


def _stacked(mods: list[nn.Module]) -> nn.Module:
    kind = type(mods[0])
    if kind is nn.Linear:
        return StackedLinear(mods)
    if kind is nn.Embedding:
        return StackedEmbedding(mods)
    return StackedRMSNorm(mods)


def stack_refusal(model: nn.Module) -> str | None:
    """None when `model` can be stacked; else why not: the first parameter outside the stackable leaves."""
    covered = set()
    for name, m in model.named_modules():
        if isinstance(m, STACKABLE):
            covered |= {f"{name}.{p}" if name else p for p, _ in m.named_parameters()}
    loose = [n for n, _ in model.named_parameters() if n not in covered]
    if loose:
        return (f"parameter {loose[0]!r} is not in a Linear, Embedding or RMSNorm (only attention models stack; "
                f"{len(loose)} such parameters)")
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
    return stacked


def unstack_state(stacked: nn.Module, g: int) -> dict[str, Tensor]:
    """Model g's state dict (the original parameter names) from a module made by `stack_models`."""
    params = {n for n, _ in stacked.named_parameters()}
    return {k: v[g] if k in params else v for k, v in stacked.state_dict().items()}
