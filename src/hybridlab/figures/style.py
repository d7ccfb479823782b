"""One figure style for every plot: colours per variant in a fixed order, the paper's variant labels, legends
beside the data, PDF and PNG output."""

from __future__ import annotations

import functools
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from hybridlab.io import atomic_path  # noqa: E402

VARIANT_ORDER = ["full", "swa128", "swa512", "swa2048", "lightning", "mamba2", "gdn", "swa128_ratio13",
                 "swa128_headwise", "swa128_nope"]


def variant_order(variants) -> list[str]:
    """Variants in the fixed order of VARIANT_ORDER, unknown ones after it alphabetically."""
    return sorted(set(variants), key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))


@functools.cache
def _labels() -> dict[str, str]:
    from hybridlab.config import variant_labels

    return variant_labels()


def variant_label(variant: str) -> str:
    """The paper's name of a variant (the `label:` of conf/variant/<name>.yaml, e.g. swa128 -> SWA-128); a variant
    without a config file keeps its name."""
    return _labels().get(variant, variant)


def side_legend(ax, **kw) -> None:
    """The axes' legend to their right, outside the data (single-panel figures)."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0, frameon=False, fontsize=7, **kw)


def variant_palette(variants) -> dict[str, tuple]:
    """A colour per variant that does not depend on which other variants a figure shows: known variants take
    their VARIANT_ORDER slot of tab10, unknown ones the dark colours of Dark2 in alphabetical order."""
    ordered = variant_order(variants)
    unknown = [v for v in ordered if v not in VARIANT_ORDER]
    extra = sns.color_palette("Dark2", max(len(unknown), 1))
    tab10 = sns.color_palette("tab10", len(VARIANT_ORDER))
    return {v: tab10[VARIANT_ORDER.index(v)] if v in VARIANT_ORDER else extra[unknown.index(v) % len(extra)]
            for v in ordered}


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Save a figure as PDF and PNG (atomically); return both paths."""
    out_dir = Path(out_dir)
    paths = []
    for ext in ("pdf", "png"):
        path = out_dir / f"{name}.{ext}"
        # No creation date in the PDF: the same tables give the same bytes.
        metadata = {"CreationDate": None} if ext == "pdf" else {}
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight", metadata=metadata)
        paths.append(path)
    plt.close(fig)
    return paths


def placeholder(out_dir: str | Path, name: str, why: str) -> list[Path]:
    """The figure's files when its inputs are missing at this scale, saying why (outputs stay deterministic)."""
    setup()
    fig, ax = plt.subplots(figsize=(6.4, 1.6))
    ax.axis("off")
    ax.text(0.5, 0.5, f"{name}\nno data at this scale: {why}", ha="center", va="center", fontsize=10, wrap=True)
    return save(fig, out_dir, name)
