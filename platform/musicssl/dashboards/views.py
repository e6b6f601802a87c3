"""The figures that answer "which variant, which task, is it real, which layers, at what cost": effect plots per
factor, probe scores against pretraining step, layer-weight heatmaps, and score against cost.

Each function takes the frames of `load_sweep`, `summary.summarise` and `tables.ablation_table` and returns a
``go.Figure``, or None when the sweep lacks what the view needs (the report then says what is missing).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from musicssl.dashboards.cost import cost_per_run
from musicssl.dashboards.figures import (
    _factor_values,
    _layout,
    _pct,
    _score_label,
    _variant_traces,
    variant_colors,
    varying_factors,
)
from musicssl.dashboards.runs import SweepRuns
from musicssl.dashboards.summary import Summary
from musicssl.dashboards.tables import AVERAGE, factor_order_key, score_names, stats


def _cell_labels(table: pd.DataFrame) -> dict[Any, str]:
    return {cell: str(label) for label, cell in table[("cell", "")].items()}


def effect_runs(runs: pd.DataFrame, table: pd.DataFrame, factor: str, factors: list[str]) -> pd.DataFrame:
    """The counted runs that isolate ``factor``: with a baseline, the baseline's runs and those that differ from
    it in ``factor`` only; without one, every counted run (the marginal effect over the other factors)."""
    counted = runs[runs["counted"].astype(bool)]
    base = table[table[("baseline", "")].astype(bool)]
    if base.empty:
        return counted
    ref = base.iloc[0]
    others = [f for f in factors if f != factor]
    same = [all(factor_order_key(r[f]) == factor_order_key(ref[(f, "")]) for f in others) for _, r in counted.iterrows()]
    return counted[same]


def effect_plots(runs: pd.DataFrame, table: pd.DataFrame, factors: list[str]) -> go.Figure | None:
    """One panel per varying factor: each task score and the Average (thick) against the factor's value, mean
    over seeds with 95% CI error bars; the baseline's value is marked. None when no factor varies."""
    varying = varying_factors(table, factors)
    names = score_names(table)
    if not varying or not names:
        return None
    base = table[table[("baseline", "")].astype(bool)]
    fig = make_subplots(rows=1, cols=len(varying), shared_yaxes=True, horizontal_spacing=0.06,
                        subplot_titles=[f"{f}" + ("" if base.empty else f" (baseline {base.iloc[0][(f, '')]})")
                                        for f in varying])
    colors = variant_colors([_score_label(n) for n in names])
    for col, factor in enumerate(varying, start=1):
        chosen = effect_runs(runs, table, factor, factors)
        levels = _factor_values(chosen[factor]) if not chosen.empty else []
        for name in names:
            column = "probe/average" if name == AVERAGE else f"probe/{name}/score"
            points = [stats(chosen.loc[chosen[factor].map(factor_order_key) == factor_order_key(v), column])
                      for v in levels]
            fig.add_trace(go.Scatter(
                x=[str(v) for v in levels], y=[_pct(p["mean"]) for p in points],
                error_y=dict(type="data", array=[_pct(p["ci95"]) for p in points], visible=True, thickness=1.2),
                mode="lines+markers", name=_score_label(name), legendgroup=name, showlegend=col == 1,
                line=dict(color=colors[_score_label(name)], width=3.5 if name == AVERAGE else 1.6),
                customdata=[[p["n"]] for p in points],
                hovertemplate=f"{_score_label(name)}<br>{factor}=%{{x}}: %{{y:.1f}}% (n=%{{customdata[0]}})<extra></extra>",
            ), row=1, col=col)
        fig.update_xaxes(type="category", title_text=factor, row=1, col=col)
    fig.update_yaxes(title_text="score (%)", row=1, col=1)
    return _layout(fig, "Effect of each factor", height=430, legend_title_text="score", hovermode="closest")


def step_history(sweep: SweepRuns) -> pd.DataFrame:
    """``sweep.history`` plus the Average per run and step (the paper's formula; only steps with every task)."""
    history = sweep.history
    if history.empty:
        return history
    tasks = sorted(set(history["task"]))
    wide = history.pivot_table(index=["run_id", "step"], columns="task", values="value")
    average = wide[tasks].mean(axis=1, skipna=False).dropna().rename("value").reset_index()
    average["task"] = AVERAGE
    return pd.concat([history, average[history.columns]], ignore_index=True)


