"""The slurm profile drives Snakemake DAGs through a real one-node SLURM cluster on localhost."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]

# Two rules, one consuming the other's outputs; every job records the SLURM job that ran it.
TOY_SNAKEFILE = textwrap.dedent(
    """
    rule all:
        input: "combined.txt"

    rule prepare_data:
        output: "parts/{part}.txt"
        shell: "echo {wildcards.part} $SLURM_JOB_ID $SLURM_CPUS_PER_TASK > {output}"

    rule figures:
        input: expand("parts/{part}.txt", part=["a", "b"])
        output: "combined.txt"
        shell: "cat {input} > {output} && echo combine $SLURM_JOB_ID $SLURM_CPUS_PER_TASK >> {output}"
    """
)


def test_toy_dag_runs_through_slurm(
    slurm_cluster: None, slurm_profile: Path, run_snakemake: Callable[..., str], tmp_path: Path
) -> None:
    workdir = tmp_path / "toy"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(TOY_SNAKEFILE)
    log = run_snakemake(["--profile", str(slurm_profile), "--workflow-profile", "none"], workdir, "toy DAG")

    rows = [line.split() for line in (workdir / "combined.txt").read_text().splitlines()]
    assert [row[0] for row in rows] == ["a", "b", "combine"]
    job_ids = [row[1] for row in rows]
    assert all(job_id.isdigit() for job_id in job_ids), f"not run under SLURM: {rows}"
    assert len(set(job_ids)) == 3, "each job must be its own SLURM job"
    assert all(row[2] == "1" for row in rows), "each job asks for one CPU"
    submitted = re.findall(r"SLURM jobid (\d+)", log)
    assert sorted(submitted) == sorted(job_ids)
    assert "4 of 4 steps (100%) done" in log  # three SLURM jobs and the local target rule
    states = slurm_states(submitted)
    assert all(state == "COMPLETED" for state in states.values()), states


def slurm_jobs(job_ids: list[str]) -> dict[str, dict[str, str]]:
    """SLURM's own record of each job (kept MinJobAge seconds): its fields by job id; the state, what it was
    given and its comment (rule and wildcards) are appended to the log excerpt."""
    lines = subprocess.run(["scontrol", "-o", "show", "job"], capture_output=True, text=True, timeout=30).stdout
    jobs = {}
    with open(Path(__file__).resolve().parent / "last_slurm_log.txt", "a") as excerpt:
        for line in lines.splitlines():
            fields = dict(f.split("=", 1) for f in line.split() if "=" in f)
            if fields.get("JobId") in job_ids:
                jobs[fields["JobId"]] = fields
                excerpt.write(" ".join(f"{k}={fields.get(k)}" for k in (
                    "JobId", "JobName", "JobState", "ExitCode", "NumCPUs", "MinMemoryNode", "TimeLimit",
                    "Restarts", "Comment")) + "\n")
    assert set(jobs) == set(job_ids), f"SLURM has no record of {set(job_ids) - set(jobs)}"
    return jobs


def megabytes(memory: str) -> float:
    """SLURM's memory field (1536M, 2G, 1.50G) in MB."""
    return float(memory[:-1]) * {"M": 1, "G": 1024, "T": 1024**2}[memory[-1]]


def slurm_states(job_ids: list[str]) -> dict[str, str]:
    return {job: fields.get("JobState", "?") for job, fields in slurm_jobs(job_ids).items()}


# docs/cluster.md's multi-GPU recipe: one SLURM job, N tasks on one node started by srun, one Lightning
# process per task (SLURMEnvironment). On the CPU runner: 2 tasks, DDP over gloo, stand-in GPUs requested.
DDP_SNAKEFILE = textwrap.dedent(
    """
    rule train_ddp:
        output: "ddp/rank0.json", "ddp/rank1.json"
        resources:
            mpi="srun", nodes=1, tasks_per_node=2, gres="gpu:2", cpus_per_task=1, mem_mb=2000
        shell: "{resources.mpi} --ntasks-per-node={resources.tasks_per_node} {PYTHON} ddp_fit.py ddp"
    """
)

