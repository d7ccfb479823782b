"""Scaling-law fit of log(LongPPL) over model size N and training tokens D, as the paper releases it.

Model (y = log(LongPPL), N = non-embedding parameters, D = training tokens):
    no_constant:  y = B / N^alpha + C / D^beta
    constant:     y = B / N^alpha + C / D^beta + E
Parameters are fitted as a = log B, c = log C, e = log E (so B, C, E > 0) by minimising
    sum_i Huber_eps( log y_pred_i - log y_i )          (eps = 1e-3; "fitted in log space")
with scipy's L-BFGS-B from a grid of starting points, keeping the best optimum. alpha is bounded to
`alpha_bounds` (paper: [0.2, 0.3]; None leaves it free, >= 0), beta >= 0. The starting grid crosses alpha and
beta values with (i) B, C (and E) from non-negative least squares at that (alpha, beta) and (ii) a coarse grid
of log B, log C (and log E).

With `holdout="largest"` every row of the largest N is held out. Metrics (R², RMSE, MAE) are reported for the
train and holdout rows in three spaces: "log" (log y, the fitted space), "loss" (y itself) and "ppl"
(exp(y) = LongPPL). Metric keys read f"{split}_{space}_{metric}", e.g. "holdout_ppl_r2".

Input tables (`read_scaling_table`), chosen by their columns, with the mapping to (N, D, loss) explicit:
  - simple:  size, N, D, loss             (TSV or CSV; loss is log(LongPPL), or LongPPL with log_values=True)
  - tidy:    variant, size, N, tokens, metric, value  (the pipeline's result tables; tokens -> D,
             value -> loss, after selecting one metric's rows)
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize, nnls
from threadpoolctl import threadpool_limits

FORMS = ("no_constant", "constant")
PARAM_NAMES = {"no_constant": ("B", "alpha", "C", "beta"), "constant": ("B", "alpha", "C", "beta", "E")}
SIMPLE_COLUMNS = ("size", "N", "D", "loss")
TIDY_COLUMNS = ("variant", "size", "N", "tokens", "metric", "value")
TIDY_TO_FIT = {"tokens": "D", "value": "loss"}
FREE_ALPHA_BOUNDS = (0.0, None)
FREE_ALPHA_STARTS = (0.1, 0.3, 0.6)
BETA_STARTS = (0.1, 0.25, 0.4, 0.6, 0.9)
LOG_COEF_STARTS = (0.0, 10.0)
LOG_E_STARTS = (0.0,)
SPACES = {"log": np.log, "loss": lambda y: y, "ppl": np.exp}


@dataclass
class ScalingFit:
    """A fitted law: `params` (B, alpha, C, beta[, E]), `metrics` (see module docstring) and fit details."""

    form: str
    params: dict[str, float]
    metrics: dict[str, float]
    n_train: int
    n_holdout: int
    holdout_n: float | None
    objective: float
    huber_eps: float
    alpha_bounds: tuple[float, float] | None
    info: dict[str, float] = field(default_factory=dict)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Predicted y = log(LongPPL) at model size(s) n and token count(s) d."""
        return np.exp(_log_predict(self._theta(), np.log(np.asarray(n, float)), np.log(np.asarray(d, float))))

    def _theta(self) -> np.ndarray:
        p = self.params
        theta = [math.log(p["B"]), p["alpha"], math.log(p["C"]), p["beta"]]
        if self.form == "constant":
            theta.append(math.log(p["E"]))
        return np.array(theta)

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows (form, kind, name, value), kind in {"param", "metric", "info"}."""
        rows = [("param", k, v) for k, v in self.params.items()]
        rows += [("metric", k, v) for k, v in self.metrics.items()]
        info = {
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "objective": self.objective,
            "huber_eps": self.huber_eps,
            "holdout_N": np.nan if self.holdout_n is None else self.holdout_n,
            **self.info,
        }
        rows += [("info", k, float(v)) for k, v in info.items()]
        frame = pd.DataFrame(rows, columns=["kind", "name", "value"])
        frame.insert(0, "form", self.form)
        return frame


def _log_predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log y_pred, computed as a log-sum-exp of the terms' logs so large exponents cannot overflow."""
    terms = [theta[0] - theta[1] * log_n, theta[2] - theta[3] * log_d]
    if theta.size == 5:
        terms.append(np.broadcast_to(theta[4], np.broadcast(log_n, log_d).shape))
    return np.logaddexp.reduce(np.stack(np.broadcast_arrays(*terms)), axis=0)


