"""load_sweep / find_parent_run against a real MLflow sqlite store, and ablation_table statistics by hand."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.entities import Metric, Param

from musicssl.dashboards import tables
from musicssl.dashboards.runs import find_parent_run, load_sweep, parse_param
from musicssl.dashboards.tables import ablation_table, factor_order_key, t975

T975_DF2 = 4.302652729749464  # t(0.975, 2), from a printed t table
T975_DF1 = 12.706204736174698  # t(0.975, 1)
STEPS = [0, 10, 20, 30, 40]


@dataclass(frozen=True)
class Trial:
    """One trial child run to write: its config cell, seed, status and probe scores."""

    mask_prob: float
    mask_length: int
    seed: int
    status: str
    pitch: float | None  # probe/synth_pitch/score (None: no probe metrics logged)
    key: float | None  # probe/synth_key/score

    @property
    def variant(self) -> str:
        return f"mask_prob={self.mask_prob}"

    @property
    def cell(self) -> str:
        return f"p{self.mask_prob}-l{self.mask_length}"

    def loss(self, step: int) -> float:
        return 5.0 / (step + 1) + self.mask_prob + 0.01 * self.seed


# Sweep "mask_prob": 2 variants x 3 seeds; one run FAILED (no probe results, a short loss curve).
MASK_PROB_TRIALS = [
    Trial(0.5, 10, 0, "FINISHED", 0.61, 0.40),
    Trial(0.5, 10, 1, "FINISHED", 0.64, 0.43),
    Trial(0.5, 10, 2, "FINISHED", 0.66, 0.41),
    Trial(0.8, 10, 0, "FINISHED", 0.70, 0.45),
    Trial(0.8, 10, 1, "FINISHED", 0.74, 0.47),
    Trial(0.8, 10, 2, "FAILED", None, None),
]
# Sweep "mask_grid": mask_prob x mask_length, 2 seeds each (for the heatmap and parallel coordinates).
GRID_TRIALS = [
    Trial(
        p,
        length,
        seed,
        "FINISHED",
        0.5 + p / 4 + length / 100 + seed / 50,
        0.3 + p / 5 - length / 200 + seed / 80,
    )
    for p in (0.5, 0.8)
    for length in (5, 10)
    for seed in (0, 1)
]


@dataclass(frozen=True)
class Store:
    """A tracking URI with the two sweeps written into it."""

    uri: str
    mask_prob_parent: str
    old_mask_prob_parent: str
    grid_parent: str


def _write_sweep(
    client: MlflowClient, exp: str, name: str, factors: list[str], trials: list[Trial], t0: int
) -> str:
    parent = client.create_run(
        exp,
        start_time=t0,
        run_name=name,
        tags={"musicssl.kind": "sweep", "musicssl.sweep": name, "musicssl.factors": json.dumps(factors)},
    ).info.run_id
    for i, trial in enumerate(trials):
        variant = trial.variant if len(factors) == 1 else f"{trial.variant},len={trial.mask_length}"
        run_id = client.create_run(
            exp,
            start_time=t0 + 1000 * (i + 1),
            tags={
                "mlflow.parentRunId": parent,
                "musicssl.kind": "trial",
                "musicssl.variant": variant,
                "musicssl.cell": trial.cell,
                "musicssl.seed": str(trial.seed),
            },
        ).info.run_id
        params = {
            "model.mask_prob": str(trial.mask_prob),
            "model.mask_length": str(trial.mask_length),
            "seed": str(trial.seed),
            "probe.tasks": str(["synth_pitch", "synth_key"]),
            "optim.lr": str(1e-05),
            "model.extra": str(None),
        }
        now = int(time.time() * 1000)
        steps = STEPS[:3] if trial.status == "FAILED" else STEPS
        metrics = [Metric("pretrain/loss", trial.loss(s), now, s) for s in steps]
        metrics += [Metric("pretrain/target_var", 1.0 + s / 100, now, s) for s in steps]
        if trial.pitch is not None and trial.key is not None:
            probe = {
                "probe/synth_pitch/acc": trial.pitch,
                "probe/synth_pitch/score": trial.pitch,
                "probe/synth_key/acc": trial.key + 0.05,
                "probe/synth_key/weighted_score": trial.key,
                "probe/synth_key/score": trial.key,
                "probe/average": (trial.pitch + trial.key) / 2,
            }
            metrics += [Metric(k, v, now, 0) for k, v in probe.items()]
        client.log_batch(run_id, metrics=metrics, params=[Param(k, v) for k, v in params.items()])
        client.set_terminated(run_id, status=trial.status)
    client.set_terminated(parent, status="FINISHED")
    return parent


def build_store(root: Path) -> Store:
    """Write the test sweeps into a fresh sqlite MLflow store under ``root``."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment("musicssl-test", artifact_location=(root / "artifacts").as_uri())
    t0 = 1_700_000_000_000
    old = _write_sweep(client, exp, "mask_prob", ["model.mask_prob"], MASK_PROB_TRIALS[:1], t0)
    new = _write_sweep(client, exp, "mask_prob", ["model.mask_prob"], MASK_PROB_TRIALS, t0 + 100_000)
    grid_exp = client.create_experiment("musicssl-grid", artifact_location=(root / "artifacts2").as_uri())
    grid = _write_sweep(
        client, grid_exp, "mask_grid", ["model.mask_prob", "model.mask_length"], GRID_TRIALS, t0 + 200_000
    )
    return Store(uri=uri, mask_prob_parent=new, old_mask_prob_parent=old, grid_parent=grid)


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Store:
    return build_store(tmp_path_factory.mktemp("mlflow"))


