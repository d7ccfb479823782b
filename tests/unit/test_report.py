"""Tests for the replication report: result tables (CSV, Markdown, LaTeX), the Markdown report with every
claim and every seed's numbers, and the self-contained HTML rendering."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image
from test_figures import ONSETS, SEEDS, synthetic_tables

from hybridlab.figures.claims import check_all, load_claims_config
from hybridlab.figures.html import markdown_to_html, render_report
from hybridlab.figures.report import (
    PAPER_TABLE2,
    FigureEntry,
    build_report,
    claims_tables,
    final_metrics_table,
    fmt,
    nope_table,
    write_result_table,
)


def tiny_png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 3), "red").save(path)
    return path


def assert_self_contained(html: str) -> None:
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:)""", html), "external reference in the page"
    assert "<link" not in html and "<script" not in html


@pytest.mark.parametrize("value, text", [(3, "3"), (0.123456, "0.1235"), (12345.6, "12,346"), (math.inf, "inf"),
                                         (math.nan, ""), (True, "yes"), ("x", "x")])
def test_fmt(value, text):
    assert fmt(value) == text


def test_markdown_subset_renders_and_embeds_images(tmp_path):
    tiny_png(tmp_path / "figures" / "a.png")
    md = "\n".join(["# Title `x`", "", "Some *italic* and **PASS** text <script>", "continued.", "",
                    "- one", "- two **FAIL**", "", "| a | b \\| c |", "|---|---|", "| 1 | **INCONCLUSIVE** |", "",
                    "![a](figures/a.png)", "", "![gone](figures/missing.png)", "", "| not | a table"])
    html = markdown_to_html(md, tmp_path, title="t")
    assert '<h1 id="title-x">Title <code>x</code></h1>' in html
    assert "<em>italic</em>" in html and '<strong class="pass">PASS</strong>' in html
    assert "&lt;script&gt;" in html and "text &lt;script&gt; continued." in html
    assert "<ul><li>one</li><li>two <strong class=\"fail\">FAIL</strong></li></ul>" in html
    assert "<th>b | c</th>" in html and '<td><strong class="inconclusive">INCONCLUSIVE</strong></td>' in html
    assert html.count("data:image/png;base64,") == 1 and "[missing image: figures/missing.png]" in html
    assert "<p>| not | a table</p>" in html
    assert_self_contained(html)


def test_result_tables_are_written_as_csv_markdown_and_latex(tmp_path):
    t = synthetic_tables()
    table = final_metrics_table(t)
    paths = write_result_table(table, tmp_path)
    assert [p.suffix for p in paths] == [".csv", ".md", ".tex"]
    data = pd.read_csv(paths[0])
    assert set(data.columns) == {"variant", "quantity", "mean", "sd", "n_seeds"}
    assert (data["n_seeds"] == len(ONSETS["swa128"])).all()
    md = paths[1].read_text()
    assert "| variant | seeds | val_loss @ 256 |" in md and " ± " in md
    tex = paths[2].read_text()
    assert r"\toprule" in tex and r"val\_loss @ 256" in tex and r"$\pm$" in tex and "±" not in tex


def test_nope_table_compares_independent_seeds_and_keeps_the_papers_numbers():
    table = nope_table(synthetic_tables())
    measured = table.data[table.data["source"].str.contains("independent")].set_index("metric")
    row = measured.loc["niah_acc > 256"]
    assert row["swa128"] == pytest.approx(0.3) and row["swa128_nope"] == pytest.approx(1.0)
    assert row["change"] == pytest.approx(0.7) and row["n_seeds"] == len(ONSETS["swa128"])
    paper = table.data[table.data["source"].str.startswith("paper")]
    assert list(paper["metric"]) == [m for m, _, _ in PAPER_TABLE2]
    assert paper.set_index("metric").loc["RULER-NIAH 16K", "swa128_nope"] == 82.31
    missing = nope_table(synthetic_tables({"swa128": ONSETS["swa128"]}))
    assert "no data at this scale" in missing.note and len(missing.data) == len(PAPER_TABLE2)


def test_report_lists_every_claim_with_every_seed_and_renders_self_contained(tmp_path):
    t = synthetic_tables()
    claims = check_all(t, load_claims_config())
    png = tiny_png(tmp_path / "figures" / "fig_x.png")
    figures = [FigureEntry("fig_x", png, "What it shows.", "What the paper says.", ("C3",)),
               FigureEntry("fig_y", tmp_path / "figures" / "fig_y.png", "Shows y.", "Paper y.", (),
                           "probe.csv is absent")]
    tables = [final_metrics_table(t), nope_table(t), *claims_tables(claims)]
    md_path = build_report(t, claims, figures, tables, tmp_path / "report.md", scale="unit", claims_config="c.yaml")
    md = md_path.read_text()
    for r in claims:
        assert f"### {r.title}: **{r.verdict}**" in md and r.summary in md
    c1 = md.split("### C1 emergence speed")[1].split("### C2")[0]
    for seed in SEEDS[:len(ONSETS["swa128"])]:
        assert re.search(rf"^\| swa128 \| {seed} \|", c1, re.M), f"seed {seed} missing from C1's table"
    assert "*Two disjoint halves of the seeds:*" in c1
    c3 = next(r for r in claims if r.cid == "C3")
    assert "![fig_x](figures/fig_x.png)" in md and f"*Claim check:* C3 **{c3.verdict}**" in md
    assert "**No data at this scale:** probe.csv is absent." in md and "![fig_y]" not in md
    assert "Tables absent at this scale" not in md  # synthetic_tables holds every table
    html = render_report(md_path, tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 1 and "<title>Replication report: scale" in html
    assert_self_contained(html)


def test_claims_tables_hold_a_row_per_claim_and_every_seeds_numbers():
    claims = check_all(synthetic_tables(), load_claims_config())
    summary, seeds = claims_tables(claims)
    assert list(summary.data["claim"]) == ["C1", "C2", "C3", "C4"]
    c3 = seeds.data[seeds.data["claim"] == "C3"]
    n = len(ONSETS["swa128"])
    assert set(c3["unit"]) == {f"{v}/seed{s}" for v in ("swa128", "swa512", "swa2048") for s in SEEDS[:n]}
    assert set(c3["quantity"]) == {"variant", "seed", "onset_tokens", "censored_at", "formed"}
    assert list(summary.data.columns[:5]) == ["claim", "name", "verdict", "summary", "halves"]
    c2_units = set(seeds.data.loc[seeds.data["claim"] == "C2", "unit"])
    assert "swa2048/seed1" in c2_units


def test_traced_heads_table_says_when_no_retrieval_head_formed():
    from hybridlab.figures.report import traced_heads_table

    table = traced_heads_table(synthetic_tables()).display
    row = table[(table["variant"] == "full") & (table["seed"] == 1)].iloc[0]  # full seed 1 never forms
    assert not row["formed"] and row.iloc[-1] == "no retrieval head formed"
    formed = table[(table["variant"] == "swa128") & (table["seed"] == 0)].iloc[0]
    assert formed["formed"] and formed.iloc[-1] == "L1H0 full 0.90"
