"""How well the data determine a fitted scaling law: bootstrap intervals, the profile of the objective over alpha,
plain warnings, and the tidy tables `hybridlab scaling-fit` writes.

Bootstrap (`bootstrap`): the training rows are resampled with replacement, by "points" (rows) or by "sizes"
(whole model sizes, each drawn size bringing all its rows; with few sizes this has few distinct draws, so
"points" is the default), and the law is refitted on each draw. A refit is the default procedure's local
optimiser (analytic-gradient L-BFGS-B) from the full fit's optimum and from least-squares starts at alpha =
the bounds' ends and middle, whatever procedure the point estimate came from: the intervals describe the spread
of the objective's minimiser under resampling. Draws with fewer than 2 distinct sizes or token counts, or no
more distinct points than parameters, are redrawn (counted in `boot_redrawn`). Intervals are percentiles at
`level` (0.95: 2.5% and 97.5%) of each parameter's draws.

Profile (`profile_alpha`): alpha fixed on a grid over its bounds (free alpha: [0, max(1, 2 alpha_hat)]), the
objective minimised over the other parameters at each. It is read as a likelihood ratio: for Huber residuals
mostly beyond eps the loss is eps * sum|r| (a Laplace likelihood), so alpha is inside the approximate 95% profile
interval where n log(objective(alpha) / min) <= chi2_1(0.95) / 2 = 1.92; when most residuals are within eps
(a Gaussian likelihood) the threshold is 3.84. The profile is flat when every alpha of the range is inside.

Warnings (plain sentences in the fit table, rows kind "warning"): a parameter that ends on a bound (alpha on
either bound, beta on 0, log B, log C or log E on the default optimiser's box of +-100, bootstrap refits on that
box); a flat profile, or else
a profile interval that reaches a bound of alpha (the bound truncates what the data allow); a point estimate
above the profile's minimum (the procedure stopped early, as the released one does on its data); bootstrap
refits that failed.

Tables (`fit_table`): the summary (variant, form, kind, name, value) with kinds param, metric, info (see
analysis/scaling.py), ci (name "<param>_low" / "<param>_high"), profile (name = alpha, value = objective) and
warning (name = the sentence, value = the number it is about); and the draws (variant, form, replicate, B,
alpha, C, beta, E, objective), from which the figures draw the band of the fitted law (`prediction_band`).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from hybridlab.analysis.scaling import (
    BETA_STARTS,
    LOG_COEF_BOX,
    PARAM_NAMES,
    ScalingFit,
    alpha_start_values,
    fit_scaling_law,
    log_predict,
    minimize_from,
    nnls_start,
    params_to_theta,
    theta_bounds,
    theta_to_params,
)

log = logging.getLogger("hybridlab")
RESAMPLES = ("points", "sizes")
CHI2_1_95 = 3.841458820694124  # the 95% quantile of chi-squared with one degree of freedom
BOUND_TOL = 1e-6
PROFILE_EXCESS_TOL = 1e-3  # the profile refits reach the minimum far closer than this (ftol 1e-12)
DRAW_COLUMNS = ("form", "replicate", "B", "alpha", "C", "beta", "E", "objective")
MAX_REDRAWS = 20  # per requested replicate, before giving up on a data set that rarely gives a fittable draw


@dataclass
class Bootstrap:
    """The refits of one fit (module docstring) and how they were drawn."""

    draws: pd.DataFrame  # (replicate, B, alpha, C, beta[, E], objective), one row per successful refit
    requested: int
    redrawn: int
    resample: str
    level: float
    seed: int

    def interval(self, name: str) -> tuple[float, float]:
        tail = (1.0 - self.level) / 2.0
        values = self.draws[name].to_numpy()
        if values.size == 0:
            return math.nan, math.nan
        return float(np.quantile(values, tail)), float(np.quantile(values, 1.0 - tail))


@dataclass
class Profile:
    """The objective minimised at each alpha of a grid, read as a likelihood ratio (module docstring)."""

    curve: pd.DataFrame  # (alpha, objective, B, C, beta[, E]) at each alpha of the grid
    threshold: float  # on n log(objective / minimum)
    minimum: float
    n_train: int

    @property
    def statistic(self) -> np.ndarray:
        return self.n_train * np.log(self.curve["objective"].to_numpy() / self.minimum)

    @property
    def inside(self) -> np.ndarray:
        return self.statistic <= self.threshold

    @property
    def interval(self) -> tuple[float, float]:
        alphas = self.curve["alpha"].to_numpy()[self.inside]
        return (float(alphas.min()), float(alphas.max())) if alphas.size else (math.nan, math.nan)

    @property
    def flat(self) -> bool:
        return bool(self.inside.all())

    @property
    def rise(self) -> float:
        """The largest relative rise of the objective over the minimum within the range."""
        return float(self.curve["objective"].max() / self.minimum - 1.0)

    @property
    def range(self) -> tuple[float, float]:
        return float(self.curve["alpha"].min()), float(self.curve["alpha"].max())


def _train_arrays(fit: ScalingFit, rows: np.ndarray | None = None):
    n, d, y = fit.n[~fit.held], fit.d[~fit.held], fit.y[~fit.held]
    if rows is not None:
        n, d, y = n[rows], d[rows], y[rows]
    return np.log(n), np.log(d), y


def _refit_starts(fit: ScalingFit, log_n, log_d, y) -> list[np.ndarray]:
    constant = fit.form == "constant"
    beta = fit.params["beta"]
    alphas = alpha_start_values(fit.alpha_bounds)
    return [fit.theta()] + [nnls_start(a, beta, log_n, log_d, y, constant) for a in alphas]


def _draw_rows(rng: np.random.Generator, fit: ScalingFit, resample: str) -> np.ndarray:
    n_train = int((~fit.held).sum())
    if resample == "points":
        return rng.integers(0, n_train, n_train)
    sizes = np.unique(fit.n[~fit.held])
    picked = rng.choice(sizes, size=sizes.size, replace=True)
    n = fit.n[~fit.held]
    return np.concatenate([np.flatnonzero(n == s) for s in picked])


def _fittable(fit: ScalingFit, rows: np.ndarray) -> bool:
    n, d = fit.n[~fit.held][rows], fit.d[~fit.held][rows]
    distinct = len(set(zip(n.tolist(), d.tolist(), strict=True)))
    return len(np.unique(n)) >= 2 and len(np.unique(d)) >= 2 and distinct > len(PARAM_NAMES[fit.form])


def bootstrap(fit: ScalingFit, *, n_boot: int = 200, resample: str = "points", seed: int = 0,
              level: float = 0.95) -> Bootstrap:
    """Refit the law on `n_boot` resamples of the fit's training rows (module docstring)."""
    if resample not in RESAMPLES:
        raise ValueError(f"resample={resample!r} is not one of {RESAMPLES}")
    if n_boot < 0:
        raise ValueError(f"n_boot={n_boot} must be >= 0 (0: no bootstrap)")
    if not 0.0 < level < 1.0:
        raise ValueError(f"level={level} must be in (0, 1)")
    rng = np.random.default_rng(seed)
    bounds = fit.bounds
    rows_out, redrawn = [], 0
    for replicate in range(n_boot):
        for _ in range(MAX_REDRAWS):
            rows = _draw_rows(rng, fit, resample)
            if _fittable(fit, rows):
                break
            redrawn += 1
        else:
            continue
        log_n, log_d, y = _train_arrays(fit, rows)
        best = minimize_from(_refit_starts(fit, log_n, log_d, y), bounds, log_n, log_d, np.log(y), fit.huber_eps)
        if best is None or not np.isfinite(best.x).all():
            continue
        rows_out.append({"replicate": replicate, **theta_to_params(best.x, fit.form), "objective": float(best.fun)})
    columns = ["replicate", *PARAM_NAMES[fit.form], "objective"]
    return Bootstrap(pd.DataFrame(rows_out, columns=columns), n_boot, redrawn, resample, level, seed)


