"""Fig. 2 and the scaling grid's two report tables, from result tables only (no torch).

Inputs (results/{scale}/tables/): budgets.csv (the decayed end of every WSD budget branch: eval rows with size
and budget_k), scaling_fit.csv and scaling_draws.csv (analysis/scaling_uncertainty.py: the fitted law per
variant with its intervals, warnings and bootstrap draws), eval.csv (the runs' checkpoints, drawn when a scale
runs no grid) and info.json (each (size, variant)'s non-embedding parameters N).

  - fig2_scaling: a column per model size, validation loss and log(LongPPL) against tokens per variant, with the
    fitted law and its 95% bootstrap band.
  - table3_scaling: the fit per variant and form, every parameter with its 95% bootstrap interval, the holdout,
    the profile interval of alpha, and the fit's warnings in plain words.
  - table4_c1_grid: the C1 check read off the grid. Per size and hybrid, the gap to Full in log(LongPPL),
    gap = y(variant) - y(full), at the size's smallest and largest budget, and the change of |gap| between them
    (negative: the variant converges to Full); likewise the spread (max - min over every variant). Values are
    measured (the budget points, mean over seeds); the intervals are the 95% bootstrap band of the same
    quantity computed from the fitted laws (each variant's draws, paired by replicate), so they carry the fit's
    uncertainty, and at the held-out size its extrapolation. Reading: "shrinks" when the interval of the change
    of |gap| lies below 0, "grows" when above, else "unclear".
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.analysis.scaling import PARAM_NAMES, log_predict, params_to_theta
from hybridlab.analysis.scaling_uncertainty import fits_wide, prediction_band
from hybridlab.figures.plots import _legend, _metric_ax, _panels
from hybridlab.figures.report import Table, fmt
from hybridlab.figures.style import save, setup, variant_order, variant_palette
from hybridlab.figures.tables import NoData, Tables, metric_rows

REFERENCE = "full"
LEVEL = 0.95
NO_GRID = ("no data at this scale: it runs no scaling grid (needs several model sizes and train.budgets_k with "
           "schedule wsd; see conf/scale/mini_grid.yaml)")


def fit_form(fit: pd.DataFrame, variant: str) -> tuple[str, dict[str, float]] | None:
    """A variant's fitted law (form, params): the paper's no_constant form when present, else the first fitted."""
    rows = fit[(fit["variant"] == variant) & (fit["kind"] == "param")]
    if rows.empty:
        return None
    form = "no_constant" if (rows["form"] == "no_constant").any() else rows["form"].iloc[0]
    rows = rows[rows["form"] == form]
    return form, dict(zip(rows["name"], rows["value"], strict=True))


def _law(p: dict[str, float], n: float, d: np.ndarray) -> np.ndarray:
    return p["B"] / n ** p["alpha"] + p["C"] / d ** p["beta"] + p.get("E", 0.0)


def _held_out_n(fit: pd.DataFrame | None) -> set[float]:
    if fit is None:
        return set()
    return set(fit.loc[(fit["kind"] == "info") & (fit["name"] == "holdout_N"), "value"].dropna())


def _has_warnings(fit: pd.DataFrame | None) -> list[str]:
    if fit is None:
        return []
    return variant_order(fit.loc[fit["kind"] == "warning", "variant"])


def _tokens_label(tokens: float) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if tokens >= scale:
            return f"{tokens / scale:.3g}{unit}"
    return f"{tokens:.3g}"


def _budget_ticks(ax, g: pd.DataFrame) -> None:
    """Ticks at the budget points (tokens, the mean over variants of each budget), labelled in tokens."""
    ticks = g.groupby("budget_k")["tokens"].mean().sort_values()
    ax.minorticks_off()
    ax.set_xticks(ticks.to_numpy(), [_tokens_label(t) for t in ticks], fontsize=8)
    ax.set_xlabel("training tokens (decayed end of each budget)")


def _clip_to(ax, values: list[float]) -> None:
    """Keep the y-axis on the points and fitted curves (a band that runs far off would flatten them)."""
    if values:
        lo, hi = min(values), max(values)
        pad = 0.5 * (hi - lo) or 0.1 * abs(hi) or 0.1
        ax.set_ylim(lo - pad, hi + pad)


def fig2_scaling(eval_df: pd.DataFrame, out_dir, context: int, fit: pd.DataFrame | None = None,
                 n_params: dict[tuple[str, str], float] | None = None, budgets: pd.DataFrame | None = None,
                 draws: pd.DataFrame | None = None) -> list[Path]:
    """Validation loss and log(LongPPL) against training tokens for every variant and model size (a column per
    size): the decayed end of every budget branch when the scale runs a scaling grid (else every checkpoint),
    with the fitted law log(LongPPL) = B/N^alpha + C/D^beta dashed and its 95% bootstrap band shaded. The
    largest size is held out of the fit, so its curves are the law's extrapolation."""
    grid = budgets is not None and not budgets.empty
    source = budgets if grid else eval_df
    d = source[source["metric"].isin(["val_loss", "log_longppl"]) & (source["length"] == context)]
    d = d[d["tokens"] > 0]
    if d.empty:
        raise NoData(f"{'budgets' if grid else 'eval'}.csv has no val_loss or log_longppl at the training length "
                     f"{context}")
    sizes = [(None, d)] if "size" not in d.columns else [(s, d[d["size"].astype(str) == s])
                                                         for s in dict.fromkeys(d["size"].astype(str))]
    n_params, held = n_params or {}, _held_out_n(fit)
    setup()
    pal = variant_palette(d["variant"])
    fig, axes = _panels(len(sizes), rows=2, height=3.0)
    for j, (size, g) in enumerate(sizes):
        for i, metric in enumerate(("val_loss", "log_longppl")):
            ax = axes[i][j]
            _metric_ax(ax, g, metric, context, pal)
            if grid and (g["metric"] == metric).any():
                _budget_ticks(ax, g[g["metric"] == metric])
            sized = [n_params.get((str(size), v)) for v in g["variant"].unique()]
            title = f"size {size}" if size is not None else ""
            if held and any(n in held for n in sized if n is not None):
                title += " (held out of the fit)"
            ax.set_title(title, fontsize=9)
            if metric != "log_longppl" or fit is None:
                continue
            tokens = np.geomspace(g["tokens"].min(), g["tokens"].max(), 64)
            shown = list(metric_rows(g, metric)["value"])
            for variant in variant_order(g["variant"]):
                law, n = fit_form(fit, variant), n_params.get((str(size), variant))
                if law is None or n is None:
                    continue
                form, p = law
                curve = _law(p, n, tokens)
                shown += list(curve[np.isfinite(curve)])
                ax.plot(tokens, curve, color=pal[variant], ls="--", lw=1.2, label="fitted law (dashed)")
                band = None if draws is None else prediction_band(draws[draws["variant"] == variant], form, n,
                                                                  tokens, LEVEL)
                if band is not None:
                    ax.fill_between(tokens, *band, color=pal[variant], alpha=0.15, lw=0,
                                    label="95% bootstrap band (shaded)")
            _clip_to(ax, shown)
    warned = _has_warnings(fit)
    if warned:
        fig.text(0.5, -0.01, f"Fit warnings for {', '.join(warned)}: see the scaling-fit table of the report.",
                 ha="center", va="top", fontsize=8)
    _legend(fig, axes)
    return save(fig, out_dir, "fig2_scaling")


