# Stage 1: the synthetic corpus packed into verified shards, plus the NIAH eval sets.
# A user's haystack file (eval.haystack_file, checked when the config is) is an input: editing it rebuilds the
# eval sets, and the manifest records its sha256.
from hybridlab.data.evalsets import haystack_path

HAYSTACK = [str(haystack_path(_CFG.eval.haystack_file))] if _CFG.eval.get("haystack_file") else []


rule prepare_data:
    input:
        haystack=HAYSTACK,
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