def profile_alpha(fit: ScalingFit, n_points: int = 21) -> Profile:
    """The objective minimised over the other parameters at each alpha of a grid (module docstring)."""
    if n_points < 2:
        raise ValueError(f"n_points={n_points} must be >= 2")
    low, high = fit.alpha_bounds
    high = max(1.0, 2.0 * fit.params["alpha"]) if high is None else high
    log_n, log_d, y = _train_arrays(fit)
    log_y = np.log(y)
    constant = fit.form == "constant"
    rows, previous = [], None
    for alpha in np.linspace(low, high, n_points):
        bounds = theta_bounds(fit.form, (float(alpha), float(alpha)))
        warm = [t for t in (fit.theta(), previous) if t is not None]
        starts = [np.concatenate([t[:1], [alpha], t[2:]]) for t in warm]
        starts += [nnls_start(alpha, b, log_n, log_d, y, constant) for b in BETA_STARTS]
        best = minimize_from(starts, bounds, log_n, log_d, log_y, fit.huber_eps)
        previous = best.x
        rows.append({"alpha": float(alpha), "objective": float(best.fun), **theta_to_params(best.x, fit.form)})
    curve = pd.DataFrame(rows)[["alpha", "objective", *[p for p in PARAM_NAMES[fit.form] if p != "alpha"]]]
    residuals = log_predict(fit.theta(), log_n, log_d) - log_y
    linear = np.mean(np.abs(residuals) > fit.huber_eps) >= 0.5
    threshold = CHI2_1_95 / 2.0 if linear else CHI2_1_95
    minimum = min(fit.objective, float(curve["objective"].min()))
    return Profile(curve, threshold, minimum, int((~fit.held).sum()))


