"""One Ray Tune trial: pretrain (resuming if this trial ran before), hand each checkpoint on the probe schedule to
the sweep's probe queue without waiting, report the newest finished probe score to Tune (for ASHA), log to MLflow.

The trial logs to its own MLflow child run, found again by its trial key when Tune retries it, so a
retried or resumed trial continues its run rather than starting a second one.
"""

from __future__ import annotations

import json
import logging
import time
import traceback
from pathlib import Path
from typing import Any

import torch
from mlflow.tracking import MlflowClient
from ray import get_runtime_context, tune

from musicssl.checkpoints import latest_checkpoint
from musicssl.config import ExperimentConfig
from musicssl.config_io import flatten
from musicssl.data.manifest import read_manifest
from musicssl.pretrain.loop import pretrain
from musicssl.sweep.faults import maybe_fail
from musicssl.sweep.probes import latest_result, resubmit_on_resume, submit_probes
from musicssl.tracking.mlflow import MlflowSink, find_child_run, log_params, log_tags, start_run


def run_trial(config: dict[str, Any]) -> None:
    """Ray Tune function trainable. `config` = {"trial": {...}, "context": {...}} built by `sweep.tune`."""
    trial, ctx = config["trial"], config["context"]
    logging.getLogger("ray.train").setLevel(logging.WARNING)  # one console line per checkpoint is the driver's
    exp = ExperimentConfig.model_validate(trial["experiment"])
    torch.set_num_threads(max(1, int(ctx["cpus_per_trial"])))
    client = MlflowClient(ctx["tracking_uri"])
    run_id = find_child_run(client, ctx["experiment_id"], ctx["parent_run_id"], trial["key"])
    if run_id is None:
        run_id = start_run(client, ctx["experiment_id"], f"{trial['variant']} seed={trial['seed']}",
                           {"musicssl.kind": "trial", "musicssl.variant": trial["variant"],
                            "musicssl.variant_name": trial["variant_name"], "musicssl.cell": trial["cell"],
                            "musicssl.seed": str(trial["seed"]), "musicssl.trial_key": trial["key"],
                            "musicssl.sweep": ctx["sweep"], "musicssl.paradigm": exp.model.paradigm,
                            "musicssl.baseline": str(trial["baseline"]).lower(), **ctx.get("git_tags", {})},
                           parent_run_id=ctx["parent_run_id"])
    else:  # a retried or resumed trial continues its run
        client.update_run(run_id, status="RUNNING")
        tags = client.get_run(run_id).data.tags
        for stale in ("musicssl.stopped_early", "musicssl.interrupted"):  # it runs again: neither holds any more
            if stale in tags:
                client.delete_tag(run_id, stale)
    log_params(client, run_id, flatten(exp.model_dump(mode="json")))
    cost = _Cost(client, run_id, ctx)
    run_dir = Path(ctx["trials_dir"]) / trial["key"]
    sink = _ReportingSink(_resumed_sink(client, run_id), run_dir, ctx["scheduler_metric"])
    probe_steps = set(trial["probe_steps"])

    def probe(path: Path, step: int) -> None:
        submit_probes(ctx, trial, run_id, path, step, run_dir)

    try:
        if trial.get("checkpoint"):  # a probe-only sweep: the imported checkpoint is probed, nothing is trained
            log_tags(client, run_id, {"musicssl.checkpoint": trial["checkpoint"]})
            probe(Path(trial["checkpoint"]), 0)
            client.set_terminated(run_id, "FINISHED")
            tune.report({"step": 0})
            return

        def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
            sink.flush()
            # MUSICSSL_INJECT_FAULT (recovery tests; unset: nothing) fails here, the worst moment: the checkpoint
            # is written, its probe jobs not yet handed over (the retry hands them over: resubmit_on_resume)
            maybe_fail(trial["key"], step, run_dir)
            if step in probe_steps:
                probe(path, step)
            # metrics only: the checkpoint stays in the trial's folder on the state storage every node sees (one
            # copy; a retried or resumed trial continues from it), so Ray Tune keeps no copy of its own
            tune.report({"step": step, **metrics, **sink.probe_result()})

        resubmit_on_resume(ctx, trial, run_id, run_dir, probe_steps)  # jobs an earlier attempt may have lost
        manifest = read_manifest(ctx["manifest"])
        labels = Path(ctx["labels"]) if ctx.get("labels") else None
        if labels is not None:
            log_tags(client, run_id, {"musicssl.labels": str(labels)})
        if ctx.get("workers_per_trial", 1) > 1:
            jobs = {"ctx": ctx, "trial": trial, "run_id": run_id}  # rank 0 hands checkpoints to the probe queue
            final = _pretrain_ray_train(exp, run_dir, ctx, run_id, labels, trial["key"], jobs)
        else:
            final = pretrain(exp, run_dir, manifest, sink=sink, on_checkpoint=on_checkpoint, labels=labels,
                             extra_checkpoints=probe_steps)
        sink.flush()
        cost.log()
        step = json.loads((final / "state.json").read_text())["step"]
        probe(final, step)  # the final checkpoint is always probed (a repeated job id is ignored by the queue)
        log_tags(client, run_id, {"musicssl.checkpoint": str(final)})
        client.set_terminated(run_id, "FINISHED")
    except BaseException as exc:
        sink.flush()
        cost.log()
        if isinstance(exc, _STOPPED):  # ASHA or a Ctrl-C of the sweep stopped the trial: not an error. Which one
            client.set_terminated(run_id, "KILLED")  # is the driver's to say (the stopped_early / interrupted tag)
            raise
        failures = int(client.get_run(run_id).data.tags.get("musicssl.failures", 0)) + 1  # Tune may retry it
        log_tags(client, run_id, {"musicssl.error": f"{type(exc).__name__}: {exc}"[:4000],
                                  "musicssl.traceback": traceback.format_exc()[-7000:], "musicssl.failures": failures})
        client.set_terminated(run_id, "FAILED")
        raise