DDP_FIT = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path

    import lightning as L
    import torch
    from torch.utils.data import DataLoader, TensorDataset


    class Tiny(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.layer = torch.nn.Linear(4, 1)

        def training_step(self, batch, _):
            x, y = batch
            return torch.nn.functional.mse_loss(self.layer(x), y)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)


    trainer = L.Trainer(
        accelerator="cpu", devices=2, num_nodes=1, strategy="ddp", max_steps=2, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )
    trainer.fit(Tiny(), DataLoader(TensorDataset(torch.randn(64, 4), torch.randn(64, 1)), batch_size=8))
    record = {
        "rank": trainer.global_rank,
        "world_size": trainer.world_size,
        "environment": type(trainer.strategy.cluster_environment).__name__,
        "slurm_job": os.environ["SLURM_JOB_ID"],
        "ntasks": os.environ["SLURM_NTASKS"],
    }
    Path(sys.argv[1], f"rank{trainer.global_rank}.json").write_text(json.dumps(record))
    """
)


def test_ddp_job_runs_one_lightning_process_per_task(
    slurm_cluster: None, slurm_profile: Path, run_snakemake: Callable[..., str], tmp_path: Path
) -> None:
    workdir = tmp_path / "ddp"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(f"PYTHON = {sys.executable!r}\n" + DDP_SNAKEFILE)
    (workdir / "ddp_fit.py").write_text(DDP_FIT)
    run_snakemake(["--profile", str(slurm_profile), "--workflow-profile", "none"], workdir, "DDP job")

    records = [json.loads((workdir / "ddp" / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [rec["rank"] for rec in records] == [0, 1]
    assert all(rec["world_size"] == 2 for rec in records)
    assert all(rec["environment"] == "SLURMEnvironment" for rec in records)
    assert all(rec["ntasks"] == "2" for rec in records)
    assert records[0]["slurm_job"] == records[1]["slurm_job"], "both ranks belong to one SLURM job"


# Measurements of the machine and its load, not results: they differ between any two runs.
MEASURED_COLUMNS = {"tokens_per_s", "mfu", "peak_mem_gb"}


def test_smoke_pipeline_through_slurm_matches_local_run(
    slurm_cluster: None, slurm_profile: Path, run_snakemake: Callable[..., str], tmp_path: Path
) -> None:
    """The real smoke DAG, once on this machine and once as SLURM jobs with the rules' own sizes (the shipped
    profile, the venv not on PATH): every job completes, and the result tables are the same."""
    if not (REPO / "Snakefile").is_file():
        pytest.skip("no Snakefile at the repository root")
    tables = {}
    for label, executor_args in {
        "local": ["--cores", "2"],
        "slurm": ["--profile", str(slurm_profile)],
    }.items():
        workdir = tmp_path / label
        workdir.mkdir()
        log = run_snakemake(
            [
                "--snakefile",
                str(REPO / "Snakefile"),
                "--directory",
                str(workdir),
                "--workflow-profile",
                "none",
                *executor_args,
                "--config",
                "scale=smoke",
            ],
            REPO,
            f"smoke DAG, {label}",
        )
        tables[label] = {p.name: p for p in sorted((workdir / "results/smoke/tables").glob("*.csv"))}
        if label == "slurm":
            rules = re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log)
            assert {"prepare_data", "train", "evaluate", "analyze", "figures"} <= set(rules)
            submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
            # every job but the Snakefile's localrules went through SLURM and completed
            local = {"all", "table", "describe", "report_index"}
            assert len(submitted) == sum(rule not in local for rule in rules)
            jobs = slurm_jobs(submitted)
            assert {j["JobState"] for j in jobs.values()} == {"COMPLETED"}
            for j in jobs.values():  # what the rules declare for the smoke scale, as SLURM granted it
                assert int(j["NumCPUs"]) <= 2 and 1000 <= megabytes(j["MinMemoryNode"]) <= 2048, j
                assert j["Comment"].startswith("rule_"), j
            assert {j["Comment"].split("_wildcards_")[0] for j in jobs.values()} >= {"rule_train", "rule_evaluate"}
            assert (workdir / "paper/smoke/report.md").is_file()

    assert tables["local"], "the local run wrote no result tables"
    assert tables["slurm"].keys() == tables["local"].keys()
    for name, local_csv in tables["local"].items():
        local, via_slurm = (pd.read_csv(path) for path in (local_csv, tables["slurm"][name]))
        assert list(via_slurm.columns) == list(local.columns), f"tables/{name}: columns differ"
        measured = [c for c in local.columns if c in MEASURED_COLUMNS]
        pd.testing.assert_frame_equal(
            via_slurm.drop(columns=measured), local.drop(columns=measured), check_exact=True, obj=f"tables/{name}"
        )


def test_a_job_no_node_can_hold_is_reported_before_anything_is_submitted(
    slurm_cluster: None, slurm_profile: Path, run_snakemake: Callable[..., str], tmp_path: Path
) -> None:
    """The smoke DAG with the training asking for 64 CPUs: the run stops before submitting, naming the rule,
    what it asks and what the node has, instead of leaving the job pending (Reason=PartitionConfig)."""
    nodes = subprocess.run(["sinfo", "-h", "-N", "-o", "%c"], capture_output=True, text=True, timeout=30).stdout
    workdir = tmp_path / "too_big"
    workdir.mkdir()
    log = run_snakemake(
        ["--snakefile", str(REPO / "Snakefile"), "--directory", str(workdir), "--workflow-profile", "none",
         "--profile", str(slurm_profile), "--set-threads", "train=64", "--config", "scale=smoke"],
        REPO, "smoke DAG, training too big for the node", timeout_s=300, check=False)
    assert "submitted with SLURM jobid" not in log, log[-4000:]
    cpus = max(int(c) for c in nodes.split())
    assert re.search(rf"train \(4 jobs, e\.g\. size=tiny,variant=\w+,seed=0\): asks for 64 CPUs, \d+ MB, 0 GPUs, "
                     rf"\d+ min in partition 'debug', whose nodes offer at most {cpus} CPUs", log), log[-4000:]
    assert not (workdir / "results" / "smoke" / "data").exists()  # not even the data job ran
