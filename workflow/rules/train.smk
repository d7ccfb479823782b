# Stage 2: one Lightning training run per (variant, seed); resumes from last.ckpt if interrupted.


rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        done=f"{RUN}/train_done.json",
        metrics=f"{RUN}/metrics.csv",
    params:
        common=COMMON,
        wrap=TRAIN_WRAP,
        data=lambda wc, input: os.path.dirname(input.manifest),
        run=lambda wc, output: os.path.dirname(output.done),
    log:
        f"{RES}/logs/train_{{size}}_{{variant}}_seed{{seed}}.log",
    conda:
        "../../envs/hybridlab.yaml"
    threads: 1
    resources:
        gpu=TRAIN_GPUS,
    shell:
        "OMP_NUM_THREADS={threads} HYBRIDLAB_PROGRESS=0 {params.wrap} hybridlab train "
        "--size {wildcards.size} --variant {wildcards.variant} --seed {wildcards.seed} --data {params.data} --out {params.run} "
        "{params.common} > {log} 2>&1"


# The scaling grid's decay branches: each forks from the stable run at its budget's fork step.
rule train_branch:
    input:
        manifest=rules.prepare_data.output.manifest,
        stable=rules.train.output.done,
    output:
        done=f"{RUN}/budget{{k}}/train_done.json",
    params:
        common=COMMON,
        wrap=TRAIN_WRAP,
        data=lambda wc, input: os.path.dirname(input.manifest),
        stable=lambda wc, input: os.path.dirname(input.stable),
        out=lambda wc, output: os.path.dirname(output.done),
    log:
        f"{RES}/logs/train_branch_{{size}}_{{variant}}_seed{{seed}}_budget{{k}}.log",
    wildcard_constraints:
        k=r"[0-9.]+",
    conda:
        "../../envs/hybridlab.yaml"
    threads: 1
    resources:
        gpu=TRAIN_GPUS,
    shell:
        "OMP_NUM_THREADS={threads} HYBRIDLAB_PROGRESS=0 {params.wrap} hybridlab train-branch --size {wildcards.size} "
        "--variant {wildcards.variant} --seed {wildcards.seed} --budget {wildcards.k} --data {params.data} "
        "--stable {params.stable} --out {params.out} {params.common} > {log} 2>&1"