# The scaling-fit table ---------------------------------------------------------------------------------------


def _num(v: float) -> str:
    """4 significant digits, in scientific notation when large or small (fitted coefficients span 1e-40..1e40)."""
    return "" if not np.isfinite(v) else f"{v:.4g}"


def _interval_text(value: float, low: float, high: float) -> str:
    if not np.isfinite(low) or not np.isfinite(high):
        return _num(value)
    return f"{_num(value)} [{_num(low)}, {_num(high)}]"


def _size_of(n: float, tables: Tables) -> str:
    names = {s for (s, _), count in tables.n_params().items() if math.isclose(count, n, rel_tol=1e-9)}
    return "/".join(sorted(names)) or fmt(n)


def scaling_fit_table(tables: Tables) -> Table:
    title = "Table 3: the scaling-law fit log(LongPPL) = B/N^alpha + C/D^beta per variant"
    fit = tables.get("scaling_fit")
    if fit is None or fit.empty:
        return Table("table3_scaling", title, pd.DataFrame(columns=["variant", "form"]), note=NO_GRID)
    wide = fits_wide(fit)
    display = []
    for _, r in wide.iterrows():
        row = {"variant": r["variant"], "form": r["form"],
               "procedure": "released" if r["released_procedure"] == 1 else "default"}
        for name in PARAM_NAMES["constant"]:
            row[name] = _interval_text(r[name], r[f"{name}_low"], r[f"{name}_high"]) if name in r else ""
        row["objective"] = _num(r["objective"])
        row["held out"] = (f"{_size_of(r['holdout_N'], tables)} ({int(r['n_holdout'])} points): R² "
                           f"{_num(r['holdout_loss_r2'])}") if r["n_holdout"] > 0 else "none"
        profile = (r["profile_alpha_low"], r["profile_alpha_high"])
        row["alpha profile 95%"] = f"[{_num(profile[0])}, {_num(profile[1])}]" if np.isfinite(profile[0]) else ""
        row["warnings"] = r["warnings"] or "none"
        display.append(row)
    n_boot = wide["boot_ok"].dropna()
    boot = (f"95% bootstrap intervals in brackets ({int(n_boot.min())} refits each, resampling the fitted points)"
            if not n_boot.empty else "no bootstrap")
    warned = [f"{r['variant']} ({r['form']}): {r['warnings']}" for _, r in wide.iterrows() if r["warnings"]]
    note = (f"Fitted in log space with a Huber loss (eps 1e-3) on every size but the largest, which is held out "
            f"(as the authors do); {boot}; the alpha profile interval is where the objective stays within the "
            "approximate 95% likelihood-ratio threshold. " + (
                "**Warnings:** " + " | ".join(warned) if warned else "No warnings."))
    return Table("table3_scaling", title, wide, pd.DataFrame(display), note)


