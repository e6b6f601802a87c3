"""The ablation table as shown: the numbers rounded once, then rendered as the page's HTML, CSV and LaTeX, so the
three always carry the same numbers.

Scores are percentages with one decimal (the paper's precision); p-values three decimals. Published rows (the
paper's, `published.reference_rows`) follow the sweep's rows on the same columns, marked as published.
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass, field, replace
from html import escape

import pandas as pd

from musicssl.dashboards import published
from musicssl.dashboards.tables import AVERAGE, NOISE, REAL, UNTESTED, score_names


@dataclass(frozen=True)
class Cell:
    """One score cell as shown: values in % rounded to one decimal (None: no value)."""

    mean: float | None
    ci95: float | None = None
    n: int = 0
    delta: float | None = None
    p: float | None = None
    noise: str = ""
    best: bool = False


@dataclass(frozen=True)
class Row:
    """One table row: ``kind`` is ``baseline``, ``variant`` or ``published``."""

    label: str
    kind: str
    cells: dict[str, Cell]
    runs: str = ""
    source: str = ""


@dataclass(frozen=True)
class Display:
    """The table as shown: its score columns (tasks, then ``average``) and rows."""

    columns: list[str]
    rows: list[Row] = field(default_factory=list)


def _r(value: float, digits: int = 1, scale: float = 100.0) -> float | None:
    """``scale * value`` rounded half away from zero at ``digits`` (a printed 69.95 shows as 70.0, as in print)."""
    if value is None or math.isnan(value):
        return None
    x = scale * float(value) * 10**digits
    return math.copysign(math.floor(abs(x) + 0.5 + 1e-9), x) / 10**digits


def _runs_text(row: pd.Series) -> str:
    finished = int(row[("runs", "finished")])
    others = [f"{int(row[('runs', k)])} {k}" for k in ("failed", "stopped", "unfinished")
              if int(row.get(("runs", k), 0)) > 0]
    return str(finished) + (f" (+{', '.join(others)})" if others else "")


def display(table: pd.DataFrame, reference: list[published.PublishedRow] | None = None) -> Display:
    """Round the ablation table once (and add the published rows) for every renderer."""
    columns = score_names(table)
    rows = []
    for label, row in table.iterrows():
        cells = {}
        for name in columns:
            n = int(row[(name, "n")])
            cells[name] = Cell(_r(row[(name, "mean")]), _r(row[(name, "ci95")]) if n > 1 else None, n,
                               _r(row[(name, "delta")]), _r(row[(name, "p")], 3, 1.0), str(row[(name, "noise")]))
        kind = "baseline" if bool(row[("baseline", "")]) else "variant"
        rows.append(Row(str(label), kind, cells, _runs_text(row)))
    for name in columns:  # best per column among the sweep's rows, ties all bold
        values = [m for r in rows if (m := r.cells[name].mean) is not None]
        for r in rows:
            if values and r.cells[name].mean == max(values):
                r.cells[name] = replace(r.cells[name], best=True)
    tasks = [c for c in columns if c != AVERAGE]
    for ref in reference or []:
        cells = {t: Cell(_r(published.task_score(ref, t) or math.nan, 1, 1.0)) for t in tasks}
        cells[AVERAGE] = Cell(_r(published.average(ref, tasks) or math.nan, 1, 1.0))
        twin = f"; cf. {ref.variant}" if ref.variant and ref.variant in table.index else ""
        rows.append(Row(ref.label, "published", cells, "", f"published, Table {ref.table}{twin}"))
    return Display(columns, rows)


def _column_label(name: str) -> str:
    return "Average" if name == AVERAGE else name


def _num(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _signed(value: float) -> str:
    return f"{value:+.1f}".replace("-", "−")


_MARK = {NOISE: "≈", UNTESTED: "?", REAL: ""}


def _html_cell(cell: Cell, kind: str, name: str) -> str:
    text = _num(cell.mean) + (f" ± {_num(cell.ci95)}" if cell.ci95 is not None else "")
    if cell.best:
        text = f"<b>{text}</b>"
    extra = ""
    if kind == "variant" and cell.delta is not None:
        tone = "noise" if cell.noise != REAL else ("up" if cell.delta > 0 else "down" if cell.delta < 0 else "noise")
        why = f"Welch's t p={cell.p:.3f}" if cell.p is not None else "one seed: no test"
        title = f"{cell.noise} ({why})"
        extra = (f'<br><span class="delta {tone}" title="{escape(title)}">{_signed(cell.delta)}'
                 f'{_MARK.get(cell.noise, "")}</span>')
    if kind != "published" and cell.n:
        extra += f' <span class="n">n={cell.n}</span>'
    cls = ' class="avg"' if name == AVERAGE else ""
    return f"<td{cls}>{text}{extra}</td>"


def to_html(shown: Display) -> str:
    """``<table id="ablation-table">``: one row per variant (baseline first), published rows after a divider."""
    avg = ' class="avg"'
    head = "".join(f"<th{avg if c == AVERAGE else ''}>{escape(_column_label(c))}</th>" for c in shown.columns)
    body, divided = [], False
    for row in shown.rows:
        if row.kind == "published" and not divided:
            body.append(f'<tr class="divider"><td colspan="{len(shown.columns) + 2}">Published numbers (the '
                        "paper, one run each, real datasets): not produced by this sweep</td></tr>")
            divided = True
        label = escape(row.label) + (' <span class="tag">baseline</span>' if row.kind == "baseline" else "")
        if row.kind == "published":
            label += f' <span class="tag pub">{escape(row.source)}</span>'
        cells = "".join(_html_cell(row.cells[c], row.kind, c) for c in shown.columns)
        body.append(f'<tr class="{row.kind}"><th scope="row">{label}</th>{cells}<td>{escape(row.runs)}</td></tr>')
    return ('<div class="scroll"><table id="ablation-table">\n'
            f"<thead><tr><th>Variant</th>{head}<th>runs</th></tr></thead>\n<tbody>\n" + "\n".join(body)
            + "\n</tbody>\n</table></div>")


def to_csv(shown: Display) -> str:
    """One line per row: ``variant, kind, source, runs`` then per score ``<score>, _ci95, _n, _delta, _p, _noise``."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    header = ["variant", "kind", "source", "runs"]
    for c in shown.columns:
        name = _column_label(c)
        header += [name, f"{name}_ci95", f"{name}_n", f"{name}_delta", f"{name}_p", f"{name}_noise"]
    writer.writerow(header)
    for row in shown.rows:
        line: list[object] = [row.label, row.kind, row.source, row.runs]
        for c in shown.columns:
            cell = row.cells[c]
            line += ["" if cell.mean is None else f"{cell.mean:.1f}", "" if cell.ci95 is None else f"{cell.ci95:.1f}",
                     cell.n if row.kind != "published" else "", "" if cell.delta is None else f"{cell.delta:.1f}",
                     "" if cell.p is None else f"{cell.p:.3f}", cell.noise]
        writer.writerow(line)
    return out.getvalue()


_TEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "$": r"\$", "{": r"\{",
        "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def tex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped."""
    return "".join(_TEX.get(ch, ch) for ch in text)


def _tex_cell(cell: Cell, kind: str) -> str:
    if cell.mean is None:
        return "--"
    text = f"{cell.mean:.1f}" + (f" $\\pm$ {cell.ci95:.1f}" if cell.ci95 is not None else "")
    if cell.best:
        text = f"\\textbf{{{text}}}"
    if kind == "variant" and cell.delta is not None:
        mark = {NOISE: "$^{\\approx}$", UNTESTED: "$^{?}$"}.get(cell.noise, "")
        text += f" ({cell.delta:+.1f}{mark})"
    return text


LATEX_CAPTION = (r"Probe scores in \%, {summary} checkpoint: mean $\pm$ 95\% CI over seeds (Student $t$); best per "
                 r"column in bold; in brackets the change against the baseline, $^{{\approx}}$ within noise and "
                 r"$^{{?}}$ untested (Welch's $t$-test over seeds, $p \geq {alpha}$, or a single seed). Average: "
                 r"metrics averaged within a task, then the plain mean over tasks.")
"""The LaTeX caption (already LaTeX; ``{summary}`` and ``{alpha}`` are filled in)."""


def to_latex(shown: Display, caption: str = "") -> str:
    """A ``table`` environment (booktabs): mean $\\pm$ 95% CI (delta to the baseline), best in bold, $^{\\approx}$
    within noise; published rows after a rule. ``caption`` is LaTeX, written as given."""
    cols = "l" + "r" * len(shown.columns)
    lines = ["% musicssl ablation table; needs \\usepackage{booktabs}", "\\begin{table}[t]", "\\centering",
             f"\\begin{{tabular}}{{{cols}}}", "\\toprule",
             " & ".join(["Variant", *(tex_escape(_column_label(c)) for c in shown.columns)]) + " \\\\", "\\midrule"]
    divided = False
    for row in shown.rows:
        if row.kind == "published" and not divided:
            lines += ["\\midrule", f"\\multicolumn{{{len(shown.columns) + 1}}}{{l}}{{\\emph{{Published (the paper)}}}} \\\\"]
            divided = True
        label = tex_escape(row.label) + (" (baseline)" if row.kind == "baseline" else "")
        if row.kind == "published":
            label += f" [{tex_escape(row.source)}]"
        lines.append(" & ".join([label, *(_tex_cell(row.cells[c], row.kind) for c in shown.columns)]) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}"]
    if caption:
        lines.append(f"\\caption{{{caption}}}")
    lines.append("\\end{table}")
    return "\n".join(lines) + "\n"
