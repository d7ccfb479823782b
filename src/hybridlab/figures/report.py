"""The replication report and its tables, built from result tables only (no torch).

Tables (paper/{scale}/tables/<name>.{csv,md,tex}): final metrics per variant, Table 2 (NoPE against SWA-128
beside the paper's numbers), the claim verdicts and every seed's numbers behind them. The report
(paper/{scale}/report.md) puts each regenerated figure beside what the paper reports (shared/REFERENCE.md) and
lists the claim checks; html.py renders it to one self-contained page.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.figures.claims import ClaimResult
from hybridlab.figures.style import variant_order
from hybridlab.figures.tables import Tables, final, metric_rows
from hybridlab.io import write_bytes, write_table

# What the paper reports, per figure (numbers from shared/REFERENCE.md; S5 = 477M non-embedding, ~100B tokens).
PAPER_NOTES = {
    "fig2_scaling": "Fig. 2: validation-loss curves of all variants nearly overlap, while log(LongPPL) falls at a "
                    "speed that depends on the efficient module; with enough tokens every hybrid approaches Full. "
                    "Released SWA-128 LongPPL: S1 20.74 at 3.0B tokens to 11.53 at 15.0B; S4 7.02 at 11.0B to "
                    "4.27 at 109.9B. Fitted law log(LongPPL) = B/N^alpha + C/D^beta with alpha in [0.2, 0.3] "
                    "(coefficients not published; the released script gives alpha 0.248, beta 0.355 on that data, "
                    "S4 held out, while the objective's minimum puts alpha on its bound 0.3: docs/scaling.md).",
    "fig_emergence": "Finding 1: the efficient module changes how fast long-context ability emerges, hardly the "
                     "final level; short-context loss curves of all variants nearly overlap.",
    "fig3_receptive": "Fig. 3: limiting the full-attention layers to the last ~2048 tokens (of 16K) raises "
                      "log(LongPPL) badly, to about 4.6; limiting the efficient layers barely matters, even for "
                      "recurrent mixers.",
    "fig4_probe": "Fig. 4: an 8-way probe of the hidden magic number on the last token's residual stream gains "
                  "accuracy mostly in the middle full-attention layers.",
    "fig_gradinf": "Gradient influence G(d) is near flat beyond ~2048 tokens but still present in 512..2048.",
    "fig5_retrieval": "Fig. 5: the retrieval heads (top 4 by needle attention mass of the second-to-last token, "
                      "over up to 200 NIAH samples) sit in the full-attention layers. (The authors' script sums "
                      "the mass over every token of the answer string at the prompt's second-to-last token; "
                      "this project reads it at the last token, the key after QRY, on the value's single token "
                      "by default, and offers theirs as eval.retrieval_query_from_end=2, eval.needle_span=answer.)",
    "fig5_dynamics": "Fig. 5: SWA-2048 is the outlier: its retrieval heads keep higher attention entropy and their "
                     "Q/K weights converge to the final ones later (Large-Window Laziness).",
    "fig_onset": "Finding 2 (Large-Window Laziness): a larger SWA window, 2048 most of all, delays the formation of "
                 "retrieval heads in the full-attention layers. The pilot (shared/PILOT.md) saw SWA-32 <= SWA-128 "
                 "<= SWA-512 ~ Full within every seed, with timing varying a lot across seeds.",
    "fig_masking": "The paper's public material gives no masking numbers; the retrieval-head literature (Wu et al. "
                   "2024) expects masking the top heads to hurt NIAH far more than masking random heads.",
    "fig_design": "Section 6 design variants (1:3 full:efficient ratio, head-wise mixing): their results are not in "
                  "the public material.",
    "fig8_nope": "Fig. 8 / Table 2 (S5): SWA-128-NoPE against SWA-128: ShortAvg 41.32 vs 41.31 (no short cost); "
                 "RULER 16K 52.88 vs 46.13; RULER-NIAH 16K 82.31 vs 65.91; LongBench 16K 19.02 vs 17.52; after "
                 "extension to 32K, RULER 46.98 vs 41.86.",
    "fig_ruler": "RULER 16K: Full 47.17, SWA-128 46.13, SWA-128-NoPE 52.88; RULER 32K (after 5B tokens at 32K): "
                 "SWA-128 41.86, SWA-128-NoPE 46.98. RULER-NIAH 16K: SWA-128 65.91, SWA-128-NoPE 82.31.",
    "fig_loss_by_pos": "Not in the paper's public material; a sanity view: loss should keep falling with position "
                       "for a model that uses long context.",
}
# (metric, swa128, swa128_nope): the paper's Table 2 numbers at S5.
PAPER_TABLE2 = [("ShortAvg", 41.31, 41.32), ("RULER 16K", 46.13, 52.88), ("RULER-NIAH 16K", 65.91, 82.31),
                ("LongBench 16K", 17.52, 19.02), ("RULER 32K", 41.86, 46.98), ("LongBench 32K", 18.30, 19.46)]
NOPE_BASE, NOPE = "swa128", "swa128_nope"


@dataclass
class Table:
    """A result table: `data` (numbers, written as CSV), `display` (formatted, for Markdown and LaTeX)."""

    name: str
    title: str
    data: pd.DataFrame
    display: pd.DataFrame | None = None
    note: str = ""


@dataclass
class FigureEntry:
    """A figure of the report: what it shows, what the paper reports, and why it is a placeholder (if it is)."""

    name: str
    png: Path
    caption: str
    paper: str
    claims: tuple[str, ...] = ()
    missing: str = ""


def fmt(v) -> str:
    """A cell as text: integers plainly, floats to 4 significant digits, inf as 'inf', NaN empty."""
    if isinstance(v, bool | np.bool_):
        return "yes" if v else "no"
    if isinstance(v, int | np.integer):
        return str(v)
    if isinstance(v, float | np.floating):
        if math.isnan(v):
            return ""
        if math.isinf(v):
            return "inf" if v > 0 else "-inf"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    if df.empty:
        return "_(no rows)_"
    cells = [[fmt(v).replace("|", "\\|") for v in row] for row in df.itertuples(index=False)]
    head = [str(c).replace("|", "\\|") for c in df.columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in cells]
    return "\n".join(lines)


TEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
       "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}", "±": r"$\pm$", "<": r"$<$", ">": r"$>$"}


def _tex(s: str) -> str:
    return "".join(TEX.get(ch, ch) for ch in s)


def latex_table(df: pd.DataFrame, caption: str, label: str) -> str:
    """A booktabs table (needs \\usepackage{booktabs})."""
    rows = [" & ".join(_tex(str(c)) for c in df.columns) + r" \\"]
    rows += [" & ".join(_tex(fmt(v)) for v in r) + r" \\" for r in df.itertuples(index=False)]
    body = "\n".join([rows[0], r"\midrule", *rows[1:]])
    return "\n".join([r"\begin{table}[t]", r"\centering", rf"\caption{{{_tex(caption)}}}", rf"\label{{{label}}}",
                      rf"\begin{{tabular}}{{{'l' * len(df.columns)}}}", r"\toprule", body, r"\bottomrule",
                      r"\end{tabular}", r"\end{table}", ""])


def write_result_table(table: Table, out_dir: str | Path) -> list[Path]:
    """Write `<name>.csv` (numbers), `<name>.md` and `<name>.tex` (formatted); return the paths."""
    out_dir = Path(out_dir)
    shown = table.display if table.display is not None else table.data
    paths = [out_dir / f"{table.name}.{ext}" for ext in ("csv", "md", "tex")]
    write_table(paths[0], table.data)
    note = f"\n\n{table.note}" if table.note else ""
    write_bytes(paths[1], f"**{table.title}**{note}\n\n{markdown_table(shown)}\n".encode())
    write_bytes(paths[2], latex_table(shown, table.title + (f" {table.note}" if table.note else ""),
                                      f"tab:{table.name}").encode())
    return paths


# Table 1 and Table 2 ----------------------------------------------------------------------------------------


def run_quantities(tables: Tables) -> pd.DataFrame:
    """Per (variant, seed, quantity) the final checkpoint's value of each headline quantity."""
    ctx = tables.context
    frames = []
    ev = tables.get("eval")
    if ev is not None and not ev.empty:
        f = final(ev)
        picks = [(f"{m} @ {ctx}", metric_rows(f, m, ctx)) for m in ("val_loss", "val_loss_local", "log_longppl",
                                                                    "niah_acc")]
        picks.append((f"niah_acc > {ctx}", f[(f["metric"] == "niah_acc") & (f["length"] > ctx)]))
        picks.append((f"ruler_avg @ {ctx}", f[f["metric"].str.startswith("ruler_") & (f["length"] == ctx)]))
        for name, d in picks:
            if not d.empty:
                frames.append(d.groupby(["variant", "seed"], as_index=False)["value"].mean().assign(quantity=name))
    lm = tables.get("lmeval")  # lm-evaluation-harness suites: ShortAvg, RULER @ 16384, LongBench @ 16384, ...
    if lm is not None and not lm.empty:
        suites = final(lm[lm["metric"] == "suite_mean"])
        for (task, length), d in suites.groupby(["task", "length"], sort=False):
            frames.append(d.groupby(["variant", "seed"], as_index=False)["value"].mean().assign(
                quantity=task if task == "ShortAvg" else f"{task} @ {length}"))
    tr = tables.get("train")
    if tr is not None and not tr.empty:
        last = tr[tr["step"] == tr.groupby(["variant", "seed"])["step"].transform("max")]
        frames.append(last[["variant", "seed", "loss"]].rename(columns={"loss": "value"}).assign(
            quantity="train loss (final)"))
        for col, agg, name in (("tokens_per_s", "median", "tokens/s (median)"), ("peak_mem_gb", "max",
                                                                                "peak mem GB")):
            s = tr.groupby(["variant", "seed"], as_index=False)[col].agg(agg).rename(columns={col: "value"})
            if s["value"].notna().any():
                frames.append(s.assign(quantity=name))
    if not frames:
        return pd.DataFrame(columns=["variant", "seed", "quantity", "value"])
    return pd.concat(frames, ignore_index=True)[["variant", "seed", "quantity", "value"]]


