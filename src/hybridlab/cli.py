"""Command-line entry point: one subcommand per pipeline stage, each reading and writing files.

    hybridlab list {variants,scales,sizes,keys}
    hybridlab describe     --scale S [--out info.json] [overrides...]
    hybridlab prepare-data --scale S --out DATA_DIR [--workers N] [--tokenizer-only | --group CORPUS/G] [overrides...]
    hybridlab train        --scale S --variant V --seed N --data DATA_DIR --out RUN_DIR [overrides...]
    hybridlab train-group  --scale S --variant V --seeds N [N ...] --data DATA_DIR --outs DIR [DIR ...]
    hybridlab train-branch --scale S --variant V --seed N --data DATA_DIR --stable RUN_DIR --budget K [K ...]
                           --out DIR [DIR ...]
    hybridlab evaluate     --scale S --variant V --seed N --data DATA_DIR --run RUN_DIR --out eval.csv
    hybridlab evaluate-group --scale S --variant V --seeds N [N ...] --data DATA_DIR --runs DIR [DIR ...]
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
    hybridlab report-index --paper PAPER_DIR
    hybridlab benchmark    [--variants V ...] [--sizes S ...] [--context N] [--out bench.csv]

The per-run stages also take Hugging Face models as --run: a folder with a config.json (one checkpoint) or a
folder of such folders (a trajectory); see evals/checkpoints.py. A table output may be `--out -` (CSV on
standard output).

User errors (a bad config value, a missing or corrupt file) print one line naming the problem and exit 2.
Heavy imports (torch) happen inside the subcommands, so `figures` never loads torch.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from hybridlab.analysis.schemas import OPTIONAL_TABLES, TABLES, TRAIN_COLUMNS

STDOUT = "-"  # `--out -`: a table or the plan on standard output


class _Help(argparse.RawDescriptionHelpFormatter):
    """Examples keep their lines; every option with a default shows it."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.option_strings and not action.required and "%(default)" not in text
                and action.default is not None and action.default is not False
                and action.default not in ([], argparse.SUPPRESS)):
            text += " (default: %(default)s)"
        return text


def _key_help(key: str) -> str:
    """A flag's help text from the one definition of the config key it sets (hybridlab.settings), without the
    note saying which flag sets it (this one)."""
    from hybridlab.settings import SETTINGS

    return SETTINGS[key].doc.split(" (set by --")[0]


def _scale_arg(p: argparse.ArgumentParser, default: str | None = "smoke", what: str = "") -> None:
    from hybridlab.config import scale_names
    from hybridlab.config_doc import scale_order

    names = ", ".join(sorted(scale_names(), key=scale_order))
    p.add_argument("--scale", default=default, metavar="SCALE",
                   help=what or f"the scale preset (conf/scale/): {names}; `hybridlab list scales`")


def _variant_arg(p: argparse.ArgumentParser) -> None:
    from hybridlab.config import variant_labels

    labels = ", ".join(f"{v} ({label})" for v, label in variant_labels().items())
    p.add_argument("--variant", required=True, metavar="VARIANT", help=f"the hybrid variant (conf/variant/): {labels}")


def _run_args(p: argparse.ArgumentParser, run: bool = True) -> None:
    from hybridlab.config import model_names

    _scale_arg(p)
    p.add_argument("--size", default=None, metavar="SIZE",
                   help=f"model size (conf/model/): {', '.join(model_names())}; default: the scale's "
                        "(the first of scale.sizes)")
    if run:
        _variant_arg(p)
        p.add_argument("--seed", type=int, default=0, help=_key_help("seed"))
    _overrides_arg(p)


def _overrides_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="config overrides after the flags, e.g. train.steps=50 (every key, its default and what it "
                        "allows: `hybridlab list keys`, docs/config.md)")


def _data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", required=True, metavar="DATA_DIR",
                   help="a data folder written by `hybridlab prepare-data` (same scale and data settings)")


def _run_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, metavar="RUN_DIR",
                   help="a run folder written by `hybridlab train` (or a Hugging Face model folder)")


def _cfg(a):
    from hybridlab.config import load_config

    return load_config(a.scale, getattr(a, "variant", "full"), getattr(a, "seed", 0), a.overrides, a.size)


def _checked_cfg(a):
    """The config of a command that reads a data folder and a run: both checked against it before any work
    (hybridlab.identity); the tables it writes will carry what made them (`a.made_by`)."""
    from hybridlab.identity import check_evaluation

    cfg = _cfg(a)
    a.made_by = check_evaluation(cfg, a.data, a.run)
    return cfg


def cmd_list(a) -> None:
    from omegaconf import OmegaConf

    from hybridlab.config import CONF_DIR, load_config, model_names, scale_names, variant_labels
    from hybridlab.config_doc import scale_order

    if a.what == "variants":
        rows = [(v, label) for v, label in variant_labels().items()]
    elif a.what == "sizes":
        rows = []
        for size in model_names():
            m = OmegaConf.load(CONF_DIR / "model" / f"{size}.yaml")
            rows.append((size, f"d_model {m.d_model}, {m.n_layers} layers, {m.n_heads} heads of {m.head_dim}, "
                               f"d_ff {m.d_ff}"))
    elif a.what == "scales":
        rows = []
        for scale in sorted(scale_names(), key=scale_order):
            sc = load_config(scale).scale
            seeds = f"{len(sc.seeds)} seed{'s' * (len(sc.seeds) > 1)}"
            rows.append((scale, f"context {sc.context}, {len(sc.variants)} variants x {seeds}, sizes "
                                f"{', '.join(sc.get('sizes') or [])}, accelerator {sc.accelerator}"))
    else:
        from hybridlab.config_doc import reference_rows

        for title, section in reference_rows():
            print(f"# {title}")
            for r in section:
                print(f"{r.key} = {r.default}\n    {r.doc}\n    allowed: {r.allowed}"
                      + (f"\n    set by scales: {r.set_by}" if r.set_by else ""))
        return
    width = max(len(name) for name, _ in rows)
    print("\n".join(f"{name:<{width}}  {text}" for name, text in rows))


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
    splits = ", ".join(f"{split} {n:,} sequences ({m['tokens'][split]:,} tokens)"
                       for split, n in m["sequences"].items())
    print(f"data: {splits}; vocabulary {m['vocab_size']:,} -> {a.out}")


def cmd_train(a) -> None:
    from hybridlab.train.run import train

    s = train(_cfg(a), a.data, a.out, allow=tuple(a.allow_change or ()))
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
    """One or several decay branches of one stable run, one after another in this process (each branch a config
    of its own, as its own job would load it; the compiled kernels of the first are reused by the others)."""
    from hybridlab.config import ConfigError
    from hybridlab.train.run import train_branch

    if len(a.budget) != len(a.out):
        raise ConfigError("--out", a.out, f"one branch folder per --budget ({len(a.budget)}: {a.budget})")
    for k, out in zip(a.budget, a.out, strict=True):
        s = train_branch(_cfg(a), a.data, a.stable, k, out)
        if "tokens" in s:  # rank 0
            print(f"branch k={k} of {a.stable}: {s['steps']} steps, {s['tokens']} tokens", flush=True)


def _write(a, df, path: str | None = None) -> None:
    """A table to its file, or as CSV to standard output for `-` (the line saying so then goes to stderr)."""
    from hybridlab.io import write_table

    path = path or a.out
    if path == STDOUT:
        df.to_csv(sys.stdout, index=False)
        print(f"{len(df)} rows -> standard output", file=sys.stderr)
        return
    write_table(path, df)
    if getattr(a, "made_by", None):  # a per-run table: what made it, beside it (`aggregate` checks it)
        from hybridlab.identity import write_stamp

        write_stamp(path, a.made_by)
    print(f"{len(df)} rows -> {path}")


def cmd_evaluate(a) -> None:
    from hybridlab.evals.evaluate import evaluate_run

    _write(a, evaluate_run(_checked_cfg(a), a.data, a.run))


def cmd_receptive(a) -> None:
    from hybridlab.analysis.receptive import receptive_run

    _write(a, receptive_run(_checked_cfg(a), a.data, a.run))


def cmd_analyze(a) -> None:
    from hybridlab.analysis.analyze import analyze_run

    tables = analyze_run(_checked_cfg(a), a.data, a.run)
    _write(a, tables["heads"])
    for kind in ANALYZE_EXTRA:
        if getattr(a, kind):
            _write(a, tables[kind], getattr(a, kind))


def cmd_probe(a) -> None:
    from hybridlab.analysis.probe import probe_run

    _write(a, probe_run(_checked_cfg(a), a.data, a.run))


def cmd_gradinf(a) -> None:
    from hybridlab.analysis.gradinf import gradinf_run

    _write(a, gradinf_run(_checked_cfg(a), a.data, a.run))


def cmd_lm_eval(a) -> None:
    from hybridlab.evals.harness import lm_eval_run

    _write(a, lm_eval_run(_checked_cfg(a), a.data, a.run))


def cmd_export_hf(a) -> None:
    from hybridlab.export.hf import export_checkpoint

    out = export_checkpoint(_checked_cfg(a), a.data, a.run, a.out, a.checkpoint)
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
    ("evaluate", cmd_evaluate, "evaluate every checkpoint of a run: losses, LongPPL, NIAH, RULER-style (eval.csv)"),
    ("receptive", cmd_receptive, "measure the losses with the full or the efficient layers limited to W tokens "
                                 "(receptive.csv)"),
    ("analyze", cmd_analyze, "find the retrieval heads; trace their trajectories, onset and masking (heads.csv, ...)"),
    ("probe", cmd_probe, "probe the residual stream layer by layer with logistic regressions (probe.csv)"),
    ("gradinf", cmd_gradinf, "measure the gradient influence G(d) by distance (gradinf.csv)"),
    ("lm-eval", cmd_lm_eval, "run the lm-evaluation-harness tasks of eval.lm_eval.run (lmeval.csv)"),
)
# Every table a DAG always makes, and those it makes when configured (lmeval); `aggregate` takes both.
TABLE_COLUMNS = {
    **TABLES,
    "train": TRAIN_COLUMNS,
}
AGGREGATE_COLUMNS = {**TABLE_COLUMNS, **OPTIONAL_TABLES}


def cmd_aggregate(a) -> None:
    import pandas as pd

    from hybridlab.identity import check_tables
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
    check_tables(a.inputs, frames)  # each table's rows are its folder's run's, no row twice
    _write(a, pd.concat(frames, ignore_index=True))


def _count(n: float) -> str:
    for scale, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return f"{n:.3g}"


def describe_plan(scale: str, overrides: list[str]) -> dict:
    """The scale's plan with its overrides: variants, seeds, sizes, each variant's layout, and per (size, variant)
    the parameter count, steps, tokens, FLOPs and an estimate of GPU-hours from the per-module FLOPs at the
    scale's assumed MFU (what the workflow writes as tables/info.json)."""
    import torch

    from hybridlab.config import load_config, scale_plan
    from hybridlab.data.synthetic import CorpusSpec
    from hybridlab.models import build_model
    from hybridlab.train.run import branch_plan, resolve_budget

    plan = scale_plan(scale, overrides)
    layouts, runs = {}, []
    for size in plan["sizes"]:
        for v in plan["variants"]:
            cfg = load_config(scale, v, 0, overrides, size)
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
            runs.append({"size": size, "variant": v, "label": str(cfg.variant.get("label") or v),
                         "non_embedding_params": n, "steps": int(t.steps),
                         "tokens": int(t.steps) * int(t.batch_size) * int(cfg.scale.context), "seeds": n_seeds,
                         "train_flops": flops, "gpu_hours": flops / (mfu * peak) / 3600 * n_seeds})
    return {**plan, "layouts": layouts, "runs": runs}


def plan_text(plan: dict) -> list[str]:
    """The plan as a newcomer reads it: what runs, how big, how long."""
    runs = plan["runs"]
    total = sum(r["gpu_hours"] for r in runs)
    lines = [f"scale {plan['name']}: context {plan['context']}, accelerator {plan['accelerator']}, "
             f"sizes {', '.join(plan['sizes'])}, {len(plan['variants'])} variants, seeds {plan['seeds']}"]
    header = ("size", "variant", "label", "params", "steps", "tokens", "seeds", "GPU-hours")
    table = [header] + [(r["size"], r["variant"], r["label"], _count(r["non_embedding_params"]), str(r["steps"]),
                         _count(r["tokens"]), str(r["seeds"]), f"{r['gpu_hours']:,.2f}") for r in runs]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines += ["  " + "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table]
    lines.append(f"{sum(r['seeds'] for r in runs)} training runs, about {total:,.2f} GPU-hours at "
                 f"{plan.get('assumed_mfu', 0.35):.0%} MFU of {plan.get('peak_tflops', 989)} TFLOP/s "
                 "(params: non-embedding; steps and tokens per run)")
    lines.append("layouts (per layer kind:role:window of each head, in tokens at this context):")
    lines += [f"  {v}: " + " ".join(layout) for v, layout in plan["layouts"].items()]
    return lines


def cmd_describe(a) -> None:
    """Print the plan (a dry run: nothing is trained); with --out, also write it as JSON (- for stdout)."""
    import json

    from hybridlab.io import write_json

    plan = describe_plan(a.scale, a.overrides)
    text = "\n".join(plan_text(plan))
    if a.out == STDOUT:
        print(text, file=sys.stderr)
        print(json.dumps(plan, indent=2, sort_keys=True))
        return
    print(text)
    if a.out:
        write_json(a.out, plan)
        print(f"plan -> {a.out}")


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

    if a.ensemble < 1 or (a.ensemble > 1 and a.concurrent > 1):
        raise SystemExit(f"hybridlab benchmark: --ensemble {a.ensemble} with --concurrent {a.concurrent}: allowed "
                         "--ensemble >= 1, and not both above 1 (one mechanism per row)")
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
                                compile=a.compile, overrides=tuple(a.set), profile=profile, ensemble=a.ensemble)
            rows.append(row)
            print(f"{row.get('size')} {row.get('variant')} x{row.get('concurrent', 1)}: "
                  + ", ".join(f"{k} {row.get(k)}" for k in ("tokens_per_s", "mfu", "peak_mem_gb", "status")),
                  flush=True)
            if a.out:  # after every row: a run cut short keeps what it measured
                _write(a, pd.DataFrame(rows, columns=list(COLUMNS)))
    print(pd.DataFrame(rows, columns=list(COLUMNS)).drop(columns=["versions"]).to_markdown(index=False,
                                                                                        floatfmt=".3g"))


def cmd_figures(a) -> None:
    from hybridlab.figures.build import build_all

    for path in build_all(a.scale, a.tables, a.out, a.claims):
        print(path)


DESCRIPTION = """\
hybridlab: the replication pipeline of "Rethinking the Role of Efficient Attention in Hybrid Architectures"
(arXiv 2606.15378). A run is (scale, variant, seed): a scale preset (smoke on a CPU in minutes, mini on one
GPU, paper on a cluster) picks the model sizes, data and schedule; a variant is one hybrid layout (Full,
SWA-128, Lightning-hybrid, ...). Each command below is one pipeline stage, in pipeline order: it reads files
and writes files. `make replicate` runs them all through Snakemake; these run one stage by hand."""
EPILOG = """\
examples:
  hybridlab list variants                  the hybrids and the paper's labels (also: scales, sizes, keys)
  hybridlab describe --scale mini          what the mini scale would run, how big, how long (nothing is trained)
  hybridlab prepare-data --out data/smoke
  hybridlab train --variant swa128 --data data/smoke --out runs/swa128 train.steps=50
  hybridlab evaluate --variant swa128 --data data/smoke --run runs/swa128 --out eval.csv
  hybridlab figures --tables results/smoke/tables --out paper/smoke

Any config key can be set after a command's flags (KEY=VALUE, e.g. train.steps=50); every key with its
default and what it allows: `hybridlab list keys` or docs/config.md. `hybridlab COMMAND --help` for a command."""


def _stage(sub, name: str, fn, help_: str, **kw) -> argparse.ArgumentParser:
    import textwrap

    p = sub.add_parser(name, help=help_, description=textwrap.fill(help_[0].upper() + help_[1:] + ".", 100),
                       formatter_class=_Help, **kw)
    p.set_defaults(fn=fn)
    return p


def _table_out(p: argparse.ArgumentParser, what: str = "output CSV") -> None:
    p.add_argument("--out", required=True, metavar="CSV", help=f"{what} (- for standard output)")


def _add_run_stage(sub, name: str, fn, help_: str) -> None:
    """A per-run stage: reads a data folder and a run folder, writes one table (analyze: more when asked)."""
    p = _stage(sub, name, fn, help_)
    _run_args(p)
    _data_arg(p)
    _run_dir_arg(p)
    _table_out(p)
    if name == "analyze":
        for kind in ANALYZE_EXTRA:
            p.add_argument(f"--{kind}", metavar="CSV", help=f"also write the {kind} table here")


def _group_args(p: argparse.ArgumentParser, folders: str, what: str) -> None:
    _run_args(p, run=False)
    _variant_arg(p)
    p.add_argument("--seeds", type=int, nargs="+", required=True, metavar="N", help="the seeds, distinct")
    _data_arg(p)
    p.add_argument(f"--{folders}", nargs="+", required=True, metavar="DIR",
                   help=f"{what}, one per seed, in the order of --seeds (overrides go before this option)")


def build_parser() -> argparse.ArgumentParser:
    from hybridlab import __version__

    parser = argparse.ArgumentParser(prog="hybridlab", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help)
    parser.add_argument("--version", action="version", version=f"hybridlab {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="cmd", required=True, metavar="COMMAND")

    p = _stage(sub, "list", cmd_list, "list the variants (with the paper's labels), scales, model sizes or "
               "config keys")
    p.add_argument("what", choices=["variants", "scales", "sizes", "keys"], help="what to list")
    p = _stage(sub, "describe", cmd_describe, "print what a scale (with overrides) would run: variants, seeds, "
               "sizes, layouts, parameters, steps, tokens and estimated GPU-hours; nothing is trained",
               epilog="example: hybridlab describe --scale mini train.steps=500 --out info.json")
    _scale_arg(p)
    _overrides_arg(p)
    p.add_argument("--out", default=None, metavar="JSON", help="also write the plan as JSON here (- for standard "
                   "output; the workflow's tables/info.json)")

    p = _stage(sub, "prepare-data", cmd_prepare, "generate (synthetic) or tokenize (real text) the corpus and the "
               "eval sets into a data folder")
    _run_args(p, run=False)
    p.add_argument("--out", required=True, metavar="DATA_DIR", help="the data folder to write")
    p.add_argument("--workers", type=int, default=1,
                   help="processes generating the synthetic corpus or tokenizing real text (the output does not "
                        "depend on it)")
    step = p.add_mutually_exclusive_group()
    step.add_argument("--tokenizer-only", action="store_true", help="real text: fetch or train the tokenizer only")
    step.add_argument("--group", action="append", metavar="CORPUS/G",
                      help="real text: prepare this group only (repeatable), e.g. long/00003")

    p = _stage(sub, "train", cmd_train, "train one run (resumes an interrupted one from its last.ckpt)")
    _run_args(p)
    _data_arg(p)
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="the run folder to write")
    p.add_argument("--allow-change", action="append", metavar="KEY",
                   help="resume an interrupted run with this setting changed on purpose (repeatable; "
                        "provenance.json records the change); any other difference is refused")
    p = _stage(sub, "train-group", cmd_train_group, "train several seeds of one variant one after another in one "
               "process (one compiled model object; each run equals its own `train`)")
    _group_args(p, "outs", "run folders")
    p = _stage(sub, "train-branch", cmd_train_branch, "train one WSD decay branch of the scaling grid, forked "
               "from a stable run")
    _run_args(p)
    _data_arg(p)
    p.add_argument("--stable", required=True, metavar="RUN_DIR", help="the stable run's folder")
    p.add_argument("--budget", type=float, nargs="+", required=True, metavar="K",
                   help="k of the budget D = k*N (each one of train.budgets_k); several: trained in turn")
    p.add_argument("--out", nargs="+", required=True, metavar="DIR",
                   help="the branch folder to write, one per --budget")

    for name, fn, help_ in RUN_STAGES[:1]:
        _add_run_stage(sub, name, fn, help_)
    p = _stage(sub, "evaluate-group", cmd_evaluate_group, "run every per-run evaluation and analysis (evaluate, "
               "receptive, analyze, probe, gradinf) of several seeds of one variant, in one process")
    _group_args(p, "runs", "run folders")
    for name, fn, help_ in RUN_STAGES[1:]:
        _add_run_stage(sub, name, fn, help_)
    p = _stage(sub, "export-hf", cmd_export_hf, "write a run's checkpoint as a Hugging Face model folder "
               "(config, safetensors, model code, tokenizer)")
    _run_args(p)
    _data_arg(p)
    _run_dir_arg(p)
    p.add_argument("--out", required=True, metavar="HF_DIR", help="the model folder to write")
    p.add_argument("--checkpoint", metavar="PT", help="a ckpt/tokens_*.pt of the run (default: its final one)")

    p = _stage(sub, "aggregate", cmd_aggregate, "concatenate per-run tables of one kind into a results table")
    p.add_argument("--kind", choices=sorted(AGGREGATE_COLUMNS), required=True, help="the table kind")
    _table_out(p, "the results table")
    p.add_argument("inputs", nargs="+", metavar="CSV", help="per-run tables (runs/<size>/<variant>/seed<N>/...)")
    p = _stage(sub, "scaling-fit", cmd_scaling_fit, "fit the scaling law L(N, D) = B/N^alpha + C/D^beta [+ E] to "
               "scaling tables, with bootstrap intervals")
    p.add_argument("--table", nargs="+", required=True,
                   help="TSV/CSV of (size, N, D, loss), the authors' released TSV (model_size, token_multiplier, "
                        "n, loss), a tidy table with N, or the pipeline's eval.csv / budgets.csv")
    _table_out(p, "fit CSV: (variant, form, kind, name, value)")
    p.add_argument("--metric", default="log_longppl", help="metric of tidy/eval tables")
    p.add_argument("--length", type=int, help="eval tables: the length, when the metric has several")
    _scale_arg(p, None, "eval tables: their scale (default: from the path results/<scale>/...)")
    p.add_argument("--variant", metavar="VARIANT", help="fit only this variant")
    p.add_argument("--forms", default="no_constant,constant", help="comma-separated: no_constant, constant")
    p.add_argument("--procedure", choices=["default", "released"], default="default",
                   help="default: analytic-gradient L-BFGS-B, tight tolerances; released: the authors' "
                        "fit_scaling.py procedure (its grid, finite differences, tolerances, refinement)")
    p.add_argument("--alpha-bounds", default="auto",
                   help="'LOW,HIGH', 'none' (free alpha >= 0) or 'auto' (0.2,0.3; the released "
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
    p.add_argument("--draws-out", metavar="CSV", help="also write the bootstrap draws (the band of Fig. 2) here")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="eval tables: the scale's config overrides (they may change N)")

    p = _stage(sub, "figures", cmd_figures, "draw every figure, table and the report from result tables (no torch)")
    _scale_arg(p, what="the scale the tables are of (names the report)")
    p.add_argument("--tables", required=True, metavar="TABLE_DIR",
                   help="a results tables folder (info.json and the CSV tables), e.g. results/smoke/tables")
    p.add_argument("--out", required=True, metavar="PAPER_DIR",
                   help="the paper folder to write: figures/, captions/, tables/, report.md/.html")
    p.add_argument("--claims", default=None, metavar="YAML",
                   help="claim thresholds (default: src/hybridlab/conf/claims/default.yaml)")
    p = _stage(sub, "report-index", cmd_report_index, "write paper/report.md, linking every scale's report")
    p.add_argument("--paper", default="paper", metavar="PAPER_DIR", help="the folder holding <scale>/report.md")
    p = _stage(sub, "benchmark", cmd_benchmark, "measure training throughput (tokens/s, MFU, memory) on this "
               "device")
    p.add_argument("--variants", nargs="+", default=["full", "swa128"], metavar="VARIANT",
                   help="the variants to measure (`hybridlab list variants`)")
    p.add_argument("--sizes", nargs="+", default=["S1"], metavar="SIZE",
                   help="the model sizes to measure (`hybridlab list sizes`)")
    p.add_argument("--context", type=int, default=4096, help="tokens per sequence")
    p.add_argument("--batch", type=int, default=1, help="sequences per step")
    p.add_argument("--steps", type=int, default=5, help="timed steps per row")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="config overrides for every row, e.g. model.mixer_backend=torch")
    p.add_argument("--out", default=None, metavar="CSV", help="CSV to write (- for standard output)")
    _scale_arg(p, "paper", "the scale whose configs (and vocabulary) the rows use")
    p.add_argument("--vocab", type=int, default=None,
                   help="vocabulary size (default: 32000 at the paper scale, else the scale's synthetic vocabulary)")
    p.add_argument("--concurrent", type=int, default=1,
                   help="N processes of each row at once on this device; tokens/s is their total")
    p.add_argument("--ensemble", type=int, default=1, metavar="G",
                   help="G models (seeds 0..G-1) batched into one step, --batch sequences each (tokens/s counts "
                        "all G)")
    p.add_argument("--profile", action="store_true", help="also write a kernel-time table per row beside --out")
    p.add_argument("--barrier", default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    return parser


# Commands whose --out is a folder, with what they write there.
FOLDER_OUTPUTS = {"prepare-data": "the data folder", "train": "the run folder", "train-branch": "the branch folder",
                  "export-hf": "the model folder", "figures": "the paper folder"}


def _scale_from_override(args: argparse.Namespace, argv: list[str]) -> None:
    """`scale=S` without --scale picks the scale (as --scale S would); beside --scale the two must agree
    (hybridlab.config refuses a contradiction, naming both)."""
    overrides = getattr(args, "overrides", None)
    if overrides is None or not hasattr(args, "scale") or any(a.split("=")[0] == "--scale" for a in argv):
        return
    picks = [o for o in overrides if o.startswith("scale=")]
    if picks:
        args.scale = picks[-1].removeprefix("scale=")
        args.overrides = [o for o in overrides if o not in picks]


def main(argv: list[str] | None = None) -> int:
    from hybridlab.config import ConfigError
    from hybridlab.io import CorruptFileError

    args = build_parser().parse_args(argv)
    _scale_from_override(args, sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    outs = getattr(args, "out", None)
    if args.cmd in FOLDER_OUTPUTS and STDOUT in (outs if isinstance(outs, list) else [outs]):
        print(f"hybridlab {args.cmd}: error: --out: got '-'; allowed: a folder path ({FOLDER_OUTPUTS[args.cmd]}; "
              "only tables and the plan can go to standard output)", file=sys.stderr)
        return 2
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
