"""Figures as functions of result tables only (no torch, no live runs).

Each `fig_*` function takes tidy tables (columns in figures/tables.py) and an output folder, writes
`<name>.pdf` and `<name>.png` and returns both paths; it raises NoData (saying why) when its inputs are absent,
and the builder then writes a placeholder under the same name. Every figure shows each seed faintly behind the
mean over seeds, so the spread across seeds is visible.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from hybridlab.figures.style import save, setup, variant_order, variant_palette
from hybridlab.figures.tables import NoData, at_context, efficient_windows, final, layer_roles, metric_rows

LABELS = {"val_loss": "validation loss", "val_loss_local": "short-context loss", "log_longppl": "log(LongPPL)",
          "niah_acc": "NIAH accuracy", "loss_by_pos": "loss", "entropy": "attention entropy",
          "entropy_norm": "entropy / log(length)", "q_rel_l2": "Q rel. L2 to final", "k_rel_l2": "K rel. L2 to final",
          "q_l2": "Q L2 to final", "k_l2": "K L2 to final", "needle_mass": "needle mass", "probe_acc": "probe accuracy",
          "grad_influence": "gradient influence G(d)"}
DESIGN_VARIANTS = ("swa128_ratio13", "swa128_headwise")


def _label(metric: str) -> str:
    return LABELS.get(metric, metric.replace("_", " "))


def _accuracy_limits(ax, metric: str) -> None:
    if metric == "niah_acc" or metric.startswith("ruler_"):
        ax.set_ylim(-0.02, 1.02)


def _seed_lines(ax, df: pd.DataFrame, x: str, color, label: str | None, ls: str = "-") -> None:
    """Each seed faint, the mean over seeds bold (one variant's rows of x and value)."""
    for _, s in df.groupby("seed"):
        s = s.groupby(x)["value"].mean()
        ax.plot(s.index, s.values, color=color, alpha=0.25, lw=0.8, ls=ls)
    mean = df.groupby(x)["value"].mean()
    ax.plot(mean.index, mean.values, color=color, lw=2, marker="o", ms=3, ls=ls, label=label)


def _empty(ax, why: str) -> None:
    ax.text(0.5, 0.5, f"no data: {why}", ha="center", va="center", fontsize=8, transform=ax.transAxes, wrap=True)


def _metric_ax(ax, eval_df: pd.DataFrame, metric: str, context: int, pal: dict) -> None:
    """One metric at the training length against training tokens, a line per variant."""
    d = metric_rows(eval_df, metric, context)
    d = d[d["tokens"] > 0]
    if d.empty:
        _empty(ax, f"{metric} @ {context}")
    for variant in variant_order(d["variant"]):
        _seed_lines(ax, d[d["variant"] == variant], "tokens", pal[variant], variant)
    ax.set_xscale("log")
    ax.set_xlabel("training tokens")
    ax.set_ylabel(f"{_label(metric)} @ {context}")
    _accuracy_limits(ax, metric)


def _by_length_ax(ax, eval_df: pd.DataFrame, metric: str, context: int, pal: dict, xlabel: str = "length") -> None:
    """A metric of each run's final checkpoint against length; beyond the training length is shaded."""
    d = final(eval_df[eval_df["metric"] == metric])
    if d.empty:
        _empty(ax, metric)
    for variant in variant_order(d["variant"]):
        _seed_lines(ax, d[d["variant"] == variant], "length", pal[variant], variant)
    ax.axvline(context, ls="--", color="grey", lw=1)
    ax.axvspan(context, max(context, d["length"].max() if not d.empty else context) * 1.05, color="0.93", zorder=0)
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"{xlabel} (tokens)")
    ax.set_ylabel(f"{_label(metric)} (final)")
    _accuracy_limits(ax, metric)


def _legend(fig, axes) -> None:
    handles, labels = {}, []
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=True):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    if handles:
        fig.legend([handles[k] for k in labels], labels, loc="upper center", ncol=min(len(labels), 6),
                   bbox_to_anchor=(0.5, 1.0), frameon=False, fontsize=8)
        fig.tight_layout(rect=(0, 0, 1, 0.92))


