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

from hybridlab.analysis.schemas import WRITTEN_BY
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
from hybridlab.io import replaced_folder, write_bytes


@dataclass(frozen=True)
class FigureSpec:
    """How to draw one figure from the tables, the plot function whose docstring is its caption, and the claims
    it illustrates."""

    name: str
    plot: Callable
    draw: Callable[[Tables, Path], list[Path]]
    tables: tuple[str, ...]  # the input tables it is drawn from (the caption names them and their commands)
    claims: tuple[str, ...] = ()
    all_sizes: bool = False  # drawn from every model size (else from the largest only)

    @property
    def caption(self) -> str:
        return " ".join(inspect.getdoc(self.plot).split())

    def source(self, scale: str, tables: str | Path, out: str | Path) -> str:
        """Which tables and which commands produced the figure."""
        inputs = "; ".join(f"{name}.{'json' if name == 'info' else 'csv'} ({TABLE_SOURCES[name]})"
                           for name in self.tables)
        return (f"Drawn by `hybridlab figures --scale {scale} --tables {tables} --out {out}` from {tables}/: "
                f"{inputs}.")


# Where each input table comes from: the per-run tables are concatenated by `hybridlab aggregate`.
TABLE_SOURCES = {
    **{kind: f"`hybridlab {cmd}` per run, `hybridlab aggregate --kind {kind}`" for kind, cmd in WRITTEN_BY.items()},
    "budgets": "`hybridlab train-branch` and `hybridlab evaluate` per budget branch, `hybridlab aggregate --kind eval`",
    "scaling_fit": "`hybridlab scaling-fit`",
    "scaling_draws": "`hybridlab scaling-fit --draws-out`",
    "info": "the plan, `hybridlab describe`",
}


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
                   ("eval", "budgets", "scaling_fit", "scaling_draws", "info"), all_sizes=True),
        FigureSpec("fig_emergence", plots.fig_emergence,
                   lambda t, o: plots.fig_emergence(t.need("eval"), o, t.context), ("eval",), ("C1",)),
        FigureSpec("fig3_receptive", plots.fig3_receptive,
                   lambda t, o: plots.fig3_receptive(t.need("receptive"), o, t.context), ("receptive",), ("C2",)),
        FigureSpec("fig4_probe", plots.fig4_probe, lambda t, o: plots.fig4_probe(t.need("probe"), o, t.info),
                   ("probe", "info")),
        FigureSpec("fig_gradinf", plots.fig_gradinf, lambda t, o: plots.fig_gradinf(t.need("gradinf"), o, t.info),
                   ("gradinf", "info")),
        FigureSpec("fig5_retrieval", plots.fig5_retrieval,
                   lambda t, o: plots.fig5_retrieval(t.need("heads"), o, t.context), ("heads",)),
        FigureSpec("fig5_dynamics", plots.fig5_dynamics,
                   lambda t, o: plots.fig5_dynamics(t.need("trajectory"), o, t.get("traced")),
                   ("trajectory", "traced"), ("C3",)),
        FigureSpec("fig_onset", plots.fig_onset, _onset, ("onset", "heads"), ("C3",)),
        FigureSpec("fig_masking", plots.fig_masking,
                   lambda t, o: plots.fig_masking(t.need("masking"), o, t.context), ("masking",)),
        FigureSpec("fig_design", plots.fig_design, lambda t, o: plots.fig_design(t.need("eval"), o, t.context),
                   ("eval",)),
        FigureSpec("fig8_nope", plots.fig8_nope, lambda t, o: plots.fig8_nope(t.need("eval"), o, t.context),
                   ("eval",), ("C4",)),
        FigureSpec("fig_ruler", plots.fig_ruler, lambda t, o: plots.fig_ruler(t.need("eval"), o, t.context),
                   ("eval",)),
        FigureSpec("fig_loss_by_pos", plots.fig_loss_by_pos,
                   lambda t, o: plots.fig_loss_by_pos(t.need("eval"), o, t.context), ("eval",)),
    ]


def _rst(text: str) -> str:
    """Plain text safe in reStructuredText (the Snakemake report renders captions with docutils)."""
    for ch in ("\\", "*", "_", "`", "|"):
        text = text.replace(ch, "\\" + ch)
    return text


def build_all(scale: str, tables: str | Path, out: str | Path, claims_config: str | Path | None = None) -> list[Path]:
    """Every figure, caption, table and the report (md + html) of one results folder; returns the paths. The
    build is written beside `out` and replaces it only once complete (io.replaced_folder): a failed or killed
    rebuild leaves the previous one as it was."""
    out = Path(out)
    every_size, cfg = load_tables(tables), load_claims_config(claims_config)  # bad input fails before any work
    config_name = Path(claims_config).name if claims_config else "src/hybridlab/conf/claims/default.yaml"
    with replaced_folder(out) as stage:
        paths = _build(scale, every_size, cfg, config_name, stage, (tables, out))
    return [out / p.relative_to(stage) for p in paths]


def _build(scale: str, every_size: Tables, cfg: dict, config_name: str, out: Path,
           named: tuple[str | Path, Path]) -> list[Path]:
    """The build into `out` (a staging folder); captions name the tables folder and the final folder (`named`)."""
    data = every_size.at_size(every_size.main_size)
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
        entry = FigureEntry(spec.name, out / "figures" / f"{spec.name}.png",
                            f"{spec.caption} {spec.source(scale, *named)}", PAPER_NOTES[spec.name],
                            spec.claims, missing)
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
    report = build_report(data, claims, entries, result_tables, out / "report.md", scale=scale,
                          claims_config=config_name, sizes=every_size.sizes)
    return [*paths, report, render_report(report, out / "report.html")]
