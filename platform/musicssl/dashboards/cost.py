"""What each variant cost: pretraining wall time and accelerator-hours (CPU-hours where no GPU was given), and the
probe jobs' cost apart, next to the Average score it bought.

Pretraining wall time is the trial's ``cost/pretrain_s`` metric (summed over the attempts of a resumed trial;
older sweeps: the run's end minus start time). Accelerator-hours = wall hours x the GPUs the trial held (all its
workers), or x its CPUs when the sweep gave trials no GPU. A probe job's cost is its ``wall_s`` x the sweep's
``probe.gpus`` (else ``probe.cpus``).
"""

from __future__ import annotations

import math

import pandas as pd

from musicssl.dashboards.runs import SweepRuns

COST_COLUMNS = ["runs", "wall_h", "pretrain_h", "probe_jobs", "probe_wall_h", "probe_h", "average", "per_h"]
"""`cost_table` columns: counted runs, mean pretraining wall hours per run, pretraining accelerator-hours per run,
probe jobs, their wall hours and accelerator-hours per run, mean Average (fraction), Average points (%) per
pretraining accelerator-hour."""


def units(sweep: SweepRuns) -> tuple[str, str]:
    """The pretraining and the probe cost unit: ``GPU-h`` where GPUs were given, else ``CPU-h``."""
    gpus = sweep.runs["gpus"] if "gpus" in sweep.runs.columns else pd.Series(dtype=float)
    pretrain = "GPU-h" if (gpus.fillna(0) > 0).any() else "CPU-h"
    probe = "GPU-h" if sweep.probe_resources.get("gpus", 0) > 0 else "CPU-h"
    return pretrain, probe


def cost_per_run(sweep: SweepRuns) -> pd.DataFrame:
    """One row per trial run: ``run_id, cell, pretrain_s, pretrain_h, unit, probe_jobs, probe_s, probe_h``
    (``pretrain_h`` NaN where the run's resources or time are unknown)."""
    runs = sweep.runs
    unit, probe_unit = units(sweep)
    column = "gpus" if unit == "GPU-h" else "cpus"
    holds = runs[column] if column in runs.columns else pd.Series(math.nan, index=runs.index)
    wall = runs["pretrain_s"] if "pretrain_s" in runs.columns else pd.Series(math.nan, index=runs.index)
    probe_each = sweep.probe_resources.get("gpus" if probe_unit == "GPU-h" else "cpus", math.nan) or math.nan
    probes = sweep.probe_runs.groupby("run_id")["wall_s"].agg(["size", "sum"])
    return pd.DataFrame({
        "run_id": runs["run_id"], "cell": runs["cell"], "pretrain_s": wall,
        "pretrain_h": wall / 3600 * holds, "unit": unit,
        "probe_jobs": runs["run_id"].map(probes["size"]).fillna(0).astype(int),
        "probe_s": runs["run_id"].map(probes["sum"]).fillna(0.0),
        "probe_h": runs["run_id"].map(probes["sum"]).fillna(0.0) / 3600 * probe_each,
    })


def cost_table(sweep: SweepRuns, runs: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per variant (the ablation table's rows and order): the `COST_COLUMNS`, means over the counted runs.

    Args:
        sweep: The loaded sweep.
        runs: Its summarised runs frame (`summary.summarise`), for ``counted`` and ``probe/average``.
        table: The ablation table, for the row labels and order.
    """
    per_run = cost_per_run(sweep).set_index("run_id")
    rows = []
    for _, row in table.iterrows():
        mine = runs[(runs["cell"] == row[("cell", "")]) & runs["counted"].astype(bool)]
        cost = per_run.loc[mine["run_id"]]
        average = float(mine["probe/average"].mean()) if len(mine) else math.nan
        pretrain_h = float(cost["pretrain_h"].mean()) if len(cost) else math.nan
        rows.append({
            "runs": len(mine), "wall_h": float(cost["pretrain_s"].mean()) / 3600 if len(cost) else math.nan,
            "pretrain_h": pretrain_h, "probe_jobs": float(cost["probe_jobs"].mean()) if len(cost) else math.nan,
            "probe_wall_h": float(cost["probe_s"].mean()) / 3600 if len(cost) else math.nan,
            "probe_h": float(cost["probe_h"].mean()) if len(cost) else math.nan, "average": average,
            "per_h": 100 * average / pretrain_h if pretrain_h and not math.isnan(pretrain_h) else math.nan,
        })
    return pd.DataFrame(rows, index=table.index, columns=COST_COLUMNS)