def fit_warnings(fit: ScalingFit, profile: Profile | None = None,
                 boot: Bootstrap | None = None) -> list[tuple[str, float]]:
    """Plain-sentence warnings (text, the number it is about) for the fit table and the report."""
    out = []
    low, high = fit.alpha_bounds
    alpha, beta = fit.params["alpha"], fit.params["beta"]
    for bound, side in ((low, "lower"), (high, "upper")):
        if bound is not None and abs(alpha - bound) <= BOUND_TOL and (side == "upper" or bound > 0):
            out.append((f"alpha = {alpha:.4g} ends on its {side} bound {bound:g}: the bound, not the data, sets "
                        "alpha, and beta and C adjust to it", alpha))
    if abs(beta) <= BOUND_TOL:
        out.append((f"beta = {beta:.4g} ends on its lower bound 0: the fit finds no decrease with tokens", beta))
    theta = fit.theta()
    for name, index in (("B", 0), ("C", 2), ("E", 4))[: theta.size - 2]:
        if abs(abs(theta[index]) - LOG_COEF_BOX) <= BOUND_TOL * LOG_COEF_BOX:
            out.append((f"{name} = {fit.params[name]:.4g} ends on its bound exp(±{LOG_COEF_BOX:g}): the fit ran off "
                        "along a direction the data do not constrain, so the law does not describe these data",
                        fit.params[name]))
    if profile is not None:
        a, b = profile.range
        lo, hi = profile.interval
        if profile.flat:
            out.append((f"the objective's profile over alpha is flat: over alpha in [{a:g}, {b:g}] it rises by at "
                        f"most {profile.rise:.1%}, inside the approximate 95% likelihood-ratio threshold everywhere, "
                        "so these data do not determine alpha", profile.rise))
        elif high is not None and (math.isclose(lo, low) or math.isclose(hi, high)):
            side = f"upper bound {high:g}" if math.isclose(hi, high) else f"lower bound {low:g}"
            out.append((f"the approximate 95% profile interval of alpha, [{lo:.4g}, {hi:.4g}], reaches its {side}: "
                        "the data are as consistent with alpha beyond the bound, so the bound truncates the "
                        "uncertainty", hi - lo))
        excess = fit.objective / profile.minimum - 1.0
        floor = fit.huber_eps**2 * fit.n_train  # an objective this small is a fit to within rounding
        if fit.objective - profile.minimum > PROFILE_EXCESS_TOL * max(profile.minimum, floor):
            best = profile.curve.loc[profile.curve["objective"].idxmin(), "alpha"]
            out.append((f"the {fit.procedure} procedure stopped {excess:.1%} above the objective's minimum (the "
                        f"profile reaches it at alpha = {best:.4g}): it did not find the optimum", excess))
    if boot is not None and len(boot.draws):
        names = [p for p in ("B", "C", "E") if p in boot.draws.columns]
        logs = np.log(boot.draws[names].to_numpy(float))
        boxed = int((np.abs(np.abs(logs) - LOG_COEF_BOX) <= BOUND_TOL * LOG_COEF_BOX).any(axis=1).sum())
        if boxed:
            out.append((f"{boxed} of {len(boot.draws)} bootstrap refits ran off to the optimiser's box (a coefficient "
                        f"at exp(±{LOG_COEF_BOX:g})): the data bound those parameters on one side only, so their "
                        "intervals reach the box", float(boxed)))
    if boot is not None and boot.requested and len(boot.draws) < boot.requested:
        out.append((f"only {len(boot.draws)} of {boot.requested} bootstrap refits succeeded (the others found no "
                    f"fittable resample in {MAX_REDRAWS} draws, or no finite optimum)", float(len(boot.draws))))
    return out


