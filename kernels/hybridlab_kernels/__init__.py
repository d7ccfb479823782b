"""Custom GPU kernels for hybridlab's analyses, each with a pure-PyTorch reference it is tested against."""

from .attn_stats import (
    AttnStats,
    attention_stats,
    attention_stats_reference,
    attention_stats_triton,
    triton_available,
)

__all__ = [
    "AttnStats",
    "attention_stats",
    "attention_stats_reference",
    "attention_stats_triton",
    "triton_available",
]
