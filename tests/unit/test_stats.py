"""hybridlab.figures.stats against known values: Wilson intervals, Kaplan-Meier with censoring and Greenwood
bands, the log-rank trend statistic's sign and the permutation p-value under separation and under no effect,
bootstrap intervals that cover."""

import numpy as np
import pytest

from hybridlab.figures.stats import bootstrap, kaplan_meier, logrank_trend, permutation_pvalue, wilson


def test_wilson_interval_known_values():
    w = wilson(8, 10)
    assert w.estimate == 0.8 and w.low == pytest.approx(0.4902, abs=1e-4) and w.high == pytest.approx(0.9433,
                                                                                                      abs=1e-4)
    assert wilson(0, 5).low == 0.0 and wilson(5, 5).high == 1.0


def test_kaplan_meier_with_censoring():
    # events at 1, 2 (two), 4; one run censored at 3; one at 5
    km = kaplan_meier(np.array([1, 2, 2, 3, 4, 5]), np.array([1, 1, 1, 0, 1, 0], dtype=bool))
    assert km.times.tolist() == [1, 2, 4]
    assert km.surviving.tolist() == pytest.approx([5 / 6, 5 / 6 * 3 / 5, 5 / 6 * 3 / 5 * 1 / 2])
    assert (km.low <= km.surviving).all() and (km.surviving <= km.high).all()
    assert km.formed_by(0.5) == 0.0 and km.formed_by(2) == pytest.approx(0.5) and km.events == 4 and km.n == 6


def test_logrank_trend_sign_and_permutation_pvalue():
    early, late = np.arange(1, 9, dtype=float), np.arange(11, 19, dtype=float)
    times = np.concatenate([early, late])
    observed = np.ones(16, dtype=bool)
    groups = np.array([0] * 8 + [1] * 8)
    assert logrank_trend(times, observed, groups) < 0  # the higher-scored group forms later
    stat, p = permutation_pvalue(times, observed, groups, draws=2000, seed=1)
    assert p < 0.01
    _, p_rev = permutation_pvalue(times, observed, groups[::-1].copy(), draws=2000, seed=1)
    assert p_rev > 0.9
    rng = np.random.default_rng(0)
    null = [permutation_pvalue(rng.permutation(times), observed, groups, draws=300, seed=s)[1] for s in range(40)]
    assert 0.2 < float(np.mean(null)) < 0.8  # no effect: p-values spread over (0, 1)


def test_bootstrap_interval_covers_the_mean_and_is_reproducible():
    rng = np.random.default_rng(3)
    x = rng.normal(1.0, 1.0, size=40)
    a = bootstrap(lambda s: float(np.mean(s)), [x], draws=1000, seed=5)
    b = bootstrap(lambda s: float(np.mean(s)), [x], draws=1000, seed=5)
    assert a == b and a.low < x.mean() < a.high and a.high - a.low == pytest.approx(2 * 1.96 / 40**0.5, rel=0.3)
