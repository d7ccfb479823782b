"""Tests for hybridlab.figures.claims: each claim on tables built to pass, to fail and to be inconclusive, the
verdicts on the two halves of the seeds, independence from seed labels, and the config checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import yaml
from test_figures import INF, synthetic_tables

from hybridlab.config import ConfigError
from hybridlab.figures.claims import (
    DEFAULT_CONFIG,
    FAIL,
    INCONCLUSIVE,
    PASS,
    check_all,
    check_c1,
    check_c2,
    check_c3,
    check_c4,
    load_claims_config,
    run_onsets,
    seed_halves,
)
from hybridlab.figures.tables import Tables

CFG = load_claims_config()
N = 8
JITTER = (0, 2000, 0, 2000, 0, 2000, 0, 2000)  # onsets vary across seeds (2000 = one checkpoint spacing)


def ladder(base: dict[str, int]) -> dict[str, tuple]:
    return {v: tuple(on + j for j in JITTER) for v, on in base.items()}


LADDER = ladder({"swa128": 1000, "swa512": 2000, "swa2048": 4000})
SAME = ladder({"swa128": 2000, "swa512": 2000, "swa2048": 2000})


# C1 -------------------------------------------------------------------------------------------------------------


def test_c1_passes_when_small_windows_lead_early_and_the_spread_closes():
    r = check_c1(synthetic_tables(LADDER), CFG)
    assert r.verdict == PASS, r.summary
    assert r.values["early_gap_low"] > 0 and r.values["ratio_high"] < 0.5
    assert len(r.per_seed) == 3 * N and "niah_acc" in r.note


def test_c1_fails_when_large_windows_lead_or_never_catch_up():
    reversed_ = {"swa128": LADDER["swa2048"], "swa512": LADDER["swa512"], "swa2048": LADDER["swa128"]}
    assert check_c1(synthetic_tables(reversed_), CFG).verdict == FAIL
    never = {**LADDER, "swa2048": (INF,) * N}  # the large window never forms: the gap does not close
    r = check_c1(synthetic_tables(never), CFG)
    assert r.verdict == FAIL and r.values["ratio"] > 1  # the late spread exceeds the early one


def test_c1_is_inconclusive_without_an_early_gap_or_without_signal():
    assert check_c1(synthetic_tables(SAME), CFG).verdict == INCONCLUSIVE
    r = check_c1(synthetic_tables({v: (INF,) * N for v in LADDER}), CFG)  # NIAH 0 everywhere: LongPPL is read
    assert r.verdict == INCONCLUSIVE and "neg_log_longppl" in r.note


# C2 -------------------------------------------------------------------------------------------------------------


def test_c2_passes_fails_and_reports_every_hybrid_run():
    ok = check_c2(synthetic_tables(LADDER, receptive_increase=(1.0, 0.05)), CFG)
    assert ok.verdict == PASS and len(ok.per_seed) == 3 * N and ok.values["fraction_low"] > 0.5
    bad = check_c2(synthetic_tables(LADDER, receptive_increase=(1.0, 0.5)), CFG)  # ratio 2 < 5
    assert bad.verdict == FAIL and bad.values["fraction"] == 0
    flat = check_c2(synthetic_tables(LADDER, receptive_increase=(0.0, 0.0)), CFG)
    assert flat.verdict == INCONCLUSIVE


def test_c2_leaves_full_attention_out():
    r = check_c2(synthetic_tables({**LADDER, "full": LADDER["swa2048"]}), CFG)
    assert "full" not in set(r.per_seed["variant"])


# C3 -------------------------------------------------------------------------------------------------------------


def test_c3_passes_when_larger_windows_form_later_in_distribution():
    r = check_c3(synthetic_tables(LADDER), CFG)
    assert r.verdict == PASS and r.values["p"] < 0.05 and r.values["statistic"] < 0
    assert "formed 8/8" in r.summary and len(r.per_seed) == 3 * N


def test_c3_counts_never_formed_as_later_censored_at_the_last_checkpoint():
    r = check_c3(synthetic_tables({"swa128": LADDER["swa128"], "swa512": LADDER["swa512"],
                                   "swa2048": (INF,) * N}), CFG)
    assert r.verdict == PASS and "swa2048 formed 0/8, median onset not reached" in r.summary
    never = r.per_seed[r.per_seed["variant"] == "swa2048"]
    assert (never["censored_at"] == 10000).all() and not never["formed"].any()


def test_c3_fails_on_reversed_or_equal_onsets_and_is_inconclusive_when_none_formed():
    reversed_ = {"swa128": LADDER["swa2048"], "swa512": LADDER["swa512"], "swa2048": LADDER["swa128"]}
    assert check_c3(synthetic_tables(reversed_), CFG).verdict == FAIL
    same = check_c3(synthetic_tables(SAME), CFG)
    assert same.verdict == FAIL and same.values["p"] > 0.3
    assert check_c3(synthetic_tables({v: (INF,) * N for v in LADDER}), CFG).verdict == INCONCLUSIVE


def test_verdicts_do_not_depend_on_seed_labels():
    """Seeds are independent draws: renaming them (the re-check will use seeds never run here) changes nothing."""
    tables = synthetic_tables({**LADDER, "swa128_nope": LADDER["swa128"]})
    renamed = Tables(info=tables.info, frames={k: (df.assign(seed=df["seed"] * 7 + 100)
                                                   if df is not None and "seed" in df.columns else df)
                                               for k, df in tables.frames.items()})
    a, b = check_all(tables, CFG), check_all(renamed, CFG)
    for x, y in zip(a, b, strict=True):
        assert (x.verdict, x.halves) == (y.verdict, y.halves), x.cid
        for key, value in x.values.items():
            assert y.values[key] == pytest.approx(value, nan_ok=True), (x.cid, key)


def test_run_onsets_reads_onset_csv_or_falls_back_to_heads():
    tables = synthetic_tables(ladder({"swa128": 2000, "swa512": 4000, "swa2048": 6000}))  # onsets on checkpoints
    onsets, source = run_onsets(tables, 0.5)
    assert "onset.csv" in source and set(onsets["censored_at"]) == {10000}
    no_onset = Tables(info=tables.info, frames={**tables.frames, "onset": None})
    from_heads, source = run_onsets(no_onset, 0.5)
    assert "heads.csv" in source
    merged = onsets.merge(from_heads, on=["variant", "seed"])
    assert np.array_equal(merged["onset_tokens_x"].to_numpy(), merged["onset_tokens_y"].to_numpy())


# C4 -------------------------------------------------------------------------------------------------------------


def test_c4_passes_on_a_long_context_gain_without_short_context_cost():
    r = check_c4(synthetic_tables({"swa128": LADDER["swa128"], "swa128_nope": LADDER["swa128"]}), CFG)
    assert r.verdict == PASS, r.summary
    assert r.values["gain"] == pytest.approx(0.35) and r.values["gain_low"] > 0  # (1 + 1)/2 - (1 + 0.3)/2


def test_c4_fails_on_a_short_context_cost_and_is_inconclusive_without_both_variants():
    costly = synthetic_tables({"swa128": LADDER["swa128"], "swa128_nope": LADDER["swa128"]}, nope_short_delta=0.2)
    r = check_c4(costly, CFG)
    assert r.verdict == FAIL and r.values["short_rel_high"] > 0.01
    assert check_c4(synthetic_tables({"swa128": LADDER["swa128"]}), CFG).verdict == INCONCLUSIVE


# Halves and config --------------------------------------------------------------------------------------------


def test_halves_split_every_variant_in_two_disjoint_parts_and_agree_on_a_clear_effect():
    tables = synthetic_tables({**LADDER, "swa128_nope": LADDER["swa128"]})
    first, second = seed_halves(tables)
    for frame in ("eval", "receptive", "onset"):
        a = set(map(tuple, first.frames[frame][["variant", "seed"]].drop_duplicates().to_numpy()))
        b = set(map(tuple, second.frames[frame][["variant", "seed"]].drop_duplicates().to_numpy()))
        assert a and b and not a & b and len(a) == len(b)
    results = check_all(tables, CFG)
    c3 = next(r for r in results if r.cid == "C3")
    assert c3.halves == (PASS, PASS) and c3.halves_agree


def test_config_errors_name_the_key(tmp_path):
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del cfg["c3"]["alpha"]
    path = tmp_path / "claims.yaml"
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="c3.alpha"):
        load_claims_config(path)
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["statistics"]["level"] = 1.5
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="statistics.level"):
        load_claims_config(path)
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["c1"]["metrics"] = ["niah_acc", "bogus"]
    path.write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="c1.metrics.*bogus"):
        load_claims_config(path)
    assert math.isclose(CFG["c2"]["min_fraction"], 0.5)
