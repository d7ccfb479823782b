"""Hybrid layouts as validated data: which layer holds which mixer, with its window and positional encoding.

A variant config (conf/variant/*.yaml) names the efficient mixer, the full:efficient ratio, the index of the
first full layer, the window (given at the paper's 16K context and scaled to the run's context), attention
sinks, RoPE or NoPE per layer class, and whether mixing is layer-wise or head-wise. `build_layout` turns it into
one `LayerSpec` per layer. No torch here: the workflow imports this to validate configs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EFFICIENT_KINDS = ("none", "swa", "lightning", "mamba2", "gdn")
RECURRENT_KINDS = ("lightning", "mamba2", "gdn")


@dataclass(frozen=True)
class LayerSpec:
    """One layer of a hybrid. `windows` has one entry per head for attention layers (None means full)."""

    kind: str  # "attn" or a recurrent mixer name
    role: str  # "full", "efficient" or "mixed" (head-wise): which class the constraint and the analyses see
    rope: bool | tuple[bool, ...]  # RoPE on the layer, or per head (head-wise mixing: full and SWA heads differ)
    windows: tuple[int | None, ...] = ()
    sinks: int = 0

    @property
    def is_attention(self) -> bool:
        return self.kind == "attn"


def _err(key: str, value: Any, allowed: str) -> Exception:
    from hybridlab.config import ConfigError

    return ConfigError(key, value, allowed)


def parse_ratio(ratio: str) -> tuple[int, int]:
    """'1:3' -> (1, 3): full layers to efficient layers in each repeating group."""
    try:
        full, eff = (int(x) for x in str(ratio).split(":"))
    except ValueError:
        raise _err("variant.ratio", ratio, "'F:E' with integers, e.g. '1:1' or '1:3'") from None
    if full < 1 or eff < 0:
        raise _err("variant.ratio", ratio, "F >= 1 full and E >= 0 efficient layers per group")
    return full, eff


def scaled_window(window: int, context: int, ref_context: int, min_window: int) -> int:
    """The paper's windows are for a 16K context; keep the window/context proportion at other contexts."""
    return max(min_window, round(window * context / ref_context))


def build_layout(variant: Any, model: Any, scale: Any) -> list[LayerSpec]:
    """Validate a variant against a model size and a scale; return one LayerSpec per layer."""
    n_layers, n_heads, context = int(model.n_layers), int(model.n_heads), int(scale.context)
    eff = variant.efficient
    if eff not in EFFICIENT_KINDS:
        raise _err("variant.efficient", eff, ", ".join(EFFICIENT_KINDS))
    sinks = int(variant.get("sinks", 0) or 0)
    if sinks < 0:
        raise _err("variant.sinks", sinks, "an integer >= 0")
    full_spec = LayerSpec("attn", "full", bool(variant.full_rope), (None,) * n_heads)
    if eff == "none":
        return [full_spec] * n_layers

    window = None
    if eff == "swa":
        raw = variant.get("window")
        if not isinstance(raw, int) or isinstance(raw, bool) or raw <= 0:
            raise _err("variant.window", raw, "an integer > 0 (the window at the paper's 16K context)")
        window = scaled_window(raw, context, int(scale.ref_context), int(scale.get("min_window", 1)))
        if window >= context:
            raise _err("variant.window", raw, f"a window whose scaled size ({window}) is below the context "
                       f"({context})")

    n_full, n_eff = parse_ratio(variant.ratio)
    group = n_full + n_eff
    if variant.get("headwise", False):
        if eff != "swa":
            raise _err("variant.headwise", True, "head-wise mixing only with efficient: swa")
        if n_heads % group:
            raise _err("variant.ratio", variant.ratio, f"a ratio whose group size divides n_heads={n_heads}")
        n_swa = n_heads * n_eff // group
        heads = (window,) * n_swa + (None,) * (n_heads - n_swa)
        rope = (bool(variant.efficient_rope),) * n_swa + (bool(variant.full_rope),) * (n_heads - n_swa)
        return [LayerSpec("attn", "mixed", rope, heads, sinks)] * n_layers

    if n_layers % group:
        raise _err("variant.ratio", variant.ratio, f"a ratio whose group size ({group}) divides "
                   f"n_layers={n_layers}")
    first = int(variant.first_full)
    if not 0 <= first < group:
        raise _err("variant.first_full", first, f"an index in [0, {group - 1}] (position in the group)")
    eff_spec = (
        LayerSpec("attn", "efficient", bool(variant.efficient_rope), (window,) * n_heads, sinks)
        if eff == "swa"
        else LayerSpec(eff, "efficient", False)
    )
    # Full layers take n_full consecutive slots of each group starting at first_full.
    full_slots = {(first + i) % group for i in range(n_full)}
    return [full_spec if i % group in full_slots else eff_spec for i in range(n_layers)]
