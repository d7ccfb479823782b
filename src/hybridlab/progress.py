"""Progress lines for long jobs whose output goes to a log file (a Snakemake job's log): one line per unit of
work with the count, the elapsed time and an estimate of the time left. Training rows have their own line
(train/lit.py RunRecorder); evaluations and analyses count checkpoints."""

from __future__ import annotations

import logging
import time

log = logging.getLogger("hybridlab")


def clock(seconds: float) -> str:
    """h:mm:ss, or '?' for an unknown (NaN) time."""
    if seconds != seconds:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class Progress:
    """`start(detail)` logs "WHAT i/N (detail): elapsed, eta" as unit i begins; `done()` logs the total time."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.started, self.count = what, total, time.perf_counter(), 0

    def start(self, detail: str = "") -> None:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.count * (self.total - self.count) if self.count else float("nan")
        self.count += 1
        log.info("%s %d/%d%s: elapsed %s, eta %s", self.what, self.count, self.total,
                 f" ({detail})" if detail else "", clock(elapsed), clock(eta))

    def done(self) -> None:
        log.info("%s: %d done in %s", self.what, self.count, clock(time.perf_counter() - self.started))
