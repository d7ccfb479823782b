"""Wall time per stage of one Snakemake run, from its log: when each rule's first job started and its last job
finished, in seconds after the run's first job started, and how many jobs it ran.

    python workflow/scripts/dag_times.py SNAKEMAKE_LOG [--markdown]

Reads the timestamped `rule NAME:` / `localrule NAME:` lines (a job starts) and `Finished jobid: N (Rule: NAME)`
lines (a job ends) that Snakemake 9 prints. Stages group rules: train_group_* and train are "train"; evaluate,
receptive, analyze, probe, gradinf and evaluate_group_* "evaluate + analyses"; table "tables"; figures,
report_index and all "figures + report".
"""

from __future__ import annotations

import argparse
import re
from datetime import datetime
from pathlib import Path

STAMP = re.compile(r"^\[(\w{3} \w{3} +\d+ \d\d:\d\d:\d\d \d{4})\]$")
START = re.compile(r"^(?:local)?rule (\w+):$")
END = re.compile(r"^Finished jobid: \d+ \(Rule: (\w+)\)$")
STAGES = {"prepare_data": "prepare data", "describe": "plan (describe)", "table": "tables",
          "figures": "figures + report", "report_index": "figures + report", "all": "figures + report"}
EVAL = ("evaluate", "receptive", "analyze", "probe", "gradinf")


def stage_of(rule: str) -> str:
    if rule.startswith("train"):
        return "train"
    if rule in EVAL or rule.startswith("evaluate_group"):
        return "evaluate + analyses"
    return STAGES.get(rule, rule)


def parse(text: str) -> list[tuple[str, str, datetime]]:
    """(event 'start' | 'end', rule, time) in log order."""
    events, stamp = [], None
    for line in text.splitlines():
        line = line.strip()
        if m := STAMP.match(line):
            stamp = datetime.strptime(" ".join(m.group(1).split()), "%a %b %d %H:%M:%S %Y")
        elif stamp is not None and (m := START.match(line)):
            events.append(("start", m.group(1), stamp))
        elif stamp is not None and (m := END.match(line)):
            events.append(("end", m.group(1), stamp))
    return events


def stage_times(text: str) -> list[dict]:
    events = parse(text)
    if not events:
        raise ValueError("no job events in the log (is it a Snakemake 9 log?)")
    t0 = min(t for _, _, t in events)
    rows: dict[str, dict] = {}
    for kind, rule, t in events:
        r = rows.setdefault(stage_of(rule), {"stage": stage_of(rule), "start_s": None, "end_s": None, "jobs": 0})
        s = (t - t0).total_seconds()
        if kind == "start":
            r["start_s"] = s if r["start_s"] is None else min(r["start_s"], s)
            r["jobs"] += 1
        else:
            r["end_s"] = s if r["end_s"] is None else max(r["end_s"], s)
    out = sorted(rows.values(), key=lambda r: (r["start_s"] is None, r["start_s"]))
    last = max(r["end_s"] or 0 for r in out)
    return [*out, {"stage": "whole DAG", "start_s": 0.0, "end_s": last, "jobs": sum(r["jobs"] for r in out)}]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("log")
    p.add_argument("--markdown", action="store_true")
    a = p.parse_args()
    rows = stage_times(Path(a.log).read_text())
    if a.markdown:
        print("| stage | jobs | from (s) | to (s) |\n|---|---|---|---|")
        for r in rows:
            end = "running" if r["end_s"] is None else f"{r['end_s']:.0f}"
            print(f"| {r['stage']} | {r['jobs']} | {r['start_s']:.0f} | {end} |")
    else:
        for r in rows:
            print(r)


if __name__ == "__main__":
    main()
