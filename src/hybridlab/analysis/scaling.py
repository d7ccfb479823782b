"""Scaling-law fit of log(LongPPL) over model size N and training tokens D: the law, its objective, and the two
procedures that minimise it (this project's default and the authors' released one).

Model (y = log(LongPPL), N = non-embedding parameters, D = training tokens):
    no_constant:  y = B / N^alpha + C / D^beta
    constant:     y = B / N^alpha + C / D^beta + E
Parameters are fitted as a = log B, c = log C, e = log E (so B, C, E > 0) by minimising
    sum_i Huber_eps( log y_pred_i - log y_i )          (eps = 1e-3; "fitted in log space")
by scipy's L-BFGS-B from a grid of starting points, keeping the best optimum. alpha is bounded to
`alpha_bounds` (paper: [0.2, 0.3]; None leaves it free, >= 0), beta >= 0.

Procedures (`procedure=`):
  - "default": the analytic gradient, tight tolerances (ftol 1e-12, gtol 1e-10), and starts that cross
    3 alpha values (the bounds' ends and middle) with 5 beta values, each with B, C (and E) from non-negative
    least squares at that (alpha, beta) and with a coarse grid of log B, log C (and log E).
  - "released": the authors' src/scaling/fit_scaling.py (thunlp/rethinking-hybrid-attention), re-implemented
    from its definitions: the product grid of starts in its order (`RELEASED`), L-BFGS-B on finite-difference
    gradients with its maxiter and ftol, the first best start kept (strict improvement), then one refinement
    from that optimum with its final tolerances. Starts outside the bounds are clipped onto them (as scipy
    does). On the released SWA-128 data it stops early (ftol 1e-6 relative), so it returns a slightly higher
    objective than "default", which is why "default" stays the default; `tests/unit/test_scaling_released.py`
    checks both against the released script's numbers.
Both report `objective` by the same Huber loss, so the two can be compared directly.

Holdout (`holdout="largest"`, the default, as the authors' --validate does it): every row of the largest N of
the data the fit is given is held out, and the law is fitted to the other sizes. On the released table that is
S4; at the paper scale (S1..S5) it is S5, the size of the paper's headline results: the check is then whether
the law fitted on S1..S4 extrapolates to it (S5 reaches only k = 100 and 200, so two points). Metrics (R², RMSE,
MAE) are reported for the train and holdout rows in three spaces: "log" (log y, the fitted space), "loss" (y
itself, the released script's space) and "ppl" (exp(y) = LongPPL). Metric keys read f"{split}_{space}_{metric}",
e.g. "holdout_ppl_r2". Uncertainty (bootstrap intervals, the profile over alpha, warnings) is added by
analysis/scaling_uncertainty.py.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.optimize import OptimizeResult, minimize, nnls
from threadpoolctl import threadpool_limits

FORMS = ("no_constant", "constant")
PROCEDURES = ("default", "released")
PARAM_NAMES = {"no_constant": ("B", "alpha", "C", "beta"), "constant": ("B", "alpha", "C", "beta", "E")}
PAPER_ALPHA_BOUNDS = (0.2, 0.3)
FREE_ALPHA_BOUNDS = (0.0, None)
FREE_ALPHA_STARTS = (0.1, 0.3, 0.6)
BETA_STARTS = (0.1, 0.25, 0.4, 0.6, 0.9)
LOG_COEF_STARTS = (0.0, 10.0)
LOG_E_STARTS = (0.0,)
DEFAULT_OPTIONS = {"maxiter": 5000, "ftol": 1e-12, "gtol": 1e-10}
SPACES = {"log": np.log, "loss": lambda y: y, "ppl": np.exp}
# |log B|, |log C|, |log E| <= 100 in the default procedure: no sensible law comes near (the released data's
# optimum has log C = 6.2), but data that the law does not describe can send C and beta off together along a
# direction they do not constrain; the box stops that run at a finite value, where the bound warning says so.
LOG_COEF_BOX = 100.0
# Sentinel: the alpha bounds of the procedure and form (the paper's [0.2, 0.3], except the released script's
# constant form, which leaves alpha free).
AUTO = "auto"


@dataclass(frozen=True)
class ReleasedSettings:
    """One form's settings in the released script. `grid` lists the start values per parameter in the order
    the script loops over them (itertools.product order); `order` is the script's parameter vector."""

    grid: dict[str, tuple[float, ...]]
    order: tuple[str, ...]
    alpha_bounds: tuple[float, float | None]
    grid_options: dict[str, float]
    final_options: dict[str, float]


