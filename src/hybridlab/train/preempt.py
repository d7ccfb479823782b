"""Stopping a training run cleanly before it is killed: on SIGUSR1 or SIGTERM, or shortly before its SLURM job's
time limit, the run saves its resume point (`last.ckpt`) at the end of the current optimizer step and exits, and a
rerun of the same command resumes where it stopped and ends bit-equal to an uninterrupted run.

  SIGTERM   what SLURM sends at a time limit, on preemption and on `scancel`, and what Snakemake forwards when it
            is stopped: save, stop, exit 143. Whoever stopped the job reruns it (Snakemake's `retries`, SLURM's
            requeue on preemption).
  SIGUSR1   "the time limit is near": save, stop, and inside a SLURM batch job requeue it (`scontrol requeue`,
            as Lightning's SLURM auto-requeue does); exit 138. Snakemake keeps waiting for a requeued job, which
            resumes when SLURM starts it again.
  deadline  inside a SLURM job the run reads its end time (`squeue -o %e`) and gives itself SIGUSR1's treatment
            once the time left falls below a margin (two minutes plus twice its longest step and save), so a
            slice of a long run never reaches the limit. SLURM's own `--signal` cannot be used for this with
            Snakemake's executor: it goes to every process of the job step, and the `snakemake` process that
            runs the rule dies of SIGUSR1 before the training has saved.

Only process-local work happens in the signal handler (it records the signal); the save runs in the training
loop. Under DDP the ranks agree (a collective) on every `log_every`-th step, so they stop at the same step.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
from datetime import datetime
from pathlib import Path

import torch

from hybridlab.train.lit import pl, save_state

log = logging.getLogger("hybridlab")

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
DEADLINE_MARGIN_S = 120.0  # plus twice the longest step and save seen: time to finish a step and write last.ckpt


class Stopped(SystemExit):
    """The run stopped on a signal or before its time limit, with its resume point saved. A SystemExit whose
    code is 128 + the signal number (the shell's convention), so the CLI exits with it and callers see a failure."""

    def __init__(self, signum: int, step: int):
        super().__init__(128 + signum)
        self.signum, self.step = signum, step


def slurm_job_id() -> str | None:
    """The SLURM job this process runs in (an array task as ARRAY_TASK), or None outside SLURM."""
    array = os.environ.get("SLURM_ARRAY_JOB_ID")
    if array and os.environ.get("SLURM_ARRAY_TASK_ID"):
        return f"{array}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    return os.environ.get("SLURM_JOB_ID")


def slurm_deadline(job_id: str | None = None) -> float | None:
    """The epoch time at which SLURM ends this job (its time limit), or None (no SLURM, no limit, no answer)."""
    job_id = job_id or slurm_job_id()
    if job_id is None:
        return None
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%e"], capture_output=True, text=True,
                             timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("SLURM job %s: could not read its end time (%s); no stop before the time limit", job_id, e)
        return None
    try:
        return datetime.fromisoformat(out.splitlines()[0]).timestamp()  # local time, as squeue prints it
    except (ValueError, IndexError):
        return None  # N/A, Unknown or UNLIMITED


def requeue_slurm_job(job_id: str) -> bool:
    """Put this SLURM batch job back in the queue (it restarts from its batch script); True on success."""
    if not re.fullmatch(r"[0-9_]+", job_id):
        return False
    try:
        done = subprocess.run(["scontrol", "requeue", job_id], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError) as e:
        log.warning("SLURM job %s: requeue failed (%s); rerun it to resume", job_id, e)
        return False
    if done.returncode != 0:
        log.warning("SLURM job %s: requeue failed (%s); rerun it to resume", job_id, done.stderr.strip())
        return False
    log.info("SLURM job %s requeued: it resumes from the saved step when SLURM starts it again", job_id)
    return True


class StopOnSignal(pl.Callback):
    """Saves `last` and stops the trainer at the first optimizer-step boundary after SIGUSR1/SIGTERM or past
    `deadline` (epoch seconds, less the margin); `signum` then names the cause (SIGUSR1 for the deadline).
    `save(trainer)`, when given, writes the resume point instead (the runs of a stacked step save one each)."""

    def __init__(self, last: Path, deadline: float | None = None, ddp_every: int = 1, save=None):
        self.last, self.deadline, self.ddp_every = Path(last), deadline, max(1, ddp_every)
        self.save = save or (lambda trainer: save_state(trainer, self.last))
        self.signum: int | None = None  # why the run stopped (or is stopping); reason says it in words
        self.reason: str | None = None
        self._received: int | None = None  # set by the signal handler
        self._previous: dict[int, object] = {}
        self._step_seen, self._t_step, self._longest = 0, 0.0, 0.0

    def _handler(self, signum: int, frame) -> None:
        if self._received is None:
            self._received = signum

    def on_train_start(self, trainer, pl_module) -> None:
        # After Lightning's own handlers (registered when fit starts), which this replaces for the two signals.
        if threading.current_thread() is threading.main_thread():
            self._previous = {s: signal.signal(s, self._handler) for s in STOP_SIGNALS}
        self._step_seen, self._t_step = trainer.global_step, time.monotonic()
        if self.deadline is not None:
            log.info("stopping with a resume point before the SLURM time limit (%s; %.0f min from now)",
                     datetime.fromtimestamp(self.deadline).isoformat(timespec="seconds"),
                     (self.deadline - time.time()) / 60)

    def _restore(self) -> None:
        for s, previous in self._previous.items():
            signal.signal(s, previous)
        self._previous = {}

    def on_train_end(self, trainer, pl_module) -> None:
        self._restore()

    def on_exception(self, trainer, pl_module, exception) -> None:
        self._restore()

    def _requested(self) -> int | None:
        if self._received is not None:
            return self._received
        margin = DEADLINE_MARGIN_S + 2 * self._longest
        if self.deadline is not None and time.time() > self.deadline - margin:
            return signal.SIGUSR1
        return None

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if step == self._step_seen:
            return  # inside a gradient accumulation: stop only between optimizer steps
        now = time.monotonic()
        self._longest, self._t_step, self._step_seen = max(self._longest, now - self._t_step), now, step
        if step >= trainer.max_steps:
            return  # the run ends here anyway
        request = self._requested()
        if trainer.world_size > 1:  # the ranks stop together, at the first agreed step after any rank's request
            if step % self.ddp_every:
                return
            agreed = trainer.strategy.reduce(torch.tensor(request or 0, device=pl_module.device), reduce_op="max")
            request = int(agreed) or None
        if request is None:
            return
        pl_module.check_finite()  # nothing non-finite is ever saved
        started = time.monotonic()
        for recorder in (cb for cb in trainer.callbacks if callable(getattr(cb, "flush", None))):
            recorder.flush()  # the resume point comes after the trajectory checkpoints of its steps
        self.save(trainer)
        self._longest = max(self._longest, time.monotonic() - started)
        self.signum, trainer.should_stop = int(request), True
        self.reason = signal.Signals(request).name if self._received else "SLURM time limit near"
        log.warning("%s: stopping at step %d of %d; resume point saved in %s", self.reason, step, trainer.max_steps,
                    self.last)
        job = slurm_job_id()
        if request == signal.SIGUSR1 and job is not None and trainer.is_global_zero:
            requeue_slurm_job(job)
