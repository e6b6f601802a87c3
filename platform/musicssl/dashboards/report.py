"""One self-contained, offline HTML report per sweep: the verdict, the ablation table, and the views behind it.

plotly.js is embedded once (with the first figure); the page loads nothing from the network, so it opens from
``file://`` on an air-gapped machine and can be logged to the sweep's parent run as an artifact. Every view
opens with one sentence saying what it shows and how to read it; a view whose data the sweep lacks says what
is missing instead of disappearing.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from html import escape
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from musicssl.dashboards import published
from musicssl.dashboards.command import FORMATS
from musicssl.dashboards.cost import cost_table, units
from musicssl.dashboards.export import LATEX_CAPTION, Display, display, tex_escape, to_csv, to_html, to_latex
from musicssl.dashboards.figures import average_heatmap, factor_parallel_coordinates, pretrain_curves
from musicssl.dashboards.page import CSS, cost_table_html, header_html, runs_html, verdict_html
from musicssl.dashboards.runs import SweepRuns, find_parent_run, load_sweep
from musicssl.dashboards.summary import Summary, summarise
from musicssl.dashboards.tables import ALPHA, ablation_table, task_names
from musicssl.dashboards.views import cost_scatter, effect_plots, layer_heatmaps, probe_curves

_PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}


@dataclass
class Analysis:
    """Everything the page, the CSV and the LaTeX are made from."""

    sweep: SweepRuns
    summary: Summary
    runs: pd.DataFrame  # summarised (one score per trial and task)
    table: pd.DataFrame  # ablation_table of `runs`
    shown: Display  # the table rounded as shown, published rows included


def analyse(sweep: SweepRuns, summary: Summary | None = None) -> Analysis:
    """Summarise the sweep's probe scores, build its ablation table and the rounded display of it."""
    summary = summary or Summary()
    runs = summarise(sweep, summary)
    table = ablation_table(runs, sweep.factors, sweep.variants)
    paradigms = {p for p in runs.get("paradigm", pd.Series(dtype=object)).dropna()}
    reference = published.reference_rows(task_names(runs), paradigms) if not table.empty else []
    return Analysis(sweep, summary, runs, table, display(table, reference))


def table_caption(analysis: Analysis) -> str:
    """The sentence under the ablation table (also the LaTeX caption)."""
    return (f"Probe scores in %, {analysis.summary.label} checkpoint: mean ± 95% CI (Student t) over seeds, n = "
            "runs counted; best per column in bold; under each variant's cell its change against the baseline, "
            f"green/red when Welch's t-test over seeds finds it real (p < {ALPHA}), grey with ≈ when it is within "
            "noise, ? when a side has a single seed. Average = the paper's formula: metrics averaged within a "
            "task, then the plain mean over tasks.")


def _figure(div_id: str, fig: go.Figure, first: bool) -> str:
    fig.update_layout(title_text="", margin_t=max(30, (fig.layout.margin.t or 60) - 40))
    div = pio.to_html(fig, include_plotlyjs=first, full_html=False, div_id=div_id, config=_PLOTLY_CONFIG)
    return f"<figure>{div}</figure>"


def _sections(a: Analysis) -> list[tuple[str, str, str, go.Figure | str | None, str]]:
    """(id, title, how to read it, figure or HTML or None, what is missing when None)."""
    sweep, runs, table = a.sweep, a.runs, a.table
    unit, probe_unit = units(sweep)
    real = [t for t in task_names(runs) if t in published.TABLE1_TASKS]
    return [
        ("fig-effects", "Effect of each factor",
         "Each panel varies one factor with every other factor at the baseline's value: a task's score (thin) and "
         "the Average (thick) against the factor's value, mean over seeds with 95% CI bars; overlapping bars "
         "mean the seeds cannot tell the values apart.",
         effect_plots(runs, table, sweep.factors), "No factor varies in this sweep."),
        ("fig-probe-curves", "Probe score against pretraining step",
         "Every probed checkpoint of every trial: per variant the mean over seeds (line), min..max over seeds "
         "(band) and each seed (faint); a curve still rising at the right end means more pretraining helps. "
         + a.summary.describe(),
         probe_curves(sweep, table, a.summary), "No probe score per checkpoint was logged (probe jobs pending or "
         "failed, or a sweep from before per-checkpoint probing)."),
        ("fig-layers", "Which layers the probes use",
         "The probe's learned softmax weight of each layer (0 = the CNN output, then the transformer layers) per "
         "task, mean over seeds, at the checkpoint the table uses: dark cells are the layers a task reads from "
         "(the colour scale spans the smallest to the largest weight shown; uniform weights are 1 / layers).",
         layer_heatmaps(sweep, runs, table), "No probe logged learned layer weights (probes with fixed layers, "
         "or a sweep from before layer weights were logged)."),
        ("fig-curves", "Pretraining curves",
         "Loss, target and prediction variance (Music2Vec) or masked accuracy (MusicHuBERT), and throughput in "
         "frames per second against step: mean over seeds, min..max band, each seed faint, failed runs dotted; "
         "a variance that falls towards zero warns of collapse.",
         pretrain_curves(sweep, table), "No pretraining curve was logged (a probe-only sweep of imported "
         "checkpoints has none)."),
        ("fig-parcoords", "Parallel coordinates",
         "One line per counted run from its factor values through each task score to the Average, coloured by "
         "the Average: drag along an axis to keep only the runs in a range.",
         factor_parallel_coordinates(runs, sweep.factors, table), "No factor varies, or no run has an Average."),
        ("fig-heatmap", "Two-factor grid",
         "The Average over the two factors a grid sweep varies, mean ± 95% CI per cell.",
         average_heatmap(table, sweep.factors), "Only for sweeps where exactly two factors vary."),
        ("cost", "Cost beside quality",
         f"Per variant and run: pretraining wall hours and {unit} (wall hours x the {unit[:3]}s a trial held), the "
         f"probe jobs' cost apart ({probe_unit}), and the Average bought per pretraining {unit}; the plot puts "
         "each run's Average against its pretraining cost.",
         cost_table_html(cost_table(sweep, runs, table), unit, probe_unit) if not table.empty else None,
         "No trial runs yet."),
        ("fig-cost", "", "", cost_scatter(sweep, runs, table), "No run has a known cost (resources or time "
         "missing)."),
        ("published", "Published reference rows",
         "The paper's own numbers (Tables 1-3, one run each on the real datasets) are in the ablation table under "
         "the divider, on this sweep's columns, for orientation: they come from 400k-step models on real data.",
         None if not real else "", "This sweep probes no real-dataset task (its tasks: "
         f"{', '.join(task_names(runs)) or 'none'}), so no published row applies; the paper's rows appear when a "
         "sweep probes " + ", ".join(published.TABLE1_TASKS) + "."),
    ]


