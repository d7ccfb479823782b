"""Rebuild every figure, table and the report of one results folder from its tables alone (no torch).

Writes under OUT (paper/{scale}/): figures/<name>.{pdf,png} for every name in FIGURE_NAMES (a placeholder saying
why when the inputs are missing at this scale), captions/<name>.rst (the figure's caption for
`snakemake --report`), tables/<name>.{csv,md,tex} for every name in TABLE_NAMES, report.md and report.html.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from hybridlab.figures import FIGURE_NAMES, plots, scaling_grid
from hybridlab.figures.claims import check_all, load_claims_config, run_onsets
from hybridlab.figures.html import render_report
from hybridlab.figures.report import (
    PAPER_NOTES,
    FigureEntry,
    build_report,
    claims_tables,
    final_metrics_table,
    nope_table,
    traced_heads_table,
    write_result_table,
)
from hybridlab.figures.style import placeholder
from hybridlab.figures.tables import NoData, Tables, load_tables
from hybridlab.io import write_bytes


@dataclass(frozen=True)
class FigureSpec:
    """How to draw one figure from the tables, the plot function whose docstring is its caption, and the claims
    it illustrates."""

    name: str
    plot: Callable
    draw: Callable[[Tables, Path], list[Path]]
    claims: tuple[str, ...] = ()
    all_sizes: bool = False  # drawn from every model size (else from the largest only)

    @property
    def caption(self) -> str:
        return " ".join(inspect.getdoc(self.plot).split())


def figure_specs(cfg: dict) -> list[FigureSpec]:
    """Every figure in report order; `cfg` is the claims config (the onset threshold is shared with C3)."""

    def _onset(t: Tables, out: Path) -> list[Path]:
        c3 = cfg["c3"]
        onsets, source = run_onsets(t, c3["mass_threshold"], c3["onset_metric"], c3["onset_selection"])
        return plots.fig_onset(onsets, out, source)

    return [
        FigureSpec("fig2_scaling", scaling_grid.fig2_scaling,
                   lambda t, o: scaling_grid.fig2_scaling(t.need("eval"), o, t.context, t.get("scaling_fit"),
                                                          t.n_params(), t.get("budgets"), t.get("scaling_draws")),
                   all_sizes=True),
        FigureSpec("fig_emergence", plots.fig_emergence,
                   lambda t, o: plots.fig_emergence(t.need("eval"), o, t.context), ("C1",)),
        FigureSpec("fig3_receptive", plots.fig3_receptive,
                   lambda t, o: plots.fig3_receptive(t.need("receptive"), o, t.context), ("C2",)),
        FigureSpec("fig4_probe", plots.fig4_probe, lambda t, o: plots.fig4_probe(t.need("probe"), o, t.info)),
        FigureSpec("fig_gradinf", plots.fig_gradinf, lambda t, o: plots.fig_gradinf(t.need("gradinf"), o, t.info)),
        FigureSpec("fig5_retrieval", plots.fig5_retrieval,
                   lambda t, o: plots.fig5_retrieval(t.need("heads"), o, t.context)),
        FigureSpec("fig5_dynamics", plots.fig5_dynamics,
                   lambda t, o: plots.fig5_dynamics(t.need("trajectory"), o, t.get("traced")), ("C3",)),
        FigureSpec("fig_onset", plots.fig_onset, _onset, ("C3",)),
        FigureSpec("fig_masking", plots.fig_masking,
                   lambda t, o: plots.fig_masking(t.need("masking"), o, t.context)),
        FigureSpec("fig_design", plots.fig_design, lambda t, o: plots.fig_design(t.need("eval"), o, t.context)),
        FigureSpec("fig8_nope", plots.fig8_nope, lambda t, o: plots.fig8_nope(t.need("eval"), o, t.context),
                   ("C4",)),
        FigureSpec("fig_ruler", plots.fig_ruler, lambda t, o: plots.fig_ruler(t.need("eval"), o, t.context)),
        FigureSpec("fig_loss_by_pos", plots.fig_loss_by_pos,
                   lambda t, o: plots.fig_loss_by_pos(t.need("eval"), o, t.context)),
    ]


def _rst(text: str) -> str:
    """Plain text safe in reStructuredText (the Snakemake report renders captions with docutils)."""
    for ch in ("\\", "*", "_", "`", "|"):
        text = text.replace(ch, "\\" + ch)
    return text


def build_all(scale: str, tables: str | Path, out: str | Path, claims_config: str | Path | None = None) -> list[Path]:
    """Every figure, caption, table and the report (md + html) of one results folder; returns the paths."""
    out = Path(out)
    every_size = load_tables(tables)
    data = every_size.at_size(every_size.main_size)
    cfg = load_claims_config(claims_config)
    claims = check_all(data, cfg)
    verdicts = {r.cid: r for r in claims}
    specs = figure_specs(cfg)
    assert tuple(s.name for s in specs) == FIGURE_NAMES, "figure_specs and FIGURE_NAMES disagree"
    paths, entries = [], []
    for spec in specs:
        missing = ""
        try:
            files = spec.draw(every_size if spec.all_sizes else data, out / "figures")
        except NoData as e:
            missing = str(e)
            files = placeholder(out / "figures", spec.name, missing)
        paths += files
        entry = FigureEntry(spec.name, out / "figures" / f"{spec.name}.png", spec.caption,
                            PAPER_NOTES[spec.name], spec.claims, missing)
        entries.append(entry)
        caption = [_rst(f"No data at this scale: {missing}.")] if missing else []
        caption += [_rst(entry.caption), _rst(f"The paper reports: {entry.paper}")]
        caption += [_rst(f"{c}: {verdicts[c].verdict} ({verdicts[c].summary})") for c in spec.claims]
        path = out / "captions" / f"{spec.name}.rst"
        write_bytes(path, ("\n\n".join(caption) + "\n").encode())
        paths.append(path)
    result_tables = [final_metrics_table(data), nope_table(data), *scaling_grid.scaling_tables(every_size),
                     traced_heads_table(data), *claims_tables(claims)]
    for t in result_tables:
        paths += write_result_table(t, out / "tables")
    config_name = Path(claims_config).name if claims_config else "src/hybridlab/conf/claims/default.yaml"
    report = build_report(data, claims, entries, result_tables, out / "report.md", scale=scale,
                          claims_config=config_name, sizes=every_size.sizes)
    return [*paths, report, render_report(report, out / "report.html")]
