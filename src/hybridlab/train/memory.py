"""A lower bound on the memory one training process needs, checked before a run writes anything.

The bound counts only what a run cannot avoid: the optimizer state (fp32 weights and gradients plus at least one
moment: 12 bytes a parameter), the activations kept for the backward pass (at least 8 values of d_model per token
and layer, in 2-byte precision) and the fp32 logits of one micro-batch. Real use is higher (attention scores,
workspace, the allocator), so a run refused here can never fit; one that passes may still run out of memory. The
memory compared is the GPU's (scale.accelerator gpu/auto with CUDA present) or this machine's RAM.
"""

from __future__ import annotations

import os

import torch
from omegaconf import DictConfig

from hybridlab.config import ConfigError

STATE_BYTES = 12  # fp32 weight + fp32 gradient + one fp32 optimizer moment, per parameter
ACTIVATION_VALUES = 8  # values of d_model kept per token and layer for the backward pass, at least
ACTIVATION_BYTES = 2  # bf16: the smallest precision a run trains in


def training_bytes(cfg: DictConfig, vocab_size: int) -> int:
    """Lower bound on one training process's memory for `cfg` (module docstring)."""
    from hybridlab.models import build_model

    with torch.device("meta"):
        params = sum(p.numel() for p in build_model(cfg, vocab_size).parameters())
    m, tokens = cfg.model, int(cfg.train.micro_batch_size) * int(cfg.scale.context)
    activations = tokens * int(m.n_layers) * int(m.d_model) * ACTIVATION_VALUES * ACTIVATION_BYTES
    return params * STATE_BYTES + activations + tokens * vocab_size * 4


def device_bytes(cfg: DictConfig) -> tuple[int, str]:
    """The memory of the device a run trains on, and its name."""
    if cfg.scale.accelerator != "cpu" and torch.cuda.is_available():
        return torch.cuda.get_device_properties(0).total_memory, f"GPU {torch.cuda.get_device_name(0)}"
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"), "this machine's RAM"


def check_memory(cfg: DictConfig, vocab_size: int, copies: int = 1) -> None:
    """Refuse a run whose lower-bound memory exceeds its device's, naming both and what to change. `copies`: runs
    trained in one stacked step (train.stack_seeds), each needing its own state and activations."""
    need, (have, where) = copies * training_bytes(cfg, vocab_size), device_bytes(cfg)
    if need <= have:
        return
    what = (f"model {cfg.model.name}, d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, context "
            f"{cfg.scale.context}")
    if copies > 1:
        raise ConfigError("train.stack_seeds", True,
                          f"false, or a size that fits: {copies} stacked runs need at least {need / 2**30:.1f} GiB "
                          f"({what}), {where} has {have / 2**30:.1f} GiB; without stacking the runs train one after "
                          "another")
    raise ConfigError("train.micro_batch_size", int(cfg.train.micro_batch_size),
                      f"a size that fits: this run needs at least {need / 2**30:.1f} GiB ({what}), {where} has "
                      f"{have / 2**30:.1f} GiB; lower train.micro_batch_size (gradient accumulation keeps "
                      "train.batch_size), scale.context or the model size")