def render_report(sweep: SweepRuns, summary: Summary | None = None, refresh_s: int | None = None) -> str:
    """The report page as one HTML string (see `write_report`); ``refresh_s`` makes the browser reload it."""
    a = analyse(sweep, summary)
    parts = [f"<h1>Sweep report: {escape(sweep.name)}</h1>", header_html(sweep, a.table, a.summary)]
    if a.table.empty:
        parts.append('<p class="warn">This sweep has no trial runs yet.</p>')
    else:
        parts += ["<h2>Which variant is best, and is the difference real?</h2>", verdict_html(a.table, sweep),
                  '<h2 id="table">Ablation table</h2>', f'<p class="caption">{escape(table_caption(a))}</p>',
                  to_html(a.shown)]
        first = True
        for div_id, title, how, view, missing in _sections(a):
            if title:
                parts.append(f'<h2 id="{div_id}-h">{escape(title)}</h2>\n<p class="caption">{escape(how)}</p>')
            if isinstance(view, go.Figure):
                parts.append(_figure(div_id, view, first))
                first = False
            elif isinstance(view, str):
                parts.append(view)
            else:
                parts.append(f'<p class="missing" id="{div_id}-missing">{escape(missing)}</p>')
        parts.append(runs_html(a.runs, sweep.factors))
    meta = f'<meta http-equiv="refresh" content="{refresh_s}">\n' if refresh_s else ""
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n{meta}'
        f"<title>{escape(sweep.name)} · musicssl sweep report</title>\n<style>{CSS}</style>\n</head>\n"
        f"<body>\n<main>\n" + "\n".join(parts) + "\n</main>\n</body>\n</html>\n"
    )


def atomic_write(out_path: Path, text: str) -> Path:
    """Write ``text`` to a temporary name beside ``out_path`` and rename it into place (a reader never sees half
    a file); parent folders are created."""
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".{out_path.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out_path)
    finally:
        tmp.unlink(missing_ok=True)
    return out_path


def write_report(sweep: SweepRuns, out_path: Path, summary: Summary | None = None,
                 refresh_s: int | None = None) -> Path:
    """Write the sweep's report to ``out_path`` as one self-contained offline HTML file.

    Returns:
        ``out_path``.
    """
    return atomic_write(out_path, render_report(sweep, summary, refresh_s))


def resolve_parent(tracking_uri: str, *, parent_run_id: str | None = None, sweep_name: str | None = None) -> str:
    """The sweep parent run id: the one given, or the latest parent run named ``sweep_name``.

    Raises:
        ValueError: Neither or both were given.
        LookupError: No sweep has that name (the message lists the known ones).
    """
    if parent_run_id is not None and sweep_name is None:
        return parent_run_id
    if sweep_name is not None and parent_run_id is None:
        return find_parent_run(tracking_uri, sweep_name)
    raise ValueError("build_report: give exactly one of parent_run_id= or sweep_name=")


def build_report(tracking_uri: str, out_path: Path, *, parent_run_id: str | None = None,
                 sweep_name: str | None = None, summary: Summary | None = None, fmt: str = "html",
                 refresh_s: int | None = None) -> Path:
    """Load a sweep from MLflow (by parent run id, or the latest parent with ``sweep_name``) and write its report
    (``fmt`` html) or its ablation table (``csv`` or ``latex``, the same numbers as the page) to ``out_path``."""
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {', '.join(FORMATS)}")
    sweep = load_sweep(tracking_uri, resolve_parent(tracking_uri, parent_run_id=parent_run_id,
                                                    sweep_name=sweep_name))
    if fmt == "html":
        return write_report(sweep, out_path, summary, refresh_s)
    a = analyse(sweep, summary)
    caption = f"{tex_escape(sweep.name)}: " + LATEX_CAPTION.format(summary=tex_escape(a.summary.label), alpha=ALPHA)
    text = to_csv(a.shown) if fmt == "csv" else to_latex(a.shown, caption)
    return atomic_write(out_path, text)