def _objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_y: np.ndarray, eps: float):
    """Huber loss of log residuals and its gradient in theta = (a, alpha, c, beta[, e])."""
    log_pred = _log_predict(theta, log_n, log_d)
    r = log_pred - log_y
    abs_r = np.abs(r)
    loss = np.where(abs_r <= eps, 0.5 * r**2, eps * (abs_r - 0.5 * eps)).sum()
    psi = np.clip(r, -eps, eps)
    w1 = np.exp(theta[0] - theta[1] * log_n - log_pred)  # share of each term in y_pred
    w2 = np.exp(theta[2] - theta[3] * log_d - log_pred)
    grad = [np.sum(psi * w1), -np.sum(psi * w1 * log_n), np.sum(psi * w2), -np.sum(psi * w2 * log_d)]
    if theta.size == 5:
        grad.append(np.sum(psi * np.exp(theta[4] - log_pred)))
    return loss, np.array(grad)


def _starts(form: str, alpha_bounds, log_n, log_d, y) -> list[np.ndarray]:
    if alpha_bounds is None:
        alphas = FREE_ALPHA_STARTS
    else:
        alphas = tuple(np.linspace(alpha_bounds[0], alpha_bounds[1], 3))
    constant = form == "constant"
    starts = []
    for alpha, beta in itertools.product(alphas, BETA_STARTS):
        columns = [np.exp(-alpha * log_n), np.exp(-beta * log_d)] + ([np.ones_like(y)] if constant else [])
        coef, _ = nnls(np.stack(columns, axis=1), y)
        logs = np.log(np.maximum(coef, 1e-6))
        theta = [logs[0], alpha, logs[1], beta] + ([logs[2]] if constant else [])
        starts.append(np.array(theta))
        grid = itertools.product(LOG_COEF_STARTS, LOG_COEF_STARTS, LOG_E_STARTS if constant else [None])
        for a, c, e in grid:
            starts.append(np.array([a, alpha, c, beta] + ([e] if constant else [])))
    return starts


def _metrics(y_obs: np.ndarray, y_pred: np.ndarray, prefix: str) -> dict[str, float]:
    out = {}
    for space, transform in SPACES.items():
        obs, pred = transform(y_obs), transform(y_pred)
        err = pred - obs
        ss_tot = float(np.sum((obs - obs.mean()) ** 2)) if obs.size else 0.0
        r2 = 1.0 - float(np.sum(err**2)) / ss_tot if ss_tot > 0 else math.nan
        out[f"{prefix}_{space}_r2"] = r2
        out[f"{prefix}_{space}_rmse"] = float(np.sqrt(np.mean(err**2))) if obs.size else math.nan
        out[f"{prefix}_{space}_mae"] = float(np.mean(np.abs(err))) if obs.size else math.nan
    return out


