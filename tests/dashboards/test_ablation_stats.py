"""The ablation table's statistics against an independent computation from the MLflow runs, its within-noise
verdicts in the HTML, CSV and LaTeX, the paper's Average reproduced through the table code, cost and layer weights.

The expected side reads the store with MlflowClient and computes everything with pandas and SciPy; it calls none
of musicssl's loading, summary or table code.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field, replace
from decimal import ROUND_HALF_UP, Decimal
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import scipy.stats
from mlflow import MlflowClient

from musicssl.dashboards import published
from musicssl.dashboards.cost import cost_table, units
from musicssl.dashboards.export import display, to_csv, to_html, to_latex
from musicssl.dashboards.report import analyse, build_report
from musicssl.dashboards.runs import SweepRuns, load_sweep
from musicssl.dashboards.summary import Summary
from musicssl.dashboards.tables import AVERAGE, NOISE, REAL, UNTESTED, ablation_table
from musicssl.dashboards.views import layer_weights

try:  # tests/ may become a package later
    from .ablation_fixture import (
        LAYERS,
        PROBE_RESOURCES,
        TASKS,
        TRIALS,
        VARIANTS,
        AblationStore,
        FixtureTrial,
        write_ablation_sweep,
    )
except ImportError:
    from ablation_fixture import (
        LAYERS,
        PROBE_RESOURCES,
        TASKS,
        TRIALS,
        VARIANTS,
        AblationStore,
        FixtureTrial,
        write_ablation_sweep,
    )

STATS = ("mean", "std", "n", "ci95", "delta", "p")
NAMES = (*TASKS, AVERAGE)
# Extra probe scores logged on top of the fixture, off its step grid, so that a trial's best checkpoint is not its
# last one: (variant, seed, task) -> (step, bump over the score of the trial's last step). The KILLED trial
# (close seed 2) must not count under "best" however high its peak.
PEAKS = {
    ("far", 1, "synth_key"): (120, 0.12),
    ("vanilla", 0, "synth_pitch"): (75, 0.10),
    ("close", 2, "synth_key"): (60, 0.30),
}


@dataclass
class Ablation:
    store: AblationStore
    sweep: SweepRuns  # musicssl's reading (the side under test)
    trials: pd.DataFrame  # independent: one row per trial run
    history: pd.DataFrame  # independent: run_id, task, step, value
    probes: pd.DataFrame  # independent: one row per probe run (run_id = its trial)
    variants: list[str]  # the parent's variant order tag
    baseline: str


def _trial(variant: str, seed: int) -> FixtureTrial:
    return next(t for t in TRIALS if (t.variant, t.seed) == (variant, seed))


def _read_back(client: MlflowClient, parent: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Trial runs, their probe score history and their probe runs, straight from MLflow."""
    experiment = client.get_run(parent).info.experiment_id
    found = client.search_runs(
        [experiment], f"tags.`mlflow.parentRunId` = '{parent}' and tags.`musicssl.kind` = 'trial'", max_results=1000
    )
    trials = pd.DataFrame([{
        "run_id": r.info.run_id, "status": r.info.status, "variant": r.data.tags["musicssl.variant"],
        "seed": int(r.data.tags["musicssl.seed"]), "cpus": float(r.data.tags["musicssl.cpus"]),
        "stopped_early": "musicssl.stopped_early" in r.data.tags,
        "baseline": r.data.tags["musicssl.baseline"] == "true",
    } for r in found]).set_index("run_id")
    points = [
        (run_id, task, m.step, m.timestamp, m.value)
        for run_id in trials.index for task in TASKS
        for m in client.get_metric_history(run_id, f"probe/{task}/score")
    ]
    history = (pd.DataFrame(points, columns=["run_id", "task", "step", "timestamp", "value"])
               .sort_values("timestamp", kind="stable")
               .drop_duplicates(["run_id", "task", "step"], keep="last"))
    probe_runs = client.search_runs([experiment], "tags.`musicssl.kind` = 'probe'", max_results=1000)
    probes = pd.DataFrame([{
        "run_id": r.data.tags["mlflow.parentRunId"], "task": r.data.tags["musicssl.task"],
        "step": int(r.data.tags["musicssl.step"]), "wall_s": r.data.metrics["wall_s"],
    } for r in probe_runs])
    return trials, history[["run_id", "task", "step", "value"]].reset_index(drop=True), probes