_STOPPED = (SystemExit, KeyboardInterrupt)


def _resumed_sink(client: MlflowClient, run_id: str) -> MlflowSink:
    """The trial run's sink; a resumed run does not log again the pretraining steps it logged before it stopped
    (it recomputes them from its latest checkpoint), so its metric history has no repeats."""
    logged = client.get_metric_history(run_id, "pretrain/loss")
    return MlflowSink(client, run_id, logged_through={"pretrain/": max(m.step for m in logged)} if logged else {})


class _Cost:
    """What a trial's pretraining costs: `cost/pretrain_s` (wall seconds, summed over the attempts of a resumed or
    retried trial) and the tags `musicssl.cpus` / `musicssl.gpus` (all workers), `musicssl.device` and
    `musicssl.node` (the Ray node id of the attempt, so a retry after a lost node shows where it ran)."""

    def __init__(self, client: MlflowClient, run_id: str, ctx: dict[str, Any]) -> None:
        self.client, self.run_id, self.t0 = client, run_id, time.monotonic()
        self.before = client.get_run(run_id).data.metrics.get("cost/pretrain_s", 0.0)
        workers = int(ctx.get("workers_per_trial", 1))
        gpus = float(ctx.get("gpus_per_trial", 0)) * workers
        device = f"cuda ({torch.cuda.get_device_name()})" if gpus and torch.cuda.is_available() else "cpu"
        log_tags(client, run_id, {"musicssl.cpus": float(ctx.get("cpus_per_trial", 1)) * workers,
                                  "musicssl.gpus": gpus, "musicssl.device": device,
                                  "musicssl.node": get_runtime_context().get_node_id()})

    def log(self) -> None:
        self.client.log_metric(self.run_id, "cost/pretrain_s", self.before + time.monotonic() - self.t0)


class _ReportingSink:
    """The trial's MLflow sink that also reports a newly finished probe result to Tune at the next log step, so
    ASHA ranks trials on probe scores as soon as they arrive, not only at the next checkpoint."""

    def __init__(self, sink: MlflowSink, run_dir: Path, metric: str) -> None:
        self.sink, self.run_dir, self.metric, self.reported, self.last_step = sink, run_dir, metric, -1, 0

    def probe_result(self) -> dict[str, float]:
        """`probe_metric` (the newest finished probe score) and its step, or {} before the first one."""
        latest = latest_result(self.run_dir, self.metric)
        if latest is None:
            return {}
        self.reported = latest[0]
        return {"probe_metric": latest[1], "probe_metric_step": latest[0]}

    def log(self, metrics: dict[str, float], step: int) -> None:
        self.sink.log(metrics, step)
        self.last_step = step
        latest = latest_result(self.run_dir, self.metric)
        if latest is not None and latest[0] > self.reported:
            tune.report({"step": step, **self.probe_result()})

    def flush(self) -> None:
        self.sink.flush()


