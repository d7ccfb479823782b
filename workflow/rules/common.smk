# Shared settings: the scale's plan comes from the package's Hydra configs (the one source of truth).
import os
import shlex

from hybridlab.config import ConfigError, scale_plan, variant_names
from hybridlab.figures import FIGURE_NAMES

try:
    PLAN = scale_plan(config["scale"], config["overrides"])
except ConfigError as e:
    raise WorkflowError(f"bad configuration: {e}") from None
VARIANTS = config["variants"] or PLAN["variants"]
SEEDS = config["seeds"] or PLAN["seeds"]
SIZES = PLAN["sizes"]
for _v in VARIANTS:
    if _v not in variant_names():
        raise WorkflowError(f"config key 'variants': unknown variant {_v!r}; allowed: {', '.join(variant_names())}")
SCALE = config["scale"]
RES = f"{config['results_dir']}/{SCALE}"
PAPER = f"{config['paper_dir']}/{SCALE}"
# Arguments every stage gets: the scale and the Hydra overrides.
COMMON = " ".join([f"--scale {shlex.quote(SCALE)}", *(shlex.quote(o) for o in config["overrides"])])
ON_GPU = PLAN.get("accelerator", "cpu") != "cpu"
# On a GPU machine every torch job takes one device; concurrent jobs get distinct GPUs (see the script).
GPU_WRAP = f"python {workflow.basedir}/workflow/scripts/gpu_lock.py --" if ON_GPU else ""
RUN = f"{RES}/runs/{{size}}/{{variant}}/seed{{seed}}"


wildcard_constraints:
    size="|".join(SIZES),
    variant="|".join(VARIANTS),
    seed=r"\d+",


def run_outputs(name):
    return expand(f"{RUN}/{name}", size=SIZES, variant=VARIANTS, seed=SEEDS)
