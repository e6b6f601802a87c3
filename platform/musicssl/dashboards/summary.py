"""Which probe score stands for a trial: the one of its last probed checkpoint, its best one, or the one at a step.

Every checkpoint on a sweep's probe schedule is probed, so a trial has a probe score per task per step
(`SweepRuns.history`). The tables and effect plots need one number per trial and task; `Summary` says which,
and `summarise` turns the history into a runs frame with that number in ``probe/<task>/score`` and the paper's
Average (task scores averaged within a task already, then the plain mean over tasks) in ``probe/average``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Literal

import pandas as pd

from musicssl.dashboards.command import SUMMARY_HELP
from musicssl.dashboards.runs import SweepRuns


@dataclass(frozen=True)
class Summary:
    """How one trial's probe scores over its checkpoints become one number per task."""

    kind: Literal["last", "best", "step"] = "last"
    step: int | None = None

    @classmethod
    def parse(cls, text: str) -> Summary:
        """``last``, ``best`` or ``step:N`` (``N`` alone also works).

        Raises:
            ValueError: Anything else; the message lists the spellings.
        """
        text = text.strip().lower()
        if text in ("last", "best"):
            return cls(text)  # type: ignore[arg-type]
        match = re.fullmatch(r"(?:step[:=]?)?(\d+)", text)
        if match is None:
            raise ValueError(f"summary {text!r}: expected {SUMMARY_HELP}")
        return cls("step", int(match.group(1)))

    @property
    def label(self) -> str:
        """Short name: ``last``, ``best`` or ``step 100``."""
        return f"step {self.step}" if self.kind == "step" else self.kind

    def describe(self) -> str:
        """One sentence for the page: which checkpoint's score each cell is, and which runs count."""
        if self.kind == "last":
            return ("Scores are those of each trial's last probed checkpoint (its final one); only finished trials "
                    "count (trials stopped early or failed are listed, not averaged).")
        if self.kind == "best":
            return ("Scores are each trial's best checkpoint per task (the maximum over its probed steps), an "
                    "optimistic choice made on the test score; the Average is the mean of those per-task bests; only "
                    "finished trials count.")
        return (f"Scores are those of the checkpoint at step {self.step}; every trial probed at that step counts, "
                "whether or not it ran to the end.")


def _pick(history: pd.DataFrame, summary: Summary) -> pd.DataFrame:
    """(run_id, task) -> (value, step) under the summary."""
    if history.empty:
        return pd.DataFrame(columns=["run_id", "task", "value", "step"])
    if summary.kind == "step":
        picked = history[history["step"] == summary.step]
    elif summary.kind == "last":
        picked = history.loc[history.groupby(["run_id", "task"])["step"].idxmax()]
    else:
        picked = history.loc[history.groupby(["run_id", "task"])["value"].idxmax()]
    return picked[["run_id", "task", "value", "step"]]


def summarise(sweep: SweepRuns, summary: Summary) -> pd.DataFrame:
    """The sweep's runs frame with one probe score per trial and task chosen by ``summary``.

    Returns:
        ``sweep.runs`` without its raw ``probe/*`` columns, plus ``probe/<task>/score`` (the chosen score, NaN
        where the trial has none), ``step/<task>`` (the checkpoint step it comes from), ``probe/average`` (the
        plain mean of the row's task scores; NaN unless every task has one) and ``counted`` (whether the run
        enters the statistics: finished and not stopped early for ``last`` and ``best``, any run with a score
        at the step for ``step:N``).
    """
    runs = sweep.runs[[c for c in sweep.runs.columns if not c.startswith("probe/")]].copy()
    history = sweep.history
    tasks = sorted(set(history["task"])) if not history.empty else []
    if not tasks:  # an old sweep without per-step probe scores: its logged (latest) scores are all there is
        tasks = sorted(c.split("/")[1] for c in sweep.runs.columns if c.startswith("probe/") and c.endswith("/score"))
        history = pd.DataFrame([
            (r["run_id"], t, 0, r[f"probe/{t}/score"]) for _, r in sweep.runs.iterrows() for t in tasks
            if not math.isnan(r[f"probe/{t}/score"])], columns=["run_id", "task", "step", "value"])
    picked = _pick(history, summary).set_index(["run_id", "task"])
    for task in tasks:
        keys = [(run_id, task) for run_id in runs["run_id"]]
        runs[f"probe/{task}/score"] = [float(picked.at[k, "value"]) if k in picked.index else math.nan for k in keys]
        runs[f"step/{task}"] = [int(picked.at[k, "step"]) if k in picked.index else pd.NA for k in keys]
    score_cols = [f"probe/{t}/score" for t in tasks]
    runs["probe/average"] = runs[score_cols].mean(axis=1, skipna=False) if tasks else math.nan
    if summary.kind == "step":
        runs["counted"] = runs[score_cols].notna().any(axis=1) if tasks else False
    else:
        stopped = runs["stopped_early"] if "stopped_early" in runs.columns else pd.Series(math.nan, index=runs.index)
        runs["counted"] = (runs["status"] == "FINISHED") & stopped.isna()
    return runs
