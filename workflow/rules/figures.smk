# Stage 5: result tables (the only input of figures), every figure and table, and the replication report.
#   figures       the default: tables made by this DAG -> paper/{scale}/
#   figures_only  with --config figures_only=true, in place of every other stage: rebuild paper/{scale}/ from the
#                 tables already in {results_dir}/{scale}/tables/, nothing else
#                 (`snakemake --cores 1 --config scale=mini results_dir=results figures_only=true`); `make figures`
#                 runs `hybridlab figures` itself: Snakemake would delete the old paper/{scale}/ before a rebuild
# Browsable report with every figure, caption and table: `snakemake --report paper/{scale}/snakemake_report.html`
# (with the same --config as the run it reports on; `make report-html`).
from hybridlab.analysis.schemas import OPTIONAL_RUN_FILES, RUN_FILES
from hybridlab.figures import FIGURES, TABLE_NAMES

# Every per-run table is concatenated into tables/<kind>.csv (train's per-run file is its metrics.csv); lmeval
# only when eval.lm_eval.run asks for tasks.
TABLE_KINDS = {**RUN_FILES, **(OPTIONAL_RUN_FILES if LM_EVAL else {}), "train": "metrics.csv"}
TABLES_DIR = f"{RES}/tables"
# Tables no per-run rule makes; figures use them when present (Fig. 2: the budget points, the fitted law and its
# bootstrap band; the report's scaling-fit table and the grid's C1 check; the optional per-run tables, lmeval).
SCALING_TABLES = ("budgets", "scaling_fit", "scaling_draws")
OPTIONAL_TABLES = (*SCALING_TABLES, *(k for k in OPTIONAL_RUN_FILES if k not in TABLE_KINDS))
# With figures_only the rules that make tables are left out, so the tables are plain inputs and nothing upstream
# (training, evaluation) can be scheduled, whatever the state of the runs folder.
FIGURES_ONLY = str(config["figures_only"]).lower() == "true"


# The outputs of a figures build (build.py writes exactly these): each figure's PNG for the Snakemake report,
# with the caption build.py writes beside it, and its PDF; every table as CSV, Markdown and LaTeX; the report
# as Markdown and self-contained HTML.
PAPER_OUTPUTS = {
    **{
        name: report(
            f"{PAPER}/figures/{name}.png",
            caption=os.path.abspath(f"{PAPER}/captions/{name}.rst"),
            category=category,
        )
        for name, category in FIGURES.items()
    },
    "pdfs": expand(f"{PAPER}/figures/{{name}}.pdf", name=FIGURES),
    "captions": expand(f"{PAPER}/captions/{{name}}.rst", name=FIGURES),
    "tables": report(expand(f"{PAPER}/tables/{{name}}.csv", name=TABLE_NAMES), category="6 Tables"),
    "table_text": expand(f"{PAPER}/tables/{{name}}.{{ext}}", name=TABLE_NAMES, ext=("md", "tex")),
    "report": f"{PAPER}/report.md",
    "html": report(f"{PAPER}/report.html", category="0 Replication report"),
}
FIGURES_PARAMS = {
    "hybridlab": HYBRIDLAB,
    "scale": SCALE,
    "tables": lambda wc, input: os.path.dirname(input.info),
    "paper": lambda wc, output: os.path.dirname(output.report),
}
FIGURES_SHELL = (
    "{params.hybridlab} figures --scale {params.scale:q} --tables {params.tables:q} --out {params.paper:q} > {log:q} 2>&1"
)


if FIGURES_ONLY:

    rule figures_only:
        input:
            tables=[
                path
                for path in expand(f"{TABLES_DIR}/{{kind}}.csv", kind=[*TABLE_KINDS, *OPTIONAL_TABLES])
                if os.path.exists(path)
            ],
            info=f"{TABLES_DIR}/info.json",
        output:
            **PAPER_OUTPUTS,
        params:
            **FIGURES_PARAMS,
        log:
            f"{RES}/logs/figures_only.log",
        benchmark:
            f"{BENCH}/figures_only.tsv"
        threads: 1
        resources:
            **job_resources("small"),
        conda:
            "../../envs/hybridlab.yaml"
        shell:
            FIGURES_SHELL

