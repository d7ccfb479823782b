"""Column schemas of the per-run result tables that `hybridlab evaluate`, `receptive`, `analyze`, `probe` and
`gradinf` write, and the file each is written to in a run folder. Torch-free: `hybridlab aggregate` and the
figures read it. Every table is tidy: one row per observation, the measured number in `value`.

  eval.csv        val_loss, val_loss_local, log_longppl, loss_by_pos (length = bucket upper bound),
                  niah_acc (length = NIAH length), ruler_<task> (length = eval-set length)
  heads.csv       needle_mass, entropy, entropy_norm, copy_score per attention head (role full|efficient)
  receptive.csv   losses with the full or the efficient layers limited to the last `window` tokens
  probe.csv       probe_acc per layer of the residual stream (`resid`) or the layer's delta (`delta`)
  trajectory.csv  entropy, entropy_norm, q_l2, k_l2, q_rel_l2, k_rel_l2, needle_mass of the traced retrieval
                  heads that formed (none for a run in which no full-attention retrieval head formed)
  traced.csv      the traced heads: the top-k full-attention heads by final needle mass, each with its layer,
                  role, final mass, onset and whether it formed (crossed eval.onset_threshold)
  onset.csv       onset_tokens, onset_step (+ _interp) of the strongest full head and of any full head
  gradinf.csv     grad_influence by distance bucket (distance = bucket upper bound)
  masking.csv     niah_acc with k heads masked: heads top | random (k = 0: heads none, the unmasked model)
  lmeval.csv      lm-evaluation-harness scores per task, metric, filter and length, and each suite's mean
                  (evals/harness.py); written only when eval.lm_eval.run names tasks (OPTIONAL_TABLES)
"""

from __future__ import annotations

RUN_KEYS = ("variant", "seed", "step", "tokens")

EVAL_COLUMNS = (*RUN_KEYS, "metric", "length", "value")
HEAD_COLUMNS = (*RUN_KEYS, "layer", "head", "role", "metric", "length", "value")
RECEPTIVE_COLUMNS = (*RUN_KEYS, "constrained", "window", "metric", "value")
PROBE_COLUMNS = (*RUN_KEYS, "layer", "feature", "metric", "value")
TRAJECTORY_COLUMNS = (*RUN_KEYS, "layer", "head", "metric", "value")
TRACED_COLUMNS = ("variant", "seed", "rank", "layer", "head", "role", "final_mass", "onset_tokens", "formed")
ONSET_COLUMNS = ("variant", "seed", "selection", "layer", "head", "metric", "value", "formed")
GRADINF_COLUMNS = (*RUN_KEYS, "distance", "metric", "value")
MASKING_COLUMNS = (*RUN_KEYS, "k", "heads", "length", "metric", "value")

# A training run's metrics table (metrics.csv; aggregated as tables/train.csv with variant and seed added).
TRAIN_COLUMNS = ("step", "tokens", "loss", "lr", "tokens_per_s", "mfu", "peak_mem_gb")

TABLES = {
    "eval": EVAL_COLUMNS,
    "heads": HEAD_COLUMNS,
    "receptive": RECEPTIVE_COLUMNS,
    "probe": PROBE_COLUMNS,
    "trajectory": TRAJECTORY_COLUMNS,
    "traced": TRACED_COLUMNS,
    "onset": ONSET_COLUMNS,
    "gradinf": GRADINF_COLUMNS,
    "masking": MASKING_COLUMNS,
}
LMEVAL_COLUMNS = (*RUN_KEYS, "task", "metric", "filter", "length", "value", "stderr")
# Tables a run has only when configured (the lm_eval rule runs when eval.lm_eval.run is not empty).
OPTIONAL_TABLES = {"lmeval": LMEVAL_COLUMNS}
# The per-run file of each table kind (runs/{variant}/seed{seed}/<file>).
RUN_FILES = {kind: f"{kind}.csv" for kind in TABLES}
OPTIONAL_RUN_FILES = {kind: f"{kind}.csv" for kind in OPTIONAL_TABLES}
