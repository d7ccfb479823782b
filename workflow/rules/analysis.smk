# Stage 4: retrieval-head scores per (layer, head) for every checkpoint of a run.


rule analyze:
    input:
        manifest=rules.prepare_data.output.manifest,
        done=rules.train.output.done,
    output:
        f"{RUN}/heads.csv",
    params:
        common=COMMON,
        wrap=GPU_WRAP,
        data=lambda wc, input: os.path.dirname(input.manifest),
        run=lambda wc, input: os.path.dirname(input.done),
    log:
        f"{RES}/logs/analyze_{{variant}}_seed{{seed}}.log",
    conda:
        "../../envs/hybridlab.yaml"
    threads: 1
    resources:
        gpu=1 if ON_GPU else 0,
    shell:
        "OMP_NUM_THREADS={threads} {params.wrap} hybridlab analyze --variant {wildcards.variant} "
        "--seed {wildcards.seed} --data {params.data} --run {params.run} --out {output} {params.common} "
        "> {log} 2>&1"
