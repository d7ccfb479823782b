"""Tests for hybridlab.figures.claims: each claim on tables built to pass, to fail and to be inconclusive;
the ordering rule (ties, never formed), the verdict over seeds and the config checks."""

from __future__ import annotations

import math

import pytest
import yaml
from test_figures import INF, ONSETS, SEEDS, synthetic_tables

from hybridlab.config import ConfigError
from hybridlab.figures.claims import (
    DEFAULT_CONFIG,
    FAIL,
    FAILS,
    HOLDS,
    INCONCLUSIVE,
    NO_SIGNAL,
    PASS,
    check_c1,
    check_c2,
    check_c3,
    check_c4,
    load_claims_config,
    order_outcome,
    run_onsets,
    verdict_over,
)

CFG = load_claims_config()
LADDER = {"swa128": (2000, 2000, 2000), "swa512": (4000, 4000, 4000), "swa2048": (6000, 6000, 8000)}
NEVER = {v: (INF, INF, INF) for v in ("swa128", "swa512", "swa2048", "swa128_nope")}


def outcomes(result) -> list[str]:
    return list(result.per_seed["outcome"])


# The shared rules ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("values, expected", [
    ([1, 2, 3], HOLDS), ([1, 2, 2], HOLDS), ([1, INF], HOLDS), ([1, INF, INF], HOLDS),
    ([2, 1, 3], FAILS), ([INF, 1], FAILS), ([3, 2, 1], FAILS),
    ([INF, INF], NO_SIGNAL), ([5, 5, 5], NO_SIGNAL),
])
def test_order_outcome_handles_ties_and_never_formed(values, expected):
    assert order_outcome([float(v) for v in values], 0.0) == expected


def test_order_outcome_tolerance_makes_small_gaps_ties():
    assert order_outcome([0.50, 0.52, 0.54], 0.05) == NO_SIGNAL
    assert order_outcome([0.0, 0.52, 0.50], 0.05) == HOLDS  # a dip within the floor between neighbours
    assert order_outcome([0.0, 0.70, 0.50], 0.05) == FAILS


def test_verdict_over_seeds_counts_only_informative_seeds():
    assert verdict_over([HOLDS, HOLDS, FAILS], CFG)[0] == PASS  # 2/3 >= 0.66
    assert verdict_over([HOLDS, FAILS, FAILS], CFG)[0] == FAIL
    verdict, frac, k, n, summary = verdict_over([HOLDS, HOLDS, NO_SIGNAL], CFG)
    assert (verdict, frac, k, n) == (PASS, 1.0, 2, 2) and "1 of 3 inconclusive" in summary
    assert verdict_over([HOLDS, NO_SIGNAL, NO_SIGNAL], CFG)[0] == INCONCLUSIVE  # 1 informative < min_seeds 2


# C1 -------------------------------------------------------------------------------------------------------------


def test_c1_passes_when_small_windows_lead_early_and_the_spread_closes():
    r = check_c1(synthetic_tables(LADDER), CFG)
    assert r.verdict == PASS and outcomes(r) == [HOLDS] * 3
    assert list(r.per_seed["seed"]) == list(SEEDS) and "niah_acc" in r.note
    row = r.per_seed.iloc[0]
    assert row["early swa128"] > row["early swa512"] > row["early swa2048"] and row["late spread"] == 0


def test_c1_fails_when_large_windows_lead():
    r = check_c1(synthetic_tables({"swa128": LADDER["swa2048"], "swa512": LADDER["swa512"],
                                   "swa2048": LADDER["swa128"]}), CFG)
    assert r.verdict == FAIL and outcomes(r) == [FAILS] * 3


def test_c1_fails_when_the_spread_does_not_close():
    r = check_c1(synthetic_tables({**LADDER, "swa2048": (INF, INF, INF)}), CFG)
    assert r.verdict == FAIL and not r.per_seed["shrinks"].any()
    assert (r.per_seed["ordered early"] == HOLDS).all()


def test_c1_is_inconclusive_without_signal_or_variants():
    r = check_c1(synthetic_tables(NEVER), CFG)  # NIAH 0 everywhere, log(LongPPL) equal across variants
    assert r.verdict == INCONCLUSIVE and outcomes(r) == [NO_SIGNAL] * 3 and "neg_log_longppl" in r.note
    t = synthetic_tables(NEVER)
    t.frames["eval"] = t.frames["eval"][t.frames["eval"]["metric"] != "log_longppl"]
    r = check_c1(t, CFG)
    assert r.verdict == INCONCLUSIVE and "no signal" in r.note and r.per_seed.empty
    r = check_c1(synthetic_tables({"swa128": LADDER["swa128"]}), CFG)
    assert r.verdict == INCONCLUSIVE and "at least two" in r.note


# C2 -------------------------------------------------------------------------------------------------------------


