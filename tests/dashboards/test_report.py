"""The sweep report page: its ablation table read back from the HTML (by hand, against the CSV and the LaTeX, and
against the paper's published rows), every view with its caption or its missing-data sentence, offline-only
resources, and a real headless Chromium load that shows plotly.js drew every figure without the network."""

from __future__ import annotations

import csv
import io
import json
import math
import re
import statistics
import time
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import plotly.offline
import pytest
import scipy.stats
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from musicssl.dashboards.report import build_report, render_report, write_report
from musicssl.dashboards.runs import CURVE_COLUMNS, RUN_COLUMNS, SweepRuns, load_sweep
from musicssl.dashboards.summary import Summary

try:  # tests/ may become a package later
    from .ablation_fixture import TRIALS, AblationStore, write_ablation_sweep
    from .browser import chromium_or_skip, load_page, nonblank_fraction
    from .test_tables import Store, build_store
except ImportError:
    from ablation_fixture import TRIALS, AblationStore, write_ablation_sweep
    from browser import chromium_or_skip, load_page, nonblank_fraction
    from test_tables import Store, build_store

T975 = {1: 12.706204736174698, 2: 4.302652729749464}  # t(0.975, df), from a printed t table
FIGURES = ["fig-effects", "fig-probe-curves", "fig-layers", "fig-curves", "fig-parcoords", "fig-heatmap", "fig-cost"]
SECTIONS = ["fig-effects", "fig-probe-curves", "fig-layers", "fig-curves", "fig-parcoords", "fig-heatmap", "cost",
            "published"]  # fmt: skip
FORMAT_SUFFIX = {"html": "html", "csv": "csv", "latex": "tex"}

# --- a second sweep in the fixture's style, on two of the paper's real tasks (so its published rows apply) -------
REAL_TASKS = ("gtzan_genre", "mtt")
REAL_BASE = {"gtzan_genre": 0.55, "mtt": 0.60}
REAL_VARIANTS = {"vanilla": (0.65, 0.0), "prob80": (0.8, -0.02)}  # name: (mask_prob, score offset)
REAL_NOISE = {0: -0.01, 1: 0.0, 2: 0.01}
REAL_STEPS = (50, 100)