RELEASED = {
    "no_constant": ReleasedSettings(
        grid={"alpha": (0.1, 0.2, 0.5, 1.0, 1.5, 2.0), "beta": (0.1, 0.2, 0.5, 0.8, 1.0, 1.2),
              "a": (0, 1, 2, 4, 6, 8, 10, 12), "c": (0, 1, 2, 8, 10, 12)},
        order=("a", "c", "alpha", "beta"),
        alpha_bounds=PAPER_ALPHA_BOUNDS,
        grid_options={"maxiter": 3000, "ftol": 1e-6},
        final_options={"maxiter": 20000, "ftol": 1e-8},
    ),
    "constant": ReleasedSettings(
        grid={"alpha": (0, 0.5, 1, 1.5, 2), "beta": (0, 0.5, 1.0, 1.5, 2), "e": (-1, -0.5, 0, 0.5, 1),
              "a": (0, 3, 6, 9, 12), "c": (0, 3, 6, 9, 12)},
        order=("e", "a", "c", "alpha", "beta"),
        alpha_bounds=FREE_ALPHA_BOUNDS,
        grid_options={"maxiter": 1000, "ftol": 1e-6},
        final_options={"maxiter": 10000, "ftol": 1e-9},
    ),
}
THETA = {"no_constant": ("a", "alpha", "c", "beta"), "constant": ("a", "alpha", "c", "beta", "e")}


@dataclass
class ScalingFit:
    """A fitted law: `params` (B, alpha, C, beta[, E]), `metrics` (see module docstring) and fit details.
    The data it was fitted to are kept (`n`, `d`, `y`, `held`) for the uncertainty analyses."""

    form: str
    procedure: str
    params: dict[str, float]
    metrics: dict[str, float]
    n_train: int
    n_holdout: int
    holdout_n: float | None
    objective: float
    huber_eps: float
    alpha_bounds: tuple[float, float | None]
    info: dict[str, float] = field(default_factory=dict)
    n: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    d: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    y: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    held: np.ndarray = field(default_factory=lambda: np.zeros(0, bool), repr=False)

    def predict(self, n: np.ndarray | float, d: np.ndarray | float) -> np.ndarray:
        """Predicted y = log(LongPPL) at model size(s) n and token count(s) d."""
        return np.exp(log_predict(self.theta(), np.log(np.asarray(n, float)), np.log(np.asarray(d, float))))

    def theta(self) -> np.ndarray:
        """The optimiser's vector (log B, alpha, log C, beta[, log E])."""
        return params_to_theta(self.params, self.form)

    @property
    def bounds(self) -> list[tuple[float | None, float | None]]:
        return theta_bounds(self.form, self.alpha_bounds)

    def to_frame(self) -> pd.DataFrame:
        """Tidy rows (form, kind, name, value), kind in {"param", "metric", "info"}."""
        rows = [("param", k, v) for k, v in self.params.items()]
        rows += [("metric", k, v) for k, v in self.metrics.items()]
        low, high = self.alpha_bounds
        info = {
            "n_train": self.n_train,
            "n_holdout": self.n_holdout,
            "objective": self.objective,
            "huber_eps": self.huber_eps,
            "holdout_N": np.nan if self.holdout_n is None else self.holdout_n,
            "alpha_bound_low": low,
            "alpha_bound_high": np.nan if high is None else high,
            "released_procedure": float(self.procedure == "released"),
            **self.info,
        }
        rows += [("info", k, float(v)) for k, v in info.items()]
        frame = pd.DataFrame(rows, columns=["kind", "name", "value"])
        frame.insert(0, "form", self.form)
        return frame


def params_to_theta(params: dict[str, float], form: str) -> np.ndarray:
    """(log B, alpha, log C, beta[, log E]) of a parameter dict."""
    theta = [math.log(params["B"]), params["alpha"], math.log(params["C"]), params["beta"]]
    if form == "constant":
        theta.append(math.log(params["E"]))
    return np.array(theta)


