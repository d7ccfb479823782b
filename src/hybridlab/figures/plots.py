"""Figures as functions of result tables only (no torch, no live runs).

Each function takes tidy tables (see evals/evaluate.py and analysis/retrieval.py for the columns) and an
output folder, and writes `<name>.pdf` and `<name>.png`.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hybridlab.figures.style import save, setup, variant_palette


def _lines(ax, df: pd.DataFrame, y: str, palette: dict) -> None:
    """One line per variant: the mean over seeds, with each seed faint behind it."""
    for variant, g in df.groupby("variant"):
        for _, s in g.groupby("seed"):
            ax.plot(s["tokens"], s[y], color=palette[variant], alpha=0.25, lw=0.8)
        mean = g.groupby("tokens")[y].mean()
        ax.plot(mean.index, mean.values, color=palette[variant], lw=2, marker="o", ms=3, label=variant)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")


def fig_longctx(eval_df: pd.DataFrame, out_dir: str | Path, context: int) -> list[Path]:
    """Long-context ability against training tokens: NIAH accuracy at the training length, log(LongPPL),
    and the short-context loss for comparison (paper Fig. 2 in miniature)."""
    setup()
    pal = variant_palette(eval_df["variant"])
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    panels = [("niah_acc", "NIAH accuracy @ train length", eval_df["length"] == context),
              ("log_longppl", "log(LongPPL)", True), ("val_loss_local", "short-context loss", True)]
    for ax, (metric, label, sel) in zip(axes, panels, strict=True):
        d = eval_df[(eval_df["metric"] == metric) & sel].rename(columns={"value": metric})
        _lines(ax, d, metric, pal)
        ax.set_ylabel(label)
    axes[0].legend(fontsize=8)
    return save(fig, out_dir, "fig_longctx")


def fig_niah_by_length(eval_df: pd.DataFrame, out_dir: str | Path, context: int) -> list[Path]:
    """NIAH accuracy of the final checkpoint by context length; the dashed line marks the training length."""
    setup()
    pal = variant_palette(eval_df["variant"])
    d = eval_df[eval_df["metric"] == "niah_acc"]
    final = d[d["tokens"] == d.groupby(["variant", "seed"])["tokens"].transform("max")]
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for variant, g in final.groupby("variant"):
        m = g.groupby("length")["value"].agg(["mean", "min", "max"])
        ax.errorbar(m.index, m["mean"], yerr=[m["mean"] - m["min"], m["max"] - m["mean"]], marker="o",
                    color=pal[variant], label=variant, capsize=2)
    ax.axvline(context, ls="--", color="grey")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("context length (tokens)")
    ax.set_ylabel("NIAH accuracy (final)")
    ax.legend(fontsize=8)
    return save(fig, out_dir, "fig_niah_by_length")


def strongest_full_head(heads_df: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, seed, tokens): the largest needle mass over the full-attention heads."""
    d = heads_df[(heads_df["metric"] == "needle_mass") & (heads_df["role"] == "full")]
    return d.groupby(["variant", "seed", "tokens"], as_index=False)["value"].max()


def fig_retrieval(heads_df: pd.DataFrame, out_dir: str | Path) -> list[Path]:
    """Formation of retrieval heads: the strongest full-attention head's needle mass against tokens, and a
    layer x head map of needle mass at the final checkpoint per variant (paper Fig. 5)."""
    setup()
    pal = variant_palette(heads_df["variant"])
    variants = sorted(heads_df["variant"].unique(), key=list(pal).index)
    fig, axes = plt.subplots(1, 1 + len(variants), figsize=(4.5 + 2.6 * len(variants), 3.6),
                             gridspec_kw={"width_ratios": [1.8] + [1] * len(variants)})
    best = strongest_full_head(heads_df).rename(columns={"value": "mass"})
    _lines(axes[0], best, "mass", pal)
    axes[0].set_ylabel("max needle mass, full-attn heads")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=8)
    mass = heads_df[heads_df["metric"] == "needle_mass"]
    for ax, variant in zip(axes[1:], variants, strict=True):
        g = mass[mass["variant"] == variant]
        g = g[g["tokens"] == g["tokens"].max()]
        grid = g.groupby(["layer", "head"])["value"].mean().unstack("head")
        im = ax.imshow(np.ma.masked_invalid(grid.values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("head")
        ax.grid(False)
    axes[1].set_ylabel("layer")
    fig.colorbar(im, ax=axes[-1], fraction=0.05)
    return save(fig, out_dir, "fig_retrieval")