@pytest.fixture(scope="module")
def ablation(tmp_path_factory: pytest.TempPathFactory) -> Ablation:
    store = write_ablation_sweep(tmp_path_factory.mktemp("ablation"))
    client = MlflowClient(store.uri)
    trials, _, _ = _read_back(client, store.parent_run_id)
    for (variant, seed, task), (step, bump) in PEAKS.items():
        trial = _trial(variant, seed)
        run_id = trials.index[(trials["variant"] == variant) & (trials["seed"] == seed)][0]
        client.log_metric(run_id, f"probe/{task}/score", trial.score(task, trial.last_step) + bump, step=step)
    trials, history, probes = _read_back(client, store.parent_run_id)
    tags = client.get_run(store.parent_run_id).data.tags
    variants = json.loads(tags["musicssl.variants"])
    return Ablation(store, load_sweep(store.uri, store.parent_run_id), trials, history, probes, variants,
                    tags["musicssl.baseline"])


# --- the independent expected side -----------------------------------------------------------------------------


def _scores(a: Ablation, summary: str) -> pd.DataFrame:
    """One row per trial: its score per task under ``summary``, ``average`` and whether it is counted."""
    h = a.history
    if summary == "last":
        picked = h.sort_values("step").groupby(["run_id", "task"]).tail(1)
    elif summary == "best":
        picked = h.sort_values("value").groupby(["run_id", "task"]).tail(1)
    else:
        picked = h[h["step"] == int(summary.removeprefix("step:"))]
    wide = picked.pivot(index="run_id", columns="task", values="value").reindex(index=a.trials.index,
                                                                                columns=list(TASKS))
    wide[AVERAGE] = wide[list(TASKS)].mean(axis=1, skipna=False)
    if summary in ("last", "best"):
        counted = (a.trials["status"] == "FINISHED") & ~a.trials["stopped_early"]
    else:
        counted = wide[list(TASKS)].notna().any(axis=1)
    return a.trials.join(wide).assign(counted=counted)


def _expected(a: Ablation, summary: str) -> dict[tuple[str, str], dict[str, Any]]:
    """(variant, score name) -> mean, std, n, ci95, delta, p, noise over the counted runs."""
    scores = _scores(a, summary)
    scores = scores[scores["counted"]]
    base = scores[scores["variant"] == a.baseline]
    out: dict[tuple[str, str], dict[str, Any]] = {}
    for variant, group in scores.groupby("variant"):
        for name in NAMES:
            values, ref = group[name].dropna(), base[name].dropna()
            n = len(values)
            std = values.std(ddof=1) if n > 1 else math.nan
            row = {"mean": values.mean(), "std": std, "n": n,
                   "ci95": scipy.stats.t.ppf(0.975, n - 1) * std / math.sqrt(n) if n > 1 else math.nan,
                   "delta": math.nan, "p": math.nan, "noise": ""}
            if variant != a.baseline and n and len(ref):
                row["delta"] = values.mean() - ref.mean()
                if n > 1 and len(ref) > 1:
                    row["p"] = scipy.stats.ttest_ind(values, ref, equal_var=False).pvalue
                    row["noise"] = NOISE if row["p"] >= 0.05 else REAL
                else:
                    row["noise"] = UNTESTED
            out[(str(variant), name)] = row
    return out


def _assert_table_matches(a: Ablation, table: pd.DataFrame, summary: str) -> None:
    expected = _expected(a, summary)
    assert sorted(table.index) == sorted(VARIANTS)
    assert {v for v, _ in expected} == set(VARIANTS)
    for (variant, name), want in expected.items():
        got = {stat: table.loc[variant, (name, stat)] for stat in (*STATS, "noise")}
        assert got == {k: pytest.approx(v, rel=1e-9, abs=1e-12, nan_ok=True) if k != "noise" else v
                       for k, v in want.items()}, (summary, variant, name)


# --- 1, 2: the table against the independent computation ------------------------------------------------------


