"""Command-line entry point: one subcommand per pipeline stage, each reading and writing files.

    hybridlab list {variants,scales}
    hybridlab prepare-data --scale S --out DATA_DIR [hydra overrides...]
    hybridlab train        --scale S --variant V --seed N --data DATA_DIR --out RUN_DIR [overrides...]
    hybridlab train-branch --scale S --variant V --seed N --data DATA_DIR --stable RUN_DIR --budget K --out DIR
    hybridlab evaluate     --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out eval.csv
    hybridlab receptive    --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out receptive.csv
    hybridlab analyze      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out heads.csv
                           [--trajectory trajectory.csv] [--onset onset.csv] [--masking masking.csv]
    hybridlab probe        --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out probe.csv
    hybridlab gradinf      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out gradinf.csv
    hybridlab aggregate    --kind {eval,heads,train,...} --out TABLE.csv INPUTS...
    hybridlab scaling-fit  --table TABLE [TABLE...] --out fit.csv [--draws-out draws.csv] [--procedure released]
                           [--metric M] [--forms F,F] [--alpha-bounds L,H] [--bootstrap N] [--log-values]
    hybridlab figures      --scale S --tables TABLE_DIR --out PAPER_DIR [--claims CLAIMS.yaml]

User errors (a bad config value, a missing or corrupt file) print one line naming the problem and exit 2.
Heavy imports (torch) happen inside the subcommands, so `figures` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hybridlab.analysis.schemas import TABLES, TRAIN_COLUMNS


def _run_args(p: argparse.ArgumentParser, run: bool = True) -> None:
    p.add_argument("--scale", default="smoke")
    p.add_argument("--size", default=None, help="model size (conf/model/); default: the scale's")
    if run:
        p.add_argument("--variant", required=True)
        p.add_argument("--seed", type=int, default=0)
    p.add_argument("overrides", nargs="*", help="Hydra overrides, e.g. train.steps=50")


def _cfg(a):
    from hybridlab.config import load_config

    return load_config(a.scale, getattr(a, "variant", "full"), getattr(a, "seed", 0), a.overrides, a.size)


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
    if "final_loss" in s:  # a finished run, on rank 0
        print(f"trained {a.variant} seed {a.seed}: {s['steps']} steps, final loss {s['final_loss']:.4f}")


def cmd_train_branch(a) -> None:
    from hybridlab.train.run import train_branch

    s = train_branch(_cfg(a), a.data, a.stable, a.budget, a.out)
    if "tokens" in s:  # rank 0
        print(f"branch k={a.budget} of {a.stable}: {s['steps']} steps, {s['tokens']} tokens")


def _write(a, df, path: str | None = None) -> None:
    from hybridlab.io import write_table

    path = path or a.out
    write_table(path, df)
    print(f"{len(df)} rows -> {path}")


def cmd_evaluate(a) -> None:
    from hybridlab.evals.evaluate import evaluate_run

    _write(a, evaluate_run(_cfg(a), a.data, a.run))


def cmd_receptive(a) -> None:
    from hybridlab.analysis.receptive import receptive_run

    _write(a, receptive_run(_cfg(a), a.data, a.run))


def cmd_analyze(a) -> None:
    from hybridlab.analysis.analyze import analyze_run

    tables = analyze_run(_cfg(a), a.data, a.run)
    _write(a, tables["heads"])
    for kind in ANALYZE_EXTRA:
        if getattr(a, kind):
            _write(a, tables[kind], getattr(a, kind))


def cmd_probe(a) -> None:
    from hybridlab.analysis.probe import probe_run

    _write(a, probe_run(_cfg(a), a.data, a.run))


def cmd_gradinf(a) -> None:
    from hybridlab.analysis.gradinf import gradinf_run

    _write(a, gradinf_run(_cfg(a), a.data, a.run))


def cmd_scaling_fit(a) -> None:
    import pandas as pd

    from hybridlab.analysis.scaling import AUTO
    from hybridlab.analysis.scaling_input import load_scaling_input
    from hybridlab.analysis.scaling_uncertainty import describe_fits, fit_table
    from hybridlab.config import ConfigError

    try:
        if a.alpha_bounds in ("none", AUTO):
            bounds = None if a.alpha_bounds == "none" else AUTO
        else:
            bounds = tuple(float(x) for x in a.alpha_bounds.split(","))
            if len(bounds) != 2:
                raise ValueError
    except ValueError:
        raise ConfigError("--alpha-bounds", a.alpha_bounds, f"'LOW,HIGH' (e.g. 0.2,0.3), '{AUTO}' or 'none'") from None
    for flag, value, lowest in (("--bootstrap", a.bootstrap, 0), ("--profile-points", a.profile_points, 0)):
        if value < lowest or value == 1:
            raise ConfigError(flag, value, "0 (off) or an integer >= 2")
    try:
        table = pd.concat([load_scaling_input(p, metric=a.metric, length=a.length, scale=a.scale,
                                              variant=a.variant, log_values=a.log_values, overrides=a.overrides)
                           for p in a.table], ignore_index=True)
        fit = fit_table(table, forms=tuple(a.forms.split(",")), alpha_bounds=bounds, procedure=a.procedure,
                        holdout=None if a.holdout == "none" else a.holdout, n_boot=a.bootstrap,
                        resample=a.resample, seed=a.seed, profile_points=a.profile_points)
    except ValueError as e:  # the table's content does not allow the fit: say why, like the other user errors
        print(f"hybridlab scaling-fit: error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print("\n".join(describe_fits(fit.summary)))
    _write(a, fit.summary)
    if a.draws_out:
        _write(a, fit.draws, a.draws_out)


ANALYZE_EXTRA = ("trajectory", "onset", "masking")  # tables `analyze` writes besides heads.csv, when asked
# The per-run stage commands that read a data folder and a run folder and write one table (--out).
RUN_STAGES = (
    ("evaluate", cmd_evaluate, "evaluate every checkpoint of a run (eval.csv)"),
    ("receptive", cmd_receptive, "losses with full or efficient layers limited to W tokens (receptive.csv)"),
    ("analyze", cmd_analyze, "retrieval heads, trajectories, onset and head masking (heads.csv, ...)"),
    ("probe", cmd_probe, "layer-wise logistic-regression probes on the residual stream (probe.csv)"),
    ("gradinf", cmd_gradinf, "gradient influence G(d) by distance (gradinf.csv)"),
)
TABLE_COLUMNS = {
    **TABLES,
    "train": TRAIN_COLUMNS,
}


def cmd_aggregate(a) -> None:
    import pandas as pd

    from hybridlab.io import read_table

    frames = []
    for path in a.inputs:
        df = read_table(path, TABLE_COLUMNS[a.kind])
        run = Path(path).parent  # per-run tables live in runs/<size>/<variant>/seed<N>/[budget<k>/]
        if run.name.startswith("budget"):
            df.insert(0, "budget_k", float(run.name.removeprefix("budget")))
            run = run.parent
        if a.kind == "train":
            df.insert(0, "seed", int(run.name.removeprefix("seed")))
            df.insert(0, "variant", run.parent.name)
        df.insert(0, "size", run.parent.parent.name)
        frames.append(df)
    _write(a, pd.concat(frames, ignore_index=True))


def cmd_describe(a) -> None:
    """The scale's plan, each variant's layout, and per (size, variant) the parameter count, FLOPs, steps and
    an estimate of GPU-hours from the per-module FLOPs at the scale's assumed MFU."""
    import torch

    from hybridlab.config import load_config, scale_plan
    from hybridlab.data.synthetic import CorpusSpec
    from hybridlab.io import write_json
    from hybridlab.models import build_model
    from hybridlab.train.run import branch_plan, resolve_budget

    plan = scale_plan(a.scale, a.overrides)
    layouts, runs = {}, []
    for size in plan["sizes"]:
        for v in plan["variants"]:
            cfg = load_config(a.scale, v, 0, a.overrides, size)
            vocab = CorpusSpec.from_config(cfg.data).vocab.size if cfg.data.source == "synthetic" else int(
                cfg.data.vocab_size)
            with torch.device("meta"):
                model = build_model(cfg, vocab)
            layouts[v] = [f"{s.kind}:{s.role}:" + ",".join("full" if w is None else str(w) for w in s.windows)
                          for s in model.layout]
            n = model.non_embedding_params()
            cfg = resolve_budget(cfg, n)
            t = cfg.train
            # The stable run plus the decay steps of every budget branch below its own end (WSD grid).
            steps = int(t.steps) + sum(b.decay_steps for b in branch_plan(cfg, n) if b.end_step < int(t.steps))
            flops = 3 * model.flops_per_sequence(int(cfg.scale.context)) * int(t.batch_size) * steps
            mfu, peak = plan.get("assumed_mfu", 0.35), plan.get("peak_tflops", 989) * 1e12
            runs.append({"size": size, "variant": v, "non_embedding_params": n, "steps": int(t.steps),
                         "tokens": int(t.steps) * int(t.batch_size) * int(cfg.scale.context),
                         "train_flops": flops, "gpu_hours": flops / (mfu * peak) / 3600 * len(plan["seeds"])})
    write_json(a.out, {**plan, "layouts": layouts, "runs": runs})
    total = sum(r["gpu_hours"] for r in runs)
    print(f"scale {a.scale}: {len(runs) * len(plan['seeds'])} training runs, about {total:,.1f} GPU-hours "
          f"at {plan.get('assumed_mfu', 0.35):.0%} MFU -> {a.out}")


