"""Recurrent efficient mixers of the hybrids (Lightning Attention, Mamba-2, Gated DeltaNet) and their factory.

Every mixer maps x [B, T, d_model] to y [B, T, d_model], carries a decoding state (recurrent matrix and conv
tails), takes an evaluation-only receptive-field `window` (the recurrence sees the last W positions; the
short conv of Mamba-2 and Gated DeltaNet adds K - 1 input tokens), and reports `param_count` and `flops`.
The math lives in `ops` (pure PyTorch), the kernel choice in `fla_backend`.
"""

from torch import nn

from hybridlab.models.recurrent.fla_backend import which_backend
from hybridlab.models.recurrent.gdn import GatedDeltaNet
from hybridlab.models.recurrent.lightning import LightningAttention
from hybridlab.models.recurrent.mamba2 import Mamba2

MIXERS: dict[str, type[nn.Module]] = {"lightning": LightningAttention, "mamba2": Mamba2, "gdn": GatedDeltaNet}


def build_recurrent_mixer(kind: str, d_model: int, n_heads: int, head_dim: int, **kw) -> nn.Module:
    """kind in MIXERS; kw are the mixer's keyword arguments (layer_idx, n_layers, inner_dim, conv_size,
    backend, ...)."""
    if kind not in MIXERS:
        raise ValueError(f"mixer: unknown recurrent mixer {kind!r}; allowed: {sorted(MIXERS)}")
    return MIXERS[kind](d_model, n_heads, head_dim, **kw)


__all__ = [
    "MIXERS", "GatedDeltaNet", "LightningAttention", "Mamba2", "build_recurrent_mixer", "which_backend"
]
