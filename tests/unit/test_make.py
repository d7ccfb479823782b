"""The Makefile's front door: `make` alone lists every declared target with what it does, every declared target
has a recipe, and `make report-html` builds the figures and the Snakemake report from a tables folder alone,
the figures-only build chosen through the workflow config (not the command line's targets)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from test_figures import synthetic_tables, write_tables

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}


def make(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(["make", "--no-print-directory", "-C", str(REPO), *args], capture_output=True, text=True,
                          env=ENV, timeout=timeout)


def declared() -> list[str]:
    phony = re.search(r"^\.PHONY:(.*)$", (REPO / "Makefile").read_text(), re.M)
    assert phony is not None
    return phony.group(1).split()


def test_make_alone_lists_every_declared_target_with_what_it_does():
    proc = make()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == make("help").stdout
    listed = dict(re.findall(r"^  (\S+) +(\S.*)$", proc.stdout, re.M))
    assert set(declared()) <= set(listed), set(declared()) - set(listed)
    assert "figures" in listed["report-html"] and "SCALE" in proc.stdout


def test_every_declared_target_has_a_recipe():
    for target in declared():
        proc = make("-n", "-B", target, "NO_VENV=1")  # -B: an up-to-date venv still shows its recipe
        assert proc.returncode == 0, (target, proc.stderr)
        assert proc.stdout.strip() and "Nothing to be done" not in proc.stdout, target


def test_make_report_html_rebuilds_the_figures_from_tables_alone(tmp_path):
    results, paper = tmp_path / "results", tmp_path / "paper"
    write_tables(synthetic_tables(), results / "smoke" / "tables", only=("eval",))
    snakemake = f"{BIN / 'snakemake'} --snakefile {REPO / 'Snakefile'} --directory {tmp_path}"
    proc = make("report-html", "NO_VENV=1", f"SNAKEMAKE={snakemake}", f"RESULTS={results}", f"PAPER={paper}",
                timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    html = paper / "smoke" / "snakemake_report.html"
    assert html.stat().st_size > 100_000 and "fig_emergence" in html.read_text(errors="replace")
    assert (paper / "smoke" / "figures" / "fig_emergence.png").stat().st_size > 5000
    assert "No data at this scale" in (paper / "smoke" / "captions" / "fig3_receptive.rst").read_text()
    assert sorted(p.name for p in (results / "smoke").iterdir()) == ["logs", "tables"]  # nothing upstream ran


def test_replicate_mini_runs_under_mps_when_asked_and_takes_turns_without(tmp_path):
    """MPS=1: Snakemake inside with_mps.sh, 4 trainings a card, no training lock; MPS=0: the lock, 2 a card;
    MPS=auto (the default): with_mps.sh --or-without where nvidia-cuda-mps-control is on PATH, else the lock."""
    tool = tmp_path / "nvidia-cuda-mps-control"
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    auto = subprocess.run(["make", "--no-print-directory", "-C", str(REPO), "-n", "replicate-mini", "NGPU=1",
                           "NO_VENV=1"], capture_output=True, text=True, timeout=60,
                          env={**ENV, "PATH": f"{tmp_path}{os.pathsep}{ENV['PATH']}"}).stdout
    assert "with_mps.sh --or-without" in auto and "train=$(( 1 * 4 ))" in auto
    import shutil

    if shutil.which("nvidia-cuda-mps-control") is None:  # a machine without the tool: the lock
        assert "with_mps.sh" not in make("-n", "replicate-mini", "NGPU=1", "NO_VENV=1").stdout
    on = make("-n", "replicate-mini", "NGPU=1", "MPS=1", "NO_VENV=1").stdout
    assert "workflow/scripts/with_mps.sh" in on and "train=$(( 1 * 4 ))" in on and "HYBRIDLAB_TRAIN_LOCK= " in on
    assert "--or-without" not in on  # MPS=1 insists; MPS=auto falls back when the daemon will not start
    off = make("-n", "replicate-mini", "NGPU=1", "MPS=0", "NO_VENV=1").stdout
    assert "with_mps.sh" not in off and "train=$(( 1 * 2 ))" in off and "hybridlab-train-{gpu}.lock" in off


def test_replicate_grid_runs_the_grid_scale_with_the_same_slots():
    """replicate-grid is replicate-mini's recipe for scale mini_grid: same MPS wrapper and slots, its own scale and
    report; without a GPU both refuse, naming the target."""
    on = make("-n", "replicate-grid", "NGPU=1", "MPS=1", "NO_VENV=1").stdout
    assert "scale=mini_grid " in on and "scale=mini " not in on
    assert "workflow/scripts/with_mps.sh" in on and "train=$(( 1 * 4 ))" in on and "mini_grid/report.md" in on
    refused = make("replicate-grid", "NGPU=0", "NO_VENV=1")
    assert refused.returncode != 0 and "replicate-grid needs a GPU" in refused.stdout + refused.stderr


def test_with_mps_starts_a_private_daemon_runs_the_command_and_stops_it(tmp_path):
    """With a stand-in nvidia-cuda-mps-control on PATH (it logs how it is called): the daemon starts with its own
    pipe folder, the command runs inside it with its exit code kept, and the daemon is told to quit after; without
    the tool the script refuses, naming MPS=0."""
    fake = tmp_path / "bin" / "nvidia-cuda-mps-control"
    fake.parent.mkdir()
    calls = tmp_path / "calls.txt"
    fake.write_text(f'#!/usr/bin/env bash\necho "$* pipe=$CUDA_MPS_PIPE_DIRECTORY stdin=$(cat -)" >> {calls}\n')
    fake.chmod(0o755)
    script = REPO / "workflow" / "scripts" / "with_mps.sh"
    env = {**ENV, "PATH": f"{fake.parent}{os.pathsep}{ENV['PATH']}", "TMPDIR": str(tmp_path)}
    proc = subprocess.run(["bash", str(script), "bash", "-c", 'echo "inside $CUDA_MPS_PIPE_DIRECTORY"; exit 3'],
                          capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, timeout=60)
    assert proc.returncode == 3, proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[0].startswith("-d pipe=" + str(tmp_path))  # the daemon, with a pipe folder of its own
    assert lines[1].strip().startswith("pipe=") and "stdin=quit" in lines[1]  # told to quit at the end
    assert proc.stdout.strip() == "inside " + lines[0].split("pipe=")[1].split()[0]
    bare = {**ENV, "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(script), "true"], capture_output=True, text=True, env=bare, timeout=60)
    assert proc.returncode == 2 and "MPS=0" in proc.stderr
    fake.write_text("#!/usr/bin/env bash\nexit 1\n")  # a daemon that will not start
    failing = ["bash", str(script), "bash", "-c", 'echo "pipe=${CUDA_MPS_PIPE_DIRECTORY:-none}"; exit 4']
    proc = subprocess.run(failing, capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 2 and "did not start" in proc.stderr and "pipe=" not in proc.stdout
    proc = subprocess.run([failing[0], failing[1], "--or-without", *failing[2:]], capture_output=True, text=True,
                          env=env, timeout=60)
    assert proc.returncode == 4 and proc.stdout.strip() == "pipe=none" and "running without MPS" in proc.stderr