def _mean_sd(values: pd.Series) -> str:
    values = values.dropna()
    if values.empty:
        return ""
    return fmt(values.mean()) + (f" ± {fmt(values.std())}" if len(values) > 1 else "")


def final_metrics_table(tables: Tables) -> Table:
    q = run_quantities(tables)
    title = "Final metrics per variant (mean ± sd over seeds, final checkpoint)"
    if q.empty:
        return Table("table1_final", title, q, note="no data at this scale: eval.csv and train.csv are absent")
    stats = q.groupby(["variant", "quantity"])["value"].agg(["mean", "std", "count"]).reset_index()
    stats = stats.rename(columns={"std": "sd", "count": "n_seeds"})
    order = list(dict.fromkeys(q["quantity"]))
    display = q.pivot_table(index="variant", columns="quantity", values="value", aggfunc=_mean_sd)
    display = display.reindex(index=variant_order(q["variant"]), columns=order).fillna("")
    seeds = q.groupby("variant")["seed"].nunique().reindex(display.index)
    display.insert(0, "seeds", seeds.values)
    return Table("table1_final", title, stats, display.reset_index())


def traced_heads_table(tables: Tables) -> Table:
    """Per run, the traced retrieval heads (top full-attention heads by final needle mass): layer, role, final
    mass, whether each formed; a run whose best full head never crossed the threshold says so."""
    title = "Traced retrieval heads (top full-attention heads by final needle mass)"
    traced = tables.get("traced")
    if traced is None or traced.empty:
        return Table("table_traced", title, pd.DataFrame(), note="no data at this scale: traced.csv is absent")

    def heads(g: pd.DataFrame) -> str:
        return ", ".join(f"L{r.layer}H{r.head} {r.role} {r.final_mass:.2f}{'' if r.formed else ' (not formed)'}"
                         for r in g.sort_values("rank").itertuples())

    rows = [{"variant": v, "seed": s, "formed": bool(g["formed"].any()),
             "traced heads (layer, head, role, final mass)": heads(g) if g["formed"].any()
             else "no retrieval head formed"}
            for (v, s), g in traced.groupby(["variant", "seed"], sort=False)]
    display = pd.DataFrame(rows)
    display["variant"] = pd.Categorical(display["variant"], variant_order(display["variant"]))
    display = display.sort_values(["variant", "seed"]).astype({"variant": str})
    return Table("table_traced", title, traced, display.reset_index(drop=True),
                 note="Trajectories (Fig. 5 dynamics) follow the formed heads only.")


