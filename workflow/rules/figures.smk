# Stage 5: result tables (the only input of figures), every figure, and the replication report.
TABLE_KINDS = {"eval": "eval.csv", "heads": "heads.csv", "train": "metrics.csv"}


rule table:
    input:
        lambda wc: run_outputs(TABLE_KINDS[wc.kind]),
    output:
        f"{RES}/tables/{{kind}}.csv",
    log:
        f"{RES}/logs/table_{{kind}}.log",
    wildcard_constraints:
        kind="|".join(TABLE_KINDS),
    conda:
        "../../envs/hybridlab.yaml"
    shell:
        "hybridlab aggregate --kind {wildcards.kind} --out {output} {input} > {log} 2>&1"


rule describe:
    output:
        f"{RES}/tables/info.json",
    params:
        common=COMMON,
    log:
        f"{RES}/logs/describe.log",
    conda:
        "../../envs/hybridlab.yaml"
    shell:
        "hybridlab describe --out {output} {params.common} > {log} 2>&1"


rule figures:
    input:
        tables=expand(f"{RES}/tables/{{kind}}.csv", kind=TABLE_KINDS),
        info=rules.describe.output,
    output:
        report(
            expand(f"{PAPER}/figures/{{name}}.png", name=FIGURE_NAMES),
            category="Figures",
        ),
        expand(f"{PAPER}/figures/{{name}}.pdf", name=FIGURE_NAMES),
        report=f"{PAPER}/report.md",
    params:
        scale=SCALE,
        paper=lambda wc, output: os.path.dirname(output.report),
    log:
        f"{RES}/logs/figures.log",
    conda:
        "../../envs/hybridlab.yaml"
    shell:
        "hybridlab figures --scale {params.scale} --tables $(dirname {input.info}) --out {params.paper} "
        "> {log} 2>&1"
