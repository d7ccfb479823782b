"""Whether a SLURM cluster can run every job the workflow is about to submit, checked before anything is
submitted: SLURM accepts a job that no node of its partition can hold and leaves it pending for ever
(Reason=PartitionConfig or Resources), and Snakemake then waits in silence.

A job fits a partition when one of the partition's nodes has at least its CPUs (threads, or cpus_per_task times
tasks_per_node), memory (mem_mb, or mem_mb_per_cpu times the CPUs) and GPUs (`gpu`, or the count in `gres`), and
the partition's time limit is at least its runtime. The nodes come from `sinfo -N` (CPUs, memory, GRES, time
limit per node and partition). Torch-free; the Snakefile calls `check_jobs` from its onstart hook.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterable
from dataclasses import dataclass

SINFO = ["sinfo", "-h", "-N", "-o", "%P|%c|%m|%G|%l"]


@dataclass(frozen=True)
class Node:
    partition: str
    default: bool  # the partition is the cluster's default (sinfo marks it with *)
    cpus: int
    mem_mb: int
    gpus: int
    time_limit: float  # minutes; inf when unlimited


@dataclass(frozen=True)
class Request:
    """What one job asks SLURM for on one node."""

    rule: str
    wildcards: str  # for the report
    partition: str | None
    cpus: int
    mem_mb: int
    gpus: int
    runtime: float  # minutes (0: none asked)

    def describe(self) -> str:
        return f"{self.cpus} CPUs, {self.mem_mb} MB, {self.gpus} GPUs, {self.runtime:g} min"


class ClusterTooSmall(Exception):  # noqa: N818 (the report itself)
    pass


def parse_minutes(limit: str) -> float:
    """A SLURM time (minutes, minutes:seconds, hours:minutes:seconds, days-hours[:minutes[:seconds]], or
    infinite/UNLIMITED) in minutes."""
    limit = limit.strip()
    if limit.lower() in ("infinite", "unlimited", "n/a", ""):
        return float("inf")
    days, dash, clock = limit.rpartition("-")
    parts = [int(p) for p in clock.split(":")]
    if not 1 <= len(parts) <= 3:
        raise ValueError(f"not a SLURM time: {limit!r}")
    if dash:  # days-hours[:minutes[:seconds]]
        hours, minutes, seconds = (parts + [0, 0])[:3]
        return int(days) * 1440 + hours * 60 + minutes + seconds / 60
    if len(parts) == 3:
        return parts[0] * 60 + parts[1] + parts[2] / 60
    return parts[0] + (parts[1] / 60 if len(parts) == 2 else 0)


def gres_gpus(gres: str) -> int:
    """The GPU count of a GRES string ('gpu:4', 'gpu:a100:4(S:0-1)', 'gpu:2,tmpdisk:100'), 0 without GPUs."""
    total = 0
    for item in (gres or "").split(","):
        fields = re.sub(r"\(.*?\)", "", item).strip().split(":")
        if fields[0] == "gpu" and len(fields) >= 2 and fields[-1].isdigit():
            total += int(fields[-1])
    return total


def parse_sinfo(text: str) -> list[Node]:
    """Nodes from `sinfo -h -N -o '%P|%c|%m|%G|%l'`: one line per (node, partition)."""
    nodes = []
    for line in text.splitlines():
        if not line.strip():
            continue
        partition, cpus, mem, gres, limit = (f.strip() for f in line.split("|"))
        nodes.append(Node(partition.rstrip("*"), partition.endswith("*"), int(cpus.rstrip("+")),
                          int(mem.rstrip("+")), gres_gpus(gres), parse_minutes(limit)))
    return nodes


def sinfo_nodes() -> list[Node]:
    out = subprocess.run(SINFO, capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise ClusterTooSmall(f"`{' '.join(SINFO)}` failed: {out.stderr.strip()}")
    return parse_sinfo(out.stdout)


def request_of(rule: str, wildcards: str, threads: int, resources: dict) -> Request:
    """A job's request from its threads and Snakemake resources, read as the SLURM executor plugin reads them."""
    per_node = int(resources.get("tasks_per_node") or 1)
    cpus = int(resources.get("cpus_per_task") or threads) * per_node
    if resources.get("mem_mb_per_cpu"):
        mem = int(resources["mem_mb_per_cpu"]) * cpus
    else:
        mem = int(resources.get("mem_mb") or 0)
    gpus = int(resources.get("gpu") or 0) or gres_gpus(str(resources.get("gres") or ""))
    partition = resources.get("slurm_partition") or None
    return Request(rule, wildcards, partition, cpus, mem, gpus, float(resources.get("runtime") or 0))


def fits(request: Request, node: Node) -> bool:
    return (request.cpus <= node.cpus and request.mem_mb <= node.mem_mb and request.gpus <= node.gpus
            and request.runtime <= node.time_limit)


def unfit(requests: Iterable[Request], nodes: list[Node]) -> list[str]:
    """One line per rule and request that no node of its partition (the default one when none is named) holds,
    with the number of such jobs and one example's wildcards."""
    default = next((n.partition for n in nodes if n.default), None)
    groups: dict[tuple, list[Request]] = {}
    for r in requests:
        partition = r.partition or default
        candidates = [n for n in nodes if n.partition == partition]
        if not any(fits(r, n) for n in candidates):
            groups.setdefault((r.rule, partition, r.describe()), []).append(r)
    lines = []
    for (rule, partition, asks), jobs in groups.items():
        what = f"{rule} ({len(jobs)} job{'s' if len(jobs) > 1 else ''}" + (
            f", e.g. {jobs[0].wildcards})" if jobs[0].wildcards else ")")
        candidates = [n for n in nodes if n.partition == partition]
        if not candidates:
            known = ", ".join(sorted({n.partition for n in nodes})) or "none"
            lines.append(f"{what}: partition {partition!r} does not exist (partitions: {known})")
            continue
        lines.append(f"{what}: asks for {asks} in partition {partition!r}, whose nodes offer at most "
                     f"{max(n.cpus for n in candidates)} CPUs, {max(n.mem_mb for n in candidates)} MB, "
                     f"{max(n.gpus for n in candidates)} GPUs, {max(n.time_limit for n in candidates):g} min")
    return lines


def check_jobs(requests: list[Request], nodes: list[Node] | None = None) -> None:
    """Raise ClusterTooSmall naming every job the cluster cannot run (and what would fit), or return."""
    nodes = sinfo_nodes() if nodes is None else nodes
    lines = unfit(requests, nodes)
    if lines:
        raise ClusterTooSmall(
            "jobs that no node of their SLURM partition can hold, so nothing was submitted:\n  "
            + "\n  ".join(lines) + "\nLower a rule's request (a profile's set-threads / set-resources, e.g. "
            "`--set-resources train:mem_mb=16000`), or send it to a partition that holds it (slurm_partition).")