def nope_table(tables: Tables) -> Table:
    title = f"Table 2: NoPE on the full layers ({NOPE} against {NOPE_BASE})"
    paper = pd.DataFrame([("paper (S5, ~100B tokens)", m, b, n, n - b, math.nan, (n - b) / b, math.nan)
                          for m, b, n in PAPER_TABLE2],
                         columns=["source", "metric", NOPE_BASE, NOPE, "change", "change_sd", "rel_change",
                                  "n_seeds"])
    q = run_quantities(tables)
    q = q[q["variant"].isin([NOPE_BASE, NOPE]) & ~q["quantity"].isin(["tokens/s (median)", "peak mem GB"])]
    rows, note = [], ""
    if set(q["variant"]) != {NOPE_BASE, NOPE}:
        note = f"Measured rows: no data at this scale: needs {NOPE_BASE} and {NOPE} in eval.csv."
    for quantity in dict.fromkeys(q["quantity"]):
        d = q[q["quantity"] == quantity]
        b, n = (d.loc[d["variant"] == v, "value"].dropna() for v in (NOPE_BASE, NOPE))
        if b.empty or n.empty:
            continue
        # independent seeds: the difference of the means, with its standard error
        se = math.sqrt(b.var() / len(b) + n.var() / len(n)) if len(b) > 1 and len(n) > 1 else math.nan
        base = float(b.mean())
        rows.append((f"{tables.info.get('name', 'this run')} (independent seeds)", quantity, base, n.mean(),
                     n.mean() - base, se, (n.mean() - base) / base if base else math.nan, min(len(b), len(n))))
    data = pd.concat([pd.DataFrame(rows, columns=paper.columns), paper], ignore_index=True)
    display = data.copy()
    display["change"] = [fmt(c) + (f" ± {fmt(s)} (SE)" if not math.isnan(s) else "")
                         for c, s in zip(data["change"], data["change_sd"], strict=True)]
    display["rel_change"] = ["" if math.isnan(r) else f"{100 * r:+.2f}%" for r in data["rel_change"]]
    display = display.drop(columns=["change_sd"])
    return Table("table2_nope", title, data, display, note)


