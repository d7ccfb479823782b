"""Statistics for claims about independent seeds: bootstrap intervals, binomial intervals, survival curves of a
censored event (a retrieval head's onset) and a permutation log-rank test. numpy only (the figures code never
imports torch); every random draw comes from a generator seeded by the caller, so a report is reproducible.

Seeds are independent draws (GPU training is not bitwise reproducible, so a "paired" seed pairs nothing after a
few hundred steps): samples of different variants are resampled independently.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


@dataclass(frozen=True)
class Interval:
    estimate: float
    low: float
    high: float

    def __str__(self) -> str:
        return f"{self.estimate:.3g} [{self.low:.3g}, {self.high:.3g}]"


def bootstrap(stat, samples: list[np.ndarray], *, draws: int = 2000, level: float = 0.95, seed: int = 0) -> Interval:
    """Percentile bootstrap interval of `stat(*samples)`, each sample resampled with replacement on its own.
    Draws where `stat` is not finite are left out (e.g. a ratio whose denominator resampled to 0)."""
    rng = np.random.default_rng(seed)
    samples = [np.asarray(s, dtype=float) for s in samples]
    if any(len(s) == 0 for s in samples):
        return Interval(math.nan, math.nan, math.nan)
    values = np.array([stat(*(s[rng.integers(len(s), size=len(s))] for s in samples)) for _ in range(draws)])
    values = values[np.isfinite(values)]
    est = float(stat(*samples))
    if values.size == 0:
        return Interval(est, math.nan, math.nan)
    a = (1 - level) / 2
    return Interval(est, float(np.quantile(values, a)), float(np.quantile(values, 1 - a)))


def wilson(k: int, n: int, level: float = 0.95) -> Interval:
    """Wilson score interval of a binomial proportion k / n."""
    if n == 0:
        return Interval(math.nan, math.nan, math.nan)
    z = Z95 if level == 0.95 else _z(level)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return Interval(p, max(0.0, centre - half), min(1.0, centre + half))


def _z(level: float) -> float:
    from statistics import NormalDist

    return NormalDist().inv_cdf(0.5 + level / 2)


@dataclass(frozen=True)
class Survival:
    """Kaplan-Meier curve of the fraction of runs whose event (onset) has NOT happened by each time, with a
    pointwise 95% band (Greenwood's variance on the log(-log) scale, which keeps the band inside [0, 1])."""

    times: np.ndarray  # event times, ascending
    surviving: np.ndarray  # S(t) just after each time
    low: np.ndarray
    high: np.ndarray
    n: int
    events: int

    def formed_by(self, t: float) -> float:
        """Fraction formed (1 - S) by time t."""
        i = np.searchsorted(self.times, t, side="right")
        return 0.0 if i == 0 else float(1 - self.surviving[i - 1])


def kaplan_meier(times: np.ndarray, observed: np.ndarray) -> Survival:
    """`times` [n]: onset, or the censoring time (the last checkpoint) where `observed` is False."""
    times, observed = np.asarray(times, dtype=float), np.asarray(observed, dtype=bool)
    n = len(times)
    event_times = np.unique(times[observed])
    s, var_sum, rows = 1.0, 0.0, []
    for t in event_times:
        at_risk = int((times >= t).sum())
        d = int(((times == t) & observed).sum())
        s *= 1 - d / at_risk
        var_sum += d / (at_risk * (at_risk - d)) if at_risk > d else math.inf
        if 0 < s < 1 and math.isfinite(var_sum):
            se = math.sqrt(var_sum) / abs(math.log(s))
            lo, hi = s ** math.exp(Z95 * se), s ** math.exp(-Z95 * se)
        else:
            lo = hi = s
        rows.append((t, s, lo, hi))
    arr = np.array(rows, dtype=float).reshape(-1, 4)
    return Survival(arr[:, 0], arr[:, 1], arr[:, 2], arr[:, 3], n, int(observed.sum()))


def logrank_trend(times: np.ndarray, observed: np.ndarray, groups: np.ndarray) -> float:
    """The log-rank trend statistic for ordered groups (scores 0, 1, 2, ...): sum over event times of
    sum_g score_g (O_g - E_g). Positive when higher-scored groups have more events than expected under no
    difference, i.e. form EARLIER; a larger window forming later gives a negative value."""
    times, observed, groups = (np.asarray(x) for x in (times, observed, groups))
    stat = 0.0
    for t in np.unique(times[observed]):
        at_risk = times >= t
        d = (times == t) & observed
        n_risk, n_events = at_risk.sum(), d.sum()
        stat += float((groups * d).sum() - n_events * (groups * at_risk).sum() / n_risk)
    return stat


def permutation_pvalue(times: np.ndarray, observed: np.ndarray, groups: np.ndarray, *, draws: int = 10000,
                       seed: int = 0) -> tuple[float, float]:
    """(statistic, one-sided p-value for "higher-scored groups form LATER"): the log-rank trend statistic and the
    fraction of group relabellings (Monte Carlo, plus the observed one) with a statistic at most as large."""
    rng = np.random.default_rng(seed)
    observed_stat = logrank_trend(times, observed, groups)
    groups = np.asarray(groups)
    perms = [logrank_trend(times, observed, rng.permutation(groups)) for _ in range(draws)]
    p = (1 + sum(s <= observed_stat + 1e-12 for s in perms)) / (draws + 1)
    return observed_stat, float(p)
