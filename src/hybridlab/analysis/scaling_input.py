"""The scaling fitter's input from any table, as rows (variant if known, size, N, D, loss), the mapping explicit:
  - simple:   size, N, D, loss             (TSV or CSV; loss is log(LongPPL), or LongPPL with log_values=True)
  - released: model_size, token_multiplier, n, loss   (the authors' src/scaling/data/*.tsv as released:
              size = model_size, N = n, D = k * n with k read from token_multiplier "200.110938n"; their
              swa128_longppl.tsv holds LongPPL, so pass log_values=True, as their script's --longppl does)
  - tidy:     variant, size, N, tokens, metric, value  (tokens -> D, value -> loss, after selecting one
              metric's rows)
  - eval:     the pipeline's own eval tables (runs/<size>/<variant>/seed<N>/[budget<k>/]eval.csv, or the
              aggregated tables/eval.csv and tables/budgets.csv), which have no N (below).

An eval table has no parameter count, so N is each (size, variant)'s non-embedding parameter count, counted on
a model built on the meta device (no memory, no weights) from the scale's config with that model size. The
size comes from the table's `size` column (aggregated tables), else from the path (runs/<size>/...), else it
is the scale's default size; the scale comes from the caller, else from the path (results/<scale>/...). Rows
of the chosen metric (and length, when the metric has several) are averaged over seeds, and each
checkpoint's `tokens` is its D: a checkpoint is taken as a point of the law, so fits are most meaningful on
runs whose schedule ends at each budget (the WSD branch plans) rather than on the middle of one cosine run.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.analysis.schemas import EVAL_COLUMNS

SIMPLE_COLUMNS = ("size", "N", "D", "loss")
RELEASED_COLUMNS = ("model_size", "token_multiplier", "n", "loss")
TIDY_COLUMNS = ("variant", "size", "N", "tokens", "metric", "value")
TIDY_TO_FIT = {"tokens": "D", "value": "loss"}
MULTIPLIER = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*n?\s*")


def token_multiplier(value: object, where: str) -> float:
    """k of a released token_multiplier ("200.110938n": D = 200.110938 * n); a plain number is k itself."""
    match = MULTIPLIER.fullmatch(str(value))
    if match is None:
        raise ValueError(f"{where}: token_multiplier {value!r} is not a number of tokens per parameter like "
                         "'200.11n' or '200.11'")
    return float(match.group(1))


def _read_delimited(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".tab"):
        return pd.read_csv(path, sep="\t")
    if suffix == ".csv":
        return pd.read_csv(path)
    return pd.read_csv(path, sep=None, engine="python")


def _released(raw: pd.DataFrame, path: Path) -> pd.DataFrame:
    k = [token_multiplier(v, f"{path} row {i + 2}") for i, v in enumerate(raw["token_multiplier"])]
    n = raw["n"].astype(float)
    return pd.DataFrame({"size": raw["model_size"].astype(str), "N": n, "D": np.asarray(k) * n,
                         "loss": raw["loss"]})


def read_scaling_table(
    path: str | Path, *, metric: str | None = None, variant: str | None = None, log_values: bool = False
) -> pd.DataFrame:
    """Read a simple, released or tidy table into columns (variant if present, size, N, D, loss).

    metric: for tidy tables, which metric's rows to use (may be omitted when the table holds only one).
    variant: keep only this variant's rows (tables with a variant column).
    log_values: the values are LongPPL rather than log(LongPPL); take their log.
    """
    path = Path(path)
    raw = _read_delimited(path)
    columns = set(raw.columns)
    if set(TIDY_COLUMNS) <= columns:
        metrics = sorted(raw["metric"].astype(str).unique())
        if metric is None and len(metrics) != 1:
            raise ValueError(f"{path}: holds metrics {metrics}; pass metric= to choose one")
        chosen = metric if metric is not None else metrics[0]
        if chosen not in metrics:
            raise ValueError(f"{path}: metric {chosen!r} not found; the table holds {metrics}")
        table = raw[raw["metric"] == chosen].rename(columns=TIDY_TO_FIT)
    elif set(SIMPLE_COLUMNS) <= columns:
        table = raw
    elif set(RELEASED_COLUMNS) <= columns:
        table = _released(raw, path)
    else:
        raise ValueError(
            f"{path}: columns {sorted(columns)} match none of the layouts simple {list(SIMPLE_COLUMNS)}, "
            f"released {list(RELEASED_COLUMNS)} or tidy {list(TIDY_COLUMNS)}"
        )
    if variant is not None:
        if "variant" not in table.columns:
            raise ValueError(f"{path}: variant={variant!r} given, but the table has no 'variant' column")
        table = table[table["variant"] == variant]
        if table.empty:
            raise ValueError(f"{path}: no rows for variant {variant!r}")
    keep = (["variant"] if "variant" in table.columns else []) + list(SIMPLE_COLUMNS)
    table = table[keep].reset_index(drop=True)
    table = table.astype({"N": float, "D": float, "loss": float})
    if log_values:
        table["loss"] = np.log(table["loss"])
    return table


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
    """Any supported table (module docstring) as (variant if known, size, N, D, loss) rows for `fit_table`."""
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
