"""Command-line entry point: one subcommand per pipeline stage, each reading and writing files.

    hybridlab list {variants,scales}
    hybridlab prepare-data --scale S --out DATA_DIR [--workers N] [--tokenizer-only | --group CORPUS/G] [overrides...]
    hybridlab train        --scale S --variant V --seed N --data DATA_DIR --out RUN_DIR [overrides...]
    hybridlab train-group  --scale S --variant V --seeds N [N ...] --data DATA_DIR --outs DIR [DIR ...]
    hybridlab evaluate-group --scale S --variant V --seeds N [N ...] --data DATA_DIR --runs DIR [DIR ...]
    hybridlab train-branch --scale S --variant V --seed N --data DATA_DIR --stable RUN_DIR --budget K --out DIR
    hybridlab evaluate     --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out eval.csv
    hybridlab receptive    --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out receptive.csv
    hybridlab analyze      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out heads.csv
                           [--trajectory trajectory.csv] [--traced traced.csv] [--onset onset.csv]
                           [--masking masking.csv]
    hybridlab probe        --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out probe.csv
    hybridlab gradinf      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out gradinf.csv
    hybridlab lm-eval      --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out lmeval.csv
    hybridlab export-hf    --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out HF_DIR [--checkpoint P]
    hybridlab aggregate    --kind {eval,heads,train,...} --out TABLE.csv INPUTS...
    hybridlab scaling-fit  --table TABLE [TABLE...] --out fit.csv [--draws-out draws.csv] [--procedure released]
                           [--metric M] [--forms F,F] [--alpha-bounds L,H] [--bootstrap N] [--log-values]
    hybridlab figures      --scale S --tables TABLE_DIR --out PAPER_DIR [--claims CLAIMS.yaml]

The per-run stages also take Hugging Face models as --run: a folder with a config.json (one checkpoint) or a
folder of such folders (a trajectory); see evals/checkpoints.py.

User errors (a bad config value, a missing or corrupt file) print one line naming the problem and exit 2.
Heavy imports (torch) happen inside the subcommands, so `figures` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hybridlab.analysis.schemas import OPTIONAL_TABLES, TABLES, TRAIN_COLUMNS


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
    from hybridlab.config import ConfigError
    from hybridlab.data import prepare as data

    cfg = _cfg(a)
    if a.tokenizer_only or a.group:  # one step of real text, as the workflow's data jobs run it
        if cfg.data.source == "synthetic":
            raise ConfigError("data.source", "synthetic", "text (--tokenizer-only and --group prepare real text)")
        data.prepare_tokenizer(cfg, a.out)
        if a.group:
            data.prepare_groups(cfg, a.out, a.workers, a.group)
        print(f"data: {'groups ' + ', '.join(a.group) if a.group else 'tokenizer'} -> {a.out}")
        return
    m = data.prepare(cfg, a.out, a.workers)
    print(f"data: {m['tokens']} tokens, vocab {m['vocab_size']} -> {a.out}")


def cmd_train(a) -> None:
    from hybridlab.train.run import train

    s = train(_cfg(a), a.data, a.out)
    if "final_loss" in s:  # a finished run, on rank 0
        print(f"trained {a.variant} seed {a.seed}: {s['steps']} steps, final loss {s['final_loss']:.4f}")


def _group_cfgs(a, folders: list[str], flag: str) -> list:
    """One composed config per seed of a group command, after checking one distinct seed per folder."""
    from hybridlab.config import ConfigError, load_config

    if len(a.seeds) != len(folders) or len(set(a.seeds)) != len(a.seeds):
        raise ConfigError("--seeds", a.seeds, f"distinct seeds, one per folder of {flag} ({len(folders)} given)")
    return [load_config(a.scale, a.variant, seed, a.overrides, a.size) for seed in a.seeds]


def cmd_train_group(a) -> None:
    from hybridlab.train.run import train_group

    for seed, s in zip(a.seeds, train_group(_group_cfgs(a, a.outs, "--outs"), a.data, a.outs), strict=True):
        if "final_loss" in s:
            print(f"trained {a.variant} seed {seed}: {s['steps']} steps, final loss {s['final_loss']:.4f}")


def cmd_evaluate_group(a) -> None:
    from hybridlab.evals.group import evaluate_group

    for seed, paths in zip(a.seeds, evaluate_group(_group_cfgs(a, a.runs, "--runs"), a.data, a.runs), strict=True):
        print(f"evaluated {a.variant} seed {seed}: {len(paths)} tables -> {Path(paths['eval']).parent}")


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


def cmd_lm_eval(a) -> None:
    from hybridlab.evals.harness import lm_eval_run

    _write(a, lm_eval_run(_cfg(a), a.data, a.run))


def cmd_export_hf(a) -> None:
    from hybridlab.export.hf import export_checkpoint

    out = export_checkpoint(_cfg(a), a.data, a.run, a.out, a.checkpoint)
    print(f"exported {a.variant} seed {a.seed} -> {out} (AutoModelForCausalLM, trust_remote_code=True)")


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


ANALYZE_EXTRA = ("trajectory", "traced", "onset", "masking")  # tables `analyze` writes besides heads.csv, when asked
# The per-run stage commands that read a data folder and a run folder and write one table (--out).
RUN_STAGES = (
    ("evaluate", cmd_evaluate, "evaluate every checkpoint of a run (eval.csv)"),
    ("receptive", cmd_receptive, "losses with full or efficient layers limited to W tokens (receptive.csv)"),
    ("analyze", cmd_analyze, "retrieval heads, trajectories, onset and head masking (heads.csv, ...)"),
    ("probe", cmd_probe, "layer-wise logistic-regression probes on the residual stream (probe.csv)"),
    ("gradinf", cmd_gradinf, "gradient influence G(d) by distance (gradinf.csv)"),
    ("lm-eval", cmd_lm_eval, "lm-evaluation-harness tasks of eval.lm_eval.run (lmeval.csv)"),
)
# Every table a DAG always makes, and those it makes when configured (lmeval); `aggregate` takes both.
TABLE_COLUMNS = {
    **TABLES,
    "train": TRAIN_COLUMNS,
}
AGGREGATE_COLUMNS = {**TABLE_COLUMNS, **OPTIONAL_TABLES}


def cmd_aggregate(a) -> None:
    import pandas as pd

    from hybridlab.io import read_table

    frames = []
    for path in a.inputs:
        df = read_table(path, AGGREGATE_COLUMNS[a.kind])
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
                cfg.data.tokenizer.vocab_size)
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
            n_seeds = int((plan.get("seed_counts") or {}).get(v, len(plan["seeds"])))  # scale.seed_counts
            runs.append({"size": size, "variant": v, "non_embedding_params": n, "steps": int(t.steps),
                         "tokens": int(t.steps) * int(t.batch_size) * int(cfg.scale.context), "seeds": n_seeds,
                         "train_flops": flops, "gpu_hours": flops / (mfu * peak) / 3600 * n_seeds})
    write_json(a.out, {**plan, "layouts": layouts, "runs": runs})
    total = sum(r["gpu_hours"] for r in runs)
    print(f"scale {a.scale}: {sum(r['seeds'] for r in runs)} training runs, about {total:,.2f} GPU-hours "
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
    import json

    import pandas as pd

    from hybridlab.train.benchmark import COLUMNS, benchmark, concurrent_run, scale_vocab

    vocab = a.vocab or (32000 if a.scale == "paper" else scale_vocab(a.scale))
    if a.child_json:  # one child of a concurrent run: its row as JSON, nothing else
        row = benchmark(a.variants[0], a.sizes[0], a.context, a.batch, a.steps, vocab=vocab, scale=a.scale,
                        compile=a.compile, overrides=tuple(a.set), barrier=a.barrier)
        Path(a.child_json).write_text(json.dumps(row))
        return
    rows = []
    for size in a.sizes:
        for variant in a.variants:
            if a.concurrent > 1:
                args = ["--variants", variant, "--sizes", size, "--context", str(a.context), "--batch",
                        str(a.batch), "--steps", str(a.steps), "--scale", a.scale, "--vocab", str(vocab),
                        *(["--compile"] if a.compile else []), "--set", *a.set]
                work = Path(a.out or "benchmark.csv").with_suffix("") / f"{size}_{variant}_x{a.concurrent}"
                row = concurrent_run(a.concurrent, args, work)
            else:
                profile = (Path(a.out).with_name(f"{Path(a.out).stem}_profile_{size}_{variant}.csv")
                           if a.profile and a.out else None)
                row = benchmark(variant, size, a.context, a.batch, a.steps, vocab=vocab, scale=a.scale,
                                compile=a.compile, overrides=tuple(a.set), profile=profile)
            rows.append(row)
            print({k: row.get(k) for k in ("variant", "size", "concurrent", "tokens_per_s", "mfu", "peak_mem_gb",
                                           "status")}, flush=True)
            if a.out:  # after every row: a run cut short keeps what it measured
                _write(a, pd.DataFrame(rows, columns=list(COLUMNS)))
    print(pd.DataFrame(rows, columns=list(COLUMNS)).drop(columns=["versions"]).to_markdown(index=False,
                                                                                        floatfmt=".3g"))


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
    p.add_argument("--workers", type=int, default=1,
                   help="processes generating the synthetic corpus or tokenizing real text (the output does not "
                        "depend on it)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--tokenizer-only", action="store_true", help="real text: fetch or train the tokenizer only")
    step.add_argument("--group", action="append", metavar="CORPUS/G",
                      help="real text: prepare this group only (repeatable), e.g. long/00003")
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
    p = sub.add_parser("train-group", help="several seeds of one variant, one after another in one process "
                       "(one compiled model object; each run equals its own `train`)")
    _run_args(p, run=False)
    p.add_argument("--variant", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--outs", nargs="+", required=True,
                   help="run folders, one per seed, in the order of --seeds (Hydra overrides go before this option)")
    p.set_defaults(fn=cmd_train_group)
    p = sub.add_parser("export-hf", help="a run's checkpoint as a Hugging Face model folder (config, safetensors, "
                       "model code, tokenizer)")
    _run_args(p)
    p.add_argument("--data", required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--out", required=True, help="the model folder to write")
    p.add_argument("--checkpoint", help="a ckpt/tokens_*.pt of the run (default: its final one)")
    p.set_defaults(fn=cmd_export_hf)
    p = sub.add_parser("evaluate-group", help="every per-run evaluation and analysis (evaluate, receptive, "
                       "analyze, probe, gradinf) of several seeds of one variant, in one process")
    _run_args(p, run=False)
    p.add_argument("--variant", required=True)
    p.add_argument("--seeds", type=int, nargs="+", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--runs", nargs="+", required=True,
                   help="run folders, one per seed, in the order of --seeds (Hydra overrides go before this option)")
    p.set_defaults(fn=cmd_evaluate_group)
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
    p.add_argument("--kind", choices=sorted(AGGREGATE_COLUMNS), required=True)
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
    p.add_argument("--scale", default="paper", help="the scale whose configs (and vocabulary) the rows use")
    p.add_argument("--vocab", type=int, default=None,
                   help="vocabulary size (default: 32000 at the paper scale, else the scale's synthetic vocabulary)")
    p.add_argument("--concurrent", type=int, default=1,
                   help="N processes of each row at once on this device; tokens/s is their total")
    p.add_argument("--profile", action="store_true", help="also write a kernel-time table per row beside --out")
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
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
