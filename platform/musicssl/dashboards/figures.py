"""Plotly figures for one sweep: a two-factor heatmap, pretraining curves, parallel coordinates (more views:
`dashboards.views`).

Every function takes the frames from `load_sweep` / `ablation_table` and returns a ``go.Figure``, or None when
the figure does not apply to the sweep (e.g. the heatmap when not exactly two factors vary). Scores are shown
as percentages. A variant keeps its colour in every figure (the table's row order picks it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.colors import hex_to_rgb, qualitative
from plotly.subplots import make_subplots

from musicssl.dashboards.runs import SweepRuns
from musicssl.dashboards.tables import AVERAGE, FAILED_STATUSES, factor_order_key, score_names

CURVE_KEYS = ("pretrain/loss", "pretrain/target_var", "pretrain/pred_var", "pretrain/acc_masked",
              "pretrain/frames_per_s")
"""Pretraining curves drawn, in this order, when logged."""
MAX_CURVE_POINTS = 2000
"""Curves with more logged steps than this are thinned to every k-th step."""
_FONT = dict(family="system-ui, -apple-system, 'Segoe UI', Roboto, Helvetica, Arial, sans-serif", size=13)


def _pct(x: float) -> float | None:
    return None if math.isnan(x) else 100.0 * x


def _score_label(name: str) -> str:
    return "Average" if name == AVERAGE else name


def variant_colors(labels: list[str]) -> dict[str, str]:
    """A hex colour per variant label, stable for a given label order."""
    palette = qualitative.Plotly if len(labels) <= len(qualitative.Plotly) else qualitative.Alphabet
    return {label: palette[i % len(palette)] for i, label in enumerate(labels)}


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = hex_to_rgb(hex_color)
    return f"rgba({r},{g},{b},{alpha})"


def _layout(fig: go.Figure, title: str, **kwargs: Any) -> go.Figure:
    kwargs.setdefault("margin", dict(l=60, r=20, t=60, b=50))
    fig.update_layout(
        title=dict(text=title, x=0, xanchor="left"), template="plotly_white", font=_FONT, **kwargs
    )
    return fig


def varying_factors(table: pd.DataFrame, factors: list[str]) -> list[str]:
    """The factors that take more than one value across the table's rows."""
    return [f for f in factors if len({repr(factor_order_key(v)) for v in table[(f, "")]}) > 1]


def _factor_values(values: pd.Series) -> list[Any]:
    unique = {repr(factor_order_key(v)): v for v in values}
    return sorted(unique.values(), key=factor_order_key)


def average_heatmap(table: pd.DataFrame, factors: list[str]) -> go.Figure | None:
    """Heatmap of the mean Average score over the two varying factors; None unless exactly two vary."""
    varying = varying_factors(table, factors)
    if len(varying) != 2:
        return None
    fy, fx = varying
    ys, xs = _factor_values(table[(fy, "")]), _factor_values(table[(fx, "")])
    z: list[list[float | None]] = [[None] * len(xs) for _ in ys]
    text = [[""] * len(xs) for _ in ys]
    for _, row in table.iterrows():
        i = [factor_order_key(v) for v in ys].index(factor_order_key(row[(fy, "")]))
        j = [factor_order_key(v) for v in xs].index(factor_order_key(row[(fx, "")]))
        mean, ci, n = _pct(row[(AVERAGE, "mean")]), _pct(row[(AVERAGE, "ci95")]), row[(AVERAGE, "n")]
        z[i][j] = mean
        if mean is not None:
            text[i][j] = f"{mean:.1f}" + (f" ± {ci:.1f}" if ci is not None else "") + f"<br>n={n}"
    fig = go.Figure(
        go.Heatmap(
            z=z,
            x=[str(v) for v in xs],
            y=[str(v) for v in ys],
            text=text,
            texttemplate="%{text}",
            colorscale="Viridis",
            colorbar=dict(title=dict(text="Average (%)")),
            hovertemplate=f"{fy}=%{{y}}<br>{fx}=%{{x}}<br>Average: %{{text}}<extra></extra>",
        )
    )
    return _layout(
        fig,
        "Average score (%) by factor pair (mean ± 95% CI)",
        xaxis=dict(title=fx, type="category"),
        yaxis=dict(title=fy, type="category"),
        height=160 + 90 * len(ys),
    )


def _thin(frame: pd.DataFrame) -> pd.DataFrame:
    steps = np.sort(frame["step"].unique())
    if len(steps) <= MAX_CURVE_POINTS:
        return frame
    keep = steps[:: math.ceil(len(steps) / MAX_CURVE_POINTS)]
    return frame[frame["step"].isin(keep)]