def test_find_parent_run_latest_by_name(store: Store) -> None:
    assert find_parent_run(store.uri, "mask_prob") == store.mask_prob_parent
    assert find_parent_run(store.uri, "mask_grid") == store.grid_parent
    with pytest.raises(LookupError, match=r"'mask_prb'.*known sweeps: mask_grid, mask_prob"):
        find_parent_run(store.uri, "mask_prb")


def test_load_sweep_reads_runs_back(store: Store) -> None:
    sweep = load_sweep(store.uri, store.mask_prob_parent)
    assert sweep.name == "mask_prob"
    assert sweep.factors == ["model.mask_prob"]
    assert sweep.parent_run_id == store.mask_prob_parent
    runs = sweep.runs
    assert list(runs.columns[:6]) == ["run_id", "status", "variant", "cell", "seed", "model.mask_prob"]
    assert sorted(c for c in runs.columns if c.startswith("probe/")) == sorted(
        [
            "probe/average",
            "probe/synth_key/acc",
            "probe/synth_key/score",
            "probe/synth_key/weighted_score",
            "probe/synth_pitch/acc",
            "probe/synth_pitch/score",
        ]
    )
    assert len(runs) == len(MASK_PROB_TRIALS)  # the old parent's child is not included
    for (_, row), trial in zip(runs.iterrows(), MASK_PROB_TRIALS, strict=True):
        assert row["status"] == trial.status
        assert row["variant"] == trial.variant
        assert row["cell"] == trial.cell
        assert row["seed"] == trial.seed
        assert row["model.mask_prob"] == trial.mask_prob
        if trial.pitch is None or trial.key is None:
            assert math.isnan(row["probe/synth_pitch/score"]) and math.isnan(row["probe/average"])
        else:
            assert row["probe/synth_pitch/score"] == trial.pitch
            assert row["probe/synth_key/score"] == trial.key
            assert row["probe/synth_key/acc"] == trial.key + 0.05
            assert row["probe/average"] == (trial.pitch + trial.key) / 2

    curves = sweep.curves
    assert list(curves.columns) == ["run_id", "variant", "seed", "key", "step", "value"]
    assert set(curves["key"]) == {"pretrain/loss", "pretrain/target_var"}
    for (_, row), trial in zip(runs.iterrows(), MASK_PROB_TRIALS, strict=True):
        loss = curves[(curves["run_id"] == row["run_id"]) & (curves["key"] == "pretrain/loss")]
        expected_steps = STEPS[:3] if trial.status == "FAILED" else STEPS
        assert loss["step"].tolist() == expected_steps
        assert loss["value"].tolist() == [trial.loss(s) for s in expected_steps]
        assert set(loss["variant"]) == {trial.variant} and set(loss["seed"]) == {trial.seed}


def test_load_sweep_two_factors(store: Store) -> None:
    sweep = load_sweep(store.uri, store.grid_parent)
    assert sweep.factors == ["model.mask_prob", "model.mask_length"]
    assert sweep.runs["model.mask_length"].tolist() == [t.mask_length for t in GRID_TRIALS]
    assert sweep.runs["model.mask_prob"].tolist() == [t.mask_prob for t in GRID_TRIALS]


def test_load_sweep_rejects_a_trial_run(store: Store) -> None:
    child = load_sweep(store.uri, store.mask_prob_parent).runs["run_id"].iloc[0]
    with pytest.raises(ValueError, match="not 'sweep'"):
        load_sweep(store.uri, child)


@pytest.mark.parametrize(
    ("text", "value"),
    [("0.5", 0.5), ("10", 10), ("1e-05", 1e-05), ("None", None), ("True", True), ("abc", "abc"),
     ("['synth_pitch', 'synth_key']", ["synth_pitch", "synth_key"]), ("{a: [", "{a: [")],
)  # fmt: skip
def test_parse_param(text: str, value: object) -> None:
    assert parse_param(text) == value