def test_c2_passes_when_constraining_full_attention_hurts_far_more():
    r = check_c2(synthetic_tables(receptive_increase=(1.0, 0.05)), CFG)
    assert r.verdict == PASS and set(outcomes(r)) == {HOLDS}
    assert "window 32" in r.note  # closest to 1/8 of the 256-token context
    assert r.per_seed["ratio"].iloc[0] == pytest.approx(1.0 / 0.05)
    assert "full" not in set(r.per_seed["variant"])  # Full has no efficient layers to constrain


def test_c2_fails_when_both_constraints_hurt_alike():
    r = check_c2(synthetic_tables(receptive_increase=(0.3, 0.3)), CFG)
    assert r.verdict == FAIL and set(outcomes(r)) == {FAILS}


def test_c2_is_inconclusive_when_no_constraint_matters_or_the_table_is_absent():
    assert check_c2(synthetic_tables(receptive_increase=(0.0, 0.0)), CFG).verdict == INCONCLUSIVE
    t = synthetic_tables()
    t.frames["receptive"] = None
    r = check_c2(t, CFG)
    assert r.verdict == INCONCLUSIVE and "receptive.csv is absent" in r.summary


# C3 -------------------------------------------------------------------------------------------------------------


def test_c3_passes_with_paired_laziness_including_never_formed():
    r = check_c3(synthetic_tables(), CFG)  # seed 1: swa2048 never formed, counts as latest
    assert r.verdict == PASS and outcomes(r) == [HOLDS] * 3
    assert math.isinf(r.per_seed.loc[1, "swa2048"]) and "onset.csv" in r.note


def test_c3_falls_back_to_heads_needle_mass_and_agrees():
    t = synthetic_tables()
    t.frames["onset"] = None
    onsets, source = run_onsets(t, CFG["c3"]["mass_threshold"])
    assert "heads.csv" in source
    got = onsets.set_index(["variant", "seed"])["onset_tokens"]
    for v, per_seed in ONSETS.items():
        assert [got[(v, s)] for s in SEEDS] == list(per_seed)
    assert check_c3(t, CFG).verdict == PASS


def test_c3_fails_when_large_windows_form_first():
    r = check_c3(synthetic_tables({"swa128": (INF, 8000, 6000), "swa512": (4000, 4000, 4000),
                                   "swa2048": (2000, 2000, 2000)}), CFG)
    assert r.verdict == FAIL and outcomes(r) == [FAILS] * 3


def test_c3_is_inconclusive_when_nothing_formed_or_all_tie():
    r = check_c3(synthetic_tables(NEVER), CFG)
    assert r.verdict == INCONCLUSIVE and outcomes(r) == [NO_SIGNAL] * 3
    ties = {v: (4000, 4000, 4000) for v in ("swa128", "swa512", "swa2048")}
    assert check_c3(synthetic_tables(ties), CFG).verdict == INCONCLUSIVE


# C4 -------------------------------------------------------------------------------------------------------------


def test_c4_passes_when_nope_extrapolates_at_no_short_cost():
    r = check_c4(synthetic_tables(), CFG)
    assert r.verdict == PASS and outcomes(r) == [HOLDS] * 3 and "niah_acc_at_and_beyond" in r.note
    assert (r.per_seed["short rel change"] == 0).all() and (r.per_seed["long gain"] > 0.3).all()


def test_c4_fails_on_a_short_context_cost_or_a_long_context_loss():
    r = check_c4(synthetic_tables(nope_short_delta=0.1), CFG)  # ~4% worse short-context loss
    assert r.verdict == FAIL and (r.per_seed["short rel change"] > 0.01).all()
    worse = {**ONSETS, "swa128_nope": (INF, INF, INF)}
    assert check_c4(synthetic_tables(worse), CFG).verdict == FAIL


def test_c4_is_inconclusive_without_the_variants_or_a_signal():
    r = check_c4(synthetic_tables({"swa128": ONSETS["swa128"]}), CFG)
    assert r.verdict == INCONCLUSIVE and "swa128_nope" in r.note
    assert check_c4(synthetic_tables(NEVER), CFG).verdict == INCONCLUSIVE


# Config -------------------------------------------------------------------------------------------------------


def test_every_threshold_in_the_default_config_is_documented():
    text = DEFAULT_CONFIG.read_text()
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and not line.strip().startswith("#") and ":" in line:
            assert lines[i - 1].strip().startswith("#"), f"undocumented: {line.strip()}"


def test_bad_claims_config_names_the_key(tmp_path):
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    del cfg["c2"]["min_ratio"]
    (tmp_path / "a.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="c2.min_ratio"):
        load_claims_config(tmp_path / "a.yaml")
    cfg = yaml.safe_load(DEFAULT_CONFIG.read_text())
    cfg["c1"]["metrics"] = ["ruler_acc"]
    (tmp_path / "b.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(ConfigError, match="c1.metrics"):
        load_claims_config(tmp_path / "b.yaml")
