"""workflow/scripts/gpu_lock.py: concurrent jobs get distinct GPUs, a surplus job waits.

A job holds its GPU until the test releases it (a file), never for a set time, so a slow machine cannot make a
job end early. A check that a job is still waiting gives it a second to be wrongly let in: it can miss a bug on
a slow machine, never fail a correct lock."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "workflow" / "scripts" / "gpu_lock.py"

# Writes "<CUDA_VISIBLE_DEVICES or '-'> <start time>" at start, waits for "<out>.release" (at most 120 s: never
# outlive a failed test), then writes "<end time>".
RECORDER = (
    "import os, sys, time; out = sys.argv[1]; "
    "open(out + '.start', 'w').write(os.environ.get('CUDA_VISIBLE_DEVICES', '-') + ' ' + repr(time.time())); "
    "deadline = time.monotonic() + 120\n"
    "while not os.path.exists(out + '.release') and time.monotonic() < deadline: time.sleep(0.02)\n"
    "open(out + '.end', 'w').write(repr(time.time()))"
)
WRONGLY_LET_IN_S = 1.0  # how long a waiting job gets to be wrongly let in (see the module docstring)


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_") and k != "CUDA_VISIBLE_DEVICES"}
    env["HYBRIDLAB_GPU_LOCK_DIR"] = str(tmp_path / "locks")
    env.update(extra)
    return env


def _release(tmp_path: Path, *names: str) -> None:
    for name in names:
        (tmp_path / f"{name}.release").touch()


def _launch(tmp_path: Path, name: str, env: dict[str, str], *opts: str, held: bool = True) -> subprocess.Popen:
    """The recorder under gpu_lock; it holds its GPU until `_release` (at once if not `held`)."""
    if not held:
        _release(tmp_path, name)
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
    ]
    return subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def _start(tmp_path: Path, name: str) -> tuple[str, float]:
    device, started = (tmp_path / f"{name}.start").read_text().split()
    return device, float(started)


def test_two_jobs_get_distinct_gpus_and_a_third_waits(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1")
    first = _launch(tmp_path, "a", env)
    second = _launch(tmp_path, "b", env)
    _wait_for(tmp_path / "a.start")
    _wait_for(tmp_path / "b.start")
    third = _launch(tmp_path, "c", env, held=False)
    time.sleep(WRONGLY_LET_IN_S)
    assert not (tmp_path / "c.start").exists(), "third job started while both GPUs were locked"
    _release(tmp_path, "a")  # b still holds its GPU: c gets a's
    _wait_for(tmp_path / "c.start")
    _release(tmp_path, "b")
    for proc in (first, second, third):
        assert proc.wait(timeout=60) == 0, proc.stderr.read()

    devices = {name: _start(tmp_path, name)[0] for name in "abc"}
    assert {devices["a"], devices["b"]} == {"0", "1"}
    assert devices["c"] == devices["a"]
    assert _start(tmp_path, "c")[1] >= float((tmp_path / "a.end").read_text())


def test_lock_is_released_when_the_command_is_killed(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="3")
    victim = _launch(tmp_path, "victim", env)
    _wait_for(tmp_path / "victim.start")
    victim.kill()
    victim.wait(timeout=10)
    follower = _launch(tmp_path, "next", env, held=False)
    assert follower.wait(timeout=60) == 0
    assert _start(tmp_path, "next")[0] == "3"


def test_timeout_exits_75(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0")
    holder = _launch(tmp_path, "holder", env)
    _wait_for(tmp_path / "holder.start")
    late = subprocess.run(
        [sys.executable, str(SCRIPT), "--poll", "0.05", "--timeout", "0.3", "--", "true"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    _release(tmp_path, "holder")
    assert holder.wait(timeout=60) == 0
    assert late.returncode == 75
    assert "no GPU" in late.stderr


@pytest.mark.parametrize(
    "extra",
    [{"HYBRIDLAB_GPUS": ""}, {"SLURM_JOB_ID": "42", "CUDA_VISIBLE_DEVICES": "0,1"}],
    ids=["no-gpu", "inside-slurm-job"],
)
def test_runs_command_unchanged_without_gpus_to_hand_out(tmp_path: Path, extra: dict[str, str]) -> None:
    env = _env(tmp_path, **extra)
    proc = _launch(tmp_path, "plain", env, held=False)
    assert proc.wait(timeout=60) == 0, proc.stderr.read()
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
    jobs = {name: _launch(tmp_path, name, env) for name in "abcd"}
    for name in jobs:
        _wait_for(tmp_path / f"{name}.start")
    late = _launch(tmp_path, "e", env, held=False)
    time.sleep(WRONGLY_LET_IN_S)
    assert not (tmp_path / "e.start").exists(), "fifth job started while all four slots were taken"
    _release(tmp_path, "a")  # one slot frees: e takes it, on a's card
    _wait_for(tmp_path / "e.start")
    _release(tmp_path, *"bcd")
    for proc in (*jobs.values(), late):
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    devices = sorted(_start(tmp_path, name)[0] for name in "abcd")
    assert devices == ["0", "0", "1", "1"]
    assert _start(tmp_path, "e")[0] == _start(tmp_path, "a")[0]


def test_multi_gpu_job_takes_whole_cards_and_waits_for_them(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1,2", HYBRIDLAB_JOBS_PER_GPU="2")
    single = _launch(tmp_path, "single", env)  # one slot of card 0
    _wait_for(tmp_path / "single.start")
    pair = _launch(tmp_path, "pair", env, "--count", "2")  # the two cards with no job: 1 and 2
    _wait_for(tmp_path / "pair.start")
    assert _start(tmp_path, "pair")[0] == "1,2"
    trio = _launch(tmp_path, "trio", env, "--count", "3", held=False)
    time.sleep(WRONGLY_LET_IN_S)
    assert not (tmp_path / "trio.start").exists(), "a 3-GPU job started while cards were in use"
    _release(tmp_path, "pair")  # cards 1 and 2 free, card 0 still half taken: the trio still waits
    pair.wait(timeout=60)
    time.sleep(WRONGLY_LET_IN_S)
    assert not (tmp_path / "trio.start").exists(), "a 3-GPU job started while card 0 was in use"
    _release(tmp_path, "single")
    for proc in (single, pair, trio):
        assert proc.wait(timeout=60) == 0, proc.stderr.read()
    assert _start(tmp_path, "trio")[0] == "0,1,2"
    last_end = max(float((tmp_path / f"{n}.end").read_text()) for n in ("single", "pair"))
    assert _start(tmp_path, "trio")[1] >= last_end


def test_multi_gpu_job_asking_more_than_the_machine_has_fails_clearly(tmp_path: Path) -> None:
    env = _env(tmp_path, HYBRIDLAB_GPUS="0,1")
    result = subprocess.run([sys.executable, str(SCRIPT), "--count", "4", "--", "true"], env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and "asks for 4 GPUs" in result.stderr