def test_ablation_table_statistics_by_hand(store: Store) -> None:
    sweep = load_sweep(store.uri, store.mask_prob_parent)
    table = ablation_table(sweep.runs, sweep.factors)
    assert table.index.tolist() == ["mask_prob=0.5", "mask_prob=0.8"]
    assert tables.score_names(table) == ["synth_key", "synth_pitch", "average"]

    a = table.loc["mask_prob=0.5"]
    pitch = [0.61, 0.64, 0.66]
    mean = sum(pitch) / 3
    std = math.sqrt(sum((x - mean) ** 2 for x in pitch) / 2)
    assert a[("synth_pitch", "mean")] == pytest.approx(mean, rel=1e-12)
    assert a[("synth_pitch", "std")] == pytest.approx(std, rel=1e-12)
    assert a[("synth_pitch", "n")] == 3
    assert a[("synth_pitch", "ci95")] == pytest.approx(T975_DF2 * std / math.sqrt(3), rel=1e-7)
    averages = [(0.61 + 0.40) / 2, (0.64 + 0.43) / 2, (0.66 + 0.41) / 2]
    assert a[("average", "mean")] == pytest.approx(statistics.mean(averages), rel=1e-12)
    assert a[("average", "ci95")] == pytest.approx(
        T975_DF2 * statistics.stdev(averages) / math.sqrt(3), rel=1e-7
    )
    assert (a[("runs", "total")], a[("runs", "finished")], a[("runs", "failed")]) == (3, 3, 0)

    # The FAILED seed is counted but excluded from the statistics: n = 2, t(0.975, 1).
    b = table.loc["mask_prob=0.8"]
    assert (b[("runs", "total")], b[("runs", "finished")], b[("runs", "failed")]) == (3, 2, 1)
    assert b[("synth_key", "n")] == 2
    assert b[("synth_key", "mean")] == pytest.approx(0.46, rel=1e-12)
    assert b[("synth_key", "std")] == pytest.approx(statistics.stdev([0.45, 0.47]), rel=1e-12)
    assert b[("synth_key", "ci95")] == pytest.approx(
        T975_DF1 * statistics.stdev([0.45, 0.47]) / math.sqrt(2), rel=1e-7
    )
    assert b[("cell", "")] == "p0.8-l10" and b[("model.mask_prob", "")] == 0.8


def test_ablation_table_single_seed_has_no_ci() -> None:
    runs = pd.DataFrame(
        {
            "run_id": ["r1", "r2", "r3"],
            "status": ["FINISHED", "RUNNING", "FINISHED"],
            "variant": ["x=b", "x=b", "x=a"],
            "cell": ["cb", "cb", "ca"],
            "seed": [0, 1, 0],
            "x": ["b", "b", "a"],
            "probe/t/score": [0.5, math.nan, 0.7],
        }
    )
    table = ablation_table(runs, ["x"])
    assert table.index.tolist() == ["x=a", "x=b"]  # ordered by factor value, not by first appearance
    row = table.loc["x=b"]
    assert row[("t", "n")] == 1 and row[("t", "mean")] == 0.5
    assert math.isnan(row[("t", "std")]) and math.isnan(row[("t", "ci95")])
    assert row[("runs", "unfinished")] == 1
    # Without probe/average the average is the mean of the task scores.
    assert row[("average", "mean")] == 0.5


def test_ablation_table_duplicate_labels_get_cell_ids() -> None:
    runs = pd.DataFrame(
        {"run_id": ["r1", "r2"], "status": ["FINISHED"] * 2, "variant": ["v", "v"], "cell": ["c1", "c2"],
         "seed": [0, 0], "x": [1, 2], "probe/t/score": [0.1, 0.2]}
    )  # fmt: skip
    assert ablation_table(runs, ["x"]).index.tolist() == ["v [c1]", "v [c2]"]


def test_t975_matches_printed_table() -> None:
    # t(0.975, df) from a printed Student t table (df = 1, 2, 10, 30)
    printed = {1: T975_DF1, 2: T975_DF2, 10: 2.228138852, 30: 2.042272456}
    for df, value in printed.items():
        assert t975(df) == pytest.approx(value, rel=1e-8), df
    with pytest.raises(ValueError, match="degrees of freedom"):
        t975(0)


def test_factor_order_key_mixed_types() -> None:
    values = ["b", 2, None, 0.5, True, "a", [1]]
    assert sorted(values, key=factor_order_key) == [None, True, 0.5, 2, "a", "b", [1]]