def theta_to_params(theta: np.ndarray, form: str) -> dict[str, float]:
    """B, alpha, C, beta[, E] of theta (a coefficient beyond the float range is inf, not an error)."""
    with np.errstate(over="ignore"):
        params = {"B": float(np.exp(theta[0])), "alpha": float(theta[1]), "C": float(np.exp(theta[2])),
                  "beta": float(theta[3])}
        if form == "constant":
            params["E"] = float(np.exp(theta[4]))
    return params


def theta_bounds(form: str, alpha_bounds: tuple[float, float | None]) -> list[tuple[float | None, float | None]]:
    """The default optimiser's box: alpha in its bounds, beta >= 0, log B, log C (log E) within LOG_COEF_BOX."""
    coef = (-LOG_COEF_BOX, LOG_COEF_BOX)
    return [coef, tuple(alpha_bounds), coef, (0.0, None)] + ([coef] if form == "constant" else [])


def log_predict(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray) -> np.ndarray:
    """log y_pred, computed as a log-sum-exp of the terms' logs so large exponents cannot overflow."""
    terms = [theta[0] - theta[1] * log_n, theta[2] - theta[3] * log_d]
    if theta.size == 5:
        terms.append(np.broadcast_to(theta[4], np.broadcast(log_n, log_d).shape))
    return np.logaddexp.reduce(np.stack(np.broadcast_arrays(*terms)), axis=0)


def huber(r: np.ndarray, eps: float) -> float:
    """sum_i Huber_eps(r_i): r^2 / 2 within eps, eps (|r| - eps / 2) beyond."""
    abs_r = np.abs(r)
    return float(np.where(abs_r <= eps, 0.5 * r**2, eps * (abs_r - 0.5 * eps)).sum())


def objective(theta: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_y: np.ndarray,
              eps: float) -> tuple[float, np.ndarray]:
    """Huber loss of log residuals and its gradient in theta = (a, alpha, c, beta[, e])."""
    t1, t2 = theta[0] - theta[1] * log_n, theta[2] - theta[3] * log_d
    log_pred = np.logaddexp(t1, t2) if theta.size == 4 else np.logaddexp(np.logaddexp(t1, t2), theta[4])
    r = log_pred - log_y
    psi = np.clip(r, -eps, eps)
    w1 = np.exp(t1 - log_pred)  # share of each term in y_pred
    w2 = np.exp(t2 - log_pred)
    grad = [np.sum(psi * w1), -np.sum(psi * w1 * log_n), np.sum(psi * w2), -np.sum(psi * w2 * log_d)]
    if theta.size == 5:
        grad.append(np.sum(psi * np.exp(theta[4] - log_pred)))
    return huber(r, eps), np.array(grad)


def nnls_start(alpha: float, beta: float, log_n: np.ndarray, log_d: np.ndarray, y: np.ndarray,
               constant: bool) -> np.ndarray:
    """theta at (alpha, beta) with B, C (and E) from non-negative least squares of y on the law's terms."""
    columns = [np.exp(-alpha * log_n), np.exp(-beta * log_d)] + ([np.ones_like(y)] if constant else [])
    coef, _ = nnls(np.stack(columns, axis=1), y)
    logs = np.log(np.maximum(coef, 1e-6))
    return np.array([logs[0], alpha, logs[1], beta] + ([logs[2]] if constant else []))


def alpha_start_values(alpha_bounds: tuple[float, float | None]) -> tuple[float, ...]:
    """Start values of alpha: the bounds' ends and middle, or FREE_ALPHA_STARTS when alpha is free."""
    low, high = alpha_bounds
    return FREE_ALPHA_STARTS if high is None else tuple(np.linspace(low, high, 3))


