"""Figures and the replication report, built from result tables only (this package never imports torch)."""

# Every figure the pipeline writes (as .pdf and .png); the Snakefile declares these as outputs.
FIGURE_NAMES = ("fig_longctx", "fig_niah_by_length", "fig_retrieval")
