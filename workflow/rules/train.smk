# Stage 2: Lightning training, resumable from last.ckpt if interrupted. One job per (variant, seed), or, with
# train.group_seeds, one job per variant that trains its seeds one after another in one process (one compiled
# model object; each run's folder, seed and results are exactly those of its own job).
TRAIN_DONE = f"{RUN}/train_done.json"
# A rerun empties the job's log; each run folder keeps its sessions (steps, how each ended) in sessions.jsonl.
_TRAIN_SHELL = "OMP_NUM_THREADS={threads} HYBRIDLAB_PROGRESS=0 {params.wrap} {params.hybridlab} "

if GROUP_SEEDS:
    # One rule per distinct seed list (SEED_GROUPS).
    for _i, (_seeds, _variants) in enumerate(SEED_GROUPS.items()):

        rule:
            """Train every seed of one (size, variant) in one process, one run after another."""
            name:
                f"train_group_{_i}"
            input:
                manifest=rules.prepare_data.output.manifest,
            output:
                done=[f"{RES}/runs/{{size}}/{{variant}}/seed{s}/train_done.json" for s in _seeds],
                metrics=[f"{RES}/runs/{{size}}/{{variant}}/seed{s}/metrics.csv" for s in _seeds],
            wildcard_constraints:
                variant="|".join(_variants),
            params:
                common=COMMON,
                hybridlab=HYBRIDLAB,
                wrap=TRAIN_WRAP,
                seeds=" ".join(str(s) for s in _seeds),
                data=lambda wc, input: os.path.dirname(input.manifest),
                outs=lambda wc, output: " ".join(shlex.quote(os.path.dirname(p)) for p in output.done),
            log:
                f"{RES}/logs/train_{{size}}_{{variant}}.log",
            benchmark:
                f"{BENCH}/train_{{size}}_{{variant}}.tsv"
            conda:
                "../../envs/hybridlab.yaml"
            threads: job_threads("train", len(_seeds))
            resources:
                **job_resources("train", len(_seeds), gpu=TRAIN_GPUS),
                train=1,  # `--resources train=N` bounds the trainings sharing the machine's cards
            shell:
                _TRAIN_SHELL + "train-group --size {wildcards.size:q} --variant {wildcards.variant:q} "
                "--seeds {params.seeds} --data {params.data:q} --outs {params.outs} {params.common} > {log:q} 2>&1"

else:

    rule train:
        """Train one run (variant, seed)."""
        input:
            manifest=rules.prepare_data.output.manifest,
        output:
            done=TRAIN_DONE,
            metrics=f"{RUN}/metrics.csv",
        params:
            common=COMMON,
            hybridlab=HYBRIDLAB,
            wrap=TRAIN_WRAP,
            data=lambda wc, input: os.path.dirname(input.manifest),
            run=lambda wc, output: os.path.dirname(output.done),
        log:
            f"{RES}/logs/train_{{size}}_{{variant}}_seed{{seed}}.log",
        benchmark:
            f"{BENCH}/train_{{size}}_{{variant}}_seed{{seed}}.tsv"
        conda:
            "../../envs/hybridlab.yaml"
        threads: job_threads("train")
        resources:
            **job_resources("train", gpu=TRAIN_GPUS),
            train=1,  # `--resources train=N` bounds the trainings sharing the machine's cards
        shell:
            _TRAIN_SHELL + "train --size {wildcards.size:q} --variant {wildcards.variant:q} --seed {wildcards.seed:q} "
            "--data {params.data:q} --out {params.run:q} {params.common} > {log:q} 2>&1"


# The scaling grid's decay branches: each forks from the stable run at its budget's fork step. With
# train.group_branches, one job per stable run trains its branches one after another (one rule per distinct list of
# budget points); else one job per branch (a cluster runs them side by side).
if GROUP_BRANCHES:
    _BRANCH_GROUPS = {}
    for _size in SIZES:
        if budget_points(_size):
            _BRANCH_GROUPS.setdefault(tuple(budget_points(_size)), []).append(_size)
    for _i, (_budgets, _sizes) in enumerate(_BRANCH_GROUPS.items()):

        rule:
            """Train every decay branch of one stable run in one process, one after another."""
            name:
                f"train_branches_{_i}"
            input:
                manifest=rules.prepare_data.output.manifest,
                stable=TRAIN_DONE,
            output:
                done=[f"{RUN}/budget{k}/train_done.json" for k in _budgets],
            wildcard_constraints:
                size="|".join(_sizes),
            params:
                common=COMMON,
                hybridlab=HYBRIDLAB,
                wrap=TRAIN_WRAP,
                budgets=" ".join(_budgets),
                data=lambda wc, input: os.path.dirname(input.manifest),
                stable=lambda wc, input: os.path.dirname(input.stable),
                outs=lambda wc, output: " ".join(shlex.quote(os.path.dirname(p)) for p in output.done),
            log:
                f"{RES}/logs/train_branches_{{size}}_{{variant}}_seed{{seed}}.log",
            benchmark:
                f"{BENCH}/train_branches_{{size}}_{{variant}}_seed{{seed}}.tsv"
            conda:
                "../../envs/hybridlab.yaml"
            threads: branches_threads(_budgets)
            resources:
                **branches_resources(_budgets, gpu=TRAIN_GPUS),
                train=1,
            shell:
                _TRAIN_SHELL + "train-branch --size {wildcards.size:q} --variant {wildcards.variant:q} "
                "--seed {wildcards.seed:q} --budget {params.budgets} --data {params.data:q} --stable {params.stable:q} "
                "--out {params.outs} {params.common} > {log:q} 2>&1"

else:

    rule train_branch:
        input:
            manifest=rules.prepare_data.output.manifest,
            stable=TRAIN_DONE,
        output:
            done=f"{RUN}/budget{{k}}/train_done.json",
        params:
            common=COMMON,
            hybridlab=HYBRIDLAB,
            wrap=TRAIN_WRAP,
            data=lambda wc, input: os.path.dirname(input.manifest),
            stable=lambda wc, input: os.path.dirname(input.stable),
            out=lambda wc, output: os.path.dirname(output.done),
        log:
            f"{RES}/logs/train_branch_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.log",
        benchmark:
            f"{BENCH}/train_branch_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.tsv"
        wildcard_constraints:
            k=r"[0-9.]+",
        conda:
            "../../envs/hybridlab.yaml"
        threads: job_threads("train_branch")
        resources:
            **job_resources("train_branch", gpu=TRAIN_GPUS),
        shell:
            _TRAIN_SHELL + "train-branch --size {wildcards.size:q} "
            "--variant {wildcards.variant:q} --seed {wildcards.seed:q} --budget {wildcards.k:q} --data {params.data:q} "
            "--stable {params.stable:q} --out {params.out:q} {params.common} > {log:q} 2>&1"