def default_starts(form: str, alpha_bounds: tuple[float, float | None], log_n: np.ndarray, log_d: np.ndarray,
                   y: np.ndarray) -> list[np.ndarray]:
    """The default procedure's starting points (module docstring)."""
    constant = form == "constant"
    starts = []
    for alpha, beta in itertools.product(alpha_start_values(alpha_bounds), BETA_STARTS):
        starts.append(nnls_start(alpha, beta, log_n, log_d, y, constant))
        grid = itertools.product(LOG_COEF_STARTS, LOG_COEF_STARTS, LOG_E_STARTS if constant else [None])
        for a, c, e in grid:
            starts.append(np.array([a, alpha, c, beta] + ([e] if constant else [])))
    return starts


def minimize_from(starts: list[np.ndarray], bounds: list[tuple[float | None, float | None]], log_n: np.ndarray,
                  log_d: np.ndarray, log_y: np.ndarray, eps: float) -> OptimizeResult | None:
    """The best L-BFGS-B optimum (analytic gradient, DEFAULT_OPTIONS) over `starts`; None if none is finite."""
    best = None
    # L-BFGS-B calls BLAS on vectors of 4-5 numbers; a threaded BLAS makes that ~10x slower on a busy machine.
    with threadpool_limits(limits=1, user_api="blas"):
        for theta0 in starts:
            result = minimize(objective, theta0, args=(log_n, log_d, log_y, eps), jac=True, method="L-BFGS-B",
                              bounds=bounds, options=DEFAULT_OPTIONS)
            if np.isfinite(result.fun) and (best is None or result.fun < best.fun):
                best = result
    return best


def released_objective(x: np.ndarray, log_n: np.ndarray, log_d: np.ndarray, log_y: np.ndarray, eps: float,
                       order: tuple[str, ...]) -> float:
    """The released script's objective on its own parameter vector `x` (named by `order`), computed in its
    arithmetic: the log-sum-exp as max + log(sum exp(t - max)) and the Huber loss as
    0.5 min(|r|, eps)^2 + eps (|r| - min(|r|, eps)). Finite-difference gradients see every rounding, so
    matching the release's iterates needs its operations, not merely an equal function."""
    p = dict(zip(order, x, strict=True))
    terms = [p["a"] - p["alpha"] * log_n, p["c"] - p["beta"] * log_d]
    if "e" in p:
        terms.append(np.full_like(terms[0], p["e"]))
    top = terms[0]
    for t in terms[1:]:
        top = np.maximum(top, t)
    total = np.exp(terms[0] - top)
    for t in terms[1:]:
        total = total + np.exp(t - top)
    r = top + np.log(total) - log_y
    abs_r = np.abs(r)
    quadratic = np.minimum(abs_r, eps)
    return float(np.sum(0.5 * quadratic**2 + eps * (abs_r - quadratic)))


def released_fit(form: str, alpha_bounds: tuple[float, float | None], log_n: np.ndarray, log_d: np.ndarray,
                 log_y: np.ndarray, eps: float) -> tuple[np.ndarray, dict[str, float]]:
    """The released procedure (see the module docstring); returns theta in this module's order and details."""
    s = RELEASED[form]
    bounds_by_name = {"a": (None, None), "c": (None, None), "e": (None, None), "alpha": tuple(alpha_bounds),
                      "beta": (0.0, None)}
    bounds = [bounds_by_name[k] for k in s.order]
    low = np.array([-np.inf if b[0] is None else b[0] for b in bounds])
    high = np.array([np.inf if b[1] is None else b[1] for b in bounds])
    args = (log_n, log_d, log_y, eps, s.order)
    best_fun, best_x, n_starts = np.inf, None, 0
    with threadpool_limits(limits=1, user_api="blas"):
        for values in itertools.product(*s.grid.values()):
            start = dict(zip(s.grid, values, strict=True))
            x0 = np.clip(np.array([start[k] for k in s.order], float), low, high)
            result = minimize(released_objective, x0, args=args, method="L-BFGS-B", bounds=bounds,
                              options=s.grid_options)
            n_starts += 1
            if result.fun < best_fun:  # strict: the first of equal optima is kept, as in the release
                best_fun, best_x = result.fun, result.x
        if best_x is None:
            raise ValueError("fit_scaling_law: no start of the released grid gave a finite objective")
        final = minimize(released_objective, best_x, args=args, method="L-BFGS-B", bounds=bounds,
                         options=s.final_options)
    p = dict(zip(s.order, final.x, strict=True))
    theta = np.array([p[k] for k in THETA[form]])
    return theta, {"n_starts": n_starts, "converged": float(final.success), "grid_objective": float(best_fun)}


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


