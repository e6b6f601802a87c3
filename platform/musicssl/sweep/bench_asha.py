"""`musicssl bench asha`: does early stopping on probe results keep the ranking, and what does it save?

The same CPU sweep (tiny Music2Vec, synthetic corpus, N variants x S seeds, probes every few steps) runs twice:
every trial to the end, then with ASHA on the probe Average. Reported: compute used (trial CPU-seconds = trial
wall time x CPUs reserved, plus probe CPU-seconds likewise), the ranking of variants by mean Average over seeds
(ASHA: each trial's newest probe result when it stopped), Kendall's tau between the two rankings, and whether the
top-1 and the top-3 agree. Also the pretraining step rate (frames/s) while probe jobs ran beside it and while none
did, from the full run's MLflow timestamps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

VARIANTS = {
    "vanilla": {}, "prob50": {"model.mask_prob": 0.5}, "prob80": {"model.mask_prob": 0.8},
    "span5": {"model.mask_length": 5}, "span15": {"model.mask_length": 15}, "prob30": {"model.mask_prob": 0.3},
    "lr1e-4": {"pretrain.lr": 1e-4}, "target1": {"model.music2vec.average_top_k_layers": 1},
}

SWEEP = """\
# Run: musicssl bench asha
name: {name}
base:
  model: {{preset: tiny}}
  data: {{max_sample_size: 32000, min_sample_size: 16000, max_tokens: 256000}}
  pretrain: {{max_steps: {steps}, lr: 0.001, checkpoint_every: {every}, log_every: 10, device: cpu}}
  probe: {{window_seconds: 2.0, standardize: true, lr: 0.005, max_epochs: 60, early_stop_patience: 10}}
baseline: vanilla
variants: {variants}
seeds: {seeds}
probe: {{tasks: [synth_pitch, synth_key], every_steps: {every}, max_concurrent: 1}}
scheduler: {scheduler}
resources: {{cpus_per_trial: 1, max_concurrent_trials: 1}}
"""


def bench_asha(state_dir: Path, variants: int = 6, seeds: int = 2, steps: int = 80, every: int = 20,
               num_cpus: int = 2) -> dict[str, Any]:
    """Run the sweep without and with ASHA (in `state_dir`/full and /asha); return both summaries and the comparison.

    Training is deterministic, so a trial of the ASHA run writes the same checkpoints as its twin of the full run
    up to where it stops."""
    import ray

    from musicssl.sweep.checks import load_checked
    from musicssl.sweep.tune import run_sweep

    names = list(VARIANTS)[:variants]
    out: dict[str, Any] = {}
    for mode, scheduler in (("full", "{type: none}"),
                            ("asha", f"{{type: asha, metric: average, grace_steps: {every}, reduction_factor: 2}}")):
        state = state_dir / mode  # its own feature cache: no probe job reuses the other run's features
        path = state / f"asha_bench_{mode}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(SWEEP.format(name=f"asha_bench_{mode}", steps=steps, every=every, seeds=list(range(seeds)),
                                     variants={n: VARIANTS[n] for n in names}, scheduler=scheduler))
        sweep = load_checked(path, state_dir=state)
        try:
            result = run_sweep(sweep, state, num_cpus=num_cpus, echo=lambda _line: None)
        finally:
            ray.shutdown()
        out[mode] = summarize(result.tracking_uri, result.parent_run_id)
    out["compare"] = compare(out["full"]["ranking"], out["asha"]["ranking"])
    out["overlap"] = step_rate_beside_probes(out["full"]["tracking_uri"], out["full"]["parent_run_id"])
    return out


def summarize(uri: str, parent_run_id: str) -> dict[str, Any]:
    """Compute used and the variant ranking of one sweep, from MLflow."""
    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    trials = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{parent_run_id}'",
                                max_results=1000)
    trial_cpu_s, probe_cpu_s, stopped = 0.0, 0.0, 0
    scores: dict[str, list[float]] = {}  # variant -> each trial's best probe average
    for t in trials:
        trial_cpu_s += (t.info.end_time - t.info.start_time) / 1000  # 1 CPU per trial and per probe job here
        stopped += t.info.status == "KILLED"
        history = client.get_metric_history(t.info.run_id, "probe/average")
        if history:
            scores.setdefault(t.data.tags["musicssl.variant"], []).append(max(history, key=lambda h: h.step).value)
        probes = client.search_runs([parent.info.experiment_id], f"tags.`mlflow.parentRunId` = '{t.info.run_id}'",
                                    max_results=1000)
        probe_cpu_s += sum((p.info.end_time - p.info.start_time) / 1000 for p in probes if p.info.end_time)
    ranking = sorted(((float(np.mean(v)), k) for k, v in scores.items()), reverse=True)
    wall = (parent.info.end_time - parent.info.start_time) / 1000
    return {"tracking_uri": uri, "parent_run_id": parent_run_id, "trial_cpu_s": trial_cpu_s,
            "probe_cpu_s": probe_cpu_s, "wall_s": wall, "stopped": stopped, "trials": len(trials),
            "ranking": [(k, s) for s, k in ranking]}


def compare(full: list[tuple[str, float]], asha: list[tuple[str, float]]) -> dict[str, Any]:
    """Kendall's tau between two rankings of the same variants, and whether top-1 / top-3 agree."""
    from scipy.stats import kendalltau

    order_full = [k for k, _ in full]
    order_asha = [k for k, _ in asha]
    common = [k for k in order_full if k in order_asha]
    tau = float(kendalltau([order_full.index(k) for k in common], [order_asha.index(k) for k in common]).statistic)
    return {"kendall_tau": tau, "top1": order_full[:1] == order_asha[:1],
            "top3": set(order_full[:3]) == set(order_asha[:3]), "variants": len(common)}