def real_score(variant: str, seed: int, task: str, step: int) -> float:
    return REAL_BASE[task] + REAL_VARIANTS[variant][1] + REAL_NOISE[seed] + 0.01 * (step // 50)


def write_real_task_sweep(root: Path, name: str = "paper") -> AblationStore:
    """2 variants x 3 seeds of a music2vec sweep probing gtzan_genre and mtt at steps 50 and 100, with pretraining
    curves, costs and probe runs with layer weights (every view but the two-factor grid has data)."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(f"musicssl-{name}", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=name, tags={
        "musicssl.kind": "sweep", "musicssl.sweep": name, "musicssl.factors": json.dumps(["model.mask_prob"]),
        "musicssl.baseline": "vanilla", "musicssl.variants": json.dumps(list(REAL_VARIANTS))}).info.run_id
    client.log_param(parent, "probe", json.dumps({"cpus": 1, "gpus": 0, "tasks": list(REAL_TASKS)}))
    now = int(time.time() * 1000)
    for variant, (p, _) in REAL_VARIANTS.items():
        for seed in REAL_NOISE:
            run_id = client.create_run(exp, run_name=f"{variant} seed={seed}", tags={
                "mlflow.parentRunId": parent, "musicssl.kind": "trial", "musicssl.variant": variant,
                "musicssl.variant_name": variant, "musicssl.cell": f"p{p}", "musicssl.seed": str(seed),
                "musicssl.sweep": name, "musicssl.paradigm": "music2vec",
                "musicssl.baseline": str(variant == "vanilla").lower(), "musicssl.cpus": "4.0",
                "musicssl.gpus": "0.0"}).info.run_id
            metrics = [Metric("pretrain/loss", 3.0 / (s / 50) + p, now, s) for s in range(10, 101, 10)]
            metrics.append(Metric("cost/pretrain_s", 900.0 * (seed + 1), now, 0))
            for step in REAL_STEPS:
                scores = {t: real_score(variant, seed, t, step) for t in REAL_TASKS}
                metrics += [Metric(f"probe/{t}/score", v, now, step) for t, v in scores.items()]
                metrics.append(Metric("probe/average", sum(scores.values()) / 2, now, step))
            client.log_batch(run_id, metrics=metrics, params=[Param("model.mask_prob", str(p)),
                                                              Param("seed", str(seed))])
            for step in REAL_STEPS:
                for task in REAL_TASKS:
                    weights = {layer: (0.4 if layer == 2 else 0.15) for layer in range(5)}
                    probe = client.create_run(exp, run_name=f"probe {task} @ {step}", tags={
                        "mlflow.parentRunId": run_id, "musicssl.kind": "probe", "musicssl.task": task,
                        "musicssl.step": str(step), "musicssl.sweep": name,
                        "musicssl.layer_weights": json.dumps(weights)}).info.run_id
                    client.log_metric(probe, "wall_s", 20.0, step=step)
                    client.set_terminated(probe, "FINISHED")
            client.set_terminated(run_id, "FINISHED")
    client.set_terminated(parent, "FINISHED")
    return AblationStore(uri, parent, root)


@dataclass
class Report:
    """One sweep's page, CSV and LaTeX, built by `build_report`."""

    name: str
    uri: str
    parent: str
    html: Path
    csv: Path | None = None
    tex: Path | None = None

    def page(self) -> str:
        return self.html.read_text(encoding="utf-8")


@dataclass
class Reports:
    ablation: Report  # two factors, every view has data; synthetic tasks (no published rows)
    real: Report  # one factor, real tasks: the published rows apply; no two-factor grid
    old_mask_prob: Report  # an older sweep (test_tables.build_store): no layer weights, no costs, one factor
    old_grid: Report  # an older two-factor sweep
    store: Store


def _build(uri: str, parent: str, name: str, out: Path, tables: bool) -> Report:
    paths = {fmt: build_report(uri, out / f"{name}.{suffix}", parent_run_id=parent, fmt=fmt)
             for fmt, suffix in FORMAT_SUFFIX.items() if tables or fmt == "html"}  # fmt: skip
    return Report(name, uri, parent, paths["html"], paths.get("csv"), paths.get("latex"))


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Reports:
    root = tmp_path_factory.mktemp("report")
    out = root / "out"
    for sub in ("ablation", "real", "old"):
        (root / sub).mkdir()
    ablation = write_ablation_sweep(root / "ablation")
    real = write_real_task_sweep(root / "real")
    store = build_store(root / "old")
    return Reports(
        _build(ablation.uri, ablation.parent_run_id, "ablation", out, tables=True),
        _build(real.uri, real.parent_run_id, "paper", out, tables=True),
        _build(store.uri, store.mask_prob_parent, "mask_prob", out, tables=False),
        _build(store.uri, store.grid_parent, "mask_grid", out, tables=False),
        store,
    )


@pytest.fixture(params=["ablation", "real"])
def table_report(request: pytest.FixtureRequest, reports: Reports) -> Report:
    return getattr(reports, request.param)


# --- reading the page back -------------------------------------------------------------------------------------


@dataclass
class HtmlCell:
    text: str = ""  # "34.0 ± 7.5", "62.1" or "–"
    bold: bool = False
    delta: str = ""  # "−0.5≈", "+20.0"
    title: str = ""  # the delta's tooltip: "within noise (Welch's t p=0.842)"
    n: str = ""  # "n=3"


@dataclass
class HtmlRow:
    kind: str  # the row's class: baseline, variant, published, divider ("" for the header)
    label: str = ""
    tags: list[str] = field(default_factory=list)
    cells: list[HtmlCell] = field(default_factory=list)  # the score cells, then the runs cell


class _TableParser(HTMLParser):
    """The rows of ``<table id=...>``: each row's class, its label and tags (th), its cells split into the value,
    the delta span (with its title) and the n span."""

    def __init__(self, table_id: str) -> None:
        super().__init__()
        self.table_id = table_id
        self.rows: list[HtmlRow] = []
        self._in_table = False
        self._where: str | None = None  # "th" or "td" while inside one
        self._span: str | None = None  # class of the span the text is in

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "table" and a.get("id") == self.table_id:
            self._in_table = True
        elif not self._in_table:
            return
        elif tag == "tr":
            self.rows.append(HtmlRow(a.get("class") or ""))
        elif tag == "th" and self.rows[-1].label == "" and not self.rows[-1].cells and self.rows[-1].kind:
            self._where = "th"
        elif tag in ("td", "th"):
            self._where = "td"
            self.rows[-1].cells.append(HtmlCell())
        elif tag == "span":
            self._span = a.get("class") or ""
            if self._where == "th" and self._span.startswith("tag"):
                self.rows[-1].tags.append("")
            if self._where == "td" and self._span.startswith("delta"):
                self.rows[-1].cells[-1].title = a.get("title") or ""
        elif tag == "b" and self._where == "td":
            self.rows[-1].cells[-1].bold = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._in_table = False
        elif tag in ("td", "th"):
            self._where = None
        elif tag == "span":
            self._span = None

    def handle_data(self, data: str) -> None:
        if self._where is None:
            return
        row = self.rows[-1]
        if self._where == "th":
            if self._span is not None and self._span.startswith("tag"):
                row.tags[-1] = (row.tags[-1] + data).strip()
            else:
                row.label = (row.label + data).strip()
            return
        cell = row.cells[-1]
        if self._span is not None and self._span.startswith("delta"):
            cell.delta = (cell.delta + data).strip()
        elif self._span == "n":
            cell.n = (cell.n + data).strip()
        else:
            cell.text = " ".join(f"{cell.text} {data}".split())


def html_table(page: str, table_id: str = "ablation-table") -> tuple[list[str], list[HtmlRow]]:
    """The table's column heads and its rows (the published divider left out)."""
    parser = _TableParser(table_id)
    parser.feed(page)
    head, *body = parser.rows
    return [c.text for c in head.cells], [r for r in body if r.kind != "divider"]


@dataclass(frozen=True)
class Block:
    tag: str
    id: str
    cls: str
    text: str


class _BlockParser(HTMLParser):
    """The page's h2, p, table and plotly figure divs in document order, with their text."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks: list[Block] = []
        self._open: dict[str, str] | None = None
        self._text = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag in ("h2", "p"):
            self._open, self._text = {"tag": tag, "id": a.get("id", ""), "cls": a.get("class", "")}, ""
        elif tag == "table" or (tag == "div" and "plotly-graph-div" in a.get("class", "")):
            self.blocks.append(Block(tag, a.get("id", ""), a.get("class", ""), ""))

    def handle_endtag(self, tag: str) -> None:
        if self._open is not None and tag == self._open["tag"]:
            self.blocks.append(Block(**self._open, text=" ".join(self._text.split())))
            self._open = None

    def handle_data(self, data: str) -> None:
        if self._open is not None:
            self._text += data


class _ResourceParser(HTMLParser):
    """Every URL a page's elements would load: src, href, data, srcset, poster of any element."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.tags = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags += 1
        self.urls += [v for k, v in attrs if k in ("src", "href", "data", "srcset", "poster") and v]


def blocks(page: str) -> list[Block]:
    parser = _BlockParser()
    parser.feed(page)
    return parser.blocks


# --- the numbers of a row, as the page, the CSV and the LaTeX show them -----------------------------------------


@dataclass(frozen=True)
class Numbers:
    mean: float | None
    ci: float | None
    n: int | None  # None: not shown (published rows; the LaTeX has no n)
    delta: float | None
    p: float | None  # None: not shown (the LaTeX has no p)
    noise: str
    bold: bool | None = None  # None: not shown (the CSV has no emphasis)


@dataclass(frozen=True)
class Line:
    label: str
    kind: str
    source: str
    runs: str | None  # None: not shown (the LaTeX has no runs column)
    cells: tuple[Numbers, ...]


def _num(text: str) -> float | None:
    return None if text in ("", "–", "--") else float(text.replace("−", "-"))


def _html_numbers(cell: HtmlCell, kind: str) -> Numbers:
    mean, _, ci = cell.text.partition(" ± ")
    noise, _, why = cell.title.rpartition(" (")
    p = re.search(r"p=(\d\.\d{3})", why)
    n = int(cell.n.removeprefix("n=")) if cell.n else (None if kind == "published" else 0)
    return Numbers(_num(mean), _num(ci), n, _num(cell.delta.rstrip("≈?")), float(p.group(1)) if p else None,
                   noise, cell.bold)  # fmt: skip


def page_lines(page: str) -> tuple[list[str], list[Line]]:
    heads, rows = html_table(page)
    assert heads[0] == "Variant" and heads[-1] == "runs", heads
    lines = []
    for row in rows:
        source = next((t for t in row.tags if t.startswith("published")), "")
        assert row.tags == (["baseline"] if row.kind == "baseline" else [source] if source else []), row
        cells = tuple(_html_numbers(c, row.kind) for c in row.cells[:-1])
        lines.append(Line(row.label, row.kind, source, row.cells[-1].text, cells))
    return heads[1:-1], lines


def csv_lines(text: str) -> tuple[list[str], list[Line]]:
    header, *rows = list(csv.reader(io.StringIO(text)))
    assert header[:4] == ["variant", "kind", "source", "runs"]
    columns = header[4::6]
    assert header[4:] == [f"{c}{s}" for c in columns for s in ("", "_ci95", "_n", "_delta", "_p", "_noise")]
    lines = []
    for row in rows:
        cells = []
        for i in range(len(columns)):
            mean, ci, n, delta, p, noise = row[4 + 6 * i: 10 + 6 * i]
            cells.append(Numbers(_num(mean), _num(ci), int(n) if n else None, _num(delta), _num(p), noise))
        lines.append(Line(row[0], row[1], row[2], row[3], tuple(cells)))
    return columns, lines


_TEX_CELL = re.compile(r"(?P<bold>\\textbf\{)?(?P<mean>\d+\.\d)(?: \$\\pm\$ (?P<ci>\d+\.\d))?\}?"
                       r"(?: \((?P<delta>[+-]\d+\.\d)(?P<mark>\$\^\{\\approx\}\$|\$\^\{\?\}\$)?\))?")  # fmt: skip
_TEX_NOISE = {"$^{\\approx}$": "within noise", "$^{?}$": "untested (n<2)", "": "real"}


def latex_lines(text: str) -> tuple[list[str], list[Line]]:
    lines = text.splitlines()
    start = lines.index("\\toprule")
    heads = [h.replace("\\_", "_") for h in lines[start + 1].removesuffix(" \\\\").split(" & ")]
    assert heads[0] == "Variant" and lines[start + 2] == "\\midrule"
    out = []
    for line in lines[start + 3: lines.index("\\bottomrule")]:
        if line == "\\midrule" or line.startswith("\\multicolumn"):
            continue
        label, *cells = line.removesuffix(" \\\\").split(" & ")
        label = label.replace("\\_", "_").replace("\\%", "%")
        kind, source = "variant", ""
        if label.endswith(" (baseline)"):
            kind, label = "baseline", label.removesuffix(" (baseline)")
        elif match := re.fullmatch(r"(.*) \[(published, Table \d.*)\]", label):
            kind, label, source = "published", match.group(1), match.group(2)
        numbers = []
        for cell in cells:
            if cell == "--":
                numbers.append(Numbers(None, None, None, None, None, "", False))
                continue
            m = _TEX_CELL.fullmatch(cell)
            assert m is not None, cell
            delta = _num(m["delta"] or "")
            numbers.append(Numbers(float(m["mean"]), _num(m["ci"] or ""), None, delta, None,
                                   _TEX_NOISE[m["mark"] or ""] if delta is not None else "", bool(m["bold"])))
        out.append(Line(label, kind, source, None, tuple(numbers)))
    return heads[1:], out


def _without(line: Line, *, n: bool = False, p: bool = False, bold: bool = False, runs: bool = False) -> Line:
    """``line`` with the fields another format does not show set to None."""
    cells = [Numbers(c.mean, c.ci, None if n else c.n, c.delta, None if p else c.p, c.noise, None if bold else c.bold)
             for c in line.cells]
    return Line(line.label, line.kind, line.source, None if runs else line.runs, tuple(cells))


# --- the tests ---------------------------------------------------------------------------------------------------


def test_ablation_table_values_by_hand(reports: Reports) -> None:
    """Every cell of the fixture's table from FixtureTrial.score: last checkpoint (step 150), only finished and not
    stopped-early trials count; mean ± t * s / sqrt(n); delta to the baseline; Welch's p and verdict."""
    columns, lines = page_lines(reports.ablation.page())
    assert columns == ["synth_key", "synth_pitch", "Average"]
    assert [(x.label, x.kind) for x in lines] == [("vanilla", "baseline"), ("close", "variant"),
                                                  ("far", "variant"), ("span5", "variant")]
    assert [x.runs for x in lines] == ["3", "2 (+1 stopped)", "3", "2 (+1 failed)"]

    def scores(variant: str, column: str) -> list[float]:
        done = [t for t in TRIALS if t.variant == variant and t.status == "FINISHED" and not t.stopped_early]
        if column == "Average":
            return [statistics.mean(t.score(k, t.last_step) for k in ("synth_key", "synth_pitch")) for t in done]
        return [t.score(column, t.last_step) for t in done]

    for line in lines:
        for column, cell in zip(columns, line.cells, strict=True):
            values, base = scores(line.label, column), scores("vanilla", column)
            n = len(values)
            ci = T975[n - 1] * statistics.stdev(values) / math.sqrt(n)
            assert (cell.mean, cell.ci, cell.n) == (round(100 * statistics.mean(values), 1), round(100 * ci, 1),
                                                    n), (line.label, column)  # fmt: skip
            if line.kind == "baseline":
                assert (cell.delta, cell.p, cell.noise) == (None, None, ""), column
                continue
            p = scipy.stats.ttest_ind(values, base, equal_var=False).pvalue
            delta = statistics.mean(values) - statistics.mean(base)
            assert cell.delta == pytest.approx(round(100 * delta, 1), abs=1e-9), (line.label, column)
            assert cell.p == round(p, 3), (line.label, column)
            assert cell.noise == ("real" if p < 0.05 else "within noise"), (line.label, column)
    # The fixture's design: "close" is within the seed noise, "far" is real and best in every column.
    assert {c.noise for c in lines[1].cells} == {"within noise"} and {c.noise for c in lines[2].cells} == {"real"}
    assert [[c.bold for c in x.cells] for x in lines] == [[False] * 3, [False] * 3, [True] * 3, [False] * 3]
    assert lines[0].cells[0].mean == 34.0 and lines[0].cells[0].ci == 7.5  # 31, 34, 37: t(0.975, 2) * 3 / sqrt(3)


def test_csv_and_latex_carry_the_page_numbers(table_report: Report) -> None:
    assert table_report.csv is not None and table_report.tex is not None
    columns, page = page_lines(table_report.page())
    csv_columns, from_csv = csv_lines(table_report.csv.read_text(encoding="utf-8"))
    tex_columns, from_tex = latex_lines(table_report.tex.read_text(encoding="utf-8"))
    assert columns == csv_columns == tex_columns
    assert len(page) >= 2 and all(len(x.cells) == len(columns) for x in page)
    assert any(c.delta is not None for x in page for c in x.cells)  # deltas are compared, not only blanks
    # The CSV has no emphasis; the LaTeX has neither n, p (the page's delta tooltip) nor runs.
    assert [_without(x, bold=True) for x in page] == from_csv
    assert [_without(x, n=True, p=True, runs=True) for x in page] == from_tex
    if table_report.tex.read_text(encoding="utf-8").count("\\textbf{") == 0:
        pytest.fail("no bold cell in the LaTeX: the best-per-column emphasis is not compared")


def test_published_rows_beside_a_real_task_sweep(reports: Reports) -> None:
    columns, lines = page_lines(reports.real.page())
    assert columns == ["gtzan_genre", "mtt", "Average"]
    assert [x.label for x in lines if x.kind != "published"] == ["vanilla", "prob80"]
    published = [x for x in lines if x.kind == "published"]
    assert lines[2:] == published  # under the sweep's rows
    # Table 1 (every row has mtt and gtzan_genre) and Table 3 (music2vec); not Table 2 (MusicHuBERT). A row of the
    # variant this sweep also ran says so.
    twin = {"Music2vec vanilla": "vanilla", "vanilla": "vanilla", "prob=80": "prob80"}
    assert [(x.source, x.label) for x in published] == [
        *((f"published, Table {table}" + (f"; cf. {twin[label]}" if label in twin else ""), label)
          for table, labels in ((1, ["HuBERT base", "MusicHuBERT base", "data2vec audio base", "Music2vec vanilla",
                                     "SOTA"]),
                                (3, ["data2vec", "vanilla", "span=5", "span=15", "prob=50", "prob=80", "step=800k",
                                     "target=12", "crop5s"]))
          for label in labels)
    ]  # fmt: skip
    by_label = {(x.source[len("published, Table ")], x.label): [c.mean for c in x.cells] for x in published}
    # The paper's numbers on this sweep's columns: GTZAN accuracy; MTT = mean(ROC-AUC, AP); Average = the mean.
    assert by_label[("1", "Music2vec vanilla")] == [59.7, 62.1, 60.9]  # mean(89.1, 35.1), mean(59.7, 62.1)
    assert by_label[("3", "vanilla")] == [59.7, 62.1, 60.9]
    assert by_label[("1", "SOTA")] == [82.1, 66.7, 74.4]  # mean(92.0, 41.4); mean(82.1, 66.7)
    for x in published:  # one run each: no CI, no n, no delta
        assert all((c.ci, c.n, c.delta, c.bold) == (None, None, None, False) for c in x.cells), x.label
    page = reports.real.page()
    assert '<tr class="divider">' in page and 'id="published-missing"' not in page
    assert '<h2 id="published-h">Published reference rows</h2>' in page


def test_no_published_rows_for_synthetic_tasks(reports: Reports) -> None:
    for report in (reports.ablation, reports.old_mask_prob):
        page = report.page()
        assert [x.kind for x in page_lines(page)[1] if x.kind == "published"] == []
        assert '<tr class="divider">' not in page
        (missing,) = [b for b in blocks(page) if b.id == "published-missing"]
        assert missing.cls == "missing"
        assert missing.text.startswith("This sweep probes no real-dataset task (its tasks: synth_key, synth_pitch), "
                                       "so no published row applies; the paper's rows appear when a sweep probes "
                                       "mtt, giantsteps_key, gtzan_genre, ")  # fmt: skip
    assert reports.ablation.csv is not None
    assert "published" not in reports.ablation.csv.read_text(encoding="utf-8")


# Which views a sweep shows, and which say what is missing.
EXPECTED_VIEWS = {
    "ablation": (FIGURES, ["published-missing"]),
    "real": ([f for f in FIGURES if f != "fig-heatmap"], ["fig-heatmap-missing"]),
    # The older sweeps logged one probe score per run (at step 0; a one-point probe curve), no layer weights and
    # no resources (so no cost in accelerator-hours).
    "old_mask_prob": (["fig-effects", "fig-probe-curves", "fig-curves", "fig-parcoords"],
                      ["fig-layers-missing", "fig-heatmap-missing", "fig-cost-missing", "published-missing"]),
    "old_grid": (["fig-effects", "fig-probe-curves", "fig-curves", "fig-parcoords", "fig-heatmap"],
                 ["fig-layers-missing", "fig-cost-missing", "published-missing"]),
}  # fmt: skip
MISSING_TEXT = {
    "fig-layers-missing": "No probe logged learned layer weights",
    "fig-heatmap-missing": "Only for sweeps where exactly two factors vary.",
    "fig-cost-missing": "No run has a known cost (resources or time missing).",
    "published-missing": "This sweep probes no real-dataset task",
}


@pytest.mark.parametrize("which", list(EXPECTED_VIEWS))
def test_every_view_has_a_caption_or_says_what_is_missing(reports: Reports, which: str) -> None:
    page = getattr(reports, which).page()
    figures, missing = EXPECTED_VIEWS[which]
    found = blocks(page)
    assert [b.id for b in found if "plotly-graph-div" in b.cls] == figures
    assert [b.id for b in found if b.cls == "missing"] == missing
    for b in found:
        if b.cls == "missing":
            assert b.text.startswith(MISSING_TEXT[b.id]), b
    # Every section opens with its heading and, right after it, the sentence on how to read it.
    headed = [i for i, b in enumerate(found) if b.tag == "h2" and b.id.endswith("-h")]
    assert [found[i].id.removesuffix("-h") for i in headed] == SECTIONS
    for i in headed:
        caption = found[i + 1]
        assert (caption.tag, caption.cls) == ("p", "caption"), found[i]
        assert len(caption.text) > 40 and caption.text.endswith("."), caption
        assert "nan" not in caption.text.split() and "None" not in caption.text, caption
        # then the view: its figure, its HTML (the cost table), nothing (published rows: in the table), or why not
        view = found[i + 2]
        section = found[i].id.removesuffix("-h")
        assert view.id in (section, f"{section}-missing", "cost-table") or section == "published", (section, view)
    # The ablation table has its caption too: the checkpoint the scores come from.
    table = next(i for i, b in enumerate(found) if b.id == "table")
    assert found[table + 1].cls == "caption" and found[table + 1].text.startswith(
        "Probe scores in %, last checkpoint: mean ± 95% CI")
    assert found[table + 2].id == "ablation-table"


def test_page_in_chromium_offline(reports: Reports, tmp_path: Path) -> None:
    """A real headless Chromium: no console error, no exception, no request beyond the file, a non-blank page,
    and plotly's rendered SVG in every figure div (only plotly.js, run in the page, creates it)."""
    chromium_or_skip()
    count = ("Array.from(document.querySelectorAll('.plotly-graph-div')).map(d => "
             "[d.id, d.querySelectorAll('.main-svg').length, (d._fullData || []).length])")  # fmt: skip
    for report, figures in ((reports.ablation, FIGURES), (reports.real, EXPECTED_VIEWS["real"][0])):
        load = load_page(report.html, width=1280, height=900, evaluate=count)
        shot = tmp_path / f"{report.name}.png"
        shot.write_bytes(load.screenshot)
        assert load.errors == [], (report.name, load.errors)
        assert load.network == [], (report.name, load.network)
        # Only the file itself (and the data: URLs plotly makes its images from).
        assert [u for u in load.requests if not u.startswith("data:")] == [report.html.as_uri()]
        assert nonblank_fraction(load.screenshot) > 0.05, shot
        assert [d for d, _, _ in load.value] == figures, report.name
        for div_id, svgs, traces in load.value:
            assert svgs >= 1 and traces >= 1, (report.name, div_id, svgs, traces)
        assert 'id="ablation-table"' in load.dom and 'class="main-svg"' in load.dom


def test_plotlyjs_once_and_nothing_remote(reports: Reports) -> None:
    bundle = plotly.offline.get_plotlyjs()
    probes = [bundle[i: i + 200] for i in (1000, len(bundle) // 2, len(bundle) - 300)]
    for report in (reports.ablation, reports.real, reports.old_mask_prob):
        page = report.page()
        assert [page.count(p) for p in probes] == [1, 1, 1], report.name
        assert len(page) < 1.2 * len(bundle), report.name
        parser = _ResourceParser()
        parser.feed(page)
        assert [u for u in parser.urls if u.startswith(("http://", "https://", "//"))] == [], report.name
        assert parser.tags > 50  # the parser saw the page's elements (script contents are not elements)
        assert "<link" not in page.split("<script", 1)[0]  # no stylesheet or font links
        assert "@import" not in page and "url(http" not in page


def _meta(page: str) -> dict[str, str]:
    return dict(re.findall(r"<dt>([^<]+)</dt><dd>(.*?)</dd>", page))


def test_report_header_facts(reports: Reports) -> None:
    page = reports.ablation.page()
    assert "<title>ablation · musicssl sweep report</title>" in page
    assert "<h1>Sweep report: ablation</h1>" in page
    meta = _meta(page)
    total, _, statuses = meta["Runs"].partition(" ")
    assert total == "12" and sorted(statuses.strip("()").split(", ")) == ["1 failed", "1 killed", "10 finished"]
    assert meta["Parent run"] == f"<code>{reports.ablation.parent}</code>"
    assert meta["Variants"] == "4 (baseline: vanilla)"
    assert meta["Seeds"] == "3 (0, 1, 2)"
    assert meta["Factors"] == "<code>model.mask_prob</code>, <code>model.mask_length</code>"
    assert meta["Scores"].startswith("last checkpoint")
    assert meta["MLflow"] == f"<code>{reports.ablation.uri}</code>"
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", meta["Generated"])
    # An older sweep without a baseline; the latest parent run of its name.
    old = _meta(reports.old_mask_prob.page())
    assert old["Variants"] == "2 (no baseline: no deltas)"
    assert old["Parent run"] == f"<code>{reports.store.mask_prob_parent}</code>"
    assert old["Runs"] == "6 (5 finished, 1 failed)"


def test_summary_and_refresh_in_the_page(reports: Reports) -> None:
    sweep = load_sweep(reports.ablation.uri, reports.ablation.parent)
    page = render_report(sweep, Summary.parse("step:100"), refresh_s=7)
    assert '<meta http-equiv="refresh" content="7">' in page
    assert _meta(page)["Scores"].startswith("step 100 checkpoint")
    _, lines = page_lines(page)
    # At step 100 every trial probed there counts (the stopped and the failed seed too): 32, 33 (n = 3).
    assert [(x.label, x.cells[0].mean, x.cells[0].n) for x in lines[:2]] == [("vanilla", 32.0, 3), ("close", 33.0, 3)]
    assert "http-equiv" not in reports.ablation.page()


def test_write_report_replaces_atomically(reports: Reports, tmp_path: Path) -> None:
    sweep = load_sweep(reports.store.uri, reports.store.mask_prob_parent)
    out = tmp_path / "r.html"
    out.write_text("old", encoding="utf-8")
    assert write_report(sweep, out) == out
    assert out.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")
    assert [p.name for p in tmp_path.iterdir()] == ["r.html"]  # no temporary file left behind


def test_build_report_needs_exactly_one_selector(reports: Reports, tmp_path: Path) -> None:
    uri = reports.store.uri
    with pytest.raises(ValueError, match="exactly one"):
        build_report(uri, tmp_path / "x.html")
    with pytest.raises(ValueError, match="exactly one"):
        build_report(uri, tmp_path / "x.html", sweep_name="mask_prob", parent_run_id=reports.store.grid_parent)
    with pytest.raises(LookupError, match="known sweeps: mask_grid, mask_prob"):
        build_report(uri, tmp_path / "x.html", sweep_name="nope")
    with pytest.raises(ValueError, match="format 'pdf': expected one of html, csv, latex"):
        build_report(uri, tmp_path / "x.pdf", sweep_name="mask_prob", fmt="pdf")
    assert list(tmp_path.iterdir()) == []


def test_empty_sweep_report_has_no_figures(tmp_path: Path) -> None:
    empty = SweepRuns("empty", ["model.x"], pd.DataFrame(columns=[*RUN_COLUMNS, "model.x"]),
                      pd.DataFrame(columns=CURVE_COLUMNS))  # fmt: skip
    page = write_report(empty, tmp_path / "empty.html").read_text(encoding="utf-8")
    assert "This sweep has no trial runs yet." in page
    assert "plotly" not in page.lower() and 'id="fig-' not in page and "ablation-table" not in page
    assert _meta(page)["Runs"] == "0"
