"""Interruptions never lose work or give wrong results.

- A training run interrupted at 8 points and resumed each time by re-running the same command ends bit-equal
  to an uninterrupted run: every trajectory checkpoint tensor and every metrics row (step, tokens, loss, lr).
  SIGKILL lands between two steps or inside the write of last.ckpt (its temporary file complete, not renamed);
  SIGTERM and SIGUSR1 (a scheduler's stop and time-limit warning) save a resume point at the step they arrive
  in; SIGINT (Ctrl-C) stops at once. Each interruption is triggered by the run's own state: the run waits at the
  chosen point (helpers.PauseAt) until the signal comes, so it can never have finished before (no timing).
  After each, every file under a final name is complete; a killed writer's temporary file is removed by the
  next write of that name.
- Snakemake killed mid-DAG (SIGKILL to its whole process group while its second training waits at a step, the
  first one finished): the rerun executes exactly the jobs that had not finished, and the killed training
  resumes from its last.ckpt. Recovery after a crash: `snakemake --unlock` (a killed Snakemake leaves its lock), then
  `snakemake --cores N --rerun-incomplete` (Snakemake marks the outputs of jobs that were running as incomplete;
  our outputs are written atomically, so an output under its final name is never partial, and
  --rerun-incomplete re-runs only those jobs).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import re
import signal
import subprocess
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from hybridlab.io import read_json, read_table

from .helpers import BIN, ENV, REPO, TINY, PauseAt, exit_code, fork_cli, run_cli, train_argv, wait_for

STEPS = 24
KILL_RUN = ("train.steps=24", "train.last_every=2")  # a resumable last.ckpt every 2 steps
METRIC_KEYS = ["step", "tokens", "loss", "lr"]  # tokens_per_s and mfu are timings


def saved_step(last: Path) -> int | None:
    """The global step stored in last.ckpt, or None if there is none yet."""
    if not last.exists():
        return None
    return int(torch.load(last, map_location="cpu", weights_only=True)["global_step"])


def assert_final_names_complete(run: Path) -> list[Path]:
    """Every file under its final name loads; return the temporary files a killed writer left."""
    temps = []
    for path in run.rglob("*"):
        if path.is_dir():
            continue
        if path.name.startswith(".") and path.name.endswith(".tmp"):
            temps.append(path)
        elif path.suffix in (".pt", ".ckpt"):
            torch.load(path, map_location="cpu", weights_only=True)
        elif path.suffix == ".json":
            read_json(path)
        elif path.suffix == ".csv":
            read_table(path, [])
        elif path.suffix == ".npy":
            np.load(path)
    return temps


def interrupt(argv: list[str], run: Path, log: Path, sig: int, pause: PauseAt, at: int) -> tuple[int, int, int]:
    """Start `hybridlab train`, wait until it waits at step `at` (`pause`), send `sig`. Returns (step resumed from,
    step saved when it ended, exit code)."""
    resumed = saved_step(run / "last.ckpt") or 0
    proc = fork_cli(argv, log, pause)
    wait_for(pause.ready(at), proc, log)
    os.kill(proc.pid, sig)
    code = exit_code(proc, 120)
    assert code is not None and code != 0, f"signal {sig}: exit code {code}"
    assert not (run / "train_done.json").exists(), "an interrupted run was marked done"
    return resumed, saved_step(run / "last.ckpt") or 0, code


def checkpoints(run: Path) -> dict[str, dict[str, torch.Tensor]]:
    return {p.name: torch.load(p, map_location="cpu", weights_only=True)["model"]
            for p in sorted((run / "ckpt").glob("tokens_*.pt"))}


def assert_bit_equal(ref: Path, run: Path, history=None) -> None:
    """Every trajectory checkpoint tensor and every metrics row (but the timings) of two runs are equal."""
    want, got = checkpoints(ref), checkpoints(run)
    assert got.keys() == want.keys() and len(want) >= 3
    for name in want:
        assert want[name].keys() == got[name].keys()
        for key in want[name]:
            assert torch.equal(want[name][key], got[name][key]), (name, key, history)
    pd.testing.assert_frame_equal(pd.read_csv(ref / "metrics.csv")[METRIC_KEYS],
                                  pd.read_csv(run / "metrics.csv")[METRIC_KEYS])


# (signal, where the run waits, exit code, saved step relative to the step it waits at)
GRACEFUL = [(signal.SIGTERM, "step", 128 + signal.SIGTERM, 0), (signal.SIGUSR1, "save", 128 + signal.SIGUSR1, 0),
            (signal.SIGINT, "step", 1, 0)]


@pytest.mark.slow
def test_interrupted_at_many_points_then_resumed_is_bit_equal(tmp_path, tiny_data):
    argv_ref = train_argv(tiny_data, tmp_path / "ref", "swa128", 0, *KILL_RUN)
    assert run_cli(argv_ref, tmp_path / "ref.log") == 0

    run = tmp_path / "killed"
    argv = train_argv(tiny_data, run, "swa128", 0, *KILL_RUN)
    rng = random.Random(10)  # seeded: the same 5 kill points on every run of the test
    points = sorted(rng.sample(range(2, STEPS - 8, 2), 5))  # steps with a last.ckpt save
    faults = [(signal.SIGKILL, rng.choice(["step", "save"]), -signal.SIGKILL, p) for p in points]
    faults += [(sig, where, code, points[-1] + 2 * (i + 1)) for i, (sig, where, code, _) in enumerate(GRACEFUL)]
    history, temps_seen = [], 0
    for i, (sig, where, code, at) in enumerate(faults):
        pause = PauseAt(tmp_path / f"pause{i}", (at,), where)
        pause.folder.mkdir()
        resumed, saved, exitcode = interrupt(argv, run, tmp_path / f"session{i}.log", sig, pause, at)
        history.append((sig.name, where, resumed, saved))
        assert exitcode == code, (history, (tmp_path / f"session{i}.log").read_text()[-3000:])
        # killed inside the save, the run keeps the previous resume point; otherwise the one of that step
        assert saved == (at - 2 if (sig, where) == (signal.SIGKILL, "save") else at), history
        temps = assert_final_names_complete(run)
        assert bool(temps) == ((sig, where) == (signal.SIGKILL, "save")), (history, temps)
        temps_seen += len(temps)
    assert len({resumed for _, _, resumed, _ in history}) >= 6, history  # resumed from varied steps
    assert run_cli(argv, tmp_path / "final.log") == 0

    assert_bit_equal(tmp_path / "ref", run, history)
    assert list(pd.read_csv(run / "metrics.csv")["step"]) == list(range(1, STEPS + 1))
    assert assert_final_names_complete(run) == [], "a killed writer's temporary file was never cleaned up"
    print(f"interruptions (signal, where, resumed from step, saved step): {history}; "
          f"temporary files seen after kills: {temps_seen}")


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1], ids=["SIGTERM", "SIGUSR1"])
def test_a_signal_mid_run_saves_a_resume_point_and_the_rerun_ends_bit_equal(tmp_path, tiny_data, sig):
    """With no periodic resume point before the end (train.last_every past the last step), the only last.ckpt of
    an interrupted run is the one the signal made, at the step it arrived in."""
    steps = ("train.steps=12", "train.last_every=100")
    assert run_cli(train_argv(tiny_data, tmp_path / "ref", "swa128", 0, *steps), tmp_path / "ref.log") == 0
    run, log = tmp_path / "run", tmp_path / "signalled.log"
    argv = train_argv(tiny_data, run, "swa128", 0, *steps)
    pause = PauseAt(tmp_path, (7,))
    proc = fork_cli(argv, log, pause)
    wait_for(pause.ready(7), proc, log)
    assert not (run / "last.ckpt").exists()
    os.kill(proc.pid, sig)
    assert exit_code(proc, 120) == 128 + sig, log.read_text()[-3000:]
    assert saved_step(run / "last.ckpt") == 7 and not (run / "train_done.json").exists()
    assert f"{sig.name}: stopping at step 7 of 12; resume point saved" in log.read_text()
    assert list(pd.read_csv(run / "metrics.csv")["step"]) == list(range(1, 8))
    assert run_cli(argv, tmp_path / "rerun.log") == 0
    assert "Restored all states" in (tmp_path / "rerun.log").read_text()
    assert_bit_equal(tmp_path / "ref", run)
    sessions = [json.loads(line) for line in (run / "sessions.jsonl").read_text().splitlines()]
    assert [(s["from_step"], s["to_step"], s["ended"]) for s in sessions] == [(0, 7, sig.name), (7, 12, "finished")]


@pytest.mark.slow
def test_under_ddp_both_ranks_stop_at_the_step_the_signal_reached_rank_0(tmp_path, tiny_data):
    """Two processes (gloo): SIGTERM to rank 0 while it waits at step 3; the ranks agree, save one resume point at
    step 3 and exit; the rerun (also DDP) resumes there and finishes."""
    pause = tmp_path / "pause"
    pause.mkdir()
    run = tmp_path / "ddp"
    cmd = [str(BIN / "hybridlab"), *train_argv(tiny_data, run, "swa128", 0, "train.steps=6", "train.last_every=100",
                                                "train.devices=2")]
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(PAUSE_SITE), ENV.get("PYTHONPATH")])),
           "HYBRIDLAB_TEST_PAUSE": f"swa128:3:{pause}"}
    with open(tmp_path / "ddp.log", "w") as out:  # its own process group: both ranks go if the test fails
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not (pause / "ready_3").exists():
            assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "ddp.log").read_text()[-3000:]
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(300) == 128 + signal.SIGTERM, (tmp_path / "ddp.log").read_text()[-3000:]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    assert saved_step(run / "last.ckpt") == 3 and not (run / "train_done.json").exists()
    rerun = subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert list(pd.read_csv(run / "metrics.csv")["step"]) == list(range(1, 7))


@dataclass
class BlockTrajectoryWrite:
    """A child hook (fork_cli): the background write of the first trajectory checkpoint (of `ckpt_steps`) at step
    >= `from_step` waits (after creating `folder/write_<step>`) until the process is killed; a RunRecorder.flush
    called once that write was submitted creates `folder/flush_waits` first."""

    folder: Path
    from_step: int
    ckpt_steps: list[int]

    @property
    def step(self) -> int:
        return min(s for s in self.ckpt_steps if s >= self.from_step)

    def __call__(self) -> None:
        from hybridlab.train import lit

        write, flush = lit.write_weights, lit.RunRecorder.flush

        def blocking_write(state, folder, step, tokens, *args):
            if step == self.step:
                (self.folder / f"write_{step}").touch()
                threading.Event().wait()  # until killed
            return write(state, folder, step, tokens, *args)

        def watched_flush(recorder, *args, **kw):  # in the training thread: the blocked write was submitted
            if recorder._step_seen >= self.step:
                (self.folder / "flush_waits").touch()
            return flush(recorder, *args, **kw)

        lit.write_weights, lit.RunRecorder.flush = blocking_write, watched_flush


@pytest.mark.slow
def test_a_resume_point_never_runs_ahead_of_the_trajectory_checkpoint_writes(tmp_path, tiny_data):
    """Trajectory checkpoints are written by a background thread: while one is unwritten, no resume point of its
    step or later is saved (a run resumed from there would never write it), so a kill then loses nothing."""
    argv_ref = train_argv(tiny_data, tmp_path / "ref", "swa128", 0, *KILL_RUN)
    assert run_cli(argv_ref, tmp_path / "ref.log") == 0
    run, log = tmp_path / "run", tmp_path / "blocked.log"
    argv = train_argv(tiny_data, run, "swa128", 0, *KILL_RUN)
    steps = sorted(int(torch.load(p, weights_only=True)["step"]) for p in (tmp_path / "ref" / "ckpt").glob("*.pt"))
    hook = BlockTrajectoryWrite(tmp_path, 6, steps)
    proc = fork_cli(argv, log, hook)
    try:
        wait_for(tmp_path / "flush_waits", proc, log)  # the training waits for the write at its next resume point
        wait_for(tmp_path / f"write_{hook.step}", proc, log)
        assert (saved_step(run / "last.ckpt") or 0) < hook.step
    finally:
        proc.kill()  # the blocked write never ends by itself
        proc.join()
    assert run_cli(argv, tmp_path / "rerun.log") == 0
    assert_bit_equal(tmp_path / "ref", run)


# --- Snakemake killed mid-DAG ----------------------------------------------------------------------------------

SMK_CONFIG = {"results_dir": "results", "paper_dir": "paper", "variants": ["full", "swa128"], "seeds": [0],
              "overrides": [*TINY, "train.steps=16", "train.last_every=2"]}


def job_counts(log: str) -> Counter:
    """The 'Job stats' table Snakemake prints before it runs (or, with -n, would run) anything."""
    block = log[log.index("Job stats:"):]
    counts = Counter()
    for line in block.splitlines()[3:]:
        m = re.match(r"^(\w+)\s+(\d+)$", line.strip())
        if not m or m.group(1) == "total":
            break
        counts[m.group(1)] = int(m.group(2))
    return counts


def live_members(pgid: int) -> list[int]:
    """Processes of a process group that are still running (zombies excluded), from /proc."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


