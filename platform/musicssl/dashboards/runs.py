"""Read one sweep (a parent run and its trial child runs) back from MLflow into pandas frames.

The tags, params and metrics read here are the ones the sweep and trial code write:

- parent run: tags ``musicssl.kind=sweep``, ``musicssl.sweep=<name>``, ``musicssl.factors=<JSON list>``;
- parent run: also ``musicssl.baseline`` (the baseline variant's name), ``musicssl.variants`` (JSON list, file order),
  param ``probe`` (JSON: the sweep's probe job resources);
- trial runs: tags ``mlflow.parentRunId``, ``musicssl.kind=trial``, ``musicssl.variant``, ``musicssl.variant_name``,
  ``musicssl.cell``, ``musicssl.seed``, ``musicssl.baseline``, ``musicssl.paradigm``, ``musicssl.stopped_early``,
  ``musicssl.cpus`` / ``musicssl.gpus`` / ``musicssl.device``; params = the flattened config (dotted keys, values
  stored as ``str(value)``); metrics ``pretrain/*`` (curves), ``cost/pretrain_s``, and per probed checkpoint
  (step = the checkpoint's step) ``probe/<task>/<metric>``, ``probe/<task>/score``, ``probe/average``;
- probe runs (children of a trial run, ``musicssl.kind=probe``): tags ``musicssl.task``, ``musicssl.step``,
  ``musicssl.layer_weights`` (JSON {state: weight}), ``musicssl.device``; metric ``wall_s``.

Older sweeps without some of these load too; the views that need the missing data say so.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import yaml
from mlflow import MlflowClient
from mlflow.entities import Run, ViewType

KIND_TAG = "musicssl.kind"
SWEEP_TAG = "musicssl.sweep"
FACTORS_TAG = "musicssl.factors"
VARIANT_TAG = "musicssl.variant"
CELL_TAG = "musicssl.cell"
SEED_TAG = "musicssl.seed"
PARENT_TAG = "mlflow.parentRunId"

RUN_COLUMNS = ["run_id", "status", "variant", "cell", "seed"]
DETAIL_COLUMNS = ["variant_name", "baseline", "paradigm", "stopped_early", "pretrain_s", "cpus", "gpus", "device"]
CURVE_COLUMNS = ["run_id", "variant", "seed", "key", "step", "value"]
HISTORY_COLUMNS = ["run_id", "task", "step", "value"]
PROBE_RUN_COLUMNS = ["probe_run_id", "run_id", "task", "step", "status", "wall_s", "device", "layer_weights"]

_FLOAT_RE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


@dataclass
class SweepRuns:
    """One sweep as read from MLflow.

    Attributes:
        name: The sweep name (tag ``musicssl.sweep`` of the parent run).
        factors: The dotted config keys the sweep varies, in the order the sweep declared them.
        runs: One row per trial child run: ``run_id, status, variant, cell, seed``, one column per factor
            (the param value parsed back to a Python value) and one column per ``probe/...`` metric.
        curves: Long format ``run_id, variant, seed, key, step, value``, one row per logged point of every
            ``pretrain/*`` metric of every trial.
        parent_run_id: The MLflow run id of the sweep parent run.
        baseline: The baseline variant's name, or None when the sweep has none.
        variants: The variant names in the sweep file's order (empty for grid-only sweeps).
        history: Long format ``run_id, task, step, value``: every logged probe score of every trial
            (``probe/<task>/score`` at the checkpoint step it was probed at).
        probe_runs: One row per probe run: ``probe_run_id, run_id`` (its trial), ``task, step, status, wall_s,
            device, layer_weights`` (a dict {state index: softmax weight}, or None).
        probe_resources: ``cpus`` and ``gpus`` of one probe job (from the parent's ``probe`` param).
        tracking_uri: Where the sweep was read from.
    """

    name: str
    factors: list[str]
    runs: pd.DataFrame
    curves: pd.DataFrame
    parent_run_id: str = ""
    baseline: str | None = None
    variants: list[str] = field(default_factory=list)
    history: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=HISTORY_COLUMNS))
    probe_runs: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=PROBE_RUN_COLUMNS))
    probe_resources: dict[str, float] = field(default_factory=dict)
    tracking_uri: str = ""


def parse_param(text: str) -> Any:
    """Turn an MLflow param string (``str(value)`` of a config value) back into the value.

    YAML covers ints, floats with a dot, bools and lists; this adds the spellings Python's ``str`` produces
    that YAML 1.1 reads as strings: ``None`` and exponent floats without a dot such as ``1e-05``.
    Text that is not valid YAML is returned unchanged.
    """
    if text == "None":
        return None
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _FLOAT_RE.fullmatch(text.strip()):
        return float(text)
    return value


def _search_all(client: MlflowClient, experiment_ids: list[str], filter_string: str) -> Iterator[Run]:
    """Yield every active run matching ``filter_string``, following MLflow's pagination."""
    token: str | None = None
    while True:
        page = client.search_runs(
            experiment_ids,
            filter_string=filter_string,
            run_view_type=ViewType.ACTIVE_ONLY,
            max_results=1000,
            order_by=["attributes.start_time DESC"],
            page_token=token,
        )
        yield from page
        token = page.token
        if not token:
            return


def _all_experiment_ids(client: MlflowClient) -> list[str]:
    ids: list[str] = []
    token = None
    while True:
        page = client.search_experiments(view_type=ViewType.ACTIVE_ONLY, page_token=token)
        ids.extend(e.experiment_id for e in page)
        token = page.token
        if not token:
            return ids


def find_parent_run(tracking_uri: str, sweep_name: str) -> str:
    """Return the run id of the latest sweep parent run named ``sweep_name`` in any experiment.

    Raises:
        LookupError: No sweep parent run has that name; the message lists the sweep names that exist.
    """
    client = MlflowClient(tracking_uri)
    experiment_ids = _all_experiment_ids(client)
    parents = (
        list(_search_all(client, experiment_ids, f"tags.`{KIND_TAG}` = 'sweep'")) if experiment_ids else []
    )
    matches = [r for r in parents if r.data.tags.get(SWEEP_TAG) == sweep_name]
    if not matches:
        known = sorted({r.data.tags.get(SWEEP_TAG, "?") for r in parents})
        raise LookupError(
            f"no sweep parent run named {sweep_name!r} in {tracking_uri}; "
            f"known sweeps: {', '.join(known) if known else '(none)'}. "
            f"Check the name, or the tracking URI the sweep logged to."
        )
    return max(matches, key=lambda r: (r.info.start_time or 0, r.info.run_id)).info.run_id


def _read_factors(parent: Run) -> list[str]:
    raw = parent.data.tags.get(FACTORS_TAG, "[]")
    try:
        factors = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(
            f"sweep parent run {parent.info.run_id}: tag {FACTORS_TAG} is not a JSON list: {raw!r} ({e})"
        ) from e
    if not isinstance(factors, list) or not all(isinstance(f, str) for f in factors):
        raise ValueError(
            f"sweep parent run {parent.info.run_id}: tag {FACTORS_TAG} must be a JSON list of dotted "
            f"config keys, got {raw!r}"
        )
    return factors


def _variant(run: Run) -> str:
    return run.data.tags.get(VARIANT_TAG) or run.info.run_name or run.info.run_id


def _seed(run: Run) -> int | None:
    text = run.data.tags.get(SEED_TAG, run.data.params.get("seed"))
    return None if text is None else int(text)


def _float_tag(tags: dict[str, str], key: str) -> float | None:
    try:
        return float(tags[key])
    except (KeyError, ValueError):
        return None


def _run_row(run: Run, factors: list[str], baseline: str | None) -> dict[str, Any]:
    params, tags, info = run.data.params, run.data.tags, run.info
    name = tags.get("musicssl.variant_name") or _variant(run)
    wall = run.data.metrics.get("cost/pretrain_s")
    if wall is None and info.end_time and info.start_time:  # a sweep from before the cost metric
        wall = (info.end_time - info.start_time) / 1000
    row: dict[str, Any] = {
        "run_id": info.run_id,
        "status": info.status,
        "variant": _variant(run),
        "cell": tags.get(CELL_TAG) or _variant(run),
        "seed": _seed(run),
        "variant_name": name,
        "baseline": tags["musicssl.baseline"] == "true" if "musicssl.baseline" in tags else name == baseline,
        "paradigm": tags.get("musicssl.paradigm") or params.get("model.paradigm"),
        "stopped_early": _float_tag(tags, "musicssl.stopped_early"),
        "pretrain_s": wall,
        "cpus": _float_tag(tags, "musicssl.cpus"),
        "gpus": _float_tag(tags, "musicssl.gpus"),
        "device": tags.get("musicssl.device"),
    }
    for factor in factors:
        row[factor] = parse_param(params[factor]) if factor in params else None
    row.update({k: v for k, v in run.data.metrics.items() if k.startswith("probe/")})
    return row


def _latest_per_step(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    """A metric's history as {step: value}; a step logged twice (a resumed trial) keeps its latest value."""
    latest: dict[int, tuple[int, float]] = {}
    for m in client.get_metric_history(run_id, key):
        if m.step not in latest or m.timestamp >= latest[m.step][0]:
            latest[m.step] = (m.timestamp, m.value)
    return {step: value for step, (_, value) in latest.items()}


def _curves(client: MlflowClient, children: list[Run]) -> pd.DataFrame:
    points: list[tuple[str, str, int | None, str, int, float]] = []
    for run in children:
        variant, seed = _variant(run), _seed(run)
        for key in sorted(k for k in run.data.metrics if k.startswith("pretrain/")):
            history = _latest_per_step(client, run.info.run_id, key)
            points += [(run.info.run_id, variant, seed, key, step, v) for step, v in history.items()]
    curves = pd.DataFrame(points, columns=CURVE_COLUMNS)
    curves["seed"] = curves["seed"].astype("Int64")
    curves["step"] = curves["step"].astype("int64")
    curves["value"] = curves["value"].astype(float)
    return curves.sort_values(["key", "run_id", "step"], kind="stable").reset_index(drop=True)


def _history(client: MlflowClient, children: list[Run]) -> pd.DataFrame:
    """Every probe score of every trial at every probed step (``probe/<task>/score``)."""
    points: list[tuple[str, str, int, float]] = []
    for run in children:
        for key in sorted(k for k in run.data.metrics if k.startswith("probe/") and k.endswith("/score")):
            task = key.split("/")[1]
            history = _latest_per_step(client, run.info.run_id, key)
            points += [(run.info.run_id, task, step, v) for step, v in history.items()]
    frame = pd.DataFrame(points, columns=HISTORY_COLUMNS)
    frame["step"] = frame["step"].astype("int64")
    frame["value"] = frame["value"].astype(float)
    return frame.sort_values(["run_id", "task", "step"], kind="stable").reset_index(drop=True)


def _layer_weights(text: str | None) -> dict[int, float] | None:
    if not text:
        return None
    try:
        return {int(k): float(v) for k, v in json.loads(text).items()} or None
    except (ValueError, AttributeError):
        return None


def _probe_runs(client: MlflowClient, experiment_id: str, sweep: str, trial_ids: set[str]) -> pd.DataFrame:
    rows = []
    query = f"tags.`{KIND_TAG}` = 'probe' and tags.`{SWEEP_TAG}` = '{sweep}'"
    for run in _search_all(client, [experiment_id], query):
        tags = run.data.tags
        if tags.get(PARENT_TAG) not in trial_ids:
            continue
        rows.append({
            "probe_run_id": run.info.run_id, "run_id": tags[PARENT_TAG], "task": tags.get("musicssl.task"),
            "step": int(tags.get("musicssl.step", -1)), "status": run.info.status,
            "wall_s": run.data.metrics.get("wall_s"), "device": tags.get("musicssl.device"),
            "layer_weights": _layer_weights(tags.get("musicssl.layer_weights")),
        })
    frame = pd.DataFrame(rows, columns=PROBE_RUN_COLUMNS)
    frame["wall_s"] = frame["wall_s"].astype(float)
    return frame.sort_values(["run_id", "task", "step"], kind="stable").reset_index(drop=True)


def _json_param(params: dict[str, str], key: str) -> Any:
    try:
        return json.loads(params.get(key, "null"))
    except json.JSONDecodeError:
        return None


def load_sweep(tracking_uri: str, parent_run_id: str) -> SweepRuns:
    """Load a sweep parent run, its trial child runs, their pretraining curves and probe scores, and its probe runs.

    Args:
        tracking_uri: MLflow tracking URI, e.g. ``sqlite:///mlflow.db`` or ``http://host:5000``.
        parent_run_id: Run id of the sweep parent run (see `find_parent_run` to get it from a sweep name).

    Returns:
        The sweep; ``runs`` is in start-time order, probe columns are sorted by name.

    Raises:
        ValueError: The run is not a sweep parent run, or its factors tag is malformed.
    """
    client = MlflowClient(tracking_uri)
    parent = client.get_run(parent_run_id)
    kind = parent.data.tags.get(KIND_TAG)
    if kind != "sweep":
        raise ValueError(
            f"run {parent_run_id} has tag {KIND_TAG}={kind!r}, not 'sweep'; pass the sweep parent run id "
            f"(or use find_parent_run(tracking_uri, sweep_name))"
        )
    factors = _read_factors(parent)
    baseline = parent.data.tags.get("musicssl.baseline") or None
    variants = json.loads(parent.data.tags.get("musicssl.variants", "[]"))
    children = list(
        _search_all(
            client,
            [parent.info.experiment_id],
            f"tags.`{PARENT_TAG}` = '{parent_run_id}' and tags.`{KIND_TAG}` = 'trial'",
        )
    )
    children.sort(key=lambda r: (r.info.start_time or 0, r.info.run_id))

    rows = [_run_row(r, factors, baseline) for r in children]
    probe_cols = sorted({k for row in rows for k in row if k.startswith("probe/")})
    runs = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *factors, *DETAIL_COLUMNS, *probe_cols])
    runs["seed"] = runs["seed"].astype("Int64")
    runs["baseline"] = runs["baseline"].astype(bool)
    for col in ("stopped_early", "pretrain_s", "cpus", "gpus", *probe_cols):
        runs[col] = runs[col].astype(float)
    probe = _json_param(parent.data.params, "probe") or {}
    name = parent.data.tags.get(SWEEP_TAG, parent.info.run_name or parent_run_id)
    return SweepRuns(
        name=name,
        factors=factors,
        runs=runs,
        curves=_curves(client, children),
        parent_run_id=parent_run_id,
        baseline=baseline,
        variants=[str(v) for v in variants] if isinstance(variants, list) else [],
        history=_history(client, children),
        probe_runs=_probe_runs(client, parent.info.experiment_id, name, {r.info.run_id for r in children}),
        probe_resources={k: float(probe.get(k, 0) or 0) for k in ("cpus", "gpus")} if isinstance(probe, dict) else {},
        tracking_uri=tracking_uri,
    )
