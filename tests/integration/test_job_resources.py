"""Dry runs of the workflow through the SLURM profile: every job of the paper DAG gets its threads, memory,
runtime and GPUs from the rules (asserted per rule, `use rule ... as` rules included), and every job of the smoke
DAG fits a 2-CPU laptop-sized node."""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

from hybridlab.cluster import Node, request_of, unfit
from hybridlab.resources import MAX_RUNTIME, MIN_RUNTIME

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.integration
# What the SLURM plugin reads from a job (the other resources are Snakemake's own or the profile's).
KEYS = ("mem_mb", "runtime", "gpu")
LOCAL = {"all", "table", "describe", "report_index"}  # run inside the Snakemake process (Snakefile localrules)


def dry_run_jobs(workdir: Path, scale: str) -> list[dict]:
    """Every job of `snakemake -n --workflow-profile profiles/slurm --config scale=SCALE`: rule, wildcards, threads
    and resources as Snakemake prints them."""
    exe = Path(sys.executable).with_name("snakemake")
    cmd = [str(exe if exe.exists() else shutil.which("snakemake")), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), "-n", "--workflow-profile", str(REPO / "profiles" / "slurm"),
           "--config", f"scale={scale}", "results_dir=results", "paper_dir=paper"]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=workdir, timeout=600,
                         env={**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"})
    assert out.returncode == 0, out.stderr[-3000:]
    jobs = []
    for block in re.split(r"\n(?=(?:local)?rule \w+:\n)", out.stdout):
        head = re.match(r"(local)?rule (\w+):\n", block)
        if not head:
            continue
        fields = dict(re.findall(r"^    (\w+): (.*)$", block, flags=re.M))
        resources = dict(re.findall(r"(\w+)=('[^']*'|[^,]*)", fields.get("resources", "")))
        jobs.append({"rule": head.group(2), "local": head.group(2) in LOCAL, "wildcards": fields.get("wildcards", ""),
                     "threads": int(fields.get("threads", 1)),
                     "resources": {k: int(v) if v.isdigit() else v for k, v in resources.items()}})
    return jobs


# Per rule of the paper DAG: how many jobs, (fewest, most) threads, GPUs. Training feeds its loader workers.
PAPER = {
    "prepare_tokenizer": (1, (1, 1), 0), "prepare_group": (514, (8, 8), 0), "prepare_data": (1, (1, 1), 0),
    "train": (50, (5, 5), 1), "train_branch": (260, (5, 5), 1), "evaluate": (50, (1, 1), 1),
    "evaluate_branch": (260, (1, 1), 1), "receptive": (50, (1, 1), 1), "analyze": (50, (1, 1), 1),
    "probe": (50, (1, 1), 1), "gradinf": (50, (1, 1), 1), "budgets_table": (1, (1, 1), 0),
    "scaling_fit": (1, (1, 1), 0), "figures": (1, (1, 1), 0),
}


@pytest.mark.slow
def test_paper_dag_gives_every_job_its_resources(tmp_path):
    jobs = dry_run_jobs(tmp_path, "paper")
    by_rule = defaultdict(list)
    for job in jobs:
        by_rule[job["rule"]].append(job)
    assert set(by_rule) == set(PAPER) | LOCAL
    for rule, (count, (lo, hi), gpus) in PAPER.items():
        assert len(by_rule[rule]) == count, rule
        for job in by_rule[rule]:
            res, where = job["resources"], (rule, job["wildcards"])
            assert all(isinstance(res.get(k), int) for k in KEYS if k != "gpu" or gpus), (where, res)
            assert lo <= job["threads"] <= hi, (where, job["threads"])
            assert int(res.get("gpu", 0)) == gpus, (where, res)
            assert 512 <= res["mem_mb"] <= 64_000, (where, res)  # a GPU node's share; the largest is S5's
            assert MIN_RUNTIME <= res["runtime"] <= MAX_RUNTIME, (where, res)
    per_size = {rule: {re.search(r"size=(\w+)", j["wildcards"]).group(1): j["resources"] for j in by_rule[rule]}
                for rule in ("train", "evaluate", "analyze", "probe", "gradinf", "receptive")}
    for rule, sizes in per_size.items():  # S5 at 16K needs more than S1: sized per job, also the `use rule` ones
        assert sizes["S5"]["mem_mb"] > sizes["S1"]["mem_mb"], rule
    assert per_size["train"]["S5"]["runtime"] == MAX_RUNTIME  # ~100B tokens: trained in slices
    # the `use rule ... as` rules are sized for their own work, not their parent's (evaluate)
    assert per_size["analyze"]["S5"]["runtime"] != per_size["evaluate"]["S5"]["runtime"]
    s5_branches = [j["resources"]["runtime"] for j in by_rule["evaluate_branch"] if "size=S5" in j["wildcards"]]
    assert max(s5_branches) < per_size["evaluate"]["S5"]["runtime"]  # one checkpoint, not the whole trajectory


@pytest.mark.slow
def test_smoke_dag_fits_a_two_cpu_node(tmp_path):
    jobs = [j for j in dry_run_jobs(tmp_path, "smoke") if not j["local"]]
    assert {j["rule"] for j in jobs} >= {"prepare_data", "train", "evaluate", "analyze", "figures"}
    laptop = [Node("debug", True, cpus=2, mem_mb=4096, gpus=0, time_limit=math.inf)]
    requests = [request_of(j["rule"], j["wildcards"], j["threads"], j["resources"]) for j in jobs]
    assert unfit(requests, laptop) == []
    assert all(r.runtime <= 60 for r in requests), [r for r in requests if r.runtime > 60]
    # and a smaller node is refused, naming the rules (the check is not vacuous)
    assert unfit(requests, [Node("debug", True, 2, 1024, 0, math.inf)])


@pytest.mark.slow
def test_mini_dag_sizes_each_seed_group_for_its_runs(tmp_path):
    """train.group_seeds and eval.group_runs: one job per variant does all its seeds (8 or 4 at mini)."""
    jobs = [j for j in dry_run_jobs(tmp_path, "mini") if not j["local"]]
    groups = defaultdict(list)
    for job in jobs:
        if re.fullmatch(r"(train|evaluate)_group_\d+", job["rule"]):
            groups[job["rule"]].append(job["resources"])
    assert set(groups) == {"train_group_0", "train_group_1", "evaluate_group_0", "evaluate_group_1"}
    for rule, res in groups.items():
        assert len(res) == 5 and all(r == res[0] for r in res), rule  # one per variant, sized alike within a group
        assert isinstance(res[0]["mem_mb"], int) and isinstance(res[0]["runtime"], int) and res[0]["gpu"] == 1, rule
    for kind in ("train", "evaluate"):  # group 0 holds 8 seeds, group 1 holds 4
        assert groups[f"{kind}_group_0"][0]["runtime"] > groups[f"{kind}_group_1"][0]["runtime"], kind
