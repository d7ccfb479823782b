"""The pre-submission check: a job no node of its SLURM partition can hold is reported, with what it asks and what
the partition offers; jobs that fit pass."""

from __future__ import annotations

import math

import pytest

from hybridlab.cluster import (
    ClusterTooSmall,
    Node,
    check_jobs,
    gres_gpus,
    parse_minutes,
    parse_sinfo,
    request_of,
    unfit,
)

# `sinfo -h -N -o '%P|%c|%m|%G|%l'` of a two-partition cluster (a node listed once per partition).
SINFO = """\
cpu*|64|256000|(null)|2-00:00:00
cpu*|32|128000|(null)|2-00:00:00
gpu|32|512000|gpu:a100:4(S:0-1)|1-00:00:00
gpu|16|256000|gpu:2,tmpdisk:100|1-00:00:00
"""


@pytest.mark.parametrize("text, minutes", [
    ("infinite", math.inf), ("UNLIMITED", math.inf), ("45", 45), ("30:00", 30), ("2:00:00", 120),
    ("1-00:00:00", 1440), ("2-12", 3600), ("1-2:30", 1590), ("0:90", 1.5),
])
def test_slurm_times_parse_to_minutes(text, minutes):
    assert parse_minutes(text) == minutes


def test_gres_counts_gpus_of_any_model():
    assert gres_gpus("gpu:4") == 4
    assert gres_gpus("gpu:a100:4(S:0-1)") == 4
    assert gres_gpus("gpu:2,tmpdisk:100") == 2
    assert gres_gpus("(null)") == 0 and gres_gpus("") == 0


def test_sinfo_lines_become_nodes_with_the_default_partition_marked():
    nodes = parse_sinfo(SINFO)
    assert [n.partition for n in nodes] == ["cpu", "cpu", "gpu", "gpu"]
    assert [n.default for n in nodes] == [True, True, False, False]
    assert nodes[2] == Node("gpu", False, 32, 512000, 4, 1440)


def test_requests_are_read_as_the_slurm_plugin_reads_them():
    r = request_of("train", "size=S1", 5, {"mem_mb": 16000, "runtime": 600, "gpu": 1, "slurm_partition": "gpu"})
    assert (r.partition, r.cpus, r.mem_mb, r.gpus, r.runtime) == ("gpu", 5, 16000, 1, 600)
    ddp = request_of("train", "", 1, {"cpus_per_task": 8, "tasks_per_node": 4, "mem_mb_per_cpu": 1000,
                                      "gres": "gpu:a100:4"})
    assert (ddp.cpus, ddp.mem_mb, ddp.gpus, ddp.partition, ddp.runtime) == (32, 32000, 4, None, 0)


def test_jobs_that_fit_a_node_pass_and_the_rest_are_named_once_per_rule_and_request():
    nodes = parse_sinfo(SINFO)
    ok = [request_of("evaluate", f"seed={s}", 1, {"mem_mb": 9000, "runtime": 60, "gpu": 1, "slurm_partition": "gpu"})
          for s in range(3)]
    assert unfit(ok, nodes) == []
    check_jobs(ok, nodes)  # no exception
    too_big = [request_of("train", f"size=S5,seed={s}", 5, {"mem_mb": 600000, "runtime": 1440, "gpu": 1,
                                                             "slurm_partition": "gpu"}) for s in range(2)]
    too_long = [request_of("train", "size=S1,seed=0", 5, {"mem_mb": 16000, "runtime": 2880, "gpu": 1,
                                                            "slurm_partition": "gpu"})]
    on_default = [request_of("prepare_data", "", 128, {"mem_mb": 8000, "runtime": 60})]
    lines = unfit(ok + too_big + too_long + on_default, nodes)
    assert lines == [
        "train (2 jobs, e.g. size=S5,seed=0): asks for 5 CPUs, 600000 MB, 1 GPUs, 1440 min in partition 'gpu', "
        "whose nodes offer at most 32 CPUs, 512000 MB, 4 GPUs, 1440 min",
        "train (1 job, e.g. size=S1,seed=0): asks for 5 CPUs, 16000 MB, 1 GPUs, 2880 min in partition 'gpu', "
        "whose nodes offer at most 32 CPUs, 512000 MB, 4 GPUs, 1440 min",
        "prepare_data (1 job): asks for 128 CPUs, 8000 MB, 0 GPUs, 60 min in partition 'cpu', whose nodes offer "
        "at most 64 CPUs, 256000 MB, 0 GPUs, 2880 min",
    ]
    with pytest.raises(ClusterTooSmall, match="nothing was submitted") as err:
        check_jobs(too_big, nodes)
    assert "set-resources" in str(err.value)


def test_a_job_needs_one_node_with_everything_not_the_best_of_each():
    nodes = [Node("p", True, 64, 1000, 0, math.inf), Node("p", True, 2, 100000, 0, math.inf)]
    assert len(unfit([request_of("x", "", 8, {"mem_mb": 8000})], nodes)) == 1
    assert unfit([request_of("x", "", 8, {"mem_mb": 800})], nodes) == []


def test_a_partition_that_does_not_exist_is_named_with_the_existing_ones():
    lines = unfit([request_of("figures", "", 1, {"mem_mb": 100, "slurm_partition": "gpus"})], parse_sinfo(SINFO))
    assert lines == ["figures (1 job): partition 'gpus' does not exist (partitions: cpu, gpu)"]
