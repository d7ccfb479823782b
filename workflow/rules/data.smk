# Stage 1: the training corpus as verified token shards plus the eval sets, written to {RES}/data/.
# Synthetic text (smoke, mini): one job. Real text (paper): the tokenizer, then one job per preparation group
# (`data.corpora.*.groups`; a cluster runs them in parallel, a finished group is never redone), then the mix.
from hybridlab.data.corpora import group_ids

DATA = f"{RES}/data"
DATA_GROUPS = group_ids(_CFG.data)
# Tokenizer processes per group job (the shards do not depend on it). Measured here: ~0.3-0.4M tokens per
# CPU-second per process, and the job's main process (reading, packing) handles ~3M tokens/s, so about 8
# processes saturate one job; memory stays below ~0.3 GB per process whatever the corpus size (README).
DATA_THREADS = 8
# A user's haystack file (eval.haystack_file, checked when the config is) is an input: editing it rebuilds the
# eval sets, and the manifest records its sha256.
from hybridlab.data.evalsets import haystack_path

HAYSTACK = [str(haystack_path(_CFG.eval.haystack_file))] if _CFG.eval.get("haystack_file") else []


if DATA_GROUPS:

    rule prepare_tokenizer:
        """Fetch (data.tokenizer.hub), copy (path) or train (a BPE on the train corpora) the tokenizer."""
        output:
            done=f"{DATA}/tokenizer.done.json",
        params:
            common=COMMON,
            hybridlab=HYBRIDLAB,
        log:
            f"{RES}/logs/prepare_tokenizer.log",
        benchmark:
            f"{BENCH}/prepare_tokenizer.tsv"
        conda:
            "../../envs/hybridlab.yaml"
        threads: 1
        resources:
            mem_mb=4000,
            runtime=60,
        shell:
            "{params.hybridlab} prepare-data --out {DATA:q} --tokenizer-only {params.common} > {log:q} 2>&1"

    rule prepare_group:
        """Tokenize one group of a corpus in {threads} processes and pack it into token shards (groups/CORPUS/G*)."""
        input:
            tokenizer=rules.prepare_tokenizer.output.done,
        output:
            record=f"{DATA}/groups/{{corpus}}/{{group}}.json",
        params:
            common=COMMON,
            hybridlab=HYBRIDLAB,
        log:
            f"{RES}/logs/prepare_group_{{corpus}}_{{group}}.log",
        benchmark:
            f"{BENCH}/prepare_group_{{corpus}}_{{group}}.tsv"
        wildcard_constraints:
            corpus="[^/]+",
            group=r"\d{5}",
        conda:
            "../../envs/hybridlab.yaml"
        threads: DATA_THREADS
        resources:
            mem_mb=lambda wc, threads: 1500 + 500 * threads,
            runtime=120,  # minutes; a paper group (~250M tokens) tokenizes in ~2 min on 8 cores, the rest is download
        shell:
            "{params.hybridlab} prepare-data --out {DATA:q} --group {wildcards.corpus:q}/{wildcards.group:q} --workers {threads} "
            "{params.common} > {log:q} 2>&1"


rule prepare_data:
    """The data folder's manifest: synthetic corpus and eval sets, or the mix of the prepared groups."""
    input:
        groups=[f"{DATA}/groups/{gid}.json" for gid in DATA_GROUPS],
        haystack=HAYSTACK,
    output:
        manifest=f"{DATA}/manifest.json",
    params:
        common=COMMON,
        hybridlab=HYBRIDLAB,
    log:
        f"{RES}/logs/prepare_data.log",
    benchmark:
        f"{BENCH}/prepare_data.tsv"
    conda:
        "../../envs/hybridlab.yaml"
    # The synthetic corpus is generated in {threads} processes (chunks are independent streams: the same data
    # for any count; about one per 2M tokens); the real-text mix only concatenates the prepared groups.
    threads: job_threads("prepare_data")
    resources:
        **job_resources("prepare_data"),
    shell:
        "OMP_NUM_THREADS=1 {params.hybridlab} prepare-data --out \"$(dirname {output.manifest:q})\" --workers {threads} "
        "{params.common} > {log:q} 2>&1"
