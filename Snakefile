# hybridlab: the replication pipeline of "Rethinking the Role of Efficient Attention in Hybrid Architectures".
# Stages (one file each under workflow/rules/): data -> train -> evaluate / analyze -> tables -> figures + report.
# Default target: the report of the configured scale (smoke unless --config scale=...).

from snakemake.utils import min_version

min_version("9.0")


configfile: f"{workflow.basedir}/config/config.yaml"

# The config is checked against workflow/schemas/config.schema.yaml at the top of common.smk, with one-line
# errors, before any rule is defined.


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/eval.smk"
include: "workflow/rules/analysis.smk"
include: "workflow/rules/figures.smk"


# Jobs that only concatenate tables or describe the plan run in the main process, never as cluster jobs.
localrules:
    all,
    table,
    describe,
    report_index,


rule all:
    default_target: True
    input:
        f"{config['paper_dir']}/report.md",