def fit_scaling_law(
    df: pd.DataFrame,
    *,
    n_col: str = "N",
    d_col: str = "D",
    y_col: str = "loss",
    form: str = "no_constant",
    alpha_bounds: tuple[float, float] | None = (0.2, 0.3),
    holdout: str | None = "largest",
    huber_eps: float = 1e-3,
) -> ScalingFit:
    """Fit y = B/N^alpha + C/D^beta [+ E] to the rows of `df` (see the module docstring for the method)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not one of {FORMS}")
    if holdout not in ("largest", None):
        raise ValueError(f"holdout={holdout!r} is not one of ('largest', None)")
    if alpha_bounds is not None and not 0.0 <= alpha_bounds[0] <= alpha_bounds[1]:
        raise ValueError(f"alpha_bounds={alpha_bounds!r} must be (low, high) with 0 <= low <= high, or None")
    missing = [c for c in (n_col, d_col, y_col) if c not in df.columns]
    if missing:
        raise ValueError(f"fit_scaling_law: columns {missing} missing; the table has {list(df.columns)}")
    data = df[[n_col, d_col, y_col]].astype(float)
    if data.isna().any().any() or (data <= 0).any().any():
        raise ValueError(f"fit_scaling_law: {n_col}, {d_col} and {y_col} must be positive numbers (no NaN)")
    n, d, y = (data[c].to_numpy() for c in (n_col, d_col, y_col))

    held = np.zeros(len(n), bool)
    holdout_n = None
    if holdout == "largest":
        holdout_n = float(n.max())
        held = n == holdout_n
    n_params = len(PARAM_NAMES[form])
    if (~held).sum() <= n_params:
        raise ValueError(
            f"fit_scaling_law: {(~held).sum()} training rows for {n_params} parameters; "
            f"need more sizes or token budgets (holdout={holdout!r})"
        )

    train = ~held
    if len(np.unique(n[train])) < 2 or len(np.unique(d[train])) < 2:
        raise ValueError(
            f"fit_scaling_law: the training rows need at least 2 distinct {n_col} and 2 distinct {d_col} "
            f"values (holdout={holdout!r} removes the largest {n_col})"
        )
    log_n, log_d, log_y = np.log(n), np.log(d), np.log(y)
    alpha_box = FREE_ALPHA_BOUNDS if alpha_bounds is None else tuple(alpha_bounds)
    bounds = [(None, None), alpha_box, (None, None), (0.0, None)] + (
        [(None, None)] if form == "constant" else []
    )
    best = None
    # L-BFGS-B calls BLAS on vectors of 4-5 numbers; a threaded BLAS makes that ~10x slower on a busy machine.
    with threadpool_limits(limits=1, user_api="blas"):
        starts = _starts(form, alpha_bounds, log_n[train], log_d[train], y[train])
        for theta0 in starts:
            result = minimize(
                _objective,
                theta0,
                args=(log_n[train], log_d[train], log_y[train], huber_eps),
                jac=True,
                method="L-BFGS-B",
                bounds=bounds,
                options={"maxiter": 5000, "ftol": 1e-12, "gtol": 1e-10},
            )
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
    theta = best.x
    params = {
        "B": math.exp(theta[0]),
        "alpha": float(theta[1]),
        "C": math.exp(theta[2]),
        "beta": float(theta[3]),
    }
    if form == "constant":
        params["E"] = math.exp(theta[4])
    y_pred = np.exp(_log_predict(theta, log_n, log_d))
    metrics = _metrics(y[train], y_pred[train], "train")
    if held.any():
        metrics.update(_metrics(y[held], y_pred[held], "holdout"))
    return ScalingFit(
        form=form,
        params=params,
        metrics=metrics,
        n_train=int(train.sum()),
        n_holdout=int(held.sum()),
        holdout_n=holdout_n,
        objective=float(best.fun),
        huber_eps=huber_eps,
        alpha_bounds=None if alpha_bounds is None else alpha_box,
        info={"n_starts": len(starts), "converged": float(best.success)},
    )


def _read_delimited(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return pd.read_csv(path, sep="\t")
    if suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_csv(path, sep=None, engine="python")


def read_scaling_table(
    path: str | Path, *, metric: str | None = None, variant: str | None = None, log_values: bool = False
) -> pd.DataFrame:
    """Read a scaling table into columns (variant if present, size, N, D, loss); see the module docstring.

    metric: for tidy tables, which metric's rows to use (may be omitted when the table holds only one).
    variant: keep only this variant's rows (tables with a variant column).
    log_values: the values are LongPPL rather than log(LongPPL); take their log.
    """
    path = Path(path)
    raw = _read_delimited(path)
    columns = set(raw.columns)
    if set(TIDY_COLUMNS) <= columns:
        metrics = sorted(raw["metric"].astype(str).unique())
        if metric is None and len(metrics) != 1:
            raise ValueError(f"{path}: holds metrics {metrics}; pass metric= to choose one")
        chosen = metric if metric is not None else metrics[0]
        if chosen not in metrics:
            raise ValueError(f"{path}: metric {chosen!r} not found; the table holds {metrics}")
        table = raw[raw["metric"] == chosen].rename(columns=TIDY_TO_FIT)
    elif set(SIMPLE_COLUMNS) <= columns:
        table = raw
    else:
        raise ValueError(
            f"{path}: columns {sorted(columns)} match neither the simple layout {list(SIMPLE_COLUMNS)} "
            f"nor the tidy layout {list(TIDY_COLUMNS)}"
        )
    if variant is not None:
        if "variant" not in table.columns:
            raise ValueError(f"{path}: variant={variant!r} given, but the table has no 'variant' column")
        table = table[table["variant"] == variant]
        if table.empty:
            raise ValueError(f"{path}: no rows for variant {variant!r}")
    keep = (["variant"] if "variant" in table.columns else []) + list(SIMPLE_COLUMNS)
    table = table[keep].reset_index(drop=True)
    table = table.astype({"N": float, "D": float, "loss": float})
    if log_values:
        table["loss"] = np.log(table["loss"])
    return table


def fit_table(
    table: pd.DataFrame,
    *,
    forms: tuple[str, ...] = ("no_constant",),
    group_col: str | None = "variant",
    **fit_kwargs: object,
) -> pd.DataFrame:
    """Fit each group (e.g. each variant) in each form; tidy rows (group, form, kind, name, value) for CSV.

    `table` has the columns of `read_scaling_table`; `fit_kwargs` go to `fit_scaling_law`.
    Without the group column (or with group_col=None) the whole table is one group.
    """
    if group_col is not None and group_col in table.columns:
        groups = list(table.groupby(group_col, sort=True))
    else:
        group_col, groups = None, [(None, table)]
    frames = []
    for key, rows in groups:
        for form in forms:
            frame = fit_scaling_law(rows, form=form, **fit_kwargs).to_frame()
            if group_col is not None:
                frame.insert(0, group_col, key)
            frames.append(frame)
    return pd.concat(frames, ignore_index=True)
