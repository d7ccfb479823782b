"""Automated checks of the paper's claims C1..C4 on result tables (pure pandas/numpy; thresholds and the
statistics' settings from conf/claims/default.yaml, where each is documented).

Seeds are independent draws, not pairs: GPU training is not bitwise reproducible, so two variants of "one seed"
share nothing after a few hundred steps. Every claim is therefore decided by a statistic over the distribution of
each variant's seeds, with a confidence interval or a permutation test at a level fixed before any run:
  C1  emergence speed: the early gap between the smallest and largest window (bootstrap CI), then the late /
      early spread ratio (its bootstrap upper bound against a threshold);
  C2  receptive field: the fraction of hybrid runs in which constraining the full layers hurts far more than
      constraining the efficient ones (Wilson interval against a threshold);
  C3  large-window laziness: retrieval-head onsets as censored times (never formed = censored at the last
      checkpoint), a one-sided log-rank trend test over the windows by permutation;
  C4  NoPE: the mean long-context gain and the mean short-context change (bootstrap CIs).
Verdicts: PASS, FAIL or INCONCLUSIVE (no signal, or the tables lack what the claim needs). Each claim is also
decided on the two halves of every variant's seed list (`halves`): a verdict that stands should stand in both.
Every run's own numbers are kept in `per_seed`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from hybridlab.figures.stats import bootstrap, kaplan_meier, permutation_pvalue, wilson
from hybridlab.figures.tables import NoData, Tables, at_context, final, layer_roles, metric_rows

PASS, FAIL, INCONCLUSIVE = "PASS", "FAIL", "INCONCLUSIVE"
HOLDS, FAILS, NO_SIGNAL = "holds", "fails", "inconclusive"
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "conf" / "claims" / "default.yaml"
C1_METRICS = ("niah_acc", "neg_log_longppl")
C4_METRICS = ("niah_acc_at_and_beyond", "neg_log_longppl")


@dataclass
class ClaimResult:
    """One claim's verdict, the statistic behind it and its value with interval or p-value, the verdicts on the
    two halves of the seeds, and every run's numbers."""

    cid: str
    title: str
    statistic: str
    verdict: str
    summary: str
    per_seed: pd.DataFrame = field(default_factory=pd.DataFrame)
    note: str = ""
    halves: tuple[str, str] | None = None
    values: dict[str, float] = field(default_factory=dict)

    @property
    def halves_agree(self) -> bool | None:
        return None if self.halves is None else self.halves[0] == self.halves[1] == self.verdict


def _claims_schema() -> dict[str, dict[str, Any]]:
    """Every key of a claims config and the rule its value must satisfy (hybridlab.config's rules)."""
    from hybridlab.config import TEXT, integer, list_of, number, one_of

    names = list_of(TEXT, unique=True)
    fraction = number(0, 1, open_lo=True, open_hi=True)
    return {
        "statistics": {"level": fraction, "bootstrap_draws": integer(100), "permutation_draws": integer(100),
                       "seed": integer(0)},
        "noise_floor": {"niah_acc": number(0), "log_longppl": number(0)},
        "c1": {"variants": names, "metrics": list_of(one_of(*C1_METRICS), unique=True), "early_fraction": fraction,
               "late_fraction": fraction, "max_spread_ratio": number(0, open_lo=True)},
        "c2": {"window_fraction": number(0, 1, open_lo=True), "min_ratio": number(0, open_lo=True),
               "min_fraction": number(0, 1, open_hi=True)},
        "c3": {"variants": names, "onset_metric": one_of(*ONSET_METRICS), "onset_selection": one_of(*SELECTIONS),
               "mass_threshold": fraction, "alpha": fraction},
        "c4": {"base": TEXT, "nope": TEXT, "long_metrics": list_of(one_of(*C4_METRICS), unique=True),
               "max_short_rel_change": number(0)},
    }


ONSET_METRICS = ("onset_tokens", "onset_step", "onset_tokens_interp", "onset_step_interp")  # onset.csv
SELECTIONS = ("any_full", "strongest")


