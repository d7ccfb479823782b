# Stage 1: the synthetic corpus packed into verified shards, plus the NIAH eval sets.


rule prepare_data:
    output:
        manifest=f"{RES}/data/manifest.json",
    params:
        common=COMMON,
    log:
        f"{RES}/logs/prepare_data.log",
    conda:
        "../../envs/hybridlab.yaml"
    threads: 1
    shell:
        "OMP_NUM_THREADS={threads} hybridlab prepare-data --out $(dirname {output.manifest}) {params.common} > {log} 2>&1"
