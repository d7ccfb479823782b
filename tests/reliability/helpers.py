"""Helpers of the reliability tests: one tiny configuration shared by every test, and ways to run the CLI (the
real executable in a subprocess, a forked child that can be killed at any instruction) and Snakemake; `PauseAt`
makes a forked training wait at chosen points, so an interruption lands where the test says (no timing)."""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
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


def _child(argv: list[str], log: str, hook: Callable[[], None] | None) -> None:
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.stdout = sys.stderr = open(fd, "w", buffering=1)  # noqa: SIM115 (lives as long as the child)
    logging.root.handlers.clear()  # pytest's capture handlers came with the fork: log to `log` as the CLI does
    # Ctrl-C as a terminal's executable gets it: a suite started in the background (`cmd &` in a script) inherits
    # SIGINT ignored, and the child would then never see the SIGINT a test sends.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    if hook is not None:
        hook()
    from hybridlab.cli import main

    sys.exit(main(argv))


def fork_cli(argv: list[str], log: Path, hook: Callable[[], None] | None = None) -> multiprocessing.Process:
    """`hybridlab ARGV` in a forked child of the test process: the same code path as the executable without
    paying the torch import again, so it can be killed a few times per test. Output goes to `log`; `hook` runs
    in the child first (e.g. a PauseAt)."""
    proc = multiprocessing.get_context("fork").Process(target=_child, args=(argv, str(log), hook), daemon=True)
    proc.start()
    return proc


@dataclass
class PauseAt:
    """A child hook (fork_cli): at each of `steps` the training waits, after creating `folder/ready_<step>`, until
    `folder/go_<step>` exists or it received SIGTERM/SIGUSR1 (StopOnSignal then stops the run at that step).
    `where` is "step" (the end of that optimizer step, after its checkpoints and metrics row) or "save" (inside
    the write of that step's last.ckpt: the temporary file is complete, not yet renamed). SIGKILL or SIGINT sent
    while it waits interrupt it right there."""

    folder: Path
    steps: tuple[int, ...]
    where: str = "step"
    _stoppers: list = field(default_factory=list)

    def ready(self, step: int) -> Path:
        return self.folder / f"ready_{step}"

    def go(self, step: int) -> Path:
        return self.folder / f"go_{step}"

    def _wait(self, step: int, timeout: float = 600) -> None:
        self.ready(step).touch()
        parent, deadline = os.getppid(), time.monotonic() + timeout
        while not self.go(step).exists() and not (self._stoppers and self._stoppers[-1]._received):
            if os.getppid() != parent or time.monotonic() > deadline:  # the test is gone: never outlive it
                os._exit(3)
            time.sleep(0.01)

    def __call__(self) -> None:
        from hybridlab.train import lit, preempt

        start, batch_end = preempt.StopOnSignal.on_train_start, lit.RunRecorder.on_train_batch_end
        save_state, atomic_path = lit.save_state, lit.atomic_path
        seen = {"step": None, "saving": None}

        def on_train_start(stopper, trainer, pl_module):
            self._stoppers.append(stopper)
            start(stopper, trainer, pl_module)

        def on_train_batch_end(recorder, trainer, *args):
            batch_end(recorder, trainer, *args)
            step = trainer.global_step
            if self.where == "step" and step in self.steps and step != seen["step"]:
                self._wait(step)
            seen["step"] = step

        def recorded_save_state(trainer, path):  # the recorder's saves; StopOnSignal's are never paused
            seen["saving"] = trainer.global_step if Path(path).name == "last.ckpt" else None
            save_state(trainer, path)

        @contextlib.contextmanager
        def paused_atomic_path(path):
            with atomic_path(path) as tmp:
                yield tmp
                if self.where == "save" and Path(path).name == "last.ckpt" and seen["saving"] in self.steps:
                    self._wait(seen["saving"])

        preempt.StopOnSignal.on_train_start = on_train_start
        lit.RunRecorder.on_train_batch_end = on_train_batch_end
        lit.save_state, lit.atomic_path = recorded_save_state, paused_atomic_path


def exit_code(proc: multiprocessing.Process, timeout: float = 300) -> int | None:
    """The child's exit code once it ends; a child still running after `timeout` s is killed (None)."""
    proc.join(timeout)
    if proc.exitcode is None:
        proc.kill()
        proc.join()
        return None
    return proc.exitcode


def wait_for(path: Path, proc: multiprocessing.Process, log: Path, timeout: float = 300) -> None:
    """Wait until `path` exists (the child reached a PauseAt point); fail if the child ends first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.is_alive(), f"the run ended (exit code {proc.exitcode}) before {path.name}: {log.read_text()}"
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"no {path.name} after {timeout} s: {log.read_text()}")
        time.sleep(0.01)


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