def _variant_traces(
    wide: pd.DataFrame, runs: pd.DataFrame, label: str, color: str, legend: bool
) -> list[go.Scatter]:
    """Traces of one variant in one panel: a faint line per seed, then the min..max band and the mean line
    over the seeds whose run did not fail. ``wide`` is (step, run_id) -> value."""
    traces = []
    for run_id in wide.columns:
        failed = runs.at[run_id, "status"] in FAILED_STATUSES
        one = wide[run_id].dropna()
        traces.append(
            go.Scatter(
                x=one.index,
                y=one.values,
                mode="lines",
                line=dict(color=_rgba(color, 0.35), width=1, dash="dot" if failed else "solid"),
                legendgroup=label,
                showlegend=False,
                name=f"{label} seed {runs.at[run_id, 'seed']}" + (" (failed)" if failed else ""),
                hovertemplate="%{fullData.name}<br>step %{x}: %{y:.4g}<extra></extra>",
            )
        )
    ok = wide[[r for r in wide.columns if runs.at[r, "status"] not in FAILED_STATUSES]].dropna(how="all")
    if ok.shape[1] == 0:
        return traces
    band = go.Scatter(
        x=[*ok.index, *ok.index[::-1]],
        y=[*ok.max(axis=1), *ok.min(axis=1)[::-1]],
        mode="lines",
        fill="toself",
        fillcolor=_rgba(color, 0.15),
        line=dict(width=0),
        legendgroup=label,
        showlegend=False,
        hoverinfo="skip",
        name=f"{label} min..max",
    )
    mean = go.Scatter(
        x=ok.index,
        y=ok.mean(axis=1),
        mode="lines",
        line=dict(color=color, width=2.2),
        legendgroup=label,
        showlegend=legend,
        name=label,
        hovertemplate=f"{label} mean of {ok.shape[1]} seed(s)<br>step %{{x}}: %{{y:.4g}}<extra></extra>",
    )
    return [*traces, band, mean]


def pretrain_curves(sweep: SweepRuns, table: pd.DataFrame) -> go.Figure | None:
    """Pretraining curves, one panel per `CURVE_KEYS` entry logged: per variant the mean over seeds, a
    min..max band over seeds, and each seed as a faint line (dotted when the run failed).

    Failed runs are drawn but left out of the mean and band. Returns None when no such curve was logged.
    """
    curves = sweep.curves
    keys = [k for k in CURVE_KEYS if k in set(curves["key"])]
    if not keys:
        return None
    cell_label = {cell: str(label) for label, cell in table[("cell", "")].items()}
    colors = variant_colors(list(cell_label.values()))
    runs = sweep.runs.set_index("run_id")
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.08, subplot_titles=keys)
    for row_no, key in enumerate(keys, start=1):
        frame = _thin(curves[curves["key"] == key])
        for cell, label in cell_label.items():
            ids = set(runs.index[runs["cell"] == cell])
            wide = frame[frame["run_id"].isin(ids)].pivot_table(
                index="step", columns="run_id", values="value"
            )
            if wide.empty:
                continue
            for trace in _variant_traces(wide, runs, label, colors[label], legend=row_no == 1):
                fig.add_trace(trace, row=row_no, col=1)
    fig.update_xaxes(title_text="step", row=len(keys), col=1)
    return _layout(
        fig,
        "Pretraining curves (mean over seeds, band: min..max, faint: each seed, dotted: failed)",
        height=120 + 300 * len(keys),
        legend_title_text="variant",
        hovermode="closest",
    )


def factor_parallel_coordinates(
    runs: pd.DataFrame, factors: list[str], table: pd.DataFrame
) -> go.Figure | None:
    """Parallel coordinates, one line per counted run: the varying factors, each task score and the Average (%).

    ``runs`` is a summarised frame (`summary.summarise`). Non-numeric factor values become evenly spaced ticks
    labelled with the value. None when no factor varies or no counted run has an Average.
    """
    varying = varying_factors(table, factors)
    if not varying or "probe/average" not in runs.columns:
        return None
    counted = runs["counted"].astype(bool) if "counted" in runs.columns else runs["status"] == "FINISHED"
    done = runs[counted & runs["probe/average"].notna()]
    if done.empty:
        return None
    dims = []
    for f in varying:
        values = done[f].tolist()
        if all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            dim: dict[str, Any] = dict(label=f, values=[float(v) for v in values])
            levels = sorted(set(dim["values"]))
            if len(levels) <= 12:  # a grid: label the values that were run, not a continuous scale
                dim.update(tickvals=levels, ticktext=[f"{v:g}" for v in levels])
            dims.append(dim)
        else:
            levels = _factor_values(done[f])
            keys = [factor_order_key(v) for v in levels]
            codes = [keys.index(factor_order_key(v)) for v in values]
            dims.append(
                dict(
                    label=f,
                    values=codes,
                    tickvals=list(range(len(levels))),
                    ticktext=[str(v) for v in levels],
                )
            )
    for name in score_names(table)[:-1]:
        dims.append(dict(label=f"{name} (%)", values=(100.0 * done[f"probe/{name}/score"]).round(2).tolist()))
    average = (100.0 * done["probe/average"]).round(2).tolist()
    dims.append(dict(label="Average (%)", values=average))
    fig = go.Figure(
        go.Parcoords(
            dimensions=dims,
            line=dict(color=average, colorscale="Viridis", showscale=False),  # the last axis is the scale
        )
    )
    return _layout(
        fig,
        "Factors → task scores → Average, one line per counted run (drag along an axis to filter)",
        height=460,
        margin=dict(l=80, r=60, t=110, b=40),
    )