# The grid's C1 check -----------------------------------------------------------------------------------------


def _draw_predictions(draws: pd.DataFrame, fit: pd.DataFrame, variant: str, n: float,
                      d: np.ndarray) -> np.ndarray | None:
    """The law's prediction at (n, d) for every bootstrap draw of a variant: [replicate, len(d)], indexed by
    replicate (None without draws)."""
    law = fit_form(fit, variant)
    rows = draws[(draws["variant"] == variant) & (draws["form"] == law[0])] if law is not None else draws.iloc[:0]
    if rows.empty:
        return None
    names = PARAM_NAMES[law[0]]
    theta = [params_to_theta(dict(zip(names, r, strict=True)), law[0]) for r in rows[list(names)].to_numpy(float)]
    y = np.exp(np.stack([log_predict(t, np.log(n), np.log(np.asarray(d, float))) for t in theta]))
    return pd.DataFrame(y, index=rows["replicate"].to_numpy())


def _interval(values: pd.Series | np.ndarray) -> tuple[float, float]:
    values = np.asarray(values, float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return math.nan, math.nan
    tail = (1 - LEVEL) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))


def _reading(low: float, high: float) -> str:
    if not (np.isfinite(low) and np.isfinite(high)):
        return "no interval"
    return "shrinks" if high < 0 else "grows" if low > 0 else "unclear"


def _c1_row(size: str, quantity: str, ks: list[float], measured: np.ndarray, drawn: np.ndarray | None) -> dict:
    """One row of the C1 check: `measured` at the smallest and largest budget, `drawn` [draws, 2] the same from
    the fitted laws' bootstrap draws (None: no intervals)."""
    small, large = measured
    nan2 = (math.nan, math.nan)
    at_small, at_large, change = (nan2, nan2, nan2) if drawn is None else (
        _interval(drawn[:, 0]), _interval(drawn[:, 1]), _interval(np.abs(drawn[:, 1]) - np.abs(drawn[:, 0])))
    return {"size": size, "quantity": quantity, "k_small": ks[0], "k_large": ks[-1],
            "at_small": small, "at_small_low": at_small[0], "at_small_high": at_small[1],
            "at_large": large, "at_large_low": at_large[0], "at_large_high": at_large[1],
            "abs_change": abs(large) - abs(small), "abs_change_low": change[0], "abs_change_high": change[1],
            "reading": _reading(*change)}


