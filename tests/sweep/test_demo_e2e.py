"""The demo sweep end to end: real Ray (in-process), real MLflow (sqlite in a temp dir), real training and probe jobs.

The demo is 3 variants (the baseline and two mask probabilities) x 3 seeds, every checkpoint (50, 100, 150 steps)
probed on pitch, key and composer (real music) by probe jobs that run beside the pretraining.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from musicssl.cli import main

pytestmark = pytest.mark.slow
STEPS = [50, 100, 150]
TASKS = ["synth_pitch", "synth_key", "music21_composer"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, mlflow_runs: Callable) -> dict:
    import ray

    state = tmp_path_factory.mktemp("state")
    report = state / "demo.html"
    try:
        code = main(["demo", "--state-dir", str(state), "--report", str(report), "--num-cpus", "2"])
    finally:
        ray.shutdown()
    client, by_kind = mlflow_runs(state)
    return {"code": code, "state": state, "report": report, "client": client, "runs": by_kind}


def test_demo_exits_cleanly(demo: dict) -> None:
    assert demo["code"] == 0
    assert demo["report"].exists()


def test_mlflow_tree_parent_trials_and_tags(demo: dict) -> None:
    client, runs = demo["client"], demo["runs"]
    (parent,) = runs["sweep"]
    trials = runs["trial"]
    assert parent.info.status == "FINISHED"
    assert parent.data.tags["musicssl.factors"] == '["model.mask_prob"]'
    assert parent.data.tags["musicssl.baseline"] == "vanilla"
    assert re.fullmatch(r"[0-9a-f]{40}", parent.data.tags["mlflow.source.git.commit"])
    assert [a.path for a in client.list_artifacts(parent.info.run_id)] == ["demo.html", "demo.resolved.yaml"]
    exp = client.get_experiment(parent.info.experiment_id)
    assert exp.tags["mlflow.experimentKind"] == "custom_model_development"
    assert sorted((r.data.tags["musicssl.variant"], r.data.tags["musicssl.seed"]) for r in trials) == [
        (v, s) for v in ("prob50", "prob80", "vanilla") for s in ("0", "1", "2")]
    for child in trials:
        tags, p = child.data.tags, child.data.params
        assert tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        assert tags["musicssl.paradigm"] == "music2vec"
        assert (tags["musicssl.cpus"], tags["musicssl.gpus"], tags["musicssl.device"]) == ("1.0", "0.0", "cpu")
        assert 1 < child.data.metrics["cost/pretrain_s"] < (child.info.end_time - child.info.start_time) / 1000
        assert tags["musicssl.baseline"] == ("true" if tags["musicssl.variant"] == "vanilla" else "false")
        expected = {"vanilla": "0.65", "prob50": "0.5", "prob80": "0.8"}[tags["musicssl.variant"]]
        assert p["model.mask_prob"] == expected and p["pretrain.max_steps"] == "150"
        loss = client.get_metric_history(child.info.run_id, "pretrain/loss")
        assert sorted(h.step for h in loss) == list(range(10, 151, 10))
        assert loss[-1].value < loss[0].value


def test_every_checkpoint_is_probed_on_every_task(demo: dict) -> None:
    client = demo["client"]
    for trial in demo["runs"]["trial"]:
        rid = trial.info.run_id
        per_task = {}
        for task in TASKS:
            hist = client.get_metric_history(rid, f"probe/{task}/score")
            assert sorted(h.step for h in hist) == STEPS, (task, hist)
            assert all(0.0 <= h.value <= 1.0 for h in hist)
            per_task[task] = {h.step: h.value for h in hist}
        average = {h.step: h.value for h in client.get_metric_history(rid, "probe/average")}
        assert sorted(average) == STEPS
        for step in STEPS:  # the paper's Average: the mean of the task scores at that checkpoint
            assert average[step] == pytest.approx(sum(per_task[t][step] for t in TASKS) / len(TASKS))
        assert per_task["synth_pitch"][150] > 2 / 12, "pitch probe should clearly beat chance (1/12)"


def test_probe_child_runs(demo: dict) -> None:
    client, trials = demo["client"], {r.info.run_id: r for r in demo["runs"]["trial"]}
    probes = demo["runs"]["probe"]
    assert len(probes) == len(trials) * len(STEPS) * len(TASKS)
    seen = set()
    for run in probes:
        tags, m = run.data.tags, run.data.metrics
        trial = trials[tags["mlflow.parentRunId"]]
        step, task = int(tags["musicssl.step"]), tags["musicssl.task"]
        seen.add((trial.info.run_id, step, task))
        assert run.info.status == "FINISHED" and tags["musicssl.attempts"] == "1"
        assert tags["musicssl.checkpoint"].endswith(f"step_{step:09d}")
        assert tags["musicssl.device"].startswith("cpu")
        assert m["wall_s"] > 0 and m["score"] == pytest.approx(
            {h.step: h.value for h in client.get_metric_history(trial.info.run_id, f"probe/{task}/score")}[step])
        curve = client.get_metric_history(run.info.run_id, "valid/monitor")
        assert sorted(h.step for h in curve) == list(range(1, int(m["epochs"]) + 1))
        weights = client.get_metric_history(run.info.run_id, "layer_weight")
        assert sorted(h.step for h in weights) == [0, 1, 2, 3, 4]  # the tiny encoder's 5 hidden states
        assert sum(h.value for h in weights) == pytest.approx(1.0, abs=1e-5)
    assert len(seen) == len(probes)


def test_pretraining_is_not_blocked_by_probe_jobs(demo: dict) -> None:
    """Pretraining steps are logged after a probe job was submitted and before it finished."""
    client = demo["client"]
    overlapped = 0
    for run in demo["runs"]["probe"]:
        submitted = float(run.data.tags["musicssl.submitted_at"]) * 1000
        finished = run.info.end_time
        loss = client.get_metric_history(run.data.tags["mlflow.parentRunId"], "pretrain/loss")
        overlapped += any(submitted < h.timestamp < finished and h.step > int(run.data.tags["musicssl.step"])
                          for h in loss)
    assert overlapped >= 3, f"only {overlapped} probe jobs ran while their trial kept training"


def test_checkpoints_kept_for_probes_then_pruned(demo: dict) -> None:
    for ckpts in demo["state"].glob("sweeps/demo/*/trials/*/checkpoints"):
        assert not list((ckpts / "pins").glob("*.json")), "every probe job released its pin"
        names = {p.name for p in ckpts.glob("step_*")}  # keep-last-2, plus the best if it is older
        assert {"step_000000100", "step_000000150"} <= names and len(names) <= 3
    copies = [p for p in demo["state"].glob("sweeps/demo/*/ray/**/*") if p.suffix == ".safetensors"]
    assert copies == [], "one copy of each checkpoint: Ray Tune's storage holds none"


def test_report_table_matches_mlflow(demo: dict) -> None:
    html = demo["report"].read_text()
    table = html[html.index('<table id="ablation-table">'):]
    table = table[:table.index("</table>")]
    header = re.findall(r"<th[^>]*>([^<]+)</th>", table.split("</thead>")[0])
    assert header == ["Variant", *sorted(TASKS), "Average", "runs"]
    at = len(TASKS)  # the Average cell
    rows = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table.split("<tbody>")[1], flags=re.S):
        label = re.search(r'<th scope="row">([^<]+)', row).group(1).strip()
        rows[label] = [" ".join(re.sub(r"<[^>]+>", " ", c).split()) for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
    assert list(rows) == ["vanilla", "prob50", "prob80"], "baseline first, then the file's order"
    averages = {}
    for label, cells in rows.items():
        finals = [r.data.metrics for r in demo["runs"]["trial"] if r.data.tags["musicssl.variant"] == label]
        assert cells[-1] == "3", "three seeds per variant"
        averages[label] = 100 * sum(m["probe/average"] for m in finals) / 3
        assert cells[at].startswith(f"{averages[label]:.1f} ± ") and "n=3" in cells[at]
    for label in ("prob50", "prob80"):  # the change against the baseline, signed, under each variant's Average
        delta = re.search(r"([+−])(\d+\.\d)", rows[label][at])
        assert delta is not None, rows[label][at]
        shown = float(delta.group(2)) * (-1 if delta.group(1) == "−" else 1)
        assert shown == pytest.approx(averages[label] - averages["vanilla"], abs=0.051)
    for view in ("fig-effects", "fig-probe-curves", "fig-layers", "fig-curves", "fig-parcoords", "fig-cost"):
        assert f'id="{view}"' in html, f"the demo report lacks the {view} view"
    assert 'id="verdict"' in html and 'id="cost-table"' in html and 'id="published-missing"' in html
    assert not re.search(r"<(script|link)[^>]+(src|href)=\"https?:", html), "the report must work offline"