def _pretrain_ray_train(exp: ExperimentConfig, run_dir: Path, ctx: dict[str, Any], run_id: str,
                        labels: Path | None, key: str, probe_jobs: dict[str, Any]) -> Path:
    """Pretrain with `workers_per_trial` data-parallel Ray Train workers; rank 0 logs and checkpoints."""
    import ray.train
    from ray.train.torch import TorchTrainer
    from ray.tune.integration.ray_train import TuneReportCallback

    workers, cpus, gpus = ctx["workers_per_trial"], ctx["cpus_per_trial"], ctx["gpus_per_trial"]
    trainer = TorchTrainer(
        _train_worker,
        train_loop_config={"experiment": exp.model_dump(mode="json"), "run_dir": str(run_dir), "run_id": run_id,
                           "tracking_uri": ctx["tracking_uri"], "manifest": ctx["manifest"],
                           "labels": str(labels) if labels else None, "threads": max(1, int(cpus)),
                           "probe_jobs": probe_jobs, "metric": ctx["scheduler_metric"]},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=gpus > 0,
                                               resources_per_worker={"CPU": cpus, "GPU": gpus} if gpus else {"CPU": cpus}),
        run_config=ray.train.RunConfig(name=f"train-{key}", storage_path=str(run_dir / "ray_train"),
                                       # the workers' reports reach Tune (Ray types its Tune callbacks apart)
                                       callbacks=[TuneReportCallback()],  # type: ignore[list-item]
                                       failure_config=ray.train.FailureConfig(max_failures=ctx.get("max_failures", 0))),
    )
    trainer.fit()
    final = latest_checkpoint(run_dir)
    if final is None:
        raise RuntimeError(f"Ray Train run of trial {key} finished without a checkpoint in {run_dir}")
    return final


def _train_worker(config: dict[str, Any]) -> None:
    """One Ray Train worker: torch.distributed is set up by TorchTrainer; train this rank's shard."""
    import ray.train.torch

    from musicssl.pretrain.distributed import DistContext

    torch.set_num_threads(config["threads"])
    device = ray.train.torch.get_device()
    dist = DistContext.from_torch(device if device.type == "cuda" else torch.device("cpu"))
    exp = ExperimentConfig.model_validate(config["experiment"])
    sink = _resumed_sink(MlflowClient(config["tracking_uri"]), config["run_id"]) if dist.rank == 0 else None
    labels = Path(config["labels"]) if config["labels"] else None
    run_dir, jobs = Path(config["run_dir"]), config["probe_jobs"]
    steps = set(jobs["trial"]["probe_steps"])

    def on_checkpoint(path: Path, step: int, metrics: dict[str, float]) -> None:
        if step in steps:
            submit_probes(jobs["ctx"], jobs["trial"], jobs["run_id"], path, step, run_dir)

    def report(step: int) -> None:
        """Every rank reports each checkpoint to Ray Train (a collective), which passes rank 0's report on to the
        Tune trial (ASHA sees probe scores): the step, the newest probe score, and where the checkpoint lies on
        the shared storage. No checkpoint is handed over, so no copy is made; a retried trial resumes from it."""
        newest = latest_result(run_dir, config["metric"])
        ray.train.report({"step": step, "checkpoint_dir": str(run_dir / "checkpoints" / f"step_{step:09d}")}
                         | ({"probe_metric": newest[1], "probe_metric_step": newest[0]} if newest else {}))

    pretrain(exp, run_dir, read_manifest(config["manifest"]), sink=sink, labels=labels, dist=dist,
             on_checkpoint=on_checkpoint, extra_checkpoints=steps, after_checkpoint=report)
    if sink is not None:
        sink.flush()