def summary_frame(fit: ScalingFit, boot: Bootstrap | None, profile: Profile | None) -> pd.DataFrame:
    """The fit's tidy rows (form, kind, name, value) with intervals, profile and warnings (module docstring)."""
    rows = []
    if boot is not None:
        for name in PARAM_NAMES[fit.form]:
            lo, hi = boot.interval(name)
            rows += [("ci", f"{name}_low", lo), ("ci", f"{name}_high", hi)]
        rows += [("info", "boot_requested", float(boot.requested)), ("info", "boot_ok", float(len(boot.draws))),
                 ("info", "boot_redrawn", float(boot.redrawn)), ("info", "boot_level", boot.level),
                 ("info", "boot_by_size", float(boot.resample == "sizes")), ("info", "boot_seed", float(boot.seed))]
    if profile is not None:
        lo, hi = profile.interval
        rows += [("info", "profile_alpha_low", lo), ("info", "profile_alpha_high", hi),
                 ("info", "profile_rise", profile.rise), ("info", "profile_threshold", profile.threshold),
                 ("info", "profile_flat", float(profile.flat))]
        rows += [("profile", f"{a:.6g}", o) for a, o in zip(profile.curve["alpha"], profile.curve["objective"],
                                                           strict=True)]
    rows += [("warning", text, value) for text, value in fit_warnings(fit, profile, boot)]
    extra = pd.DataFrame(rows, columns=["kind", "name", "value"])
    extra.insert(0, "form", fit.form)
    return pd.concat([fit.to_frame(), extra], ignore_index=True)


@dataclass
class FitTables:
    """What `fit_table` returns: the summary rows and the bootstrap draws (module docstring)."""

    summary: pd.DataFrame
    draws: pd.DataFrame


def fit_table(
    table: pd.DataFrame,
    *,
    forms: tuple[str, ...] = ("no_constant",),
    group_col: str | None = "variant",
    n_boot: int = 200,
    resample: str = "points",
    seed: int = 0,
    level: float = 0.95,
    profile_points: int = 21,
    **fit_kwargs: object,
) -> FitTables:
    """Fit each group (e.g. each variant) in each form, with bootstrap intervals (n_boot > 0) and the profile
    over alpha (profile_points > 0). `table` has the columns of `read_scaling_table`; `fit_kwargs` go to
    `fit_scaling_law`. Without the group column (or with group_col=None) the whole table is one group."""
    if group_col is not None and group_col in table.columns:
        groups = list(table.groupby(group_col, sort=True))
    else:
        group_col, groups = None, [(None, table)]
    summaries, draws = [], []
    for key, rows in groups:
        for form in forms:
            started = time.perf_counter()
            fit = fit_scaling_law(rows, form=form, **fit_kwargs)
            boot = bootstrap(fit, n_boot=n_boot, resample=resample, seed=seed, level=level) if n_boot else None
            profile = profile_alpha(fit, profile_points) if profile_points else None
            summary = summary_frame(fit, boot, profile)
            draw = (boot.draws if boot is not None else pd.DataFrame(columns=["replicate"])).assign(form=form)
            draw = draw.reindex(columns=list(DRAW_COLUMNS))
            if group_col is not None:
                summary.insert(0, group_col, key)
                draw.insert(0, group_col, key)
            summaries.append(summary)
            draws.append(draw)
            log.info("scaling fit %s %s (%s): %s in %.1f s", key if key is not None else "all", form,
                     fit.procedure, ", ".join(f"{k} {v:.4g}" for k, v in fit.params.items()),
                     time.perf_counter() - started)
    return FitTables(pd.concat(summaries, ignore_index=True),
                     pd.concat(draws, ignore_index=True).astype({"replicate": "Int64"}))


