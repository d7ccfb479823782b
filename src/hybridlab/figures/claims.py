"""Automated checks of the paper's claims C1..C4 on result tables (pure pandas; thresholds from
conf/claims/default.yaml, where each is documented).

Every claim is decided per seed (or per unit, for C2: one variant of one seed), each seed's outcome is one of
holds / fails / inconclusive (no signal, e.g. nothing formed), and the verdict is over the informative seeds:
PASS when the fraction that hold reaches `verdict.min_fraction`, FAIL below it, INCONCLUSIVE with fewer than
`verdict.min_seeds` informative seeds or when the needed variants or tables are missing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hybridlab.figures.tables import NoData, Tables, at_context, final, layer_roles, metric_rows

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
HOLDS, FAILS, NO_SIGNAL = "holds", "fails", "inconclusive"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "claims" / "default.yaml"
CONFIG_KEYS = {
    "verdict": ("min_fraction", "min_seeds"),
    "noise_floor": ("niah_acc", "log_longppl"),
    "c1": ("variants", "metrics", "early_fraction", "late_fraction", "max_spread_ratio"),
    "c2": ("window_fraction", "min_ratio"),
    "c3": ("variants", "onset_metric", "onset_selection", "mass_threshold"),
    "c4": ("base", "nope", "long_metrics", "max_short_rel_change"),
}
C1_METRICS = ("niah_acc", "neg_log_longppl")
C4_METRICS = ("niah_acc_at_and_beyond", "neg_log_longppl")


@dataclass
class ClaimResult:
    """One claim's verdict, the statistic behind it, and every seed's (or unit's) numbers."""

    cid: str
    title: str
    statistic: str
    verdict: str
    summary: str
    fraction: float = math.nan
    threshold: float = math.nan
    n_holds: int = 0
    n_informative: int = 0
    per_seed: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: str = ""


def load_claims_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check a claims config; a missing key or bad value raises ConfigError naming it."""
    from hybridlab.config import ConfigError

    path = Path(path or DEFAULT_CONFIG)
    cfg = yaml.safe_load(path.read_text()) or {}
    for section, keys in CONFIG_KEYS.items():
        for key in keys:
            if key not in (cfg.get(section) or {}):
                raise ConfigError(f"{section}.{key}", None, f"a value (see {DEFAULT_CONFIG})")
    for section, key, allowed in (("c1", "metrics", C1_METRICS), ("c4", "long_metrics", C4_METRICS)):
        for m in cfg[section][key]:
            if m not in allowed:
                raise ConfigError(f"{section}.{key}", m, ", ".join(allowed))
    if not 0 < cfg["verdict"]["min_fraction"] <= 1:
        raise ConfigError("verdict.min_fraction", cfg["verdict"]["min_fraction"], "a number in (0, 1]")
    return cfg


def verdict_over(outcomes: list[str], cfg: dict[str, Any]) -> tuple[str, float, int, int, str]:
    """(verdict, fraction holding, n holding, n informative, one-line summary) over seeds' outcomes."""
    n_inf = sum(o in (HOLDS, FAILS) for o in outcomes)
    k = sum(o == HOLDS for o in outcomes)
    min_fraction, min_seeds = cfg["verdict"]["min_fraction"], cfg["verdict"]["min_seeds"]
    frac = k / n_inf if n_inf else math.nan
    tail = f" ({len(outcomes) - n_inf} of {len(outcomes)} inconclusive)" if n_inf < len(outcomes) else ""
    if n_inf < min_seeds:
        return INCONCLUSIVE, frac, k, n_inf, f"{n_inf} informative (< {min_seeds} needed){tail}"
    verdict = PASS if frac >= min_fraction else FAIL
    sign = ">=" if verdict == PASS else "<"
    return verdict, frac, k, n_inf, f"{k}/{n_inf} hold = {frac:.2f} {sign} {min_fraction}{tail}"


def order_outcome(values: list[float], tol: float) -> str:
    """Is `values` (listed in the expected order) non-decreasing, within `tol` between neighbours, with the last
    strictly (more than tol) above the first? holds / fails / inconclusive (all within tol: a tie). inf is
    larger than any finite value; two infs are equal."""
    if all(v == values[0] for v in values) or (all(np.isfinite(values)) and max(values) - min(values) <= tol):
        return NO_SIGNAL
    chain = all(b >= a - tol for a, b in zip(values, values[1:], strict=False))
    return HOLDS if chain and values[-1] > values[0] + tol else FAILS


def has_signal(values: pd.Series, floor: float) -> bool:
    """Does a metric vary by more than its noise floor at all (not, e.g., NIAH accuracy 0 or 1 everywhere)?"""
    values = values.dropna()
    return not values.empty and float(values.max() - values.min()) > floor


def is_hybrid(info: dict[str, Any], variant: str) -> bool:
    """Has the variant any non-full-attention layer (by info.json's layouts; without them, any but `full`)?"""
    roles = layer_roles(info, variant)
    return any(r != "full" for r in roles) if roles else variant != "full"


def _present(variants: list[str], df: pd.DataFrame, claim: str) -> list[str]:
    present = [v for v in variants if v in set(df["variant"])]
    if len(present) < 2:
        raise NoData(f"{claim} needs at least two of {variants}; the tables hold {present or 'none'}")
    return present


def _result(cid: str, title: str, statistic: str, per_seed: pd.DataFrame, cfg: dict, note: str = "") -> ClaimResult:
    verdict, frac, k, n, summary = verdict_over(list(per_seed["outcome"]), cfg)
    return ClaimResult(cid, title, statistic, verdict, summary, frac, cfg["verdict"]["min_fraction"], k, n,
                       per_seed.reset_index(drop=True), note)


def _inconclusive(cid: str, title: str, statistic: str, why: str) -> ClaimResult:
    return ClaimResult(cid, title, statistic, INCONCLUSIVE, f"no data: {why}", note=why)


# C1 ---------------------------------------------------------------------------------------------------------

C1_TITLE = "C1 emergence speed"


def _c1_scores(tables: Tables, metric: str) -> pd.DataFrame:
    """Per (variant, seed, tokens), the long-context score (higher is better) at the training length."""
    ev = tables.need("eval")
    source = "niah_acc" if metric == "niah_acc" else "log_longppl"
    d = metric_rows(ev, source, tables.context)
    if d.empty:
        raise NoData(f"eval.csv has no {source} at the training length {tables.context}")
    d = d.groupby(["variant", "seed", "tokens"], as_index=False)["value"].mean()
    if metric == "neg_log_longppl":
        d["value"] = -d["value"]
    return d


def check_c1(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c = cfg["c1"]
    statistic = (f"per seed: early score (mean over checkpoints <= {c['early_fraction']:g} of the run) ordered "
                 f"{' >= '.join(c['variants'])} (ties within the noise floor allowed between neighbours, the "
                 f"first strictly ahead of the last), and late spread (checkpoints >= {c['late_fraction']:g} of the "
                 f"run) / early spread < {c['max_spread_ratio']:g}")
    metric, scores, why = None, None, []
    for m in c["metrics"]:
        floor = cfg["noise_floor"]["niah_acc" if m == "niah_acc" else "log_longppl"]
        try:
            s = _c1_scores(tables, m)
        except NoData as e:
            why.append(str(e))
            continue
        s = s[s["variant"].isin(c["variants"])]
        if not has_signal(s["value"], floor):
            why.append(f"{m} varies by <= {floor:g} over every variant, seed and checkpoint (no signal)")
            continue
        metric, scores = m, s
        break
    try:
        if metric is None:
            raise NoData("; ".join(why))
        variants = _present(c["variants"], scores, "C1")
    except NoData as e:
        return _inconclusive("C1", C1_TITLE, statistic, str(e))
    floor = cfg["noise_floor"]["niah_acc" if metric == "niah_acc" else "log_longppl"]
    rows = []
    for seed, g in scores.groupby("seed"):
        wide = g.pivot_table(index="tokens", columns="variant", values="value").reindex(columns=variants).dropna()
        wide = wide[wide.index > 0]
        if wide.empty:
            continue
        total = wide.index.max()
        early = wide[wide.index <= c["early_fraction"] * total]
        early = early if not early.empty else wide.iloc[:1]
        late = wide[wide.index >= c["late_fraction"] * total]
        e_mean, l_mean = early.mean(), late.mean()
        e_spread, l_spread = float(e_mean.max() - e_mean.min()), float(l_mean.max() - l_mean.min())
        order = order_outcome(list(e_mean.values[::-1]), floor)
        ratio = l_spread / e_spread if e_spread > 0 else math.nan
        shrinks = e_spread > floor and ratio < c["max_spread_ratio"]
        outcome = order if order != HOLDS else (HOLDS if shrinks else FAILS)
        row = {"seed": seed, **{f"early {v}": e_mean[v] for v in variants},
               **{f"late {v}": l_mean[v] for v in variants}, "early spread": e_spread, "late spread": l_spread,
               "late/early": ratio, "ordered early": order, "shrinks": shrinks, "outcome": outcome}
        rows.append(row)
    if not rows:
        return _inconclusive("C1", C1_TITLE, statistic, "no checkpoint common to the variants")
    note = f"metric: {metric} at the training length ({tables.context}); noise floor {floor:g}"
    return _result("C1", C1_TITLE, statistic, pd.DataFrame(rows), cfg, note)


# C2 ---------------------------------------------------------------------------------------------------------

C2_TITLE = "C2 receptive-field constraint"


def check_c2(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c = cfg["c2"]
    floor = cfg["noise_floor"]["log_longppl"]
    statistic = (f"per (variant, seed), final checkpoint: [log LongPPL(full layers constrained) - log LongPPL(none)]"
                 f" / max(log LongPPL(efficient layers constrained) - log LongPPL(none), {floor:g}) > "
                 f"{c['min_ratio']:g}, window closest to {c['window_fraction']:g} x training context")
    try:
        rec = tables.need("receptive")
        rec = final(rec[rec["metric"] == "log_longppl"])
        if rec.empty:
            raise NoData("receptive.csv has no log_longppl rows")
        windows = sorted(rec.loc[rec["constrained"] != "none", "window"].dropna().unique())
        if not windows:
            raise NoData("receptive.csv has no constrained rows")
        target = c["window_fraction"] * tables.context
        window = min(windows, key=lambda w: (abs(w - target), w))
    except NoData as e:
        return _inconclusive("C2", C2_TITLE, statistic, str(e))
    rows = []
    for (variant, seed), g in rec.groupby(["variant", "seed"]):
        if not is_hybrid(tables.info, variant):  # Full: constraining "the efficient layers" changes nothing
            continue
        at_window = g[g["window"] == window]
        by = {"none": g.loc[g["constrained"] == "none", "value"].mean(),
              **{k: at_window.loc[at_window["constrained"] == k, "value"].mean() for k in ("full", "efficient")}}
        if any(math.isnan(v) for v in by.values()):
            continue
        inc_full, inc_eff = by["full"] - by["none"], by["efficient"] - by["none"]
        ratio = inc_full / max(inc_eff, floor)
        if inc_full <= floor and inc_eff <= floor:
            outcome = NO_SIGNAL
        else:
            outcome = HOLDS if ratio > c["min_ratio"] else FAILS
        rows.append({"variant": variant, "seed": seed, "none": by["none"], "full constrained": by["full"],
                     "efficient constrained": by["efficient"], "increase full": inc_full,
                     "increase efficient": inc_eff, "ratio": ratio, "outcome": outcome})
    if not rows:
        return _inconclusive("C2", C2_TITLE, statistic, "no variant has none, full and efficient rows")
    return _result("C2", C2_TITLE, statistic, pd.DataFrame(rows), cfg, f"window {window:g} tokens")


# C3 ---------------------------------------------------------------------------------------------------------

C3_TITLE = "C3 large-window laziness"


def run_onsets(tables: Tables, mass_threshold: float, metric: str = "onset_tokens",
               selection: str = "any_full") -> tuple[pd.DataFrame, str]:
    """Per (variant, seed): onset_tokens of the first retrieval head to form (inf: none formed), and the source.

    From onset.csv: `metric` of the rows of `selection` (when the table has that column), the minimum over the
    heads listed. Else from heads.csv: the first checkpoint where the strongest full-attention head's needle mass
    (at the training length) exceeds `mass_threshold` (the same definition as onset.csv's any_full).
    """
    onset = tables.get("onset")
    if onset is not None and (onset["metric"] == metric).any():
        d = onset[onset["metric"] == metric]
        if "selection" in d.columns and (d["selection"] == selection).any():
            d = d[d["selection"] == selection]
        out = d.astype({"value": float}).groupby(["variant", "seed"], as_index=False)["value"].min()
        return out.rename(columns={"value": "onset_tokens"}), f"onset.csv ({metric}, {selection})"
    heads = tables.need("heads")
    d = at_context(heads[(heads["metric"] == "needle_mass") & (heads["role"] == "full")], tables.context)
    if d.empty:
        raise NoData("heads.csv has no needle_mass rows of full-attention heads")
    best = d.groupby(["variant", "seed", "tokens"], as_index=False)["value"].max()
    formed = best[best["value"] > mass_threshold].groupby(["variant", "seed"])["tokens"].min()
    out = best[["variant", "seed"]].drop_duplicates().set_index(["variant", "seed"])
    out["onset_tokens"] = formed.reindex(out.index).astype(float).fillna(math.inf)
    return out.reset_index(), f"heads.csv (strongest full head's needle mass > {mass_threshold:g})"


def check_c3(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c = cfg["c3"]
    statistic = (f"per seed: retrieval-head onset (tokens) ordered {' <= '.join(c['variants'])}, never formed = "
                 "later than any formed, smallest window strictly earlier than the largest")
    try:
        onsets, source = run_onsets(tables, c["mass_threshold"], c["onset_metric"], c["onset_selection"])
        variants = _present(c["variants"], onsets, "C3")
    except NoData as e:
        return _inconclusive("C3", C3_TITLE, statistic, str(e))
    wide = onsets.pivot_table(index="seed", columns="variant", values="onset_tokens").reindex(columns=variants)
    rows = []
    for seed, r in wide.iterrows():
        present = [v for v in variants if not pd.isna(r[v])]
        if len(present) < 2:
            continue
        values = [float(r[v]) for v in present]
        outcome = order_outcome(values, 0.0)
        rows.append({"seed": seed, **{v: r[v] for v in variants}, "outcome": outcome})
    if not rows:
        return _inconclusive("C3", C3_TITLE, statistic, "no seed holds onsets of two variants")
    return _result("C3", C3_TITLE, statistic, pd.DataFrame(rows), cfg, f"onset from {source}; inf = never formed")


# C4 ---------------------------------------------------------------------------------------------------------

C4_TITLE = "C4 NoPE on the full layers"


def check_c4(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c = cfg["c4"]
    base, nope = c["base"], c["nope"]
    statistic = (f"per seed, final checkpoint: long-context score({nope}) - score({base}) > noise floor (a gain "
                 f"within the floor: inconclusive), and |val_loss_local({nope}) - val_loss_local({base})| / "
                 f"val_loss_local({base}) <= {c['max_short_rel_change']:g}")
    try:
        ev = final(tables.need("eval"))
        ev = ev[ev["variant"].isin([base, nope])]
        if set(ev["variant"]) != {base, nope}:
            raise NoData(f"C4 needs {base} and {nope}; the tables hold {sorted(set(ev['variant'])) or 'neither'}")
        short = metric_rows(ev, "val_loss_local", tables.context)
        if short.empty:
            raise NoData("eval.csv has no val_loss_local at the training length")
        niah = ev[(ev["metric"] == "niah_acc") & (ev["length"] >= tables.context)]
        lppl = metric_rows(ev, "log_longppl", tables.context)
        scores = {"niah_acc_at_and_beyond": niah.groupby(["variant", "seed"])["value"].mean(),
                  "neg_log_longppl": -lppl.groupby(["variant", "seed"])["value"].mean()}
        floors = {"niah_acc_at_and_beyond": cfg["noise_floor"]["niah_acc"],
                  "neg_log_longppl": cfg["noise_floor"]["log_longppl"]}
        metric = next((m for m in c["long_metrics"] if has_signal(scores[m], floors[m])), None)
        if metric is None:
            raise NoData(f"no long-context metric with a signal among {c['long_metrics']}")
    except NoData as e:
        return _inconclusive("C4", C4_TITLE, statistic, str(e))
    floor = floors[metric]
    short = short.groupby(["variant", "seed"])["value"].mean()
    rows = []
    for seed in sorted(set(ev["seed"])):
        keys = [(base, seed), (nope, seed)]
        if not all(k in short.index and k in scores[metric].index for k in keys):
            continue
        gain = scores[metric][keys[1]] - scores[metric][keys[0]]
        rel = abs(short[keys[1]] - short[keys[0]]) / short[keys[0]]
        if rel > c["max_short_rel_change"] or gain < -floor:
            outcome = FAILS
        else:
            outcome = HOLDS if gain > floor else NO_SIGNAL
        row = {"seed": seed}
        for name, s in scores.items():
            for k in keys:
                row[f"{name} {k[0]}"] = s.get(k, math.nan)
        row.update({f"val_loss_local {base}": short[keys[0]], f"val_loss_local {nope}": short[keys[1]],
                    "long gain": gain, "short rel change": rel, "outcome": outcome})
        rows.append(row)
    if not rows:
        return _inconclusive("C4", C4_TITLE, statistic, f"no seed holds both {base} and {nope}")
    note = f"long metric: {metric} (noise floor {floor:g}); NIAH lengths >= {tables.context}"
    return _result("C4", C4_TITLE, statistic, pd.DataFrame(rows), cfg, note)


def check_all(tables: Tables, cfg: dict[str, Any]) -> list[ClaimResult]:
    return [check(tables, cfg) for check in (check_c1, check_c2, check_c3, check_c4)]
