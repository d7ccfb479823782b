"""Rebuild every figure and the report of one results folder from its tables (no torch)."""

from __future__ import annotations

from pathlib import Path

from hybridlab.figures import plots
from hybridlab.figures.report import build_report
from hybridlab.io import read_json, read_table

EVAL_COLUMNS = ("variant", "seed", "step", "tokens", "metric", "length", "value")
HEAD_COLUMNS = ("variant", "seed", "step", "tokens", "layer", "head", "role", "metric", "length", "value")


def build_all(scale: str, tables: str | Path, out: str | Path) -> list[Path]:
    tables, out = Path(tables), Path(out)
    info = read_json(tables / "info.json")
    context = int(info["context"])
    eval_df = read_table(tables / "eval.csv", EVAL_COLUMNS)
    heads_df = read_table(tables / "heads.csv", HEAD_COLUMNS)
    fig_dir = out / "figures"
    paths = [*plots.fig_longctx(eval_df, fig_dir, context), *plots.fig_niah_by_length(eval_df, fig_dir, context),
             *plots.fig_retrieval(heads_df, fig_dir)]
    report = build_report(eval_df, paths, out / "report.md", scale=scale, context=context)
    return [*paths, report]
