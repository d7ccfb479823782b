"""workflow/scripts/gpu_lock.py: concurrent jobs get distinct GPUs, a surplus job waits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "gpu_lock.py"

# Writes "<CUDA_VISIBLE_DEVICES or '-'> <start time>" at start and "<end time>" after sleeping.
RECORDER = (
    "import os, sys, time; out = sys.argv[1]; "
    "open(out + '.start', 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-') + ' ' + repr(time.time())); "
    "time.sleep(float(sys.argv[2])); "
    "open(out + '.end', 'w').write(repr(time.time()))"
)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env["HYBRIDLAB_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    env.update(extra)
    return env


def _launch(tmp_path: Path, name: str, sleep_s: float, env: dict[str, str], *opts: str) -> subprocess.Popen:
    out = tmp_path / name
    cmd = [
        sys.executable,
        str(SCRIPT),
        "--poll",
        "0.05",
        *opts,
        "--",
        sys.executable,
        "-c",
        RECORDER,
        str(out),
        str(sleep_s),
    ]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _start(tmp_path: Path, name: str) -> tuple[str, float]:
    device, started = (tmp_path / f"{name}.start").read_text().split()
    return device, float(started)


def test_two_jobs_get_distinct_gpus_and_a_third_waits(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1")
    first = _launch(tmp_path, "a", 3.0, env)
    second = _launch(tmp_path, "b", 3.0, env)
    _wait_for(tmp_path / "a.start")
    _wait_for(tmp_path / "b.start")
    third = _launch(tmp_path, "c", 0.1, env)
    time.sleep(1.0)
    assert not (tmp_path / "c.start").exists(), "third job started while both GPUs were locked"
    for proc in (first, second, third):
        assert proc.wait(timeout=30) == 0, proc.stderr.read()

    devices = {name: _start(tmp_path, name)[0] for name in "abc"}
    assert {devices["a"], devices["b"]} == {"0", "1"}
    assert devices["c"] in {"0", "1"}
    first_release = min(float((tmp_path / f"{n}.end").read_text()) for n in "ab")
    assert _start(tmp_path, "c")[1] >= first_release


def test_lock_is_released_when_the_command_is_killed(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="3")
    victim = _launch(tmp_path, "victim", 60.0, env)
    _wait_for(tmp_path / "victim.start")
    victim.kill()
    victim.wait(timeout=10)
    follower = _launch(tmp_path, "next", 0.0, env)
    assert follower.wait(timeout=20) == 0
    assert _start(tmp_path, "next")[0] == "3"


def test_timeout_exits_75(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0")
    holder = _launch(tmp_path, "holder", 5.0, env)
    _wait_for(tmp_path / "holder.start")
    late = subprocess.run(
        [sys.executable, str(SCRIPT), "--poll", "0.05", "--timeout", "0.3", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    holder.kill()
    holder.wait(timeout=10)
    assert late.returncode == 75
    assert "no GPU" in late.stderr


@pytest.mark.parametrize(
    "extra",
    [{"HYBRIDLAB_GPUS": ""}, {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"}],
    ids=["no-gpu", "inside-slurm-job"],
)
def test_runs_command_unchanged_without_gpus_to_hand_out(tmp_path: Path, extra: dict[str, str]) -> None:
    env = _env(tmp_path, **extra)
    proc = _launch(tmp_path, "plain", 0.0, env)
    assert proc.wait(timeout=20) == 0, proc.stderr.read()
    assert _start(tmp_path, "plain")[0] == extra.get("CUDA_VISIBLE_DEVICES", "-")
    assert not (tmp_path / "locks").exists()


def test_exit_status_is_the_commands(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0")
    result = subprocess.run(
        [sys.executable, str(SCRIPT), "--", sys.executable, "-c", "raise SystemExit(3)"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 3
    assert "gpu_lock: GPU 0" in result.stderr


def test_jobs_per_gpu_lets_jobs_share_a_card(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1", HYBRIDLAB_JOBS_PER_GPU="2")
    jobs = {name: _launch(tmp_path, name, 3.0, env) for name in "abcd"}
    for name in jobs:
        _wait_for(tmp_path / f"{name}.start")
    late = _launch(tmp_path, "e", 0.1, env)
    time.sleep(1.0)
    assert not (tmp_path / "e.start").exists(), "fifth job started while all four slots were taken"
    for proc in (*jobs.values(), late):
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    devices = sorted(_start(tmp_path, name)[0] for name in "abcd")
    assert devices == ["0", "0", "1", "1"]


def test_multi_gpu_job_takes_whole_cards_and_waits_for_them(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1,2", HYBRIDLAB_JOBS_PER_GPU="2")
    single = _launch(tmp_path, "single", 3.0, env)  # one slot of card 0
    _wait_for(tmp_path / "single.start")
    pair = _launch(tmp_path, "pair", 3.0, env, "--count", "2")  # the two cards with no job: 1 and 2
    _wait_for(tmp_path / "pair.start")
    assert _start(tmp_path, "pair")[0] == "1,2"
    trio = _launch(tmp_path, "trio", 0.1, env, "--count", "3")
    time.sleep(1.0)
    assert not (tmp_path / "trio.start").exists(), "a 3-GPU job started while cards were in use"
    for proc in (single, pair, trio):
        assert proc.wait(timeout=30) == 0, proc.stderr.read()
    assert _start(tmp_path, "trio")[0] == "0,1,2"
    last_end = max(float((tmp_path / f"{n}.end").read_text()) for n in ("single", "pair"))
    assert _start(tmp_path, "trio")[1] >= last_end


def test_multi_gpu_job_asking_more_than_the_machine_has_fails_clearly(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--count", "4", "--", "true"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "asks for 4 GPUs" in result.stderr