def test_last_summary_table_equals_independent_computation(ablation: Ablation) -> None:
    table = analyse(load_sweep(ablation.store.uri, ablation.store.parent_run_id)).table
    _assert_table_matches(ablation, table, "last")
    # The fixture's design, so the comparison above is not vacuous: the KILLED and FAILED seeds are left out,
    # close is within noise and far is real on every score.
    assert table[("average", "n")].to_dict() == {"vanilla": 3, "close": 2, "far": 3, "span5": 2}
    assert table.loc["far", ("average", "mean")] == pytest.approx(0.64)
    assert {table.loc["close", (n, "noise")] for n in NAMES} == {NOISE}
    assert {table.loc["far", (n, "noise")] for n in NAMES} == {REAL}
    assert table.loc["vanilla", ("average", "noise")] == ""
    # Run counts from the statuses and the stopped-early tag.
    runs = table["runs"][["total", "finished", "failed", "stopped"]]
    assert runs.loc["close"].tolist() == [3, 2, 0, 1]
    assert runs.loc["span5"].tolist() == [3, 2, 1, 0]
    # Row order: the baseline first, then the sweep file's variant order (not the factor order, which would put
    # close first and span5 before vanilla).
    assert list(table.index) == [ablation.baseline, *(v for v in ablation.variants if v != ablation.baseline)]
    assert list(table.index) == ["vanilla", "close", "far", "span5"]


def test_variant_order_follows_the_given_list(ablation: Ablation) -> None:
    runs = analyse(ablation.sweep).runs
    order = ["vanilla", "span5", "far", "close"]
    assert list(ablation_table(runs, ablation.sweep.factors, order).index) == order
    # Without a variant list: the baseline first, then by factor values (mask_prob, mask_length).
    assert list(ablation_table(runs, ablation.sweep.factors).index) == ["vanilla", "close", "span5", "far"]


@pytest.mark.parametrize("summary", ["best", "step:50", "step:100", "step:150"])
def test_other_summaries_equal_independent_computation(ablation: Ablation, summary: str) -> None:
    analysis = analyse(ablation.sweep, Summary.parse(summary))
    _assert_table_matches(ablation, analysis.table, summary)
    n = analysis.table[("average", "n")].to_dict()
    if summary == "best":
        # The peaks make best differ from last; the KILLED trial's higher peak is not counted.
        assert analysis.table.loc["far", ("synth_key", "mean")] == pytest.approx((0.54 * 3 + 0.12) / 3)
        assert n == {"vanilla": 3, "close": 2, "far": 3, "span5": 2}
        steps = analysis.runs.set_index(["variant", "seed"])
        assert steps.loc[("far", 1), "step/synth_key"] == 120 and steps.loc[("far", 1), "step/synth_pitch"] == 150
    elif summary == "step:150":
        assert n == {"vanilla": 3, "close": 2, "far": 3, "span5": 2}
    else:  # the FAILED and the KILLED trial reached this step: they count
        assert n == {"vanilla": 3, "close": 3, "far": 3, "span5": 3}


# --- 3: the within-noise marker in HTML, CSV and LaTeX ---------------------------------------------------------


@dataclass
class _Cell:
    text: str = ""
    classes: list[str] = field(default_factory=list)  # the class attributes of the spans inside the cell
    titles: list[str] = field(default_factory=list)  # and their titles


