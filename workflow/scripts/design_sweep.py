"""Pilot sweep of candidate mini designs on one GPU, before a preset is fixed (issue 16).

For each candidate (a name and overrides of the mini scale), prepares the corpus, trains a few pilot seeds of
each variant (seeds the final run never uses) with the project's own training path, and reads the retrieval-head
onset off the checkpoints as `hybridlab analyze` does (its head scores, its `onset`): the strongest
full-attention head's needle mass on the NIAH set at the training context, onset = the first checkpoint above
eval.onset_threshold.
Writes curves.csv (design, variant, seed, step, tokens, needle mass) and summary.csv (one row per run), and
prints the summary and the design the selection rule picks. The rule is fixed in this file before the sweep
runs: most formed runs; then most formed runs of the first variant; then the earliest mean onset of the formed
runs; then the order given.
Usage: python workflow/scripts/design_sweep.py --out DIR --seeds 100 101 --variants full swa2048 \
           --design v4= --design order2=data.markov_order=2 [--common train.compile=false ...]
       (designs can run in separate processes on one card, one --design each, then
        python workflow/scripts/design_sweep.py --out DIR --merge v4 order2   applies the rule to all of them)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from hybridlab.analysis.retrieval import attention_heads, head_scores
from hybridlab.analysis.trajectory import onset
from hybridlab.config import load_config
from hybridlab.data.niah import load_niah
from hybridlab.data.prepare import prepare
from hybridlab.data.shards import read_manifest
from hybridlab.evals.checkpoints import iter_checkpoints, pick_device
from hybridlab.train.run import train_group


def parse_design(text: str) -> tuple[str, list[str]]:
    name, _, rest = text.partition("=")
    if not name:
        raise SystemExit(f"--design {text!r}: expected NAME=override,override,... (NAME= for none)")
    return name, [o for o in rest.split(",") if o]


def onset_curve(cfg, data_dir: Path, run_dir: Path) -> pd.DataFrame:
    manifest = read_manifest(data_dir)
    device = pick_device(cfg)
    ds = load_niah(data_dir, int(manifest["context"]))
    rows = []
    for model, info in iter_checkpoints(cfg, run_dir, manifest["vocab_size"], device):
        scores = head_scores(model, ds.tokens, ds.needle_pos, int(cfg.eval.batch_size), device, n_last=4,
                             query_from_end=int(cfg.eval.get("retrieval_query_from_end", 1)),
                             span=str(cfg.eval.get("needle_span", "first")), needle_len=ds.needle_len)
        mass = max(scores["needle_mass"][li, h] for li, h in attention_heads(model, "full"))
        rows.append({"step": int(info["step"]), "tokens": int(info["tokens"]), "needle_mass": float(mass)})
    return pd.DataFrame(rows)


def pick(summary: pd.DataFrame, designs: list[str], first_variant: str) -> str:
    def key(name: str):
        d = summary[summary.design == name]
        formed = d[d.onset_step.notna()]
        mean_onset = formed.onset_step.mean() if len(formed) else np.inf
        return (-len(formed), -int((formed.variant == first_variant).sum()), mean_onset, designs.index(name))

    return min(designs, key=key)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--scale", default="mini")
    ap.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    ap.add_argument("--variants", nargs="+", default=["full", "swa2048"])
    ap.add_argument("--design", action="append", default=[], help="NAME=override,override (repeatable)")
    ap.add_argument("--merge", nargs="+", default=None, metavar="NAME",
                    help="only combine the designs' finished sweeps under --out (in this order) and pick")
    ap.add_argument("--common", nargs="*", default=[], help="overrides for every design (e.g. train.compile=false)")
    ap.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    a = ap.parse_args()
    if a.merge:
        merge(a.out, a.merge, a.variants[0])
        return
    if not a.design:
        raise SystemExit("give --design NAME=overrides (one or more) or --merge NAME ...")
    designs = [parse_design(d) for d in a.design]
    a.out.mkdir(parents=True, exist_ok=True)
    curves, summary = [], []
    t0 = time.time()
    for name, overrides in designs:
        ov = [*a.common, *overrides]
        data_dir = a.out / name / "data"
        t = time.time()
        prepare(load_config(a.scale, a.variants[0], a.seeds[0], ov), data_dir, workers=a.workers)
        print(f"[{time.time() - t0:.0f}s] {name}: data in {time.time() - t:.0f}s ({' '.join(ov) or 'preset'})",
              flush=True)
        for variant in a.variants:
            cfgs = [load_config(a.scale, variant, s, ov) for s in a.seeds]
            run_dirs = [a.out / name / variant / str(s) for s in a.seeds]
            t = time.time()
            train_group(cfgs, data_dir, run_dirs)
            train_s = time.time() - t
            threshold = float(cfgs[0].eval.onset_threshold)
            for cfg, seed, run_dir in zip(cfgs, a.seeds, run_dirs, strict=True):
                c = onset_curve(cfg, data_dir, run_dir)
                metrics = pd.read_csv(run_dir / "metrics.csv")
                on_step, on_tokens = (onset(c[x].to_numpy(), c.needle_mass.to_numpy(), threshold)[0]
                                      for x in ("step", "tokens"))
                summary.append({"design": name, "variant": variant, "seed": seed,
                                "onset_step": int(on_step) if np.isfinite(on_step) else None,
                                "onset_tokens": int(on_tokens) if np.isfinite(on_tokens) else None,
                                "final_mass": float(c.needle_mass.iloc[-1]), "max_mass": float(c.needle_mass.max()),
                                "final_loss": float(metrics.loss.iloc[-1]),
                                "tokens_per_s": float(metrics.tokens_per_s.median()),
                                "group_train_s": round(train_s, 1)})
                curves.append(c.assign(design=name, variant=variant, seed=seed))
                print(f"[{time.time() - t0:.0f}s] {name} {variant} seed {seed}: {summary[-1]}", flush=True)
            d = pd.DataFrame(summary)
            d[d.design == name].to_csv(a.out / name / "summary.csv", index=False)
            c = pd.concat(curves)
            c[c.design == name].to_csv(a.out / name / "curves.csv", index=False)
        (a.out / name / "overrides.txt").write_text(" ".join(ov) + "\n")
    print(f"sweep of {len(designs)} design(s) in {time.time() - t0:.0f}s")
    if len(designs) > 1:
        merge(a.out, [n for n, _ in designs], a.variants[0])


def merge(out: Path, names: list[str], first_variant: str) -> None:
    """Combine the designs' summaries and curves under `out`, print them and the design the rule picks."""
    found = [n for n in names if (out / n / "summary.csv").exists()]
    missing = sorted(set(names) - set(found))
    if not found:
        raise SystemExit(f"no design finished under {out} (looked for {names}); see the designs' logs")
    s = pd.concat([pd.read_csv(out / n / "summary.csv") for n in found], ignore_index=True)
    s.to_csv(out / "summary.csv", index=False)
    pd.concat([pd.read_csv(out / n / "curves.csv") for n in found]).to_csv(out / "curves.csv", index=False)
    print(s.to_string(index=False))
    if missing:
        print(f"unfinished designs (no summary): {missing}")
    chosen = pick(s, found, first_variant)
    ov_file = out / chosen / "overrides.txt"
    overrides = ov_file.read_text().strip() if ov_file.exists() else "?"
    print(f"rule picks: {chosen} ({overrides or 'preset'})")
    (out / "chosen.txt").write_text(chosen + "\n")


if __name__ == "__main__":
    main()