def load_claims_config(path: str | Path | None = None) -> dict[str, Any]:
    """Read and check a claims config: every section and key present, no unknown one (the closest known key is
    suggested), each value of its kind and range, early before late in C1. A problem raises ConfigError naming
    the key; a file that is not YAML names its line."""
    import difflib

    from hybridlab.config import ConfigError

    path = Path(path or DEFAULT_CONFIG)
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError("--claims", str(path), f"a readable UTF-8 YAML file ({e})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError("--claims", str(path), f"a YAML file ({where}{getattr(e, 'problem', None) or e})") from None
    schema = _claims_schema()
    if not isinstance(cfg, dict):
        raise ConfigError("--claims", str(path), f"a YAML mapping with the sections {', '.join(schema)}")
    known = [*schema, *(f"{sec}.{key}" for sec, keys in schema.items() for key in keys)]

    def unknown(key: str, value: Any) -> ConfigError:
        near = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
        hint = f"did you mean '{near[0]}'?" if near else f"see {DEFAULT_CONFIG}"
        return ConfigError(key, value, f"a key of the claims config ({hint})")

    for section, body in cfg.items():
        if section not in schema:
            raise unknown(str(section), body)
        for key in body if isinstance(body, dict) else ():
            if key not in schema[section]:
                raise unknown(f"{section}.{key}", body[key])
    for section, rules in schema.items():
        body = cfg.get(section)
        for key, rule in rules.items():
            value = body.get(key) if isinstance(body, dict) else None
            if value is None or not rule.ok(value):
                raise ConfigError(f"{section}.{key}", value, f"{rule.allowed} (see {DEFAULT_CONFIG})")
    if cfg["c1"]["early_fraction"] > cfg["c1"]["late_fraction"]:
        raise ConfigError("c1.early_fraction", cfg["c1"]["early_fraction"],
                          f"at most c1.late_fraction ({cfg['c1']['late_fraction']}): early checkpoints come first")
    for section in ("c1", "c3"):
        if len(cfg[section]["variants"]) < 2:
            raise ConfigError(f"{section}.variants", cfg[section]["variants"], "at least two variants to compare")
    return cfg


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


def _boot(cfg: dict, stat, samples, salt: int):
    s = cfg["statistics"]
    return bootstrap(stat, samples, draws=s["bootstrap_draws"], level=s["level"], seed=s["seed"] + salt)


def seed_halves(tables: Tables) -> tuple[Tables, Tables]:
    """The tables split into two disjoint halves of every variant's seeds (its sorted seeds: first half, rest)."""
    seeds = {}
    for df in tables.frames.values():
        if df is not None and {"variant", "seed"} <= set(df.columns):
            for v, s in df[["variant", "seed"]].drop_duplicates().itertuples(index=False):
                seeds.setdefault(v, set()).add(s)
    first = {v: sorted(s)[:len(s) // 2] for v, s in seeds.items()}

    def part(keep_first: bool) -> Tables:
        frames = {}
        for name, df in tables.frames.items():
            if df is None or not {"variant", "seed"} <= set(df.columns):
                frames[name] = df
                continue
            in_first = [s in first.get(v, []) for v, s in zip(df["variant"], df["seed"], strict=True)]
            frames[name] = df[np.array(in_first, dtype=bool) == keep_first].reset_index(drop=True)
        return Tables(info=tables.info, frames=frames)

    return part(True), part(False)


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


def _spread(means: list[float]) -> float:
    return float(max(means) - min(means))


def check_c1(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c, level = cfg["c1"], cfg["statistics"]["level"]
    statistic = (f"early score E (mean over checkpoints <= {c['early_fraction']:g} of the run) and late score L "
                 f"(checkpoints >= {c['late_fraction']:g}) per run; early gap = mean E({c['variants'][0]}) - mean "
                 f"E({c['variants'][-1]}) must have its {level:.0%} bootstrap interval above 0 (else INCONCLUSIVE; "
                 f"below 0: FAIL), then the spread ratio (max - min of the variants' mean L) / (max - min of mean E) "
                 f"must have its upper bound below {c['max_spread_ratio']:g}")
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
        return ClaimResult("C1", C1_TITLE, statistic, INCONCLUSIVE, f"no data: {e}", note=str(e))
    rows = []
    for (variant, seed), g in scores[scores["tokens"] > 0].groupby(["variant", "seed"]):
        total = g["tokens"].max()
        early = g[g["tokens"] <= c["early_fraction"] * total]
        early = early if not early.empty else g.nsmallest(1, "tokens")
        late = g[g["tokens"] >= c["late_fraction"] * total]
        rows.append({"variant": variant, "seed": seed, "early": early["value"].mean(), "late": late["value"].mean(),
                     "checkpoints": len(g)})
    per = pd.DataFrame(rows)
    samples_e = [per.loc[per["variant"] == v, "early"].to_numpy() for v in variants]
    samples_l = [per.loc[per["variant"] == v, "late"].to_numpy() for v in variants]
    k = len(variants)

    def gap(*s):
        return float(np.mean(s[0]) - np.mean(s[-1]))

    def ratio(*s):
        e, late = [float(np.mean(x)) for x in s[:k]], [float(np.mean(x)) for x in s[k:]]
        return _spread(late) / _spread(e) if _spread(e) > 0 else math.nan

    g = _boot(cfg, gap, samples_e, 11)
    r = _boot(cfg, ratio, samples_e + samples_l, 12)
    values = {"early_gap": g.estimate, "early_gap_low": g.low, "early_gap_high": g.high, "ratio": r.estimate,
              "ratio_low": r.low, "ratio_high": r.high}
    means = ", ".join(f"{v} E {np.mean(e):.3f} L {np.mean(la):.3f} (n={len(e)})"
                      for v, e, la in zip(variants, samples_e, samples_l, strict=True))
    if not g.low > 0:
        verdict = FAIL if g.high < 0 else INCONCLUSIVE
        why_not = "reversed" if verdict == FAIL else "not resolved"
        summary = f"early gap {g} ({why_not}: its interval is not above 0); spread ratio {r}"
    else:
        verdict = PASS if r.high < c["max_spread_ratio"] else FAIL
        sign = "<" if verdict == PASS else ">="
        summary = f"early gap {g} > 0; spread ratio {r}, upper bound {r.high:.3g} {sign} {c['max_spread_ratio']:g}"
    note = f"metric {metric} at the training length ({tables.context}); {means}"
    return ClaimResult("C1", C1_TITLE, statistic, verdict, summary, per, note, values=values)


# C2 ---------------------------------------------------------------------------------------------------------

C2_TITLE = "C2 receptive-field constraint"


def check_c2(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c = cfg["c2"]
    floor = cfg["noise_floor"]["log_longppl"]
    level = cfg["statistics"]["level"]
    statistic = (f"per hybrid run, final checkpoint: ratio = [log LongPPL(full layers constrained) - log "
                 f"LongPPL(none)] / max(log LongPPL(efficient constrained) - log LongPPL(none), {floor:g}); a run "
                 f"holds when ratio > {c['min_ratio']:g}; PASS when the {level:.0%} Wilson interval of the fraction "
                 f"of informative runs that hold lies above {c['min_fraction']:g} (window closest to "
                 f"{c['window_fraction']:g} x training context)")
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
        return ClaimResult("C2", C2_TITLE, statistic, INCONCLUSIVE, f"no data: {e}", note=str(e))
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
        return ClaimResult("C2", C2_TITLE, statistic, INCONCLUSIVE, "no data: no hybrid has none, full and "
                           "efficient rows")
    per = pd.DataFrame(rows)
    informative = per[per["outcome"] != NO_SIGNAL]
    k, n = int((informative["outcome"] == HOLDS).sum()), len(informative)
    if n == 0:
        return ClaimResult("C2", C2_TITLE, statistic, INCONCLUSIVE, "no run shows any increase beyond the noise "
                           "floor", per, f"window {window:g} tokens")
    w = wilson(k, n, level)
    verdict = PASS if w.low > c["min_fraction"] else FAIL
    by_variant = ", ".join(f"{v} {int((g['outcome'] == HOLDS).sum())}/{int((g['outcome'] != NO_SIGNAL).sum())}"
                           for v, g in per.groupby("variant", sort=False))
    summary = (f"{k}/{n} runs hold = {w.estimate:.2f} [{w.low:.2f}, {w.high:.2f}]; lower bound "
               f"{'>' if verdict == PASS else '<='} {c['min_fraction']:g}")
    note = f"window {window:g} tokens; {len(per) - n} runs without signal left out; per variant: {by_variant}"
    return ClaimResult("C2", C2_TITLE, statistic, verdict, summary, per, note,
                       values={"fraction": w.estimate, "fraction_low": w.low, "fraction_high": w.high})


# C3 ---------------------------------------------------------------------------------------------------------

C3_TITLE = "C3 large-window laziness"


def run_onsets(tables: Tables, mass_threshold: float, metric: str = "onset_tokens",
               selection: str = "any_full") -> tuple[pd.DataFrame, str]:
    """Per (variant, seed): onset_tokens of the first retrieval head to form (inf: none formed), the run's last
    checkpoint (`censored_at`, where a run that never formed is censored), and the source.

    From onset.csv: `metric` of the rows of `selection`, the minimum over the heads listed. Else from heads.csv:
    the first checkpoint where the strongest full-attention head's needle mass (at the training length) exceeds
    `mass_threshold` (the same definition as onset.csv's any_full)."""
    heads = tables.get("heads")
    ev = tables.get("eval")
    last_src = heads if heads is not None and not heads.empty else ev
    last = (last_src.groupby(["variant", "seed"])["tokens"].max() if last_src is not None and not last_src.empty
            else None)
    onset = tables.get("onset")
    if onset is not None and (onset["metric"] == metric).any():
        d = onset[onset["metric"] == metric]
        if "selection" in d.columns and (d["selection"] == selection).any():
            d = d[d["selection"] == selection]
        out = d.astype({"value": float}).groupby(["variant", "seed"], as_index=False)["value"].min()
        out = out.rename(columns={"value": "onset_tokens"})
        source = f"onset.csv ({metric}, {selection})"
    else:
        heads = tables.need("heads")
        d = at_context(heads[(heads["metric"] == "needle_mass") & (heads["role"] == "full")], tables.context)
        if d.empty:
            raise NoData("heads.csv has no needle_mass rows of full-attention heads")
        best = d.groupby(["variant", "seed", "tokens"], as_index=False)["value"].max()
        formed = best[best["value"] > mass_threshold].groupby(["variant", "seed"])["tokens"].min()
        out = best[["variant", "seed"]].drop_duplicates().set_index(["variant", "seed"])
        out["onset_tokens"] = formed.reindex(out.index).astype(float).fillna(math.inf)
        out = out.reset_index()
        source = f"heads.csv (strongest full head's needle mass > {mass_threshold:g})"
    finite_max = out.loc[np.isfinite(out["onset_tokens"]), "onset_tokens"].max()
    fallback = float(finite_max) if pd.notna(finite_max) else 1.0
    if last is not None:
        out["censored_at"] = [float(last.get((v, s), fallback)) for v, s in zip(out["variant"], out["seed"],
                                                                                strict=True)]
    else:
        out["censored_at"] = fallback
    return out, source


def onset_survival(onsets: pd.DataFrame, variant: str):
    """Kaplan-Meier curve of 'not formed yet' for one variant's runs (never formed: censored at the last
    checkpoint)."""
    d = onsets[onsets["variant"] == variant]
    observed = np.isfinite(d["onset_tokens"].to_numpy())
    times = np.where(observed, d["onset_tokens"].to_numpy(), d["censored_at"].to_numpy())
    return kaplan_meier(times, observed)


def check_c3(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c, s = cfg["c3"], cfg["statistics"]
    statistic = (f"retrieval-head onsets (tokens) of {', '.join(c['variants'])} as censored times (never formed: "
                 f"censored at the last checkpoint); one-sided log-rank trend test over the windows in that order "
                 f"(larger window forms later), p-value from {s['permutation_draws']} random relabellings of the "
                 f"runs; PASS when p < {c['alpha']:g}")
    try:
        onsets, source = run_onsets(tables, c["mass_threshold"], c["onset_metric"], c["onset_selection"])
        variants = _present(c["variants"], onsets, "C3")
    except NoData as e:
        return ClaimResult("C3", C3_TITLE, statistic, INCONCLUSIVE, f"no data: {e}", note=str(e))
    d = onsets[onsets["variant"].isin(variants)].copy()
    observed = np.isfinite(d["onset_tokens"].to_numpy())
    if not observed.any():
        return ClaimResult("C3", C3_TITLE, statistic, INCONCLUSIVE, "no retrieval head formed in any run",
                           d.reset_index(drop=True), f"onset from {source}")
    times = np.where(observed, d["onset_tokens"], d["censored_at"])
    groups = np.array([variants.index(v) for v in d["variant"]])
    stat, p = permutation_pvalue(times, observed, groups, draws=s["permutation_draws"], seed=s["seed"] + 13)
    verdict = PASS if p < c["alpha"] else FAIL
    parts = []
    for v in variants:
        g = d[d["variant"] == v]
        km = onset_survival(d, v)
        formed = int(np.isfinite(g["onset_tokens"]).sum())
        med = _median_onset(km)
        parts.append(f"{v} formed {formed}/{len(g)}, median onset {med}")
    summary = (f"log-rank trend statistic {stat:.3g}, one-sided permutation p = {p:.4f} "
               f"{'<' if verdict == PASS else '>='} {c['alpha']:g}; " + "; ".join(parts))
    per = d.assign(formed=observed).reset_index(drop=True)
    return ClaimResult("C3", C3_TITLE, statistic, verdict, summary, per,
                       f"onset from {source}; inf = never formed (censored at censored_at)",
                       values={"statistic": stat, "p": p})


def _median_onset(km) -> str:
    below = np.flatnonzero(km.surviving <= 0.5)
    return f"{km.times[below[0]]:,.0f}" if below.size else "not reached"


# C4 ---------------------------------------------------------------------------------------------------------

C4_TITLE = "C4 NoPE on the full layers"


def check_c4(tables: Tables, cfg: dict[str, Any]) -> ClaimResult:
    c, level = cfg["c4"], cfg["statistics"]["level"]
    base, nope = c["base"], c["nope"]
    statistic = (f"final checkpoint, every seed of each variant an independent draw: long-context gain = "
                 f"mean score({nope}) - mean score({base}) must have its {level:.0%} bootstrap interval above 0, and "
                 f"the short-context change (mean val_loss_local({nope}) - mean val_loss_local({base})) / "
                 f"mean val_loss_local({base}) its upper bound below {c['max_short_rel_change']:g}")
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
        return ClaimResult("C4", C4_TITLE, statistic, INCONCLUSIVE, f"no data: {e}", note=str(e))
    short = short.groupby(["variant", "seed"])["value"].mean()
    long_score = scores[metric]
    per = pd.concat({"long": long_score, "val_loss_local": short}, axis=1).reset_index()
    s_long = [per.loc[per["variant"] == v, "long"].dropna().to_numpy() for v in (base, nope)]
    s_short = [per.loc[per["variant"] == v, "val_loss_local"].dropna().to_numpy() for v in (base, nope)]
    gain = _boot(cfg, lambda b, n: float(np.mean(n) - np.mean(b)), s_long, 41)
    rel = _boot(cfg, lambda b, n: float((np.mean(n) - np.mean(b)) / np.mean(b)), s_short, 42)
    ok_long, ok_short = gain.low > 0, rel.high < c["max_short_rel_change"]
    verdict = PASS if ok_long and ok_short else FAIL
    summary = (f"long gain ({metric}) {gain}, lower bound {'>' if ok_long else '<='} 0; short-context change "
               f"{100 * rel.estimate:+.2f}% [{100 * rel.low:+.2f}%, {100 * rel.high:+.2f}%], upper bound "
               f"{'<' if ok_short else '>='} {100 * c['max_short_rel_change']:g}%")
    note = (f"long metric: {metric} (NIAH lengths >= {tables.context}); n = {len(s_long[0])} {base}, "
            f"{len(s_long[1])} {nope}")
    return ClaimResult("C4", C4_TITLE, statistic, verdict, summary, per, note,
                       values={"gain": gain.estimate, "gain_low": gain.low, "gain_high": gain.high,
                               "short_rel": rel.estimate, "short_rel_low": rel.low, "short_rel_high": rel.high})


CHECKS = (check_c1, check_c2, check_c3, check_c4)


def check_all(tables: Tables, cfg: dict[str, Any]) -> list[ClaimResult]:
    """Every claim on all seeds, each with its verdicts on the two halves of the seeds."""
    results = [check(tables, cfg) for check in CHECKS]
    first, second = seed_halves(tables)
    for r, check in zip(results, CHECKS, strict=True):
        r.halves = (check(first, cfg).verdict, check(second, cfg).verdict)
    return results