def cmd_report_index(a) -> None:
    """paper/report.md: one line per scale report under the paper folder, linking to it."""
    from hybridlab.io import write_bytes

    paper = Path(a.paper)
    reports = sorted(paper.glob("*/report.md"))
    lines = ["# Replication reports", "", "Regenerated by hybridlab; one report per scale run here:", ""]
    lines += [f"- [{r.parent.name}]({r.parent.name}/report.md) ([HTML]({r.parent.name}/report.html))"
              for r in reports]
    write_bytes(paper / "report.md", ("\n".join(lines) + "\n").encode())
    print(f"{len(reports)} reports -> {paper / 'report.md'}")


def cmd_benchmark(a) -> None:
    import pandas as pd

    from hybridlab.train.benchmark import COLUMNS, benchmark

    rows = []
    for size in a.sizes:
        for variant in a.variants:
            row = benchmark(variant, size, a.context, a.batch, a.steps, compile=a.compile, overrides=tuple(a.set))
            rows.append(row)
            print({k: row.get(k) for k in ("variant", "size", "tokens_per_s", "mfu", "peak_mem_gb", "status")},
                  flush=True)
            if a.out:  # after every row: a run cut short keeps what it measured
                _write(a, pd.DataFrame(rows, columns=list(COLUMNS)))
    print(pd.DataFrame(rows, columns=list(COLUMNS)).to_markdown(index=False, floatfmt=".3g"))


