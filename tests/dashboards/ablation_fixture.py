"""A sweep written into a real MLflow store with the layout musicssl's sweeps write (parent, trial and probe runs),
with known numbers: 4 variants x 3 seeds, a baseline, probe scores at steps 50/100/150, layer weights, costs.

- ``close`` differs from the baseline by less than the seed spread (the within-noise case);
- ``far`` differs by far more than the seed spread (a real difference);
- ``span5`` changes the other factor; its seed 2 FAILED after step 100 (no step-150 scores);
- ``close`` seed 2 was stopped early by ASHA at step 100 (KILLED, tag ``musicssl.stopped_early``).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunTag

TASKS = ("synth_key", "synth_pitch")
STEPS = (50, 100, 150)
SEEDS = (0, 1, 2)
FACTORS = ["model.mask_prob", "model.mask_length"]
LAYERS = 5  # CNN output + 4 transformer layers
SEED_NOISE = {0: -0.03, 1: 0.0, 2: 0.03}  # the seed spread: +-3 points
VARIANTS = {  # name: (mask_prob, mask_length, offset of every score against the baseline)
    "vanilla": (0.65, 10, 0.0),
    "close": (0.5, 10, 0.01),  # 1 point: well inside the +-3 point seed spread
    "far": (0.8, 10, 0.20),  # 20 points: far outside it
    "span5": (0.65, 5, -0.10),
}
TASK_BASE = {"synth_key": 0.30, "synth_pitch": 0.50}
PROBE_RESOURCES = {"cpus": 1, "gpus": 0.5}


@dataclass(frozen=True)
class FixtureTrial:
    variant: str
    seed: int
    status: str = "FINISHED"
    last_step: int = 150  # the last step probed
    stopped_early: bool = False

    def score(self, task: str, step: int) -> float:
        """Known score: task base + variant offset + seed noise + a rise of 2 points per 50 steps."""
        return TASK_BASE[task] + VARIANTS[self.variant][2] + SEED_NOISE[self.seed] + 0.02 * (step // 50 - 1)

    def layer_weights(self, task: str, step: int) -> dict[int, float]:
        """Softmax-like weights: pitch peaks on the last layer, key on layer 1 (sums to 1)."""
        peak = LAYERS - 1 if task == "synth_pitch" else 1
        raw = [3.0 if layer == peak else 1.0 + 0.1 * self.seed for layer in range(LAYERS)]
        return {layer: w / sum(raw) for layer, w in enumerate(raw)}

    @property
    def pretrain_s(self) -> float:
        return 1800.0 + 600 * SEEDS.index(self.seed)


TRIALS = [
    FixtureTrial(v, s) if (v, s) not in {("span5", 2), ("close", 2)} else
    FixtureTrial(v, s, "FAILED", 100) if v == "span5" else FixtureTrial(v, s, "KILLED", 100, stopped_early=True)
    for v in VARIANTS for s in SEEDS
]


@dataclass(frozen=True)
class AblationStore:
    uri: str
    parent_run_id: str
    root: Path


def _cell(variant: str) -> str:
    p, length, _ = VARIANTS[variant]
    return f"p{p}-l{length}"


def write_ablation_sweep(root: Path, name: str = "ablation") -> AblationStore:
    """Write the sweep into ``root/mlflow.db`` (artifacts under ``root/artifacts``) and return where it is."""
    uri = f"sqlite:///{root}/mlflow.db"
    client = MlflowClient(uri)
    exp = client.create_experiment(f"musicssl-{name}", artifact_location=(root / "artifacts").as_uri())
    parent = client.create_run(exp, run_name=name, tags={
        "musicssl.kind": "sweep", "musicssl.sweep": name, "musicssl.factors": json.dumps(FACTORS),
        "musicssl.baseline": "vanilla", "musicssl.variants": json.dumps(list(VARIANTS))}).info.run_id
    client.log_param(parent, "probe", json.dumps(PROBE_RESOURCES | {"tasks": list(TASKS)}))
    now = int(time.time() * 1000)
    for trial in TRIALS:
        p, length, _ = VARIANTS[trial.variant]
        tags = {"mlflow.parentRunId": parent, "musicssl.kind": "trial", "musicssl.variant": trial.variant,
                "musicssl.variant_name": trial.variant, "musicssl.cell": _cell(trial.variant),
                "musicssl.seed": str(trial.seed), "musicssl.sweep": name, "musicssl.paradigm": "music2vec",
                "musicssl.baseline": str(trial.variant == "vanilla").lower(), "musicssl.cpus": "2.0",
                "musicssl.gpus": "0.0", "musicssl.device": "cpu"}
        if trial.stopped_early:
            tags["musicssl.stopped_early"] = str(trial.last_step)
        run_id = client.create_run(exp, run_name=f"{trial.variant} seed={trial.seed}", tags=tags).info.run_id
        steps = [s for s in STEPS if s <= trial.last_step]
        metrics = [Metric("pretrain/loss", 2.0 / (s / 50) + p, now, s) for s in range(10, trial.last_step + 1, 10)]
        metrics += [Metric("cost/pretrain_s", trial.pretrain_s, now, 0)]
        for step in steps:
            scores = {t: trial.score(t, step) for t in TASKS}
            metrics += [Metric(f"probe/{t}/score", v, now, step) for t, v in scores.items()]
            metrics += [Metric(f"probe/{t}/acc", v + 0.01, now, step) for t, v in scores.items()]
            metrics += [Metric("probe/average", sum(scores.values()) / len(scores), now, step)]
        params = [Param("model.mask_prob", str(p)), Param("model.mask_length", str(length)),
                  Param("seed", str(trial.seed)), Param("model.paradigm", "music2vec")]
        client.log_batch(run_id, metrics=metrics, params=params)
        for step in steps:
            for task in TASKS:
                probe = client.create_run(exp, run_name=f"probe {task} @ {step}", tags={
                    "mlflow.parentRunId": run_id, "musicssl.kind": "probe", "musicssl.task": task,
                    "musicssl.step": str(step), "musicssl.sweep": name, "musicssl.variant": trial.variant,
                    "musicssl.seed": str(trial.seed), "musicssl.device": "cpu (test)",
                    "musicssl.layer_weights": json.dumps(trial.layer_weights(task, step))}).info.run_id
                client.log_batch(probe, metrics=[Metric("wall_s", 36.0, now, step),
                                                 Metric(f"test/{'acc'}", trial.score(task, step), now, step)],
                                 tags=[RunTag("musicssl.attempts", "1")])
                client.set_terminated(probe, "FINISHED")
        client.set_terminated(run_id, trial.status)
    client.set_terminated(parent, "FINISHED")
    return AblationStore(uri, parent, root)
