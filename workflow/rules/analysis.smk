# Stage 4: mechanism analyses of a run (the per-run rule shape of `evaluate`: one `hybridlab` subcommand, one
# flag per named output).
# analyze: one pass over every checkpoint: retrieval-head scores, the traced full-attention heads and the
#          trajectories of those that formed, the onset of retrieval, and NIAH accuracy with heads masked on the
#          final checkpoint.
# probe:   layer-wise logistic-regression probes on the final checkpoint's residual stream.
# gradinf: gradient influence G(d) of the input d tokens before the end, on the final checkpoint.


use rule evaluate as analyze with:
    params:
        cmd="analyze",
    output:
        out=f"{RUN}/heads.csv",
        trajectory=f"{RUN}/trajectory.csv",
        traced=f"{RUN}/traced.csv",
        onset=f"{RUN}/onset.csv",
        masking=f"{RUN}/masking.csv",
    log:
        f"{RES}/logs/analyze_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/analyze_{{size}}_{{variant}}_seed{{seed}}.tsv"
    threads: job_threads("analyze")
    resources:
        **job_resources("analyze", gpu=EVAL_GPUS),


use rule evaluate as probe with:
    params:
        cmd="probe",
    output:
        out=f"{RUN}/probe.csv",
    log:
        f"{RES}/logs/probe_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/probe_{{size}}_{{variant}}_seed{{seed}}.tsv"
    threads: job_threads("probe")
    resources:
        **job_resources("probe", gpu=EVAL_GPUS),


use rule evaluate as gradinf with:
    params:
        cmd="gradinf",
    output:
        out=f"{RUN}/gradinf.csv",
    log:
        f"{RES}/logs/gradinf_{{size}}_{{variant}}_seed{{seed}}.log",
    benchmark:
        f"{BENCH}/gradinf_{{size}}_{{variant}}_seed{{seed}}.tsv"
    threads: job_threads("gradinf")
    resources:
        **job_resources("gradinf", gpu=EVAL_GPUS),
