"""The ablation table: one row per variant (config cell), baseline first; per task score and the Average the mean,
std, n and 95% CI over seeds, and the change against the baseline with Welch's t-test over seeds.

Only counted runs (finished ones, or those a summary selects: see `summary.summarise`) enter the statistics.
Failed (FAILED, KILLED) and unfinished (RUNNING, SCHEDULED) runs are counted in the ``runs`` columns so a report
can show them. Statistics come from SciPy (Student t quantiles, ``scipy.stats.ttest_ind(equal_var=False)``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import numpy as np
import pandas as pd
import scipy.stats

SCORE_STATS = ("mean", "std", "n", "ci95", "delta", "p", "noise")
"""The statistics given for every score column, in order: mean over seeds, sample std, n, 95% CI half-width
(Student t), the change of the mean against the baseline row, Welch's t-test p-value of that change, and the
verdict `NOISE` / `REAL` / `UNTESTED` ("" for the baseline row itself and when the sweep has no baseline)."""
AVERAGE = "average"
FAILED_STATUSES = frozenset({"FAILED", "KILLED"})
RUN_COUNTS = ("total", "finished", "failed", "stopped", "unfinished")
"""The ``runs`` columns: trials in the cell, finished, failed (FAILED or KILLED), stopped early by the scheduler
(ASHA), and still running or scheduled."""
ALPHA = 0.05
"""Significance level of the within-noise test (two-sided)."""
NOISE, REAL, UNTESTED = "within noise", "real", "untested (n<2)"


def t975(df: int) -> float:
    """Two-sided 95% Student t critical value ``t(0.975, df)`` (SciPy)."""
    if df < 1:
        raise ValueError(f"t975: degrees of freedom must be >= 1, got {df}")
    return float(scipy.stats.t.ppf(0.975, df))


def welch(a: pd.Series, b: pd.Series) -> float:
    """Welch's unequal-variance t-test p-value (two-sided) of ``mean(a) != mean(b)``; NaN when either has n < 2.

    Two identical constant samples give p = 1 (no difference at all), two different constant samples p = 0.
    """
    a, b = a.dropna().astype(float), b.dropna().astype(float)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if a.std(ddof=1) == 0 and b.std(ddof=1) == 0:
        return 1.0 if a.mean() == b.mean() else 0.0
    return float(scipy.stats.ttest_ind(a, b, equal_var=False).pvalue)


def factor_order_key(value: Any) -> tuple[int, Any, str]:
    """Sort key that orders factor values of mixed types: None, bools, numbers, strings, anything else."""
    if value is None or value is pd.NA or (isinstance(value, numbers.Real) and math.isnan(value)):
        return (0, 0, "")
    if isinstance(value, bool | np.bool_):
        return (1, int(value), "")
    if isinstance(value, numbers.Real):
        return (2, float(value), "")
    if isinstance(value, str):
        return (3, 0, value)
    return (4, 0, repr(value))


def task_names(runs: pd.DataFrame) -> list[str]:
    """Task names that have a ``probe/<task>/score`` column, sorted."""
    return sorted(c.split("/")[1] for c in runs.columns if c.startswith("probe/") and c.endswith("/score"))


def _score_values(runs: pd.DataFrame, tasks: list[str]) -> pd.DataFrame:
    """One column per task score plus ``average`` (``probe/average``, or the task mean when not logged)."""
    scores = pd.DataFrame({t: runs[f"probe/{t}/score"].astype(float) for t in tasks}, index=runs.index)
    if "probe/average" in runs.columns:
        scores[AVERAGE] = runs["probe/average"].astype(float)
    else:
        scores[AVERAGE] = scores[tasks].mean(axis=1, skipna=False) if tasks else math.nan
    return scores


def stats(values: pd.Series) -> dict[str, float]:
    """Mean, sample std, n and Student-t 95% CI half-width of the non-NaN values (std and CI NaN when n < 2)."""
    values = values.dropna()
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    std = float(values.std(ddof=1)) if n > 1 else math.nan
    ci = t975(n - 1) * std / math.sqrt(n) if n > 1 else math.nan
    return {"mean": mean, "std": std, "n": n, "ci95": ci}




def _versus(values: pd.Series, base: pd.Series) -> dict[str, Any]:
    """The change of ``values`` against the baseline's, Welch's p-value and the verdict."""
    values, base = values.dropna(), base.dropna()
    if values.empty or base.empty:
        return {"delta": math.nan, "p": math.nan, "noise": ""}
    p = welch(values, base)
    verdict = UNTESTED if math.isnan(p) else NOISE if p >= ALPHA else REAL
    return {"delta": float(values.mean() - base.mean()), "p": p, "noise": verdict}


def _counted(runs: pd.DataFrame) -> pd.Series:
    """Which runs enter the statistics: the ``counted`` column of a summarised frame, else the finished runs."""
    return runs["counted"].astype(bool) if "counted" in runs.columns else runs["status"] == "FINISHED"


def _closest_baseline(first: pd.Series, baselines: dict[Any, pd.Series], factors: list[str]) -> Any:
    """The baseline cell that agrees with this row on the most factors (the same grid cell, for a variants x grid
    sweep); the first one on a tie."""
    def agreement(cell: Any) -> int:
        other = baselines[cell]
        return sum(factor_order_key(first[f]) == factor_order_key(other[f]) for f in factors)

    return max(baselines, key=agreement) if baselines else None


def ablation_table(runs: pd.DataFrame, factors: list[str], variants: list[str] | None = None) -> pd.DataFrame:
    """Aggregate trial runs into one row per variant (config cell), as the paper's ablation tables.

    Args:
        runs: ``SweepRuns.runs`` or a summarised frame from `summary.summarise` (columns ``run_id, status, variant,
            cell, seed``, factor columns, ``probe/<task>/score``, optionally ``probe/average``, ``variant_name``,
            ``baseline`` and ``counted``).
        factors: The factor columns.
        variants: The variant names in the sweep file's order (rows follow it after the baseline).

    Returns:
        A frame indexed by variant label (the ``musicssl.variant`` tag; made unique with the cell id when two
        cells share a label): the baseline row(s) first, then the variants in file order, the rest by factor
        values. Columns are a two-level index: ``("cell", "")``, ``("baseline", "")`` (bool), ``(<factor>, "")``
        for each factor, ``("runs", <count>)`` for the `RUN_COUNTS`, then ``(<task>, <stat>)``
        for every task score and ``("average", <stat>)`` with ``<stat>`` in `SCORE_STATS`. Scores are fractions
        as logged; ``n`` counts the runs counted with a value (finished ones, or see ``counted``), ``std`` is the
        sample std (ddof=1) and ``ci95`` the Student-t 95% CI half-width (NaN when n < 2); ``delta``, ``p`` and
        ``noise`` compare the row with the closest baseline row (Welch's t-test over seeds, `ALPHA`).
    """
    missing = [c for c in ("status", "variant", "cell", *factors) if c not in runs.columns]
    if missing:
        raise ValueError(
            f"ablation_table: runs frame lacks columns {missing}; pass SweepRuns.runs from load_sweep"
        )
    tasks = task_names(runs)
    scores = _score_values(runs, tasks)
    counted = _counted(runs)
    is_base = runs["baseline"].astype(bool) if "baseline" in runs.columns else pd.Series(False, index=runs.index)
    groups = dict(list(runs.groupby("cell", sort=False)))
    base_cells = {cell: g.iloc[0] for cell, g in groups.items() if bool(is_base[g.index].any())}
    order = {name: i for i, name in enumerate(variants or [])}

    rows: list[tuple[tuple[Any, ...], str, dict[tuple[str, str], Any]]] = []
    for cell, group in groups.items():
        first, status = group.iloc[0], group["status"]
        row: dict[tuple[str, str], Any] = {("cell", ""): cell, ("baseline", ""): cell in base_cells}
        row.update({(f, ""): first[f] for f in factors})
        no_tag = pd.Series(False, index=group.index)
        stopped = group["stopped_early"].notna() if "stopped_early" in group.columns else no_tag
        n_stopped = int(stopped.sum())
        n_failed = int((status.isin(FAILED_STATUSES) & ~stopped).sum())
        n_finished = int((status == "FINISHED").sum())
        row[("runs", "total")] = len(group)
        row[("runs", "finished")] = n_finished
        row[("runs", "failed")] = n_failed
        row[("runs", "stopped")] = n_stopped
        row[("runs", "unfinished")] = len(group) - n_finished - n_failed - n_stopped
        ok = scores.loc[group.index[counted[group.index]]]
        base_cell = None if cell in base_cells else _closest_baseline(first, base_cells, factors)
        base = scores.loc[groups[base_cell].index[counted[groups[base_cell].index]]] if base_cell is not None else None
        for name in [*tasks, AVERAGE]:
            row.update({(name, stat): value for stat, value in stats(ok[name]).items()})
            versus = _versus(ok[name], base[name]) if base is not None else {"delta": math.nan, "p": math.nan,
                                                                              "noise": ""}
            row.update({(name, stat): value for stat, value in versus.items()})
        name = str(first.get("variant_name", first["variant"]))
        key = (cell not in base_cells, order.get(name, len(order)), *(factor_order_key(first[f]) for f in factors))
        rows.append((key, str(first["variant"]), row))

    rows.sort(key=lambda r: (r[0], r[1]))
    labels = [label for _, label, _ in rows]
    duplicated = {label for label in labels if labels.count(label) > 1}
    index = [f"{label} [{row[('cell', '')]}]" if label in duplicated else label for _, label, row in rows]
    columns = [("cell", ""), ("baseline", ""), *((f, "") for f in factors)]
    columns += [("runs", s) for s in RUN_COUNTS]
    columns += [(name, stat) for name in [*tasks, AVERAGE] for stat in SCORE_STATS]
    table = pd.DataFrame(
        [[row[c] for c in columns] for _, _, row in rows],
        index=pd.Index(index, name="variant", dtype=object),
        columns=pd.MultiIndex.from_tuples(columns),
    )
    for name in [*tasks, AVERAGE]:
        table[(name, "n")] = table[(name, "n")].astype(int)
    return table


def score_names(table: pd.DataFrame) -> list[str]:
    """The score columns of an `ablation_table` (tasks then ``average``)."""
    return [name for name, stat in table.columns if stat == "mean"]
