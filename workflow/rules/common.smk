# Shared settings: the scale's plan comes from the package's Hydra configs (the one source of truth).
import os
import shlex
import sys

from hybridlab.config import ConfigError, check_workflow_config, load_config
from hybridlab.identity import check_workflow_data
from hybridlab.io import CorruptFileError
from hybridlab.resources import MAX_RUNTIME, planned_size
from hybridlab.analysis.schemas import RUN_FILES
from hybridlab.figures import FIGURE_NAMES

# The config is checked before any job starts: the schema, then every run config it implies. A bad value is
# one line naming the key, the value and what is allowed (sys.exit, not an exception: no traceback).
try:
    PLAN = check_workflow_config(config, f"{workflow.basedir}/workflow/schemas/config.schema.yaml")
except ConfigError as e:
    sys.exit(f"bad configuration: {e}")
RES = f"{config['results_dir']}/{config['scale']}"
# An existing data folder prepared with other settings (a changed data override, which `rerun-triggers: mtime`
# does not see) is refused here too: its runs were trained on it. `--forcerun prepare_data` (or --forceall)
# rebuilds it on purpose. Checked in the main Snakemake process only (a cluster job re-reads this file), and
# from the command line: Snakemake has not set workflow.dag_settings when it reads the Snakefile.
def _forced(rule):
    args = sys.argv[1:]
    if {"-F", "--forceall"} & set(args):
        return True
    flags = [i for i, a in enumerate(args) if a in ("-R", "--forcerun") or a.startswith("--forcerun=")]
    return any(rule in args[i + 1:] or args[i] == f"--forcerun={rule}" for i in flags)


if workflow.is_main_process and not _forced("prepare_data"):
    try:
        check_workflow_data(f"{RES}/data", config["scale"], config["overrides"])
    except (ConfigError, CorruptFileError) as e:
        sys.exit(f"bad configuration: {e}")
VARIANTS, SEEDS = PLAN["variants"], PLAN["seeds"]
SEEDS_BY_VARIANT = PLAN["seeds_by_variant"]  # a variant may run the first n seeds only (scale.seed_counts)
SIZES = PLAN["sizes"]
SCALE = config["scale"]
PAPER = f"{config['paper_dir']}/{SCALE}"
# The CLI of the Python that runs Snakemake (and, on a cluster, each job's Snakemake): jobs find it whatever the
# submitting shell's PATH holds (rules pass it as params.hybridlab).
HYBRIDLAB = f"{shlex.quote(sys.executable)} -m hybridlab"
# Arguments every stage gets: the scale and the Hydra overrides.
COMMON = " ".join([f"--scale {shlex.quote(SCALE)}", *(shlex.quote(o) for o in config["overrides"])])
ON_GPU = PLAN.get("accelerator", "cpu") != "cpu"


def gpu_wrap(count=1):
    """The command prefix that gives a job `count` GPUs of its own on a GPU machine (see the script); none on CPU."""
    if not ON_GPU:
        return ""
    script = shlex.quote(f"{workflow.basedir}/workflow/scripts/gpu_lock.py")
    return f"{shlex.quote(sys.executable)} {script}" + (f" --count {count}" if count > 1 else "") + " --"


# On a GPU machine every torch job takes one device; concurrent jobs get distinct GPUs.
GPU_WRAP = gpu_wrap()
EVAL_GPUS = 1 if ON_GPU else 0
RUN = f"{RES}/runs/{{size}}/{{variant}}/seed{{seed}}"
# The WSD scaling grid: one decay branch per budget point (train.budgets_k, schedule wsd); none at smoke/mini.
_CFG = load_config(SCALE, VARIANTS[0], SEEDS[0], config["overrides"])
# DDP: a training job with train.devices > 1 locks that many whole cards (every slot of each), so it counts
# as that many cards' worth of the `gpu` resource.
TRAIN_DEVICES = int(_CFG.train.devices)
TRAIN_WRAP = gpu_wrap(TRAIN_DEVICES)
TRAIN_GPUS = (1 if TRAIN_DEVICES == 1 else TRAIN_DEVICES * int(os.environ.get("HYBRIDLAB_JOBS_PER_GPU", "1"))) if ON_GPU else 0
BUDGETS = [str(k) for k in _CFG.train.budgets_k] if _CFG.train.schedule == "wsd" else []
GROUP_SEEDS = bool(_CFG.train.get("group_seeds", False))
GROUP_BRANCHES = bool(_CFG.train.get("group_branches", False))
# eval.group_runs: one job per variant runs every per-run evaluation and analysis of its seeds (evaluate_group);
# the per-run rules then match no variant.
GROUP_EVAL = bool(_CFG.eval.get("group_runs", False))
PER_RUN_VARIANTS = "(?!)" if GROUP_EVAL else "|".join(VARIANTS)
# Variants by their seed list (scale.seed_counts lets some variants run fewer seeds): one group rule per list.
SEED_GROUPS = {}
for _v in VARIANTS:
    SEED_GROUPS.setdefault(tuple(SEEDS_BY_VARIANT[_v]), []).append(_v)
