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