def finished_jobs(log: str) -> Counter:
    return Counter(re.findall(r"Finished jobid: \d+ \(Rule: (\w+)\)", log))


# The target: the evaluation table. Its DAG (data, two trainings, two evaluations, one table) is the part of the
# pipeline this test is about, and stays small while analyses are added to the full DAG.
TARGET = "results/smoke/tables/eval.csv"


def smk_cmd(work: Path, *args: str, cores: int = 2) -> list[str]:
    return [str(BIN / "snakemake"), "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
            "--configfile", str(work / "test_config.yaml"), "--cores", str(cores), *args, TARGET]


PAUSE_SITE = Path(__file__).resolve().parent / "pause_site"  # sitecustomize: a training that waits at a step


@pytest.mark.slow
@pytest.mark.integration
def test_snakemake_killed_mid_dag_reruns_only_unfinished_jobs(tmp_path):
    work = tmp_path
    (work / "test_config.yaml").write_text(json.dumps(SMK_CONFIG))  # JSON is YAML
    full = job_counts(subprocess.run(smk_cmd(work, "-n"), capture_output=True, text=True, env=ENV).stdout)
    assert full["train"] == 2, full

    # One job at a time; the training that starts second waits at step 4, after its last.ckpt of step 4 (PauseAt),
    # until it is killed: the kill comes once it waits there, a state reached whatever the timing.
    pause = tmp_path / "pause"
    pause.mkdir()
    env = {**ENV, "PYTHONPATH": os.pathsep.join(filter(None, [str(PAUSE_SITE), ENV.get("PYTHONPATH")])),
           "HYBRIDLAB_TEST_PAUSE": f"second:4:{pause}"}
    log = work / "first.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(smk_cmd(work, cores=1), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work,
                                start_new_session=True)  # its own process group: the kill reaches every job
    deadline = time.monotonic() + 900
    while not (pause / "ready_4").exists():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, log.read_text()
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # SIGKILL is final: every member of the group ends; the wait only covers the kernel's teardown of each.
    deadline = time.monotonic() + 60
    while live_members(proc.pid):
        assert time.monotonic() < deadline, f"a job of the killed Snakemake kept running: {live_members(proc.pid)}"
        time.sleep(0.05)
    first = log.read_text()
    done = finished_jobs(first)
    assert done["train"] == 1, first
    waiting = [r for r in (work / "results" / "smoke" / "runs").glob("*/*/seed*")
               if not (r / "train_done.json").exists()]
    assert len(waiting) == 1 and saved_step(waiting[0] / "last.ckpt") == 4, waiting

    # Nothing under a final name is partial: every table, JSON and checkpoint that exists reads back.
    results = work / "results"
    for run in (results / "smoke" / "runs").glob("*/*/seed*"):
        assert_final_names_complete(run)
    assert_final_names_complete(results / "smoke" / "data")

    plan = subprocess.run(smk_cmd(work, "-n", "--rerun-incomplete"), capture_output=True, text=True, env=ENV)
    todo = job_counts(plan.stdout)
    assert todo == full - done, (todo, full, done)  # exactly the jobs that had not finished
    assert "prepare_data" not in todo and todo["train"] == 1

    # A SIGKILL leaves Snakemake's lock behind: unlock (the documented step), then rerun.
    assert subprocess.run(smk_cmd(work, "--unlock"), capture_output=True, env=ENV).returncode == 0
    rerun = subprocess.run(smk_cmd(work, "--rerun-incomplete"), capture_output=True, text=True, env=ENV)
    out = rerun.stdout + rerun.stderr
    assert rerun.returncode == 0, out
    assert finished_jobs(out) == todo, out
    resumed = [p for p in (results / "smoke" / "logs").glob("train_*.log") if "Restored all states" in p.read_text()]
    assert len(resumed) == 1, "the killed training did not resume from its last.ckpt"
    table = read_table(work / TARGET, ["variant", "seed", "step", "metric", "value"])
    assert set(table["variant"]) == {"full", "swa128"} and table.groupby("variant")["step"].max().tolist() == [16, 16]