def resolve_alpha_bounds(alpha_bounds: tuple[float, float] | str | None, form: str,
                         procedure: str) -> tuple[float, float | None]:
    """`alpha_bounds` as (low, high or None): AUTO is the procedure's own (module docstring), None is free."""
    if isinstance(alpha_bounds, str):
        if alpha_bounds != AUTO:
            raise ValueError(f"alpha_bounds={alpha_bounds!r}: allowed are {AUTO!r}, None or (low, high)")
        return RELEASED[form].alpha_bounds if procedure == "released" else PAPER_ALPHA_BOUNDS
    if alpha_bounds is None:
        return FREE_ALPHA_BOUNDS
    low, high = alpha_bounds
    if not 0.0 <= low <= high:
        raise ValueError(f"alpha_bounds={alpha_bounds!r} must be (low, high) with 0 <= low <= high, or None")
    return float(low), float(high)


def check_trainable(n: np.ndarray, d: np.ndarray, train: np.ndarray, form: str, holdout: str | None,
                    n_col: str = "N", d_col: str = "D") -> None:
    """Raise ValueError unless the training rows can determine the law's parameters."""
    n_params = len(PARAM_NAMES[form])
    if train.sum() <= n_params:
        raise ValueError(
            f"fit_scaling_law: {train.sum()} training rows for {n_params} parameters; "
            f"need more sizes or token budgets (holdout={holdout!r})"
        )
    if len(np.unique(n[train])) < 2 or len(np.unique(d[train])) < 2:
        raise ValueError(
            f"fit_scaling_law: the training rows need at least 2 distinct {n_col} and 2 distinct {d_col} "
            f"values (holdout={holdout!r} removes the largest {n_col})"
        )


def fit_scaling_law(
    df: pd.DataFrame,
    *,
    n_col: str = "N",
    d_col: str = "D",
    y_col: str = "loss",
    form: str = "no_constant",
    procedure: str = "default",
    alpha_bounds: tuple[float, float] | str | None = AUTO,
    holdout: str | None = "largest",
    huber_eps: float = 1e-3,
) -> ScalingFit:
    """Fit y = B/N^alpha + C/D^beta [+ E] to the rows of `df` (see the module docstring for the method)."""
    if form not in FORMS:
        raise ValueError(f"form={form!r} is not one of {FORMS}")
    if procedure not in PROCEDURES:
        raise ValueError(f"procedure={procedure!r} is not one of {PROCEDURES}")
    if holdout not in ("largest", None):
        raise ValueError(f"holdout={holdout!r} is not one of ('largest', None)")
    alpha_box = resolve_alpha_bounds(alpha_bounds, form, procedure)
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
    train = ~held
    check_trainable(n, d, train, form, holdout, n_col, d_col)
    log_n, log_d, log_y = np.log(n[train]), np.log(d[train]), np.log(y[train])
    if procedure == "released":
        theta, info = released_fit(form, alpha_box, log_n, log_d, log_y, huber_eps)
    else:
        starts = default_starts(form, alpha_box, log_n, log_d, y[train])
        best = minimize_from(starts, theta_bounds(form, alpha_box), log_n, log_d, log_y, huber_eps)
        theta, info = best.x, {"n_starts": len(starts), "converged": float(best.success)}
    y_pred = np.exp(log_predict(theta, np.log(n), np.log(d)))
    metrics = _metrics(y[train], y_pred[train], "train")
    if held.any():
        metrics.update(_metrics(y[held], y_pred[held], "holdout"))
    return ScalingFit(
        form=form,
        procedure=procedure,
        params=theta_to_params(theta, form),
        metrics=metrics,
        n_train=int(train.sum()),
        n_holdout=int(held.sum()),
        holdout_n=holdout_n,
        objective=objective(theta, log_n, log_d, log_y, huber_eps)[0],
        huber_eps=huber_eps,
        alpha_bounds=alpha_box,
        info=info,
        n=n,
        d=d,
        y=y,
        held=held,
    )
