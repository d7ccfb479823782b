"""The scaling fitter's input from any table: a TSV/CSV of (size, N, D, loss), a tidy table that has N, or the
pipeline's own eval tables (runs/<size>/<variant>/seed<N>/eval.csv or the aggregated tables/eval.csv).

An eval table has no parameter count, so N is each (size, variant)'s non-embedding parameter count, counted on
a model built on the meta device (no memory, no weights) from the scale's config with that model size. The
size comes from the table's `size` column (aggregated tables), else from the path (runs/<size>/...), else it
is the scale's default size; the scale comes from the caller, else from the path (results/<scale>/...). Rows
of the chosen metric (and length, when the metric has several) are averaged over seeds, and each
checkpoint's `tokens` is its D: a checkpoint is taken as a point of the law, so fits are most meaningful on
runs whose schedule ends at each budget (the WSD branch plans) rather than on the middle of one cosine run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.analysis.scaling import read_scaling_table
from hybridlab.analysis.schemas import EVAL_COLUMNS


def non_embedding_params(scale: str, variant: str, size: str | None = None,
                         overrides: list[str] | None = None) -> int:
    """The variant's non-embedding parameters (the paper's N) at a scale, for a model size (None: the scale's)."""
    import torch

    from hybridlab.config import load_config
    from hybridlab.models import build_model

    cfg = load_config(scale, variant, 0, overrides, size)
    with torch.device("meta"):
        return build_model(cfg, vocab_size=8).non_embedding_params()


def _named_ancestor(path: Path, names: list[str]) -> str | None:
    return next((p.name for p in path.resolve().parents if p.name in set(names)), None)


def eval_to_scaling(df: pd.DataFrame, scale: str, metric: str, length: int | None = None,
                    overrides: list[str] | None = None) -> pd.DataFrame:
    """(variant, size, N, D, loss) from an eval table of one scale with a `size` column (None: the default)."""
    rows = df[df["metric"] == metric]
    if rows.empty:
        raise ValueError(f"no rows of metric {metric!r}; the table holds {sorted(df['metric'].unique())}")
    if length is not None:
        rows = rows[rows["length"] == length]
    elif rows["length"].nunique() > 1:
        raise ValueError(f"metric {metric!r} has lengths {sorted(rows['length'].unique())}; choose one")
    rows = rows.assign(size=rows["size"].astype(object).where(rows["size"].notna(), None))
    table = rows.groupby(["variant", "size", "tokens"], as_index=False, dropna=False)["value"].mean()
    pairs = {(v, s) for v, s in zip(table["variant"], table["size"], strict=True)}
    n = {(v, s): non_embedding_params(scale, v, s, overrides) for v, s in pairs}
    table["N"] = [float(n[(v, s)]) for v, s in zip(table["variant"], table["size"], strict=True)]
    table["size"] = table["size"].fillna(scale)
    table = table.rename(columns={"tokens": "D", "value": "loss"})
    return table[["variant", "size", "N", "D", "loss"]]


def load_scaling_input(path: str | Path, *, metric: str = "log_longppl", length: int | None = None,
                       scale: str | None = None, variant: str | None = None, log_values: bool = False,
                       overrides: list[str] | None = None) -> pd.DataFrame:
    """Any supported table as (variant if known, size, N, D, loss) rows for `fit_table`."""
    from hybridlab.config import model_names, scale_names

    path = Path(path)
    head = pd.read_csv(path, sep=None, engine="python", nrows=1)
    if not set(EVAL_COLUMNS) <= set(head.columns) or "N" in head.columns:
        return read_scaling_table(path, metric=metric if "metric" in head.columns else None, variant=variant,
                                  log_values=log_values)
    scale = scale or _named_ancestor(path, scale_names())
    if scale is None:
        raise ValueError(f"{path}: an eval table outside results/<scale>/; pass the scale it belongs to")
    df = pd.read_csv(path)
    if "size" not in df.columns:
        df["size"] = _named_ancestor(path, model_names())
    if variant is not None:
        df = df[df["variant"] == variant]
    table = eval_to_scaling(df, scale, metric, length, overrides)
    if log_values:
        table = table.assign(loss=np.log(table["loss"]))
    return table.reset_index(drop=True)