def cmd_figures(a) -> None:
    from hybridlab.figures.build import build_all

    for path in build_all(a.scale, a.tables, a.out, a.claims):
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
    for name, fn, help_ in (("train", cmd_train, "train one run"), *RUN_STAGES):
        p = sub.add_parser(name, help=help_)
        _run_args(p)
        p.add_argument("--data", required=True)
        if name == "train":
            p.add_argument("--out", required=True, help="run folder")
        else:
            p.add_argument("--run", required=True)
            p.add_argument("--out", required=True, help="output CSV")
        if name == "analyze":
            for kind in ANALYZE_EXTRA:
                p.add_argument(f"--{kind}", help=f"also write the {kind} table here")
        p.set_defaults(fn=fn)
    p = sub.add_parser("train-branch", help="one WSD decay branch of the scaling grid, forked from a stable run")
    _run_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--stable", required=True, help="the stable run's folder")
    p.add_argument("--budget", type=float, required=True, help="k of the budget D = k*N (one of train.budgets_k)")
    p.add_argument("--out", required=True, help="branch folder")
    p.set_defaults(fn=cmd_train_branch)
    p = sub.add_parser("scaling-fit", help="fit L(N, D) = B/N^alpha + C/D^beta [+ E] to scaling tables")
    p.add_argument("--table", nargs="+", required=True,
                   help="TSV/CSV of (size, N, D, loss), the authors' released TSV (model_size, token_multiplier, "
                        "n, loss), a tidy table with N, or the pipeline's eval.csv / budgets.csv")
    p.add_argument("--out", required=True, help="fit CSV: (variant, form, kind, name, value)")
    p.add_argument("--metric", default="log_longppl", help="metric of tidy/eval tables (default log_longppl)")
    p.add_argument("--length", type=int, help="eval tables: the length, when the metric has several")
    p.add_argument("--scale", help="eval tables: their scale (default: from the path results/<scale>/...)")
    p.add_argument("--variant", help="fit only this variant")
    p.add_argument("--forms", default="no_constant,constant", help="comma-separated: no_constant, constant")
    p.add_argument("--procedure", choices=["default", "released"], default="default",
                   help="default: analytic-gradient L-BFGS-B, tight tolerances; released: the authors' "
                        "fit_scaling.py procedure (its grid, finite differences, tolerances, refinement)")
    p.add_argument("--alpha-bounds", default="auto",
                   help="'LOW,HIGH', 'none' (free alpha >= 0) or 'auto' (default: 0.2,0.3; the released "
                        "procedure's constant form leaves alpha free, as the release does)")
    p.add_argument("--holdout", choices=["largest", "none"], default="largest",
                   help="largest: hold out every row of the largest N (the authors' --validate)")
    p.add_argument("--log-values", action="store_true",
                   help="values are LongPPL: fit their log (the release's --longppl; its swa128_longppl.tsv needs it)")
    p.add_argument("--bootstrap", type=int, default=200, help="bootstrap refits for the intervals (0: none)")
    p.add_argument("--resample", choices=["points", "sizes"], default="points",
                   help="what the bootstrap resamples: rows, or whole model sizes")
    p.add_argument("--seed", type=int, default=0, help="the bootstrap's random seed")
    p.add_argument("--profile-points", type=int, default=21, help="alpha values of the profile (0: none)")
    p.add_argument("--draws-out", help="also write the bootstrap draws (the band of Fig. 2) to this CSV")
    p.add_argument("overrides", nargs="*", help="eval tables: the scale's Hydra overrides (they may change N)")
    p.set_defaults(fn=cmd_scaling_fit)
    p = sub.add_parser("aggregate", help="concatenate per-run tables")
    p.add_argument("--kind", choices=sorted(TABLE_COLUMNS), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("inputs", nargs="+")
    p.set_defaults(fn=cmd_aggregate)
    p = sub.add_parser("describe", help="write the scale's plan (variants, seeds, context, layouts) as JSON")
    _run_args(p, run=False)
    p.add_argument("--out", required=True)
    p.set_defaults(fn=cmd_describe)
    p = sub.add_parser("report-index", help="paper/report.md linking every scale's report")
    p.add_argument("--paper", default="paper")
    p.set_defaults(fn=cmd_report_index)
    p = sub.add_parser("benchmark", help="training throughput (tokens/s, MFU, memory) on this device")
    p.add_argument("--variants", nargs="+", default=["full", "swa128"])
    p.add_argument("--sizes", nargs="+", default=["S1"])
    p.add_argument("--context", type=int, default=4096)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="Hydra overrides for every row, e.g. model.mixer_backend=torch")
    p.add_argument("--out", default=None, help="CSV to write")
    p.set_defaults(fn=cmd_benchmark)
    p = sub.add_parser("figures", help="every figure, table and the report from result tables (no torch)")
    p.add_argument("--scale", default="smoke")
    p.add_argument("--tables", required=True, help="a results tables folder (info.json and the CSV tables)")
    p.add_argument("--out", required=True, help="paper folder: figures/, captions/, tables/, report.md/.html")
    p.add_argument("--claims", default=None, help="claim thresholds YAML (default: conf/claims/default.yaml)")
    p.set_defaults(fn=cmd_figures)
    return parser


def main(argv: list[str] | None = None) -> int:
    from hybridlab.config import ConfigError
    from hybridlab.io import CorruptFileError

    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    # A folder a command reads must exist: name the flag before any work starts.
    for flag, made_by in (("data", "prepare-data"), ("run", "train"), ("tables", "aggregate")):
        path = getattr(args, flag, None)
        if path is not None and not Path(path).is_dir():
            print(f"hybridlab {args.cmd}: error: --{flag}: got {path!r}; allowed: an existing folder written by "
                  f"`hybridlab {made_by}`", file=sys.stderr)
            return 2
    try:
        args.fn(args)
    except (ConfigError, CorruptFileError, OSError) as e:  # user errors; a missing, unreadable or full disk
        print(f"hybridlab {args.cmd}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"hybridlab {args.cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit as e:  # Lightning turns SIGTERM into SystemExit(None): without this the exit code is 0
        if e.code not in (None, 0):
            raise
        print(f"hybridlab {args.cmd}: terminated before finishing; run the same command again to resume",
              file=sys.stderr)
        return 143
    return 0


if __name__ == "__main__":
    sys.exit(main())
