"""Command-line entry point: one subcommand per pipeline stage, each reading and writing files.

    hybridlab list {variants,scales}
    hybridlab prepare-data --scale S --out DATA_DIR [hydra overrides...]
    hybridlab train        --scale S --variant V --seed N --data DATA_DIR --out RUN_DIR [overrides...]
    hybridlab evaluate     --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out eval.csv
    hybridlab analyze      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out heads.csv
    hybridlab aggregate    --kind {eval,heads,train} --out TABLE.csv INPUTS...
    hybridlab figures      --scale S --tables TABLE_DIR --out PAPER_DIR

User errors (a bad config value, a missing or corrupt file) print one line naming the problem and exit 2.
Heavy imports (torch) happen inside the subcommands, so `figures` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path


def _run_args(p: argparse.ArgumentParser, run: bool = True) -> None:
    p.add_argument("--scale", default="smoke")
    if run:
        p.add_argument("--variant", required=True)
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.steps=50")


def _cfg(a):
    from hybridlab.config import load_config

    return load_config(a.scale, getattr(a, "variant", "full"), getattr(a, "seed", 0), a.overrides)


def cmd_list(a) -> None:
    from hybridlab.config import scale_names, variant_names

    print("\n".join(variant_names() if a.what == "variants" else scale_names()))


def cmd_prepare(a) -> None:
    from hybridlab.data.prepare import prepare

    m = prepare(_cfg(a), a.out)
    print(f"data: {m['tokens']} tokens, vocab {m['vocab_size']} -> {a.out}")


def cmd_train(a) -> None:
    from hybridlab.train.run import train

    s = train(_cfg(a), a.data, a.out)
    print(f"trained {a.variant} seed {a.seed}: {s['steps']} steps, final loss {s['final_loss']:.4f}")


def _write(a, df) -> None:
    from hybridlab.io import write_table

    write_table(a.out, df)
    print(f"{len(df)} rows -> {a.out}")


def cmd_evaluate(a) -> None:
    from hybridlab.evals.evaluate import evaluate_run

    _write(a, evaluate_run(_cfg(a), a.data, a.run))


def cmd_analyze(a) -> None:
    from hybridlab.analysis.retrieval import analyze_run

    _write(a, analyze_run(_cfg(a), a.data, a.run))


TABLE_COLUMNS = {
    "eval": ("variant", "seed", "step", "tokens", "metric", "length", "value"),
    "heads": ("variant", "seed", "step", "tokens", "layer", "head", "role", "metric", "length", "value"),
    "train": ("step", "tokens", "loss", "lr", "tokens_per_s", "mfu", "peak_mem_gb"),
}


def cmd_aggregate(a) -> None:
    import pandas as pd

    from hybridlab.io import read_table

    frames = []
    for path in a.inputs:
        df = read_table(path, TABLE_COLUMNS[a.kind])
        if a.kind == "train":  # metrics.csv lives in runs/<variant>/seed<N>/
            run = Path(path).parent
            df.insert(0, "seed", int(run.name.removeprefix("seed")))
            df.insert(0, "variant", run.parent.name)
        frames.append(df)
    _write(a, pd.concat(frames, ignore_index=True))


def cmd_describe(a) -> None:
    from hybridlab.config import load_config, scale_plan
    from hybridlab.io import write_json
    from hybridlab.models.layout import build_layout

    plan = scale_plan(a.scale, a.overrides)
    layouts = {}
    for v in plan["variants"]:
        cfg = load_config(a.scale, v, 0, a.overrides)
        layouts[v] = [f"{s.kind}:{s.role}:" + ",".join("full" if w is None else str(w) for w in s.windows)
                      for s in build_layout(cfg.variant, cfg.model, cfg.scale)]
    write_json(a.out, {**plan, "layouts": layouts})
    print(f"scale {a.scale} -> {a.out}")


def cmd_figures(a) -> None:
    from hybridlab.figures.build import build_all

    for path in build_all(a.scale, a.tables, a.out):
        print(path)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hybridlab", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("list", help="list variants or scales")
    p.add_argument("what", choices=["variants", "scales"])
    p.set_defaults(fn=cmd_list)
    p = sub.add_parser("prepare-data", help="generate and pack the corpus and eval sets")
    _run_args(p, run=False)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_prepare)
    for name, fn, help_ in (("train", cmd_train, "train one run"),
                            ("evaluate", cmd_evaluate, "evaluate every checkpoint of a run"),
                            ("analyze", cmd_analyze, "retrieval-head scores of every checkpoint")):
        p = sub.add_parser(name, help=help_)
        _run_args(p)
        p.add_argument("--data", required=True)
        if name == "train":
            p.add_argument("--out", required=True, help="run folder")
        else:
            p.add_argument("--run", required=True)
            p.add_argument("--out", required=True, help="output CSV")
        p.set_defaults(fn=fn)
    p = sub.add_parser("aggregate", help="concatenate per-run tables")
    p.add_argument("--kind", choices=sorted(TABLE_COLUMNS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+")
    p.set_defaults(fn=cmd_aggregate)
    p = sub.add_parser("describe", help="write the scale's plan (variants, seeds, context, layouts) as JSON")
    _run_args(p, run=False)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_describe)
    p = sub.add_parser("figures", help="every figure and the report from result tables (no torch)")
    p.add_argument("--scale", default="smoke")
    p.add_argument("--tables", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hybridlab.config import ConfigError
    from hybridlab.io import CorruptFileError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    try:
        args.fn(args)
    except (ConfigError, CorruptFileError, FileNotFoundError) as e:
        print(f"hybridlab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
