"""One figure style for every plot: colours per variant in a fixed order, PDF and PNG output."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import seaborn as sns  # noqa: E402

from hybridlab.io import atomic_path  # noqa: E402

VARIANT_ORDER = ["full", "swa128", "swa512", "swa2048", "lightning", "mamba2", "gdn", "swa128_ratio13",
                 "swa128_headwise", "swa128_nope"]


def variant_palette(variants) -> dict[str, tuple]:
    ordered = sorted(set(variants), key=lambda v: (VARIANT_ORDER.index(v) if v in VARIANT_ORDER else 99, v))
    return dict(zip(ordered, sns.color_palette("tab10", len(ordered)), strict=True))


def setup() -> None:
    sns.set_theme(context="paper", style="whitegrid", font_scale=1.1)


def save(fig, out_dir: str | Path, name: str) -> list[Path]:
    """Save a figure as PDF and PNG (atomically); return both paths."""
    out_dir = Path(out_dir)
    paths = []
    for ext in ("pdf", "png"):
        path = out_dir / f"{name}.{ext}"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=ext, dpi=150, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths
