# Stage 3: evaluations of a run. Each per-run rule runs one `hybridlab` subcommand (params.cmd) with one flag
# per named output (--out, and e.g. --trajectory for analyze); the other per-run rules reuse this one's shape.
# evaluate: every checkpoint: validation loss, exact LongPPL, loss by position, NIAH (and RULER-style) accuracy.
# receptive: the final checkpoint with the full or the efficient layers limited to the last W tokens.


rule evaluate:
    input:
        manifest=rules.prepare_data.output.manifest,
        done=TRAIN_DONE,
    output:
        out=f"{RUN}/eval.csv",
    wildcard_constraints:
        variant=PER_RUN_VARIANTS,  # none with eval.group_runs (rule evaluate_group_*)
    params:
        cmd="evaluate",
        outputs=lambda wc, output: " ".join(f"--{k} {shlex.quote(v)}" for k, v in output.items()),
        common=COMMON,
        hybridlab=HYBRIDLAB,
        wrap=GPU_WRAP,
        data=lambda wc, input: os.path.dirname(input.manifest),
        run=lambda wc, input: os.path.dirname(input.done),
    log:
        f"{RES}/logs/evaluate_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/evaluate_{{size}}_{{variant}}_seed{{seed}}.tsv"
    conda:
        "../../envs/hybridlab.yaml"
    threads: job_threads("evaluate")
    resources:
        **job_resources("evaluate", gpu=EVAL_GPUS),
    shell:
        "OMP_NUM_THREADS={threads} {params.wrap} {params.hybridlab} {params.cmd} --size {wildcards.size:q} "
        "--variant {wildcards.variant:q} --seed {wildcards.seed:q} --data {params.data:q} --run {params.run:q} "
        "{params.outputs} {params.common} > {log:q} 2>&1"


use rule evaluate as receptive with:
    params:
        cmd="receptive",
    output:
        out=f"{RUN}/receptive.csv",
    log:
        f"{RES}/logs/receptive_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/receptive_{{size}}_{{variant}}_seed{{seed}}.tsv"
    threads: job_threads("receptive")
    resources:
        **job_resources("receptive", gpu=EVAL_GPUS),


# Each decay branch is evaluated like a run; its final checkpoint is the budget's point of the scaling curve.
use rule evaluate as evaluate_branch with:
    input:
        manifest=rules.prepare_data.output.manifest,
        done=f"{RUN}/budget{{k}}/train_done.json",
    wildcard_constraints:
        variant="|".join(VARIANTS),
    output:
        out=f"{RUN}/budget{{k}}/eval.csv",
    log:
        f"{RES}/logs/evaluate_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.log",
    benchmark:
        f"{BENCH}/evaluate_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.tsv"
    threads: job_threads("evaluate_branch")
    resources:
        **job_resources("evaluate_branch", gpu=EVAL_GPUS),


# lm_eval: lm-evaluation-harness tasks (eval.lm_eval.run: suites and task names) on the final checkpoint, through
# the project's adapter (HybridLM's own caches for generation). Part of the DAG only when eval.lm_eval.run is not
# empty: its per-run lmeval.csv then becomes tables/lmeval.csv, which the figures and the report read.
use rule evaluate as lm_eval with:
    wildcard_constraints:
        variant="|".join(VARIANTS),
    params:
        cmd="lm-eval",
    output:
        out=f"{RUN}/lmeval.csv",
    log:
        f"{RES}/logs/lm_eval_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/lm_eval_{{size}}_{{variant}}_seed{{seed}}.tsv"
    threads: job_threads("lm_eval")
    resources:
        **job_resources("lm_eval", gpu=EVAL_GPUS),


if GROUP_EVAL:
    # eval.group_runs: every per-run table of a variant's seeds in one process (the per-run rules above match no
    # variant then); the outputs are the per-run files the tables rule reads.
    for _i, (_seeds, _variants) in enumerate(SEED_GROUPS.items()):

        rule:
            """Evaluate and analyse every seed of one (size, variant) in one process (hybridlab evaluate-group)."""
            name:
                f"evaluate_group_{_i}"
            input:
                manifest=rules.prepare_data.output.manifest,
                done=[f"{RES}/runs/{{size}}/{{variant}}/seed{s}/train_done.json" for s in _seeds],
            output:
                **{kind: [f"{RES}/runs/{{size}}/{{variant}}/seed{s}/{name}" for s in _seeds]
                   for kind, name in RUN_FILES.items()},
            wildcard_constraints:
                variant="|".join(_variants),
            params:
                common=COMMON,
                hybridlab=HYBRIDLAB,
                wrap=GPU_WRAP,
                seeds=" ".join(str(s) for s in _seeds),
                data=lambda wc, input: os.path.dirname(input.manifest),
                runs=lambda wc, input: " ".join(shlex.quote(os.path.dirname(p)) for p in input.done),
            log:
                f"{RES}/logs/evaluate_group_{{size}}_{{variant}}.log",
            benchmark:
                f"{BENCH}/evaluate_group_{{size}}_{{variant}}.tsv"
            conda:
                "../../envs/hybridlab.yaml"
            threads: job_threads("evaluate_group", len(_seeds))
            resources:
                **job_resources("evaluate_group", len(_seeds), gpu=EVAL_GPUS),
            shell:
                "OMP_NUM_THREADS={threads} {params.wrap} {params.hybridlab} evaluate-group --size {wildcards.size:q} "
                "--variant {wildcards.variant:q} --seeds {params.seeds} --data {params.data:q} --runs {params.runs} "
                "{params.common} > {log:q} 2>&1"