def _halves(r: ClaimResult) -> str:
    if r.halves is None:
        return ""
    agree = "agree" if r.halves_agree else "disagree"
    return f"{r.halves[0]} / {r.halves[1]} ({agree})"


def claims_tables(results: list[ClaimResult]) -> tuple[Table, Table]:
    summary = pd.DataFrame([{"claim": r.cid, "name": r.title, "verdict": r.verdict, "summary": r.summary,
                             "halves": _halves(r), "statistic": r.statistic, "note": r.note,
                             **{f"value_{k}": v for k, v in r.values.items()}} for r in results])
    long = []
    for r in results:
        for i, row in r.per_seed.reset_index(drop=True).iterrows():
            unit = f"{row['variant']}/seed{row['seed']}" if "variant" in row else f"seed{row['seed']}"
            long += [{"claim": r.cid, "unit": unit, "row": i, "quantity": k, "value": fmt(v)} for k, v in row.items()]
    seeds = pd.DataFrame(long, columns=["claim", "unit", "row", "quantity", "value"])
    return (Table("claims", "Claim checks: verdicts over the seeds' distributions", summary,
                  summary[["claim", "name", "verdict", "summary", "halves", "note"]]),
            Table("claims_seeds", "Claim checks: every run's numbers", seeds))


# The report -------------------------------------------------------------------------------------------------


