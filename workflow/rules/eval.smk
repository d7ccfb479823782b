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
        "OMP_NUM_THREADS={threads} {params.wrap} {params.hybridlab} {params.cmd} --size {wildcards.size} --variant {wildcards.variant} "
        "--seed {wildcards.seed} --data {params.data} --run {params.run} {params.outputs} {params.common} "
        "> {log} 2>&1"


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
        done=rules.train_branch.output.done,
    output:
        out=f"{RUN}/budget{{k}}/eval.csv",
    log:
        f"{RES}/logs/evaluate_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.log",
    benchmark:
        f"{BENCH}/evaluate_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.tsv"
    threads: job_threads("evaluate_branch")
    resources:
        **job_resources("evaluate_branch", gpu=EVAL_GPUS),
