"""Helpers of the reliability tests: one tiny configuration shared by every test, and ways to run the CLI (the
real executable in a subprocess, a forked child that can be killed at any instruction) and Snakemake."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
# Small enough that a run is a few seconds on one CPU thread; every test shares it (and so one data folder).
TINY = ("scale.context=128", "data.n_train_seqs=64", "data.n_val_seqs=16", "eval.niah_samples=4",
        "eval.niah_lengths=[0.5,1.0]", "eval.ruler_tasks=[niah_single]", "eval.ruler_samples=2",
        "eval.probe_samples=0", "eval.val_batches=1", "eval.batch_size=8", "train.batch_size=8",
        "train.micro_batch_size=4", "train.warmup_steps=2", "train.log_every=1", "train.n_checkpoints=4")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HYBRIDLAB_PROGRESS": "0",
       "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def hybridlab(*args: str, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """The real `hybridlab` executable in a subprocess (exit code, stdout, stderr as text)."""
    return subprocess.run([str(BIN / "hybridlab"), *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout, **kw)


def snakemake(workdir: Path, *args: str, timeout: float = 600, **kw) -> subprocess.CompletedProcess:
    """Snakemake on the repository's Snakefile with its working directory (results, .snakemake) in `workdir`."""
    exe = BIN / "snakemake"
    cmd = [str(exe if exe.exists() else shutil.which("snakemake")), "--snakefile", str(REPO / "Snakefile"),
           "--directory", str(workdir), *args]
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=workdir, timeout=timeout, **kw)


def _child(argv: list[str], log: str) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115 (lives as long as the child)
    from hybridlab.cli import main

    sys.exit(main(argv))


def fork_cli(argv: list[str], log: Path) -> multiprocessing.Process:
    """`hybridlab ARGV` in a forked child of the test process: the same code path as the executable without
    paying the torch import again, so it can be killed a few times per test. Output goes to `log`."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(log)), daemon=True)
    proc.start()
    return proc


def run_cli(argv: list[str], log: Path, timeout: float = 300) -> int:
    proc = fork_cli(argv, log)
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        raise TimeoutError(f"hybridlab {' '.join(argv)} ran past {timeout}s; log: {log}")
    return proc.exitcode


def train_argv(data: Path, run: Path, variant: str = "swa128", seed: int = 0, *extra: str) -> list[str]:
    return ["train", "--variant", variant, "--seed", str(seed), "--data", str(data), "--out", str(run), *TINY,
            *extra]