else:

    rule table:
        input:
            lambda wc: run_outputs(TABLE_KINDS[wc.kind]),
        output:
            f"{TABLES_DIR}/{{kind}}.csv",
        params:
            hybridlab=HYBRIDLAB,
        log:
            f"{RES}/logs/table_{{kind}}.log",
        benchmark:
            f"{BENCH}/table_{{kind}}.tsv"
        wildcard_constraints:
            kind="|".join(TABLE_KINDS),
        conda:
            "../../envs/hybridlab.yaml"
        shell:
            "{params.hybridlab} aggregate --kind {wildcards.kind:q} --out {output:q} {input:q} > {log:q} 2>&1"

    if BUDGETS:

        # The scaling grid: the decayed end of every budget branch, then the fit of L(N, D) across sizes with its
        # bootstrap intervals (draws: the band of Fig. 2); the largest size is held out (analysis/scaling.py).
        rule budgets_table:
            input:
                branch_outputs("eval.csv"),
            output:
                f"{TABLES_DIR}/budgets.csv",
            params:
                hybridlab=HYBRIDLAB,
            log:
                f"{RES}/logs/table_budgets.log",
            benchmark:
                f"{BENCH}/table_budgets.tsv"
            threads: 1
            resources:
                **job_resources("small"),
            conda:
                "../../envs/hybridlab.yaml"
            shell:
                "{params.hybridlab} aggregate --kind eval --out {output:q} {input:q} > {log:q} 2>&1"

        rule scaling_fit:
            input:
                rules.budgets_table.output,
            output:
                fit=f"{TABLES_DIR}/scaling_fit.csv",
                draws=f"{TABLES_DIR}/scaling_draws.csv",
            params:
                common=COMMON,
                hybridlab=HYBRIDLAB,
            log:
                f"{RES}/logs/scaling_fit.log",
            benchmark:
                f"{BENCH}/scaling_fit.tsv"
            threads: 1
            resources:
                **job_resources("small"),
            conda:
                "../../envs/hybridlab.yaml"
            shell:
                "{params.hybridlab} scaling-fit --table {input:q} --out {output.fit:q} --draws-out {output.draws:q} {params.common} "
                "> {log:q} 2>&1"

    rule describe:
        output:
            f"{TABLES_DIR}/info.json",
        params:
            common=COMMON,
            hybridlab=HYBRIDLAB,
        log:
            f"{RES}/logs/describe.log",
        benchmark:
            f"{BENCH}/describe.tsv"
        conda:
            "../../envs/hybridlab.yaml"
        shell:
            "{params.hybridlab} describe --out {output:q} {params.common} > {log:q} 2>&1"


    rule figures:
        input:
            tables=expand(f"{TABLES_DIR}/{{kind}}.csv", kind=TABLE_KINDS),
            fit=expand(f"{TABLES_DIR}/{{name}}.csv", name=SCALING_TABLES) if BUDGETS and len(SIZES) > 1 else [],
            info=f"{TABLES_DIR}/info.json",
        output:
            **PAPER_OUTPUTS,
        params:
            **FIGURES_PARAMS,
        log:
            f"{RES}/logs/figures.log",
        benchmark:
            f"{BENCH}/figures.tsv"
        threads: 1
        resources:
            **job_resources("small"),
        conda:
            "../../envs/hybridlab.yaml"
        shell:
            FIGURES_SHELL


# paper/report.md: an index of every scale's report present under paper/, refreshed with the latest one.
rule report_index:
    input:
        f"{PAPER}/report.md",
    output:
        f"{config['paper_dir']}/report.md",
    params:
        hybridlab=HYBRIDLAB,
    log:
        f"{RES}/logs/report_index.log",
    benchmark:
        f"{BENCH}/report_index.tsv"
    conda:
        "../../envs/hybridlab.yaml"
    shell:
        "{params.hybridlab} report-index --paper \"$(dirname {output:q})\" > {log:q} 2>&1"