class _AblationTable(HTMLParser):
    """The rows of ``<table id="ablation-table">``: per row its cells (th and td) with text and span classes."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[_Cell]] = []
        self._inside = False
        self._cell: _Cell | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "table":
            self._inside = attr.get("id") == "ablation-table"
        elif self._inside and tag == "tr":
            self.rows.append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = _Cell()
            self.rows[-1].append(self._cell)
        elif self._cell is not None and tag == "span":
            self._cell.classes.append(attr.get("class") or "")
            self._cell.titles.append(attr.get("title") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        elif tag in ("td", "th"):
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.text += data


def _html_rows(html: str) -> tuple[list[str], dict[str, dict[str, _Cell]]]:
    """The header texts and, per row label (its first word), the score cells by column."""
    parser = _AblationTable()
    parser.feed(html)
    header = [c.text.strip() for c in parser.rows[0]]
    scores = header[1:-1]  # Variant, <scores...>, runs
    rows = {r[0].text.split()[0]: dict(zip(scores, r[1:-1], strict=True)) for r in parser.rows[1:]}
    return header, rows


def _latex_line(tex: str, label: str) -> str:
    return next(line for line in tex.splitlines() if line.startswith(f"{label} "))


def test_within_noise_marker_in_html_csv_latex(ablation: Ablation, tmp_path: Path) -> None:
    store = ablation.store
    html = build_report(store.uri, tmp_path / "r.html", parent_run_id=store.parent_run_id).read_text("utf-8")
    header, rows = _html_rows(html)
    assert header == ["Variant", *TASKS, "Average", "runs"]
    assert list(rows) == ["vanilla", "close", "far", "span5"]
    for column in (*TASKS, "Average"):
        close, far, base = rows["close"][column], rows["far"][column], rows["vanilla"][column]
        assert "≈" in close.text and "delta noise" in close.classes
        assert "≈" not in far.text and "delta up" in far.classes and "delta noise" not in far.classes
        assert "delta down" in rows["span5"][column].classes
        assert not any(c.startswith("delta") for c in base.classes)  # the baseline has no change to mark
        assert "≈" not in base.text

    expected = _expected(ablation, "last")
    text = build_report(store.uri, tmp_path / "t.csv", parent_run_id=store.parent_run_id, fmt="csv").read_text()
    table = {r["variant"]: r for r in csv.DictReader(io.StringIO(text))}
    for name, column in zip(NAMES, (*TASKS, "Average"), strict=True):
        assert table["close"][f"{column}_noise"] == NOISE
        assert table["far"][f"{column}_noise"] == REAL
        assert table["vanilla"][f"{column}_noise"] == ""
        for variant in VARIANTS:  # the CSV's numbers are the independent ones, in % to one decimal
            assert table[variant][column] == f"{100 * expected[(variant, name)]['mean']:.1f}"
        assert table["far"][f"{column}_delta"] == f"{100 * expected[('far', name)]['delta']:.1f}"
        assert table["close"][f"{column}_p"] == f"{expected[('close', name)]['p']:.3f}"

    tex = build_report(store.uri, tmp_path / "t.tex", parent_run_id=store.parent_run_id, fmt="latex").read_text()
    approx = "$^{\\approx}$"
    assert _latex_line(tex, "close").count(approx) == len(NAMES)
    assert approx not in _latex_line(tex, "far")
    assert approx not in _latex_line(tex, "span5")
    assert approx not in _latex_line(tex, "vanilla")


def _frame(rows: list[tuple[str, int, float]], baseline: str) -> pd.DataFrame:
    """A summarised runs frame with one task ``t``: (variant, seed, score) per run."""
    return pd.DataFrame({
        "run_id": [f"{v}-{s}" for v, s, _ in rows], "status": "FINISHED", "variant": [v for v, _, _ in rows],
        "cell": [v for v, _, _ in rows], "seed": [s for _, s, _ in rows], "variant_name": [v for v, _, _ in rows],
        "baseline": [v == baseline for v, _, _ in rows], "probe/t/score": [x for _, _, x in rows],
        "probe/average": [x for _, _, x in rows], "counted": True,
    })


@pytest.mark.parametrize("one_seed", ["solo", "base"])
def test_single_seed_side_is_untested(one_seed: str) -> None:
    seeds = {"base": [0.40, 0.42, 0.44], "solo": [0.70, 0.72, 0.74]}
    seeds[one_seed] = seeds[one_seed][:1]
    runs = _frame([(v, s, x) for v, xs in seeds.items() for s, x in enumerate(xs)], "base")
    table = ablation_table(runs, [], ["base", "solo"])
    assert table.loc["solo", ("t", "noise")] == UNTESTED
    assert math.isnan(table.loc["solo", ("t", "p")])
    assert table.loc["solo", ("t", "delta")] == pytest.approx(
        sum(seeds["solo"]) / len(seeds["solo"]) - sum(seeds["base"]) / len(seeds["base"]))

    shown = display(table)
    _, rows = _html_rows(to_html(shown))
    for column in ("t", "Average"):
        cell = rows["solo"][column]
        assert "?" in cell.text and "≈" not in cell.text
        assert "delta noise" in cell.classes  # grey, not green, though the difference is 30 points
        assert any("one seed: no test" in t for t in cell.titles)
    line = _latex_line(to_latex(shown), "solo")
    assert line.count("$^{?}$") == 2 and "approx" not in line
    solo = next(r for r in csv.DictReader(io.StringIO(to_csv(shown))) if r["variant"] == "solo")
    assert solo["t_noise"] == UNTESTED and solo["t_p"] == ""


# --- 4: the paper's Average through the table code -------------------------------------------------------------


def test_published_averages_reproduced_through_table_code() -> None:
    rows = [row for row in published.PUBLISHED if row.table in (2, 3)]
    assert len(rows) == 5 + 9
    frame = pd.DataFrame([{
        "run_id": f"t{row.table}-{i}", "status": "FINISHED", "variant": row.label, "cell": row.label, "seed": 0,
        "variant_name": row.label, "baseline": False, "counted": True,
        **{f"probe/{task}/score": published.task_score(row, task) / 100 for task in published.TABLE_TASKS},
    } for i, row in enumerate(rows)])
    frame["probe/average"] = frame[[f"probe/{t}/score" for t in published.TABLE_TASKS]].mean(axis=1)
    table = ablation_table(frame, [], [row.label for row in rows])
    shown = display(table)
    assert shown.columns == [*sorted(published.TABLE_TASKS), AVERAGE]
    assert [r.label for r in shown.rows] == [row.label for row in rows]

    inconsistent = set()
    for row, shown_row in zip(rows, shown.rows, strict=True):
        average = shown_row.cells[AVERAGE].mean
        assert row.published_average is not None
        if (row.table, row.label) in published.INCONSISTENT_AVERAGES:
            inconsistent.add((row.table, row.label))
            assert abs(average - row.published_average) == pytest.approx(0.1), row.label
        else:
            assert average == row.published_average, row.label
        for task in published.TABLE_TASKS:  # each task cell: the row's task score to one decimal, half up as printed
            exact = Decimal(f"{published.task_score(row, task):.6f}").quantize(Decimal("0.1"), ROUND_HALF_UP)
            assert shown_row.cells[task].mean == float(exact)
    assert inconsistent == set(published.INCONSISTENT_AVERAGES)
    crop = next(r for r in shown.rows if r.label == "crop5s")
    assert crop.cells[AVERAGE].mean == 61.7  # the printed 61.8 is not what its own values give


# --- 5: cost -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("summary", ["last", "step:100"])
def test_cost_table_equals_own_computation(ablation: Ablation, summary: str) -> None:
    analysis = analyse(ablation.sweep, Summary.parse(summary))
    got = cost_table(ablation.sweep, analysis.runs, analysis.table)
    assert units(ablation.sweep) == ("CPU-h", "GPU-h")  # trials held CPUs only; probe jobs half a GPU each
    assert list(got.index) == list(analysis.table.index)

    scores = _scores(ablation, summary)
    jobs = ablation.probes.groupby("run_id")["wall_s"].agg(["size", "sum"])
    per_run = scores.assign(
        pretrain_s=[_trial(v, s).pretrain_s for v, s in zip(scores["variant"], scores["seed"], strict=True)],
        jobs=jobs["size"].reindex(scores.index).fillna(0), probe_s=jobs["sum"].reindex(scores.index).fillna(0),
    )
    per_run["pretrain_h"] = per_run["pretrain_s"] / 3600 * per_run["cpus"]
    per_run["probe_h"] = per_run["probe_s"] / 3600 * PROBE_RESOURCES["gpus"]
    for variant, mine in per_run[per_run["counted"]].groupby("variant"):
        average = mine[AVERAGE].mean()
        want = {"runs": len(mine), "wall_h": mine["pretrain_s"].mean() / 3600, "pretrain_h": mine["pretrain_h"].mean(),
                "probe_jobs": mine["jobs"].mean(), "probe_wall_h": mine["probe_s"].mean() / 3600,
                "probe_h": mine["probe_h"].mean(), "average": average,
                "per_h": 100 * average / mine["pretrain_h"].mean()}
        assert got.loc[variant].to_dict() == pytest.approx(want, rel=1e-12), (summary, variant)
    # By hand for one row: close under "last" counts seeds 0 and 1 (1800 s, 2400 s on 2 CPUs; 6 probes of 36 s).
    if summary == "last":
        assert got.loc["close", "pretrain_h"] == pytest.approx((1800 + 2400) / 2 / 3600 * 2)
        assert got.loc["close", "probe_h"] == pytest.approx(6 * 36 / 3600 * 0.5)
    else:  # the KILLED seed 2 (3000 s, 4 probes) counts too
        assert got.loc["close", "probe_jobs"] == pytest.approx((6 + 6 + 4) / 3)


# --- 6: layer weights ----------------------------------------------------------------------------------------------


def _mean_weights(trials: list[FixtureTrial], step: int) -> dict[tuple[str, int], float]:
    out = {}
    for task in TASKS:
        for layer in range(LAYERS):
            weights = [t.layer_weights(task, step)[layer] for t in trials]
            out[(task, layer)] = sum(weights) / len(weights)
    return out


def _by_cell(weights: pd.DataFrame, cells: dict[str, str]) -> dict[str, dict[tuple[str, int], tuple[float, int]]]:
    label = {cell: variant for variant, cell in cells.items()}
    return {label[cell]: {(r.task, r.layer): (r.weight, r.n) for r in group.itertuples()}
            for cell, group in weights.groupby("cell")}


def test_layer_weights_mean_over_counted_seeds(ablation: Ablation) -> None:
    cells = analyse(ablation.sweep).table[("cell", "")].to_dict()
    for summary, step, counted in [("last", 150, lambda t: t.status == "FINISHED" and not t.stopped_early),
                                   ("step:50", 50, lambda t: True)]:
        runs = analyse(ablation.sweep, Summary.parse(summary)).runs
        got = _by_cell(layer_weights(ablation.sweep, runs), cells)
        assert set(got) == set(VARIANTS)
        for variant in VARIANTS:
            seeds = [t for t in TRIALS if t.variant == variant and counted(t)]
            want = _mean_weights(seeds, step)
            assert set(got[variant]) == set(want)
            for key, weight in want.items():
                assert got[variant][key] == (pytest.approx(weight, rel=1e-12), len(seeds)), (summary, variant, key)
    # The fixture's weights: key peaks on layer 1, pitch on the last layer.
    w = _by_cell(layer_weights(ablation.sweep, analyse(ablation.sweep).runs), cells)["vanilla"]
    assert max(range(LAYERS), key=lambda k: w[("synth_key", k)][0]) == 1
    assert max(range(LAYERS), key=lambda k: w[("synth_pitch", k)][0]) == LAYERS - 1


def test_layer_weights_come_from_the_summary_step(ablation: Ablation) -> None:
    # The fixture's weights do not depend on the step; mark each probe run's weights with its step (+step) so a
    # weight taken from the wrong checkpoint shows.
    probes = ablation.sweep.probe_runs.copy()
    probes["layer_weights"] = [{k: v + step for k, v in w.items()}
                               for w, step in zip(probes["layer_weights"], probes["step"], strict=True)]
    sweep = replace(ablation.sweep, probe_runs=probes)
    cells = analyse(sweep).table[("cell", "")].to_dict()
    for summary, step in [("step:50", 50), ("step:100", 100), ("last", 150)]:
        got = _by_cell(layer_weights(sweep, analyse(sweep, Summary.parse(summary)).runs), cells)
        seeds = [t for t in TRIALS if t.variant == "far"]
        for (task, layer), weight in _mean_weights(seeds, step).items():
            assert got["far"][(task, layer)][0] == pytest.approx(weight + step, rel=1e-12), (summary, task, layer)
    # Under "best" far seed 1's synth_key score is from step 120, where no probe ran: its weights are left out.
    got = _by_cell(layer_weights(sweep, analyse(sweep, Summary.parse("best")).runs), cells)
    assert got["far"][("synth_key", 0)][1] == 2 and got["far"][("synth_pitch", 0)][1] == 3


# --- 7: Summary.parse ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, kind, step", [
    ("last", "last", None), ("best", "best", None), ("step:100", "step", 100), ("100", "step", 100),
    (" Step:50 ", "step", 50),
])
def test_summary_parse_accepts(text: str, kind: str, step: int | None) -> None:
    assert Summary.parse(text) == Summary(kind, step)  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["bogus", "step:x", "step:", "last:3", "-5"])
def test_summary_parse_rejects_with_the_spellings(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Summary.parse(text)
    message = str(info.value)
    assert all(spelling in message for spelling in ("last", "best", "step:N")), message
