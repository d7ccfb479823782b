# Stage 2: one Lightning training run per (variant, seed); resumes from last.ckpt if interrupted.


rule train:
    input:
        manifest=rules.prepare_data.output.manifest,
    output:
        done=f"{RUN}/train_done.json",
        metrics=f"{RUN}/metrics.csv",
    params:
        common=COMMON,
        wrap=GPU_WRAP,
        data=lambda wc, input: os.path.dirname(input.manifest),
        run=lambda wc, output: os.path.dirname(output.done),
    log:
        f"{RES}/logs/train_{{size}}_{{variant}}_seed{{seed}}.log",
    conda:
        "../../envs/hybridlab.yaml"
    threads: 1
    resources:
        gpu=1 if ON_GPU else 0,
    shell:
        "OMP_NUM_THREADS={threads} HYBRIDLAB_PROGRESS=0 {params.wrap} hybridlab train "
        "--size {wildcards.size} --variant {wildcards.variant} --seed {wildcards.seed} --data {params.data} --out {params.run} "
        "{params.common} > {log} 2>&1"
