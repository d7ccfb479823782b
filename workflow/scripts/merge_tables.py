"""Merge the result tables of several partial DAG runs of one scale (disjoint variant sets run as separate
waves, e.g. on different lent machines) into one tables folder, in the preset's variant order.

Every table is a concatenation of per-run rows with `variant` (and `seed`) columns (`hybridlab aggregate`),
so merging is concatenation; a (variant, seed) present in two inputs is an error, not silently duplicated.
info.json (the scale's plan, not results) must be identical in every input.

Usage: python workflow/scripts/merge_tables.py OUT_TABLES IN_TABLES [IN_TABLES ...]
"""

import json
import sys
from pathlib import Path

import pandas as pd


def merge(out: Path, inputs: list[Path]) -> None:
    infos = [json.loads((p / "info.json").read_text()) for p in inputs]
    if any(info != infos[0] for info in infos[1:]):
        raise SystemExit("merge_tables: info.json differs between inputs: not runs of one preset")
    order = {v: i for i, v in enumerate(infos[0]["variants"])}
    out.mkdir(parents=True, exist_ok=True)
    for name in sorted({f.name for p in inputs for f in p.glob("*.csv")}):
        frames = [pd.read_csv(p / name) for p in inputs if (p / name).exists()]
        runs = [set(map(tuple, f[["variant", "seed"]].drop_duplicates().values)) for f in frames]
        for i, a in enumerate(runs):
            for b in runs[i + 1:]:
                if a & b:
                    raise SystemExit(f"merge_tables: {name}: runs {sorted(a & b)} appear in two inputs")
        table = pd.concat(frames, ignore_index=True)
        key = table["variant"].map(order)
        if key.isna().any():
            raise SystemExit(f"merge_tables: {name}: variants {set(table['variant'][key.isna()])} not in the preset")
        table = table.assign(_k=key).sort_values(["_k", "seed"], kind="stable").drop(columns="_k")
        table.to_csv(out / name, index=False)
        print(f"{name}: {len(table)} rows from {len(frames)} inputs")
    (out / "info.json").write_text(json.dumps(infos[0], indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    merge(Path(sys.argv[1]), [Path(p) for p in sys.argv[2:]])