def c1_grid_rows(tables: Tables) -> pd.DataFrame:
    """The C1 check's numbers per (size, quantity) (module docstring); NoData without a grid."""
    budgets = tables.get("budgets")
    if budgets is None or budgets.empty:
        raise NoData(NO_GRID)
    y = metric_rows(budgets, "log_longppl", tables.context)
    if y.empty:
        raise NoData(f"budgets.csv has no log_longppl at the training length {tables.context}")
    y = y.groupby(["size", "variant", "budget_k"], as_index=False).agg(value=("value", "mean"),
                                                                       tokens=("tokens", "mean"))
    if REFERENCE not in set(y["variant"]):
        raise NoData(f"the C1 grid check compares with {REFERENCE}, which the grid lacks")
    fit, draws, n_params = tables.get("scaling_fit"), tables.get("scaling_draws"), tables.n_params()
    rows = []
    for size in [s for s in tables.sizes if s in set(y["size"].astype(str))]:
        g = y[y["size"].astype(str) == size]
        ks = sorted(g["budget_k"].unique())
        if len(ks) < 2:
            continue
        ends = g[g["budget_k"].isin([ks[0], ks[-1]])].pivot_table(index="budget_k", columns="variant",
                                                                   values=["value", "tokens"])
        variants = [v for v in variant_order(g["variant"]) if ends["value"][v].notna().all()]
        if REFERENCE not in variants:
            continue
        draws_at = {}
        if fit is not None and draws is not None:
            for v in variants:
                n = n_params.get((size, v))
                p = None if n is None else _draw_predictions(draws, fit, v, n, ends["tokens"][v].to_numpy())
                if p is not None:
                    draws_at[v] = p
        common = None
        if len(draws_at) == len(variants):
            common = sorted(set.intersection(*(set(p.index) for p in draws_at.values())))
        per_draw = {v: p.loc[common].to_numpy() for v, p in draws_at.items()} if common else {}

        values = ends["value"][variants].to_numpy()  # [2 budgets, variants]
        for i, v in enumerate(variants):
            if v == REFERENCE:
                continue
            ref = variants.index(REFERENCE)
            drawn = per_draw[v] - per_draw[REFERENCE] if per_draw else None
            rows.append(_c1_row(size, f"gap {v} - {REFERENCE}", ks, values[:, i] - values[:, ref], drawn))
        spread_draws = None
        if per_draw:
            stack = np.stack([per_draw[v] for v in variants])  # [variants, draws, 2]
            spread_draws = stack.max(axis=0) - stack.min(axis=0)
        rows.append(_c1_row(size, "spread (max - min over variants)", ks, values.max(axis=1) - values.min(axis=1),
                            spread_draws))
    if not rows:
        raise NoData("no size of the grid has two budgets for every variant")
    return pd.DataFrame(rows)


def c1_grid_table(tables: Tables) -> Table:
    title = "Table 4: C1 read off the scaling grid (log LongPPL gap to Full at the smallest and largest budget)"
    try:
        data = c1_grid_rows(tables)
    except NoData as e:
        return Table("table4_c1_grid", title, pd.DataFrame(columns=["size", "quantity"]), note=str(e))
    display = pd.DataFrame({
        "size": data["size"], "quantity": data["quantity"],
        "smallest budget": [f"k={fmt(k)}: {_interval_text(v, lo, hi)}" for k, v, lo, hi in
                            zip(data["k_small"], data["at_small"], data["at_small_low"], data["at_small_high"],
                                strict=True)],
        "largest budget": [f"k={fmt(k)}: {_interval_text(v, lo, hi)}" for k, v, lo, hi in
                           zip(data["k_large"], data["at_large"], data["at_large_low"], data["at_large_high"],
                               strict=True)],
        "change of |gap|": [_interval_text(v, lo, hi) for v, lo, hi in
                            zip(data["abs_change"], data["abs_change_low"], data["abs_change_high"], strict=True)],
        "reading": data["reading"],
    })
    note = ("Paper finding 1 (C1): with enough tokens every hybrid converges to Full, so |gap| should shrink from "
            "the smallest to the largest budget. Values: measured budget points (the decayed end of each branch, "
            "mean over seeds); brackets: 95% bootstrap interval of the same quantity from the fitted laws "
            "(table 3), at the held-out size an extrapolation. Reading: shrinks / grows when the interval of the "
            "change of |gap| excludes 0, else unclear.")
    return Table("table4_c1_grid", title, data, display, note)


def scaling_tables(tables: Tables) -> list[Table]:
    """The report's scaling-fit table and the grid's C1 check (each a note saying why when there is no grid)."""
    return [scaling_fit_table(tables), c1_grid_table(tables)]