def _claim_section(r: ClaimResult) -> list[str]:
    lines = [f"### {r.title}: **{r.verdict}**", "", f"*Statistic:* {r.statistic}.", "", f"*Result:* {r.summary}.", ""]
    if r.halves is not None:
        lines += [f"*Two disjoint halves of the seeds:* {_halves(r)}.", ""]
    if r.note and r.note not in r.summary:
        lines += [f"*Details:* {r.note}.", ""]
    if not r.per_seed.empty:
        lines += [markdown_table(r.per_seed), ""]
    return lines


def build_report(tables: Tables, claims: list[ClaimResult], figures: list[FigureEntry], result_tables: list[Table],
                 out: str | Path, *, scale: str, claims_config: str, sizes: list[str] | None = None) -> Path:
    """Write the Markdown report (images referenced relative to it)."""
    out = Path(out)
    info, sizes = tables.info, sizes or []
    ev = tables.get("eval")
    ran = variant_order(ev["variant"]) if ev is not None else list(info.get("variants", []))
    seeds = sorted(ev["seed"].unique()) if ev is not None else list(info.get("seeds", []))
    absent = [v for v in info.get("variants", []) if v not in ran]
    lines = [f"# Replication report: scale `{scale}`", "",
             "*Rethinking the Role of Efficient Attention in Hybrid Architectures* (Qiao et al., arXiv 2606.15378), "
             f"regenerated by hybridlab from result tables at the `{scale}` scale: training context "
             f"{tables.context} tokens (the paper's windows scaled by {tables.context}/"
             f"{info.get('ref_context', 16384)}), variants {', '.join(f'`{v}`' for v in ran)}, seeds "
             f"{', '.join(str(s) for s in seeds)}.", ""]
    if absent:
        lines += [f"Variants of the scale's plan absent from the tables (not run): "
                  f"{', '.join(f'`{v}`' for v in absent)}.", ""]
    if len(sizes) > 1:
        lines += [f"Model sizes in the tables: {', '.join(sizes)}. Fig. 2 shows every size; the claims, the tables "
                  f"and every other figure use the largest, `{sizes[-1]}`.", ""]
    if tables.missing:
        lines += ["Tables absent at this scale (their figures are placeholders and the claims that need them are "
                  f"INCONCLUSIVE): {', '.join(f'`{m}`' for m in tables.missing)}.", ""]
    lines += ["## Claim checks", "",
              f"Thresholds and statistics from `{claims_config}` (each documented there, set before any run). "
              "Seeds are independent draws (GPU training is not bitwise reproducible, so seeds pair nothing): every "
              "claim is decided by a statistic over each variant's seeds with a confidence interval or a "
              "permutation test, and again on two disjoint halves of the seeds.", "",
              markdown_table(pd.DataFrame([{"claim": r.title, "verdict": f"**{r.verdict}**", "result": r.summary,
                                            "halves": _halves(r)} for r in claims])), ""]
    for r in claims:
        lines += _claim_section(r)
    lines += ["## Tables", ""]
    for t in result_tables:
        if t.name.startswith("claims"):
            continue
        shown = t.display if t.display is not None else t.data
        lines += [f"### {t.title}", "", *([t.note, ""] if t.note else []), markdown_table(shown), ""]
    lines += ["## Figures", "", "Each figure is regenerated from the tables (PDF beside the PNG) and set beside "
              "what the paper reports. Faint lines are single seeds, bold lines their mean.", ""]
    verdicts = {r.cid: r.verdict for r in claims}
    for f in figures:
        lines += [f"### {f.name}", ""]
        if f.missing:
            lines += [f"**No data at this scale:** {f.missing}.", ""]
        else:
            lines += [f"![{f.name}]({f.png.relative_to(out.parent).as_posix()})", ""]
        lines += [f"*This figure:* {f.caption}", "", f"*The paper reports:* {f.paper}", ""]
        if f.claims:
            lines += ["*Claim check:* " + ", ".join(f"{c} **{verdicts.get(c, 'n/a')}**" for c in f.claims), ""]
    write_bytes(out, "\n".join(lines).encode())
    return out