def prediction_band(draws: pd.DataFrame, form: str, n: float, d: np.ndarray,
                    level: float = 0.95) -> tuple[np.ndarray, np.ndarray] | None:
    """Pointwise `level` band of the law's prediction y(n, d) over bootstrap draws of one group and form
    (None without draws)."""
    rows = draws[draws["form"] == form]
    if rows.empty:
        return None
    names = PARAM_NAMES[form]
    theta = np.stack([params_to_theta(dict(zip(names, r, strict=True)), form)
                      for r in rows[list(names)].to_numpy(float)])
    log_n, log_d = np.log(float(n)), np.log(np.asarray(d, float))
    y = np.exp(np.stack([log_predict(t, log_n, log_d) for t in theta]))
    tail = (1.0 - level) / 2.0
    return np.quantile(y, tail, axis=0), np.quantile(y, 1.0 - tail, axis=0)



WIDE_INFO = ("objective", "n_train", "n_holdout", "holdout_N", "released_procedure", "boot_ok", "boot_requested",
             "profile_alpha_low", "profile_alpha_high", "profile_flat")
WIDE_METRICS = ("train_loss_r2", "holdout_loss_r2", "holdout_loss_rmse", "holdout_ppl_mae")


def fits_wide(summary: pd.DataFrame, group_col: str = "variant") -> pd.DataFrame:
    """One row per (group, form) of a summary table: each parameter with its interval, the fit's key numbers,
    and its warnings joined by '; ' (empty when there are none)."""
    keys = [c for c in (group_col, "form") if c in summary.columns]
    out = []
    for key, g in summary.groupby(keys, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        by = {(k, n): v for k, n, v in zip(g["kind"], g["name"], g["value"], strict=True)}
        row = dict(zip(keys, key, strict=True))
        for name in PARAM_NAMES[row["form"]]:
            row[name] = by.get(("param", name), math.nan)
            row[f"{name}_low"] = by.get(("ci", f"{name}_low"), math.nan)
            row[f"{name}_high"] = by.get(("ci", f"{name}_high"), math.nan)
        row.update({k: by.get(("info", k), math.nan) for k in WIDE_INFO})
        row.update({k: by.get(("metric", k), math.nan) for k in WIDE_METRICS})
        row["warnings"] = "; ".join(g.loc[g["kind"] == "warning", "name"])
        out.append(row)
    return pd.DataFrame(out)


def _with_interval(row: pd.Series, name: str) -> str:
    value, low, high = row[name], row.get(f"{name}_low", math.nan), row.get(f"{name}_high", math.nan)
    text = f"{name} = {value:.4g}"
    return text + (f" [{low:.4g}, {high:.4g}]" if np.isfinite(low) and np.isfinite(high) else "")


def describe_fits(summary: pd.DataFrame, group_col: str = "variant") -> list[str]:
    """Lines for a terminal: per (group, form) the parameters with their intervals, the objective and the
    holdout, then every warning on a line of its own starting 'WARNING:'."""
    lines = []
    for _, row in fits_wide(summary, group_col).iterrows():
        head = " ".join(str(row[c]) for c in (group_col, "form") if c in row.index)
        procedure = "released" if row["released_procedure"] == 1 else "default"
        params = ", ".join(_with_interval(row, p) for p in PARAM_NAMES[row["form"]])
        level = "95% bootstrap intervals" if np.isfinite(row["boot_ok"]) else "no bootstrap"
        line = f"{head} ({procedure} procedure; {level}): {params}; objective {row['objective']:.4g}"
        if row["n_holdout"] > 0:
            line += (f"; holdout N = {row['holdout_N']:.4g} ({int(row['n_holdout'])} rows): R² "
                     f"{row['holdout_loss_r2']:.3f}, RMSE {row['holdout_loss_rmse']:.4f}")
        lines.append(line)
        lines += [f"  WARNING: {w}" for w in row["warnings"].split("; ") if w]
    return lines