# lm-evaluation-harness suites and tasks (eval.lm_eval.run); none: the lm_eval rule is not part of the DAG.
LM_EVAL = list(_CFG.eval.lm_eval.get("run") or [])


def budget_points(size):
    """The budget points a size's stable run reaches (its own k, e.g. S5 stops at k = 210 in the paper)."""
    k_max = _CFG.scale.get("budget_k_by_size", {}).get(size, _CFG.train.budget_k)
    return [k for k in BUDGETS if k_max is None or float(k) <= k_max]


def branch_outputs(name):
    return [path for size in SIZES for v in VARIANTS for path in expand(
        f"{RUN}/budget{{k}}/{name}", size=size, variant=v, seed=SEEDS_BY_VARIANT[v], k=budget_points(size))]


wildcard_constraints:
    size="|".join(SIZES),
    variant="|".join(VARIANTS),
    seed=r"\d+",


def run_outputs(name):
    return [p for v in VARIANTS for p in expand(f"{RUN}/{name}", size=SIZES, variant=v, seed=SEEDS_BY_VARIANT[v])]


# What each job needs (hybridlab.resources, from the scale and the job's model size): a rule of kind K declares
# `threads: job_threads(K)` and `resources: **job_resources(K)`, callables of the job's wildcards (size; k for a
# decay branch). Memory and wall time grow with each retry (`attempt`), the time up to MAX_RUNTIME. Profiles
# override per rule (set-threads, set-resources). `benchmark:` files (results/S/benchmarks/) record what each job
# used: wall time, max RSS, CPU time.
def _job_size(kind, wildcards, n_runs=1):
    keys = wildcards.keys()
    return planned_size(SCALE, tuple(config["overrides"]), wildcards["size"] if "size" in keys else SIZES[0], kind,
                        n_runs, float(wildcards["k"]) if "k" in keys else None)


def job_threads(kind, n_runs=1):
    return lambda wildcards: _job_size(kind, wildcards, n_runs).threads


def _branch_size(wildcards, k):
    return _job_size("train_branch", {**dict(wildcards.items()), "k": k})


def branches_threads(budgets):
    return lambda wildcards: max(_branch_size(wildcards, k).threads for k in budgets)


def branches_resources(budgets, **extra):
    """A job training several decay branches in turn: one branch's memory, their run times added."""
    return {
        "mem_mb": lambda wildcards, attempt: max(_branch_size(wildcards, k).mem_mb for k in budgets) * attempt,
        "runtime": lambda wildcards, attempt: min(
            MAX_RUNTIME, sum(_branch_size(wildcards, k).runtime for k in budgets) * attempt),
        **extra,
    }


def job_resources(kind, n_runs=1, **extra):
    return {
        "mem_mb": lambda wildcards, attempt: _job_size(kind, wildcards, n_runs).mem_mb * attempt,
        "runtime": lambda wildcards, attempt: min(MAX_RUNTIME, _job_size(kind, wildcards, n_runs).runtime * attempt),
        **extra,
    }


BENCH = f"{RES}/benchmarks"


# Before a SLURM run submits anything: every job must fit a node of its partition (hybridlab.cluster), else the
# run stops here naming the jobs, what they ask and what the partition offers (SLURM would leave them pending).
onstart:
    if workflow.executor_plugin is not None and workflow.executor_plugin.cli_prefix == "slurm":
        from snakemake.exceptions import WorkflowError

        from hybridlab.cluster import ClusterTooSmall, check_jobs, request_of

        _requests = [request_of(job.rule.name, ",".join(f"{k}={v}" for k, v in job.wildcards_dict.items()),
                                job.threads, dict(job.resources.items()))
                     for job in workflow.dag.needrun_jobs() if not job.is_local]
        try:
            check_jobs(_requests)
        except ClusterTooSmall as e:
            raise WorkflowError(str(e)) from None
