"""Give one command one GPU of this machine, exclusively, for as long as it runs.

Snakemake's ``resources: gpu=1`` with ``--resources gpu=N`` bounds how many GPU jobs run at once on one
machine, but does not say which card each job gets. A rule wraps its command with this helper:

    python workflow/scripts/gpu_lock.py -- python -m hybridlab.train ...

It takes an exclusive ``fcntl.flock`` on one lock file per GPU (``gpu<entry>.lock`` under
``$HYBRIDLAB_GPU_LOCK_DIR``, default ``<tmp>/hybridlab-gpu-locks``), waits while every GPU is taken, then
replaces itself with the command (``exec``), with ``CUDA_VISIBLE_DEVICES`` set to the card it locked. The
command inherits the locked descriptor, so the lock lasts exactly as long as the command (also if it is
killed), and signals reach the command directly.

Which GPUs: ``$HYBRIDLAB_GPUS`` (``"0,1"``; empty means none), else the entries of ``$CUDA_VISIBLE_DEVICES``,
else one per line of ``nvidia-smi -L``. With no GPU, and inside a SLURM job (SLURM already gave the job its
cards), the command runs unchanged. ``$HYBRIDLAB_JOBS_PER_GPU`` (default 1) lets that many jobs share a card,
spread over the cards first.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def visible_gpus(env: dict[str, str]) -> list[str]:
    """The GPU entries (indices or UUIDs) this machine offers, in order; empty when there are none."""
    for var in ("HYBRIDLAB_GPUS", "CUDA_VISIBLE_DEVICES"):
        if var in env:
            return [entry.strip() for entry in env[var].split(",") if entry.strip()]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    return [str(i) for i, line in enumerate(ln for ln in listing.splitlines() if ln.startswith("GPU "))]


def default_lock_dir() -> Path:
    return Path(os.environ.get("HYBRIDLAB_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "hybridlab-gpu-locks")


def _try_lock(lock_dir: Path, name: str) -> int | None:
    fd = os.open(lock_dir / name, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _slot_names(gpu: str, slots: int) -> list[str]:
    return [f"gpu{gpu}.lock" if k == 0 else f"gpu{gpu}.slot{k}.lock" for k in range(slots)]


def acquire(gpus: list[str], lock_dir: Path, poll_s: float, timeout_s: float | None, slots: int = 1) -> tuple[str, int]:
    """Lock the first free GPU slot, waiting while all are taken; returns (entry, open locked descriptor).
    `slots` > 1 lets that many jobs share one card (small models that leave a GPU mostly idle)."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for slot, gpu in ((k, g) for k in range(slots) for g in gpus):
            fd = _try_lock(lock_dir, _slot_names(gpu, slots)[slot])
            if fd is not None:
                return gpu, fd
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no GPU of {','.join(gpus)} became free within {timeout_s} s")
        time.sleep(poll_s)


def acquire_whole(gpus: list[str], count: int, lock_dir: Path, poll_s: float, timeout_s: float | None,
                  slots: int = 1) -> tuple[list[str], list[int]]:
    """Lock `count` whole cards (every slot of each) for one multi-GPU (DDP) job; returns (entries, fds).
    Takes all locks or none, so two waiting jobs never hold half a set each."""
    if count > len(gpus):
        raise ValueError(f"a job asks for {count} GPUs; this machine offers {len(gpus)} ({','.join(gpus)})")
    lock_dir.mkdir(parents=True, exist_ok=True)
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        taken, fds = [], []
        for gpu in gpus:
            got = [fd for fd in (_try_lock(lock_dir, n) for n in _slot_names(gpu, slots)) if fd is not None]
            if len(got) == slots:
                taken.append(gpu)
                fds += got
                if len(taken) == count:
                    return taken, fds
            else:
                for fd in got:
                    os.close(fd)
        for fd in fds:
            os.close(fd)
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"{count} of GPUs {','.join(gpus)} did not become free within {timeout_s} s")
        time.sleep(poll_s)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lock-dir", type=Path, default=None, help="where the per-GPU lock files live")
    parser.add_argument("--poll", type=float, default=1.0, help="seconds between tries while all GPUs are taken")
    parser.add_argument("--timeout", type=float, default=None, help="give up after this many seconds (exit 75)")
    parser.add_argument("--count", type=int, default=1, help="GPUs for this one command (whole cards; DDP)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command and its arguments")
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given; usage: gpu_lock.py [options] -- cmd args")

    env = dict(os.environ)
    gpus = [] if "SLURM_JOB_ID" in env and "HYBRIDLAB_GPUS" not in env else visible_gpus(env)
    if gpus:
        slots = int(env.get("HYBRIDLAB_JOBS_PER_GPU", "1"))
        lock_dir = args.lock_dir or default_lock_dir()
        try:
            if args.count == 1:
                gpu, fd = acquire(gpus, lock_dir, args.poll, args.timeout, slots)
                taken, fds = [gpu], [fd]
            else:
                taken, fds = acquire_whole(gpus, args.count, lock_dir, args.poll, args.timeout, slots)
        except TimeoutError as err:
            print(f"gpu_lock: {err}", file=sys.stderr)
            return 75
        except ValueError as err:
            print(f"gpu_lock: {err}", file=sys.stderr)
            return 2
        for fd in fds:
            os.set_inheritable(fd, True)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(taken)
        print(f"gpu_lock: GPU {','.join(taken)} for: {' '.join(command)}", file=sys.stderr, flush=True)
    try:
        os.execvpe(command[0], command, env)
    except OSError as err:
        print(f"gpu_lock: cannot run {command[0]!r}: {err}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    sys.exit(main())
