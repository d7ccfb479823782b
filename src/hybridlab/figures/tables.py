"""The input side of the figures: read a results folder's tables (every one optional but info.json), check
their columns, and the small selections every figure and claim shares (final checkpoint, one context length).

Input tables (results/{scale}/tables/, written by `hybridlab aggregate`, which adds a `size` column; columns
in analysis/schemas.py): eval, heads, receptive, probe, trajectory, traced, onset, gradinf, masking, lmeval;
train.csv (variant, seed, step, tokens, loss, tokens_per_s, peak_mem_gb); budgets.csv (eval rows of every WSD
budget branch's end, with budget_k), scaling_fit.csv (variant, form, kind, name, value) and scaling_draws.csv
(variant, form, replicate, B, alpha, C, beta, E, objective), both from analysis/scaling_uncertainty.py
fit_table; info.json, the scale's plan (name, context, variants, seeds, sizes, layouts, runs with each (size,
variant)'s non-embedding parameters), the only file required.

With several model sizes, only Fig. 2 (scaling) uses them all; every other figure and the claims use the
largest size (`Tables.main_size`, the last of info.json's sizes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from hybridlab.analysis.schemas import OPTIONAL_TABLES, RUN_KEYS, TABLES
from hybridlab.io import read_json, read_table

# The per-run tables' columns come from their writers (torch-free); train and the scaling fit are read here.
INPUT_COLUMNS: dict[str, tuple[str, ...]] = {
    **TABLES,
    **OPTIONAL_TABLES,
    "train": (*RUN_KEYS, "loss", "tokens_per_s", "peak_mem_gb"),
    "scaling_fit": ("variant", "form", "kind", "name", "value"),
    "scaling_draws": ("variant", "form", "replicate"),
    "budgets": (*TABLES["eval"], "budget_k"),
}


class NoData(Exception):  # noqa: N818 (a signal, not an error: the figure becomes a placeholder)
    """A figure or claim lacks its inputs at this scale; the message says why, for the report."""


@dataclass
class Tables:
    """Every input table of one results folder; an absent table is None (see `missing`)."""

    info: dict[str, Any]
    frames: dict[str, pd.DataFrame | None] = field(default_factory=dict)

    @property
    def context(self) -> int:
        return int(self.info["context"])

    def get(self, name: str) -> pd.DataFrame | None:
        return self.frames.get(name)

    def need(self, name: str) -> pd.DataFrame:
        """The table, or NoData naming the missing file."""
        df = self.frames.get(name)
        if df is None:
            raise NoData(f"{name}.csv is absent")
        if df.empty:
            raise NoData(f"{name}.csv has no rows")
        return df

    @property
    def missing(self) -> list[str]:
        return [f"{k}.csv" for k, v in self.frames.items() if v is None]

    @property
    def sizes(self) -> list[str]:
        """The model sizes the tables hold, in info.json's order."""
        present = set()
        for df in self.frames.values():
            if df is not None and "size" in df.columns:
                present.update(df["size"].dropna().astype(str))
        order = [str(s) for s in self.info.get("sizes", [])]
        return [s for s in order if s in present] + sorted(present - set(order))

    @property
    def main_size(self) -> str | None:
        return self.sizes[-1] if self.sizes else None

    def at_size(self, size: str | None) -> Tables:
        """The same tables restricted to one model size (tables without a size column are kept whole)."""
        if size is None:
            return self
        frames = {k: df[df["size"].astype(str) == size] if df is not None and "size" in df.columns else df
                  for k, df in self.frames.items()}
        return Tables(info=self.info, frames=frames)

    def n_params(self) -> dict[tuple[str, str], float]:
        """Non-embedding parameters per (size, variant), from info.json's runs (the paper's N)."""
        return {(str(r["size"]), r["variant"]): float(r["non_embedding_params"]) for r in self.info.get("runs", [])
                if "non_embedding_params" in r}


def load_tables(folder: str | Path) -> Tables:
    """Read every known table of `folder`; info.json must exist (FileNotFoundError otherwise)."""
    folder = Path(folder)
    info = read_json(folder / "info.json") if (folder / "info.json").exists() else None
    if info is None:
        raise FileNotFoundError(f"{folder / 'info.json'} not found (is {folder} a results tables folder?)")
    frames = {}
    for name, columns in INPUT_COLUMNS.items():
        path = folder / f"{name}.csv"
        frames[name] = read_table(path, columns) if path.exists() else None
    return Tables(info=info, frames=frames)


def final(df: pd.DataFrame, keys: tuple[str, ...] = ("variant", "seed")) -> pd.DataFrame:
    """The rows of each run's last checkpoint (largest tokens per variant and seed)."""
    return df[df["tokens"] == df.groupby(list(keys))["tokens"].transform("max")]


def metric_rows(eval_df: pd.DataFrame, metric: str, length: int | None = None) -> pd.DataFrame:
    """Rows of one metric, optionally at one length."""
    d = eval_df[eval_df["metric"] == metric]
    return d if length is None else d[d["length"] == length]


def at_context(df: pd.DataFrame, context: int) -> pd.DataFrame:
    """Rows at the training context when the table holds several lengths; else all rows."""
    if "length" not in df.columns or df["length"].nunique() <= 1:
        return df
    return df[df["length"] == context] if (df["length"] == context).any() else df[df["length"] == df["length"].max()]


def layer_roles(info: dict[str, Any], variant: str) -> list[str]:
    """Per layer of a variant, its role (full, efficient, ...) from info.json's layout strings kind:role:windows."""
    return [s.split(":")[1] for s in info.get("layouts", {}).get(variant, [])]


def efficient_windows(info: dict[str, Any], variant: str) -> list[int]:
    """The distinct sliding-window sizes (tokens, at this scale) of a variant's layers."""
    windows = set()
    for s in info.get("layouts", {}).get(variant, []):
        windows.update(int(w) for w in s.split(":")[2].split(",") if w.isdigit())
    return sorted(windows)
