"""Figures, tables and the replication report, built from result tables only (this package never imports torch).

Importing this package is cheap (no matplotlib): the Snakefile reads the names below to declare outputs.
"""

# Every figure the pipeline writes (as .pdf and .png, a placeholder when its inputs are missing at a scale),
# with its category in `snakemake --report`. Order = order in the report.
FIGURES = {
    "fig2_scaling": "1 Scaling and emergence",
    "fig_emergence": "1 Scaling and emergence",
    "fig3_receptive": "2 Mechanism: where long-range retrieval happens",
    "fig4_probe": "2 Mechanism: where long-range retrieval happens",
    "fig_gradinf": "2 Mechanism: where long-range retrieval happens",
    "fig5_retrieval": "3 Mechanism: retrieval heads",
    "fig5_dynamics": "3 Mechanism: retrieval heads",
    "fig_onset": "3 Mechanism: retrieval heads",
    "fig_masking": "3 Mechanism: retrieval heads",
    "fig_design": "4 Design",
    "fig8_nope": "4 Design",
    "fig_ruler": "5 Long-context evaluation",
    "fig_loss_by_pos": "5 Long-context evaluation",
}
FIGURE_NAMES = tuple(FIGURES)
# Every table the pipeline writes, each as .csv, .md and .tex under paper/{scale}/tables/.
TABLE_NAMES = ("table1_final", "table2_nope", "table3_scaling", "table4_c1_grid", "table_traced", "claims",
               "claims_seeds")