def _panels(n: int, width: float = 4.2, height: float = 3.4, rows: int = 1):
    fig, axes = plt.subplots(rows, n, figsize=(width * n, height * rows), squeeze=False)
    return fig, axes


def _tokens_panels(eval_df: pd.DataFrame, out_dir, name: str, context: int, metrics: tuple[str, ...]) -> list[Path]:
    setup()
    pal = variant_palette(eval_df["variant"])
    fig, axes = _panels(len(metrics))
    for ax, metric in zip(axes[0], metrics, strict=True):
        _metric_ax(ax, eval_df, metric, context, pal)
    _legend(fig, axes)
    return save(fig, out_dir, name)


def fig_emergence(eval_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """Long-context ability against training tokens (NIAH accuracy and log(LongPPL) at the training length)
    beside the short-context loss: how fast each variant's long-context ability emerges (claim C1)."""
    return _tokens_panels(eval_df, out_dir, "fig_emergence", context, ("niah_acc", "log_longppl", "val_loss_local"))


# Fig. 3 -----------------------------------------------------------------------------------------------------


def fig3_receptive(rec: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """Receptive-field constraint at the final checkpoint: the increase of log(LongPPL) (and of the validation
    loss) over the unconstrained model when the full-attention layers (solid) or the efficient layers (dashed)
    are limited to the last W tokens, against W, a colour per variant (claim C2)."""
    rec = final(rec)
    metrics = [m for m in ("log_longppl", "val_loss") if (rec["metric"] == m).any()]
    if not metrics or not (rec["constrained"] != "none").any() or not (rec["constrained"] == "none").any():
        raise NoData("receptive.csv lacks unconstrained or constrained log_longppl / val_loss rows")
    setup()
    pal = variant_palette(rec["variant"])
    fig, axes = _panels(len(metrics), width=4.6)
    for ax, metric in zip(axes[0], metrics, strict=True):
        m = rec[rec["metric"] == metric]
        base = m[m["constrained"] == "none"].groupby(["variant", "seed"])["value"].mean()
        d = m[m["constrained"] != "none"].copy()
        d["value"] = d["value"].values - base.reindex(pd.MultiIndex.from_frame(d[["variant", "seed"]])).values
        for variant in variant_order(d["variant"]):
            for kind, ls in (("full", "-"), ("efficient", "--")):
                g = d[(d["variant"] == variant) & (d["constrained"] == kind)]
                if not g.empty:
                    _seed_lines(ax, g, "window", pal[variant], variant if kind == "full" else None, ls=ls)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xscale("log", base=2)
        ax.set_xlabel(f"window W (tokens of {context})")
        ax.set_ylabel(f"increase of {_label(metric)}")
        ax.set_title("solid: full layers limited; dashed: efficient layers limited", fontsize=8)
    _legend(fig, axes)
    return save(fig, out_dir, "fig3_receptive")


# Fig. 4 -----------------------------------------------------------------------------------------------------


def fig4_probe(probe: pd.DataFrame, out_dir, info: dict[str, Any]) -> list[Path]:
    """Probe accuracy by layer at the final checkpoint, a line per variant and a panel per feature (residual
    stream, per-layer residual delta); filled markers are full-attention layers, hollow ones efficient layers."""
    probe = final(probe[probe["metric"] == "probe_acc"])
    if probe.empty:
        raise NoData("probe.csv has no probe_acc rows")
    setup()
    pal = variant_palette(probe["variant"])
    features = sorted(probe["feature"].unique(), key=lambda f: (f != "resid", f))
    fig, axes = _panels(len(features))
    for ax, feature in zip(axes[0], features, strict=True):
        d = probe[probe["feature"] == feature]
        for variant in variant_order(d["variant"]):
            g = d[d["variant"] == variant]
            _seed_lines(ax, g, "layer", pal[variant], variant)
            roles = layer_roles(info, variant)
            mean = g.groupby("layer")["value"].mean()
            hollow = [layer for layer in mean.index if layer < len(roles) and roles[layer] != "full"]
            ax.scatter(hollow, mean[hollow], s=30, facecolor="white", edgecolor=pal[variant], zorder=3)
        ax.set_xticks(sorted(d["layer"].unique()))
        ax.set_xlabel("layer (filled: full attention, hollow: efficient)")
        ax.set_ylabel(_label("probe_acc"))
        ax.set_title(f"feature: {feature}", fontsize=9)
    _legend(fig, axes)
    return save(fig, out_dir, "fig4_probe")


# Fig. 5 -----------------------------------------------------------------------------------------------------


def strongest_full_head(heads_df: pd.DataFrame) -> pd.DataFrame:
    """Per (variant, seed, tokens): the largest needle mass over the full-attention heads."""
    d = heads_df[(heads_df["metric"] == "needle_mass") & (heads_df["role"] == "full")]
    return d.groupby(["variant", "seed", "tokens"], as_index=False)["value"].max()


def fig5_retrieval(heads_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """Formation of retrieval heads: the strongest full-attention head's needle mass against tokens, and a
    layer x head map of needle mass (the retrieval score) at the final checkpoint per variant (mean over seeds)."""
    heads_df = at_context(heads_df, context)
    mass = heads_df[heads_df["metric"] == "needle_mass"]
    if mass.empty:
        raise NoData("heads.csv has no needle_mass rows")
    setup()
    pal = variant_palette(mass["variant"])
    variants = variant_order(mass["variant"])
    fig, axes = plt.subplots(1, 1 + len(variants), figsize=(4.5 + 2.6 * len(variants), 3.6),
                             gridspec_kw={"width_ratios": [1.8] + [1] * len(variants)})
    best = strongest_full_head(heads_df)
    best = best[best["tokens"] > 0]
    for variant in variants:
        _seed_lines(axes[0], best[best["variant"] == variant], "tokens", pal[variant], variant)
    axes[0].set_xscale("log")
    axes[0].set_xlabel("training tokens")
    axes[0].set_ylabel("max needle mass, full-attn heads")
    axes[0].set_ylim(-0.02, 1.02)
    axes[0].legend(fontsize=7)
    for ax, variant in zip(axes[1:], variants, strict=True):
        g = final(mass[mass["variant"] == variant])
        grid = g.groupby(["layer", "head"])["value"].mean().unstack("head")
        im = ax.imshow(np.ma.masked_invalid(grid.values), vmin=0, vmax=1, cmap="viridis", aspect="auto")
        ax.set_yticks(range(len(grid.index)), grid.index)
        ax.set_xticks(range(len(grid.columns)), grid.columns)
        ax.set_title(variant, fontsize=9)
        ax.set_xlabel("head")
        ax.grid(False)
    axes[1].set_ylabel("layer")
    fig.colorbar(im, ax=axes[-1], fraction=0.05, label="needle mass (final)")
    fig.tight_layout()
    return save(fig, out_dir, "fig5_retrieval")


def fig5_dynamics(traj: pd.DataFrame, out_dir, traced: pd.DataFrame | None = None) -> list[Path]:
    """Training dynamics of the retrieval heads that formed (full-attention heads whose needle mass crossed the
    onset threshold; mean over a run's formed heads): attention entropy normalised by log(length), and the
    relative L2 distance of their Q and K weights to the final checkpoint, against training tokens, a line per
    seed, a colour per variant. Runs in which no retrieval head formed are listed, not drawn."""
    wanted = ("entropy_norm", "q_rel_l2", "k_rel_l2", "needle_mass")
    metrics = [m for m in wanted if (traj["metric"] == m).any()]
    if not metrics and (traj["metric"] == "entropy").any():
        metrics = ["entropy"]
    if not metrics:
        raise NoData(f"trajectory.csv has none of {', '.join(wanted)}")
    setup()
    pal = variant_palette(traj["variant"])
    d = traj[traj["tokens"] > 0].groupby(["variant", "seed", "tokens", "metric"], as_index=False)["value"].mean()
    fig, axes = _panels(len(metrics), width=3.6)
    for ax, metric in zip(axes[0], metrics, strict=True):
        m = d[d["metric"] == metric]
        for variant in variant_order(m["variant"]):
            _seed_lines(ax, m[m["variant"] == variant], "tokens", pal[variant], variant)
        ax.set_xscale("log")
        ax.set_xlabel("training tokens")
        ax.set_ylabel(_label(metric))
    _legend(fig, axes)
    if traced is not None and not traced.empty:
        formed = traced.groupby(["variant", "seed"])["formed"].any()
        none = formed[~formed].reset_index().groupby("variant")["seed"].count()
        runs = formed.reset_index().groupby("variant")["seed"].count()
        if len(none):
            text = "no retrieval head formed: " + ", ".join(f"{v} ({none[v]} of {runs[v]} seeds)"
                                                            for v in variant_order(none.index))
            fig.text(0.01, 0.005, text, fontsize=7, ha="left", va="bottom")
    return save(fig, out_dir, "fig5_dynamics")


def fig_onset(onsets: pd.DataFrame, out_dir, source: str) -> list[Path]:
    """Retrieval-head onset as survival curves: per variant, the fraction of its runs in which a full-attention
    retrieval head has formed by D training tokens (Kaplan-Meier; a run in which none formed is censored at its
    last checkpoint, marked +), with a pointwise 95% band; seeds are independent draws (claim C3)."""
    from hybridlab.figures.claims import onset_survival

    if onsets.empty:
        raise NoData("no onsets")
    setup()
    ladder = [v for v in ("swa128", "swa512", "swa2048", "full") if v in set(onsets["variant"])]
    variants = ladder + [v for v in variant_order(onsets["variant"]) if v not in ladder]
    pal = variant_palette(variants)
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    t_max = float(onsets["censored_at"].max())
    for v in variants:
        km = onset_survival(onsets, v)
        g = onsets[onsets["variant"] == v]
        x = np.concatenate([[0.0], km.times, [t_max]])
        formed = 1 - np.concatenate([[1.0], km.surviving, km.surviving[-1:] if len(km.times) else [1.0]])
        lo = 1 - np.concatenate([[1.0], km.high, km.high[-1:] if len(km.times) else [1.0]])
        hi = 1 - np.concatenate([[1.0], km.low, km.low[-1:] if len(km.times) else [1.0]])
        ax.step(x, formed, where="post", color=pal[v], label=f"{v} ({km.events}/{km.n} formed)")
        ax.fill_between(x, lo, hi, step="post", color=pal[v], alpha=0.15, lw=0)
        censored = g.loc[~np.isfinite(g["onset_tokens"]), "censored_at"]
        if len(censored):
            ax.plot(censored, np.full(len(censored), formed[-1]), "+", color=pal[v], ms=8)
    ax.set_xlabel("training tokens")
    ax.set_ylabel("fraction of runs with a retrieval head")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, t_max * 1.02)
    ax.set_title(f"onset from {source}", fontsize=8)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return save(fig, out_dir, "fig_onset")


# Mechanism extras -------------------------------------------------------------------------------------------


def fig_gradinf(g: pd.DataFrame, out_dir, info: dict[str, Any]) -> list[Path]:
    """Gradient influence G(d) of the input at distance d before the end on the last positions' logits, final
    checkpoint, a line per variant; dotted verticals mark each variant's sliding-window size."""
    g = final(g[g["metric"] == "grad_influence"])
    g = g[g["distance"] > 0]
    if g.empty:
        raise NoData("gradinf.csv has no grad_influence rows")
    setup()
    pal = variant_palette(g["variant"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for variant in variant_order(g["variant"]):
        _seed_lines(ax, g[g["variant"] == variant], "distance", pal[variant], variant)
        for w in efficient_windows(info, variant):
            ax.axvline(w, color=pal[variant], ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("distance d before the end (tokens)")
    ax.set_ylabel(_label("grad_influence"))
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig_gradinf")


def fig_masking(m: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """NIAH accuracy at the final checkpoint when the k strongest retrieval heads are masked (solid) against k
    random heads (dashed), a colour per variant."""
    m = at_context(final(m[m["metric"] == "niah_acc"]), context)
    if m.empty:
        raise NoData("masking.csv has no niah_acc rows")
    setup()
    pal = variant_palette(m["variant"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for variant in variant_order(m["variant"]):
        for heads, ls in (("top", "-"), ("random", "--")):
            # k = 0 (heads "none", the unmasked model) starts both curves.
            d = m[(m["variant"] == variant) & m["heads"].isin([heads, "none"])]
            if not d.empty:
                _seed_lines(ax, d, "k", pal[variant], variant if heads == "top" else None, ls=ls)
    ax.set_xticks(sorted(m["k"].unique()))
    ax.set_title("solid: top retrieval heads masked; dashed: random heads", fontsize=8)
    ax.set_xlabel("heads masked (k)")
    ax.set_ylabel("NIAH accuracy (final)")
    ax.set_ylim(-0.02, 1.02)
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig_masking")


# Section 6 and Fig. 8 ---------------------------------------------------------------------------------------


def fig_design(eval_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """Section-6 design variants against SWA-128 (and Full): 1:3 full:efficient ratio and head-wise mixing;
    long-context metrics and short-context loss against training tokens."""
    present = set(eval_df["variant"])
    if "swa128" not in present or not present & set(DESIGN_VARIANTS):
        raise NoData(f"needs swa128 and one of {', '.join(DESIGN_VARIANTS)}; the tables hold "
                     f"{', '.join(variant_order(present))}")
    d = eval_df[eval_df["variant"].isin(["full", "swa128", *DESIGN_VARIANTS])]
    return _tokens_panels(d, out_dir, "fig_design", context, ("niah_acc", "log_longppl", "val_loss_local"))


def fig8_nope(eval_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """NoPE on the full-attention layers of the SWA-128 hybrid against SWA-128: short-context loss and
    log(LongPPL) against tokens, and NIAH accuracy by length at the final checkpoint (claim C4)."""
    d = eval_df[eval_df["variant"].isin(["swa128", "swa128_nope"])]
    if set(d["variant"]) != {"swa128", "swa128_nope"}:
        raise NoData(f"needs swa128 and swa128_nope; the tables hold {', '.join(variant_order(eval_df['variant']))}")
    setup()
    pal = variant_palette(d["variant"])
    fig, axes = _panels(3)
    _metric_ax(axes[0][0], d, "val_loss_local", context, pal)
    _metric_ax(axes[0][1], d, "log_longppl", context, pal)
    _by_length_ax(axes[0][2], d, "niah_acc", context, pal)
    _legend(fig, axes)
    return save(fig, out_dir, "fig8_nope")


def fig_ruler(eval_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """RULER-style accuracy by context length at the final checkpoint, including lengths beyond the training
    length (shaded): NIAH and every ruler_<task> metric, a panel each."""
    present = set(eval_df["metric"])
    metrics = ["niah_acc"] * ("niah_acc" in present) + sorted(m for m in present if m.startswith("ruler_"))
    if not metrics:
        raise NoData("eval.csv has no niah_acc or ruler_<task> metric")
    setup()
    pal = variant_palette(eval_df["variant"])
    cols = min(len(metrics), 4)
    rows = -(-len(metrics) // cols)
    fig, axes = _panels(cols, width=3.8, rows=rows)
    for ax, metric in zip(axes.ravel(), metrics, strict=False):
        _by_length_ax(ax, eval_df, metric, context, pal)
        ax.set_title(metric, fontsize=9)
    for ax in axes.ravel()[len(metrics):]:
        ax.set_visible(False)
    _legend(fig, axes)
    return save(fig, out_dir, "fig_ruler")


def fig_loss_by_pos(eval_df: pd.DataFrame, out_dir, context: int) -> list[Path]:
    """Loss by token position at the final checkpoint (does loss keep falling with more context?)."""
    if not (eval_df["metric"] == "loss_by_pos").any():
        raise NoData("eval.csv has no loss_by_pos metric")
    setup()
    pal = variant_palette(eval_df["variant"])
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    _by_length_ax(ax, eval_df, "loss_by_pos", context, pal, xlabel="position")
    ax.legend(fontsize=7)
    return save(fig, out_dir, "fig_loss_by_pos")
