"""The HTML pieces of the report that are not figures: style, header, the verdict, the cost and runs tables."""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from html import escape

import pandas as pd

from musicssl.dashboards.cost import COST_COLUMNS
from musicssl.dashboards.runs import SweepRuns
from musicssl.dashboards.summary import Summary
from musicssl.dashboards.tables import AVERAGE, NOISE, REAL, UNTESTED, score_names

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, Helvetica, Arial, sans-serif;
       color: #1f2328; background: #fff; margin: 0; line-height: 1.45; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 32px 64px; }
h1 { font-size: 1.7rem; margin: 0.2em 0 0.4em; }
h2 { font-size: 1.25rem; margin: 2em 0 0.5em; padding-bottom: 0.2em; border-bottom: 1px solid #d0d7de; }
dl.meta { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0 0 1em; }
dl.meta dt { color: #59636e; } dl.meta dd { margin: 0; }
code { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; font-size: 0.9em; }
table { border-collapse: collapse; font-variant-numeric: tabular-nums; margin: 0.5em 0; }
th, td { padding: 6px 12px; border-bottom: 1px solid #d0d7de; vertical-align: top; }
thead th { background: #f6f8fa; border-bottom: 2px solid #8c959f; text-align: center; }
tbody th { text-align: left; font-weight: 600; }
td { text-align: right; white-space: nowrap; }
td.txt { text-align: left; }
td.avg, th.avg { border-left: 2px solid #d0d7de; }
td b { color: #0a3069; }
tr.baseline { background: #f6f8fa; }
tr.published { color: #59636e; font-style: italic; }
tr.divider td { text-align: left; background: #fff8c5; color: #59636e; font-size: 0.85em; }
.tag { font-size: 0.75em; font-weight: 500; padding: 1px 6px; border-radius: 8px; background: #ddf4ff; }
.tag.pub { background: #fff8c5; }
.delta { font-size: 0.85em; font-weight: 600; } .delta.up { color: #1a7f37; } .delta.down { color: #cf222e; }
.delta.noise { color: #8c959f; font-weight: 400; }
.n { color: #8c959f; font-size: 0.75em; }
.note { color: #59636e; font-size: 0.9em; }
.warn, .missing { color: #9a3412; }
p.caption { color: #59636e; font-size: 0.9em; margin: 0.3em 0 1em; max-width: 70em; }
ul.verdict li { margin: 0.2em 0; }
figure { margin: 0 0 1.5em; }
details { margin: 1em 0; } summary { cursor: pointer; color: #0969da; }
.scroll { overflow-x: auto; }
"""


def stamp() -> str:
    """The time a page was generated, for its header."""
    return datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def header_html(sweep: SweepRuns, table: pd.DataFrame, summary: Summary) -> str:
    """The sweep's facts: name, parent run, runs by status, variants, seeds, factors, summary, tracking URI."""
    runs = sweep.runs
    status = ", ".join(f"{n} {s.lower()}" for s, n in runs["status"].value_counts().items())
    seeds = sorted(int(s) for s in runs["seed"].dropna().unique())
    items = [
        ("Sweep", f"<b>{escape(sweep.name)}</b>"),
        ("Parent run", f"<code>{escape(sweep.parent_run_id)}</code>" if sweep.parent_run_id else "–"),
        ("Runs", f"{len(runs)}" + (f" ({escape(status)})" if len(runs) else "")),
        ("Variants", f"{len(table)}" + (f" (baseline: {escape(sweep.baseline)})" if sweep.baseline else
                                        " (no baseline: no deltas)")),
        ("Seeds", f"{len(seeds)}" + (f" ({', '.join(map(str, seeds))})" if seeds else "")),
        ("Factors", ", ".join(f"<code>{escape(f)}</code>" for f in sweep.factors) or "–"),
        ("Scores", f"{escape(summary.label)} checkpoint (<code>--summary</code> last | best | step:N)"),
        ("MLflow", f"<code>{escape(sweep.tracking_uri)}</code>" if sweep.tracking_uri else "–"),
        ("Generated", stamp()),
    ]
    rows = "\n".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
    return f'<dl class="meta">\n{rows}\n</dl>'


def _pct(value: float, sign: bool = False) -> str:
    if value is None or math.isnan(value):
        return "–"
    return f"{100 * value:+.1f}" if sign else f"{100 * value:.1f}"


def _versus_text(row: pd.Series, name: str) -> str:
    noise, p = row[(name, "noise")], row[(name, "p")]
    if noise == REAL:
        return f"a real change (Welch's t p={p:.3f})"
    if noise == NOISE:
        return f"within noise (Welch's t p={p:.3f})"
    if noise == UNTESTED:
        return "untested: a single seed on one side"
    return "no baseline to compare with"


def verdict_html(table: pd.DataFrame, sweep: SweepRuns) -> str:
    """One line per score column: the best variant, its change against the baseline, and whether it is real."""
    lines = []
    for name in [AVERAGE, *[n for n in score_names(table) if n != AVERAGE]]:
        means = table[(name, "mean")]
        if means.isna().all():
            lines.append(f"<li><b>{escape(name)}</b>: no counted run has this score yet.</li>")
            continue
        best = str(means.idxmax())
        row = table.loc[best]
        what = f"<b>{'Average' if name == AVERAGE else escape(name)}</b>: best is <b>{escape(best)}</b> " \
               f"({_pct(row[(name, 'mean')])}%, n={int(row[(name, 'n')])})"
        if bool(row[("baseline", "")]):
            others = table[~table[("baseline", "")].astype(bool)]
            real = [str(label) for label, r in others.iterrows() if r[(name, "noise")] == REAL]
            what += ", the baseline itself; " + (f"real drops: {escape(', '.join(real))}" if real else
                                                  "no variant differs from it beyond noise")
        else:
            what += f", {_pct(row[(name, 'delta')], sign=True)} against the baseline: {_versus_text(row, name)}"
        lines.append(f"<li>{what}.</li>")
    note = ("Two seeds rarely separate small differences: add seeds (<code>seeds=[0,1,2,3]</code>) before trusting "
            "a ranking." if int(table[(AVERAGE, "n")].max() or 0) < 3 else "")
    return f'<ul class="verdict" id="verdict">{"".join(lines)}</ul>' + (f'<p class="note">{note}</p>' if note else "")


def cost_table_html(cost: pd.DataFrame, unit: str, probe_unit: str) -> str:
    """``<table id="cost-table">``: the `cost_table` per variant, hours with 3 significant digits."""
    heads = ["runs", "pretrain wall h/run", f"pretrain {unit}/run", "probe jobs/run", "probe wall h/run",
             f"probe {probe_unit}/run", "Average %", f"Average % per {unit}"]
    body = []
    for label, row in cost.iterrows():
        cells = [f"{int(row['runs'])}"]
        for col in COST_COLUMNS[1:]:
            value = row[col]
            if value is None or (isinstance(value, float) and math.isnan(value)):
                cells.append("–")
            elif col == "average":
                cells.append(f"{100 * value:.1f}")
            elif col == "probe_jobs":
                cells.append(f"{value:g}")
            else:
                cells.append(f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}")
        body.append(f"<tr><th scope=\"row\">{escape(str(label))}</th>" + "".join(f"<td>{c}</td>" for c in cells)
                    + "</tr>")
    head = "".join(f"<th>{escape(h)}</th>" for h in heads)
    return (f'<div class="scroll"><table id="cost-table"><thead><tr><th>Variant</th>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody></table></div>")


def runs_html(runs: pd.DataFrame, factors: list[str]) -> str:
    """Every trial run (collapsed): variant, seed, status, factors, the summarised scores, run id."""
    scores = [c for c in runs.columns if c.startswith("probe/")]
    cols = ["variant", "seed", "status", *factors]
    head = "".join(f"<th>{escape(c)}</th>" for c in [*cols, *scores, "counted", "run_id"])
    rows = []
    for _, r in runs.iterrows():
        cells = [f'<td class="txt">{escape(str(r["variant"]))}</td>', f"<td>{r['seed']}</td>",
                 f'<td class="txt">{escape(str(r["status"]))}</td>']
        cells += [f"<td>{escape(json.dumps(r[f]) if isinstance(r[f], list) else str(r[f]))}</td>" for f in factors]
        cells += [f"<td>{_pct(r[c])}</td>" for c in scores]
        cells.append(f"<td>{'yes' if r.get('counted', r['status'] == 'FINISHED') else 'no'}</td>")
        cells.append(f'<td class="txt"><code>{escape(r["run_id"])}</code></td>')
        cls = "" if r["status"] == "FINISHED" else ' class="warn"'
        rows.append(f"<tr{cls}>" + "".join(cells) + "</tr>")
    return (f"<details><summary>All {len(runs)} trial runs (scores in %)</summary>\n"
            f'<div class="scroll"><table id="runs-table"><thead><tr>{head}</tr></thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody></table></div></details>")
