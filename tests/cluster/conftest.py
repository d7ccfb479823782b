"""A one-node SLURM cluster on localhost for the slurm tests, and the shipped slurm profile with faster polling.

The session fixture installs SLURM itself (CI machines are fresh), starts the daemons with
workflow/scripts/slurm_local.sh and always stops them afterwards. It skips only when that script skips:
not root, no apt-get, packages not installable, or a real cluster's slurm.conf on this machine.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
SLURM_LOCAL = REPO / "workflow" / "scripts" / "slurm_local.sh"
SLURM_PROFILE = REPO / "profiles" / "slurm" / "config.yaml"
# Lines of every slurm run in this session, for the lead to quote; not committed (see .gitignore here).
LOG_EXCERPT = Path(__file__).resolve().parent / "last_slurm_log.txt"
SKIP_CODE = 77

SLURM_LINE = re.compile(
    r"SLURM run ID|SLURM jobid|submitted with SLURM|Finished job|Finished jobid|steps \(\d+%\) done"
    r"|Complete log|Error|error|failed",
)


def _slurm_local(command: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(SLURM_LOCAL), command], env=env, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the local SLURM cluster needs root (apt-get, slurmctld, slurmd)")
    env = dict(os.environ, HYBRIDLAB_SLURM_SKIP_CODE=str(SKIP_CODE))
    if shutil.which("nvidia-smi") is None:
        env.setdefault("HYBRIDLAB_SLURM_GPUS", "2")
    installed = _slurm_local("install", env)
    if installed.returncode == SKIP_CODE:
        pytest.skip(installed.stdout.strip().splitlines()[-1])
    assert installed.returncode == 0, f"slurm_local.sh install failed:\n{installed.stdout}{installed.stderr}"
    # One test session at a time owns the cluster (developers share machines); it starts from a clean,
    # known configuration and stops everything at the end.
    with open(Path(tempfile.gettempdir()) / "hybridlab-slurm-tests.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        LOG_EXCERPT.write_text("")
        try:
            _slurm_local("stop", env)
            started = _slurm_local("start", env)
            if started.returncode == SKIP_CODE:
                pytest.skip(started.stdout.strip().splitlines()[-1])
            assert started.returncode == 0, f"slurm_local.sh start failed:\n{started.stdout}{started.stderr}"
            yield
        finally:
            stopped = _slurm_local("stop", env)
            print(stopped.stdout, stopped.stderr, file=sys.stderr)


@pytest.fixture
def slurm_profile(tmp_path: Path) -> Path:
    """The shipped slurm profile as it is (the jobs' sizes are the rules' own), with fast first status polls, no
    retries and its SLURM logs under the test's folder."""
    dest, slurm_logdir = tmp_path / "slurm-profile", tmp_path / "slurm-logs"
    profile = yaml.safe_load(SLURM_PROFILE.read_text())
    assert not {"set-threads", "set-resources"} & set(profile), "the shipped profile must not resize the rules"
    profile["slurm-init-seconds-before-status-checks"] = 2
    profile["slurm-logdir"] = str(slurm_logdir)
    profile["retries"] = 0
    profile["latency-wait"] = 5
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


@pytest.fixture(scope="session")
def run_snakemake() -> Callable[..., str]:
    """Runs Snakemake; appends its SLURM submission and completion lines to LOG_EXCERPT; returns its log."""
    return _run_snakemake


def _run_snakemake(args: list[str], cwd: Path, label: str, timeout_s: int = 1800, check: bool = True) -> str:
    # The rules call the CLI by this interpreter's path: the venv need not be on PATH (docs/cluster.md).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env["PATH"] = os.pathsep.join(p for p in env.get("PATH", "").split(os.pathsep)
                                  if Path(p).resolve() != Path(sys.executable).parent.resolve())
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    log = result.stdout + result.stderr
    excerpt = [line for line in log.splitlines() if SLURM_LINE.search(line)]
    with LOG_EXCERPT.open("a") as out:
        out.write(f"===== {label}: snakemake {' '.join(args)}\n")
        out.write("\n".join(excerpt) + f"\n===== exit status {result.returncode}\n\n")
    assert result.returncode == 0 or not check, f"snakemake failed ({label}):\n{log[-8000:]}"
    return log