def step_rate_beside_probes(uri: str, parent_run_id: str) -> dict[str, float]:
    """Mean pretraining frames/s of log points while a probe job of the sweep was running, and while none was."""
    client = MlflowClient(uri)
    exp = client.get_run(parent_run_id).info.experiment_id
    trials = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{parent_run_id}'", max_results=1000)
    spans = []
    for t in trials:
        probes = client.search_runs([exp], f"tags.`mlflow.parentRunId` = '{t.info.run_id}'", max_results=1000)
        spans += [(p.info.start_time, p.info.end_time) for p in probes if p.info.end_time]
    beside: list[float] = []
    alone: list[float] = []
    for t in trials:
        for h in client.get_metric_history(t.info.run_id, "pretrain/frames_per_s"):
            (beside if any(a <= h.timestamp <= b for a, b in spans) else alone).append(h.value)
    return {"frames_per_s_beside_probes": float(np.mean(beside)) if beside else float("nan"),
            "frames_per_s_alone": float(np.mean(alone)) if alone else float("nan"),
            "points_beside": len(beside), "points_alone": len(alone)}


def format_report(r: dict[str, Any]) -> str:
    """The table of the note."""
    lines = ["| run | trials stopped early | trial CPU-s | probe CPU-s | total CPU-s | wall s | ranking (mean Average) |",
             "|---|---|---|---|---|---|---|"]
    for mode in ("full", "asha"):
        s = r[mode]
        rank = ", ".join(f"{k} {100 * v:.1f}" for k, v in s["ranking"])
        lines.append(f"| {mode} | {s['stopped']}/{s['trials']} | {s['trial_cpu_s']:.0f} | {s['probe_cpu_s']:.0f} | "
                     f"{s['trial_cpu_s'] + s['probe_cpu_s']:.0f} | {s['wall_s']:.0f} | {rank} |")
    c, o = r["compare"], r["overlap"]
    saved = 1 - (r["asha"]["trial_cpu_s"] + r["asha"]["probe_cpu_s"]) / max(
        r["full"]["trial_cpu_s"] + r["full"]["probe_cpu_s"], 1e-9)
    lines += ["", f"ASHA used {100 * saved:.0f}% less compute; Kendall tau {c['kendall_tau']:.2f} over "
              f"{c['variants']} variants; top-1 agrees: {c['top1']}; top-3 agrees: {c['top3']}",
              f"pretraining frames/s with a probe job beside it {o['frames_per_s_beside_probes']:.0f} "
              f"({o['points_beside']} log points), with none {o['frames_per_s_alone']:.0f} ({o['points_alone']})"]
    return "\n".join(lines)