def probe_curves(sweep: SweepRuns, table: pd.DataFrame, summary: Summary) -> go.Figure | None:
    """Probe score (%) against pretraining step, one panel per task and the Average: per variant the mean over
    seeds, a min..max band and each seed faintly. None when no probe score was logged."""
    history = step_history(sweep)
    if history.empty:
        return None
    names = [n for n in score_names(table) if n in set(history["task"])]
    labels = _cell_labels(table)
    colors = variant_colors(list(labels.values()))
    runs = sweep.runs.set_index("run_id")
    fig = make_subplots(rows=1, cols=len(names), horizontal_spacing=0.05,
                        subplot_titles=[_score_label(n) for n in names])
    for col, name in enumerate(names, start=1):
        frame = history[history["task"] == name]
        for cell, label in labels.items():
            ids = set(runs.index[runs["cell"] == cell])
            wide = frame[frame["run_id"].isin(ids)].pivot_table(index="step", columns="run_id", values="value") * 100
            if not wide.empty:
                for trace in _variant_traces(wide, runs, label, colors[label], legend=col == 1):
                    fig.add_trace(trace, row=1, col=col)
        if summary.kind == "step":
            fig.add_vline(x=summary.step, line_dash="dash", line_color="#59636e", row=1, col=col)
        fig.update_xaxes(title_text="pretraining step", row=1, col=col)
    fig.update_yaxes(title_text="score (%)", row=1, col=1)
    return _layout(fig, "Probe score against pretraining step", height=420, legend_title_text="variant",
                   hovermode="closest")


def layer_weights(sweep: SweepRuns, runs: pd.DataFrame) -> pd.DataFrame:
    """Mean learned layer weight per (cell, task, layer) over the counted runs, at the checkpoint each run's score
    was taken from (``step/<task>``). Columns ``cell, task, layer, weight, n``."""
    probes = sweep.probe_runs
    probes = probes[probes["layer_weights"].notna() & (probes["status"] == "FINISHED")]
    rows = []
    for _, run in runs[runs["counted"].astype(bool)].iterrows():
        for _, probe in probes[probes["run_id"] == run["run_id"]].iterrows():
            step = run.get(f"step/{probe['task']}")
            if step is None or pd.isna(step) or int(step) != int(probe["step"]):
                continue
            rows += [(run["cell"], probe["task"], layer, w) for layer, w in probe["layer_weights"].items()]
    frame = pd.DataFrame(rows, columns=["cell", "task", "layer", "weight"])
    return frame.groupby(["cell", "task", "layer"], as_index=False).agg(weight=("weight", "mean"),
                                                                       n=("weight", "size"))


def layer_heatmaps(sweep: SweepRuns, runs: pd.DataFrame, table: pd.DataFrame) -> go.Figure | None:
    """One heatmap per variant: the probe's learned softmax layer weights, layers (0 = CNN output) x tasks, mean
    over seeds. None when no probe logged layer weights."""
    weights = layer_weights(sweep, runs)
    if weights.empty:
        return None
    labels = {cell: label for cell, label in _cell_labels(table).items() if cell in set(weights["cell"])}
    tasks = sorted(set(weights["task"]))
    layers = sorted(set(weights["layer"]))
    cols = min(len(labels), 4)
    rows = math.ceil(len(labels) / cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(labels.values()), shared_yaxes=True,
                        horizontal_spacing=0.04, vertical_spacing=0.12)
    low, top = float(weights["weight"].min()), float(weights["weight"].max())
    for i, (cell, label) in enumerate(labels.items()):
        one = weights[weights["cell"] == cell].pivot_table(index="layer", columns="task", values="weight")
        one = one.reindex(index=layers, columns=tasks)
        fig.add_trace(go.Heatmap(
            z=one.values, x=tasks, y=[str(layer) for layer in layers], zmin=low, zmax=top, colorscale="Blues",
            showscale=i == 0, colorbar=dict(title=dict(text="weight")),
            hovertemplate=f"{label}<br>%{{x}}, layer %{{y}}: %{{z:.3f}}<extra></extra>",
        ), row=i // cols + 1, col=i % cols + 1)
    fig.update_yaxes(title_text="layer (0 = CNN)", col=1, type="category")
    return _layout(fig, "Learned layer weights", height=120 + 300 * rows)


def cost_scatter(sweep: SweepRuns, runs: pd.DataFrame, table: pd.DataFrame) -> go.Figure | None:
    """Average score (%) against the pretraining accelerator-hours of each counted run, one colour per variant.
    None when no run has a known cost."""
    per_run = cost_per_run(sweep).set_index("run_id")
    known = runs[runs["counted"].astype(bool) & runs["run_id"].map(per_run["pretrain_h"].notna())]
    if known.empty or known["probe/average"].isna().all():
        return None
    unit = per_run["unit"].iloc[0]
    labels = _cell_labels(table)
    colors = variant_colors(list(labels.values()))
    fig = go.Figure()
    for cell, label in labels.items():
        mine = known[known["cell"] == cell]
        if mine.empty:
            continue
        fig.add_trace(go.Scatter(
            x=mine["run_id"].map(per_run["pretrain_h"]), y=100 * mine["probe/average"], mode="markers",
            marker=dict(size=11, color=colors[label]), name=label,
            customdata=mine[["seed"]].astype(str).to_numpy(),
            hovertemplate=f"{label} seed %{{customdata[0]}}<br>%{{x:.3g}} {unit}: %{{y:.1f}}%<extra></extra>",
        ))
    return _layout(fig, "Average score against pretraining cost", height=400, legend_title_text="variant",
                   xaxis_title=f"pretraining {unit} per run", yaxis_title="Average (%)")
