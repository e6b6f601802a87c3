"""Run a sweep: Ray up -> data ready -> MLflow parent run -> probe queue -> Ray Tune trials -> probe jobs done -> report.
Reads top to bottom.

The driver checks the cluster can hold every request, then prepares everything the trials share before the
first trial starts: the synthetic corpus, the MLflow database, experiment and parent run, the probe queue. On a laptop Ray runs in-process; under `ray job submit` (or with
RAY_ADDRESS set) the same code connects to the cluster. Running the same sweep again after an interruption
continues it: the parent run and the Tune experiment are found again and unfinished or errored trials resume
from their latest checkpoints.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from mlflow.tracking import MlflowClient

from musicssl.config import ExperimentConfig
from musicssl.config_io import ConfigError
from musicssl.pretrain.prepare import PreparedData, prepare, prepare_probe_only
from musicssl.sweep.checks import check_cluster
from musicssl.sweep.console import Console
from musicssl.sweep.probes import ProbeQueue, pending_jobs
from musicssl.sweep.recovery import (
    INTERRUPTED_TAG,
    AlreadyRan,
    close_interrupted,
    earlier_parent,
    failed_trials,
    graceful_sigint,
    trials_to_run,
)
from musicssl.sweep.spec import Sweep
from musicssl.sweep.stages import sweep_record, work_dir, write_trial_index
from musicssl.sweep.trial import run_trial
from musicssl.tracking.mlflow import (
    ensure_experiment,
    git_tags,
    log_params,
    log_tags,
    resolve_tracking_uri,
    start_run,
)


@dataclass
class SweepResult:
    """Where a finished sweep left its results."""

    name: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    num_trials: int
    errors: list[str] = field(default_factory=list)
    probe_failures: list[str] = field(default_factory=list)
    report: Path | None = None
    trials_dir: Path | None = None
    stopped_early: list[str] = field(default_factory=list)
    interrupted: list[str] = field(default_factory=list)
    """Trials cut short by Ctrl-C (the sweep is resumable: run the same command again)."""
    already_ran: AlreadyRan | None = None
    """Set when the sweep had run to its end before and nothing was run (``auto`` mode)."""


def run_sweep(sweep: Sweep, state_dir: Path, *, report_path: Path | None = None, num_cpus: int | None = None,
              echo: Any = print, mode: str = "auto") -> SweepResult:
    """Run every trial of a checked `sweep` and its probe jobs and write the report.

    ``mode`` (`recovery.MODES`): ``auto`` resumes an interrupted run of the sweep and stops at one that ran to
    its end (`SweepResult.already_ran`); ``resume`` insists on resuming; ``fresh`` starts a new parent run;
    ``rerun-failed`` reruns the failed trials and probe jobs of the latest run under its parent run.

    Raises:
        SweepStateError: ``resume`` / ``rerun-failed`` with nothing to resume / rerun.
    """
    import ray
    from ray import tune
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    cfg = sweep.cfg
    state_dir.mkdir(parents=True, exist_ok=True)

    # 0. an earlier run of this sweep: resume it, stop at a finished one, or start afresh (sweep/recovery.py)
    uri = resolve_tracking_uri(cfg.tracking.uri, state_dir)
    record = sweep_record(state_dir, cfg.name)
    # no earlier run: the store is not opened yet (a sqlite file would be made before the cluster is checked)
    client = MlflowClient(uri) if record.exists() else None
    earlier = earlier_parent(client, record, uri, mode, lambda run_id: work_dir(state_dir, cfg.name, run_id))
    if isinstance(earlier, AlreadyRan):
        assert client is not None
        result = SweepResult(cfg.name, uri, client.get_run(earlier.parent_run_id).info.experiment_id,
                             earlier.parent_run_id, len(sweep.trials), already_ran=earlier,
                             trials_dir=work_dir(state_dir, cfg.name, earlier.parent_run_id) / "trials")
        if report_path is not None:
            from musicssl.dashboards.report import build_report

            result.report = build_report(uri, report_path, parent_run_id=earlier.parent_run_id)
        return result

    # 1. Ray (in-process on a laptop, the cluster under `ray job submit`); requests no node can hold fail now
    started_ray = not ray.is_initialized()
    if started_ray:
        if os.environ.get("RAY_ADDRESS"):
            ray.init(log_to_driver=True)
        else:
            ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, configure_logging=False)
    problems = check_cluster(sweep, ray.nodes())
    if problems:
        if started_ray:
            ray.shutdown()
        raise ConfigError(f"{sweep.source} on the Ray cluster", problems)

    # 2. data the trials share (corpus, manifests, MusicHuBERT labels), prepared once by the driver
    prepared: dict[str, PreparedData] = {}
    trial_data: dict[str, PreparedData] = {}
    for trial in sweep.trials:
        exp = trial.experiment
        key = json.dumps([exp.data.model_dump(mode="json"), exp.model.paradigm, trial.checkpoint is None,
                          exp.model.hubert.model_dump(mode="json") if exp.model.paradigm == "musichubert" else None])
        if key not in prepared:
            prepared[key] = prepare(exp, state_dir, echo=echo) if trial.checkpoint is None else prepare_probe_only(
                exp, state_dir)
        trial_data[trial.key] = prepared[key]

    # 3. MLflow: store, experiment and parent run exist before any trial starts
    client = client or MlflowClient(uri)
    artifacts = state_dir / "mlartifacts" if uri.startswith("sqlite:") else None
    experiment_id = ensure_experiment(client, cfg.tracking.experiment, artifacts)
    parent_id = earlier
    resuming = parent_id is not None
    if parent_id is None:
        parent_id = _start_parent(client, experiment_id, sweep, state_dir)
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"parent_run_id": parent_id, "tracking_uri": uri,
                                      "source": sweep.source, "started": time.time()}, indent=1))
    if resuming and INTERRUPTED_TAG in client.get_run(parent_id).data.tags:
        client.delete_tag(parent_id, INTERRUPTED_TAG)  # it runs again
    folder = work_dir(state_dir, cfg.name, parent_id)
    write_trial_index(folder, sweep.trials)
    echo(f"[musicssl] MLflow {uri} experiment {cfg.tracking.experiment!r} parent run {parent_id}"
         + (" (resuming)" if resuming else ""))

    # 4. the probe queue: one actor for the sweep, outside every trial's reservation, on the driver's own node (a
    #    0-CPU actor may otherwise land on any node, and die with it); jobs left pinned by an interrupted run of
    #    this sweep are submitted again
    queue_name = f"musicssl-probes-{parent_id[:12]}"
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    queue = ProbeQueue.options(  # type: ignore[attr-defined]  # a @ray.remote actor class
        name=queue_name, get_if_exists=True, scheduling_strategy=here).remote(
        cfg.probe.max_concurrent, cfg.probe.cpus, cfg.probe.gpus, cfg.probe.max_retries)
    trials_dir = folder / "trials"
    leftover = pending_jobs(trials_dir, include_failed=mode == "rerun-failed")
    for job in leftover:
        queue.submit.remote(job)
    if leftover:
        echo(f"[musicssl] {len(leftover)} probe jobs of the interrupted run submitted again")

    # 5. Ray Tune runs the trials; each hands its checkpoints to the probe queue
    res = cfg.resources
    context = {"tracking_uri": uri, "experiment_id": experiment_id, "parent_run_id": parent_id,
               "sweep": cfg.name, "trials_dir": str(trials_dir), "cache_dir": str(state_dir / "features"),
               "cpus_per_trial": res.cpus_per_trial, "gpus_per_trial": res.gpus_per_trial,
               "workers_per_trial": res.workers_per_trial, "max_failures": cfg.max_failures,
               "probe_queue": queue_name, "probe_cpus": cfg.probe.cpus, "scheduler_metric": cfg.scheduler.metric,
               "git_tags": git_tags()}
    trials: dict[str, dict[str, Any]] = {}
    for t in sweep.trials:
        data = trial_data[t.key]
        trials[t.key] = {"variant": t.variant, "variant_name": t.variant_name, "baseline": t.baseline,
                         "cell": t.cell, "seed": t.seed, "key": t.key, "checkpoint": t.checkpoint,
                         "probe_steps": list(t.probe_steps), "experiment": t.experiment.model_dump(mode="json"),
                         "corpus_dir": str(data.corpus_dir), "manifest": str(data.manifest),
                         "labels": str(data.labels) if data.labels else None}
    context["trials"] = trials
    # a multi-worker trial only drives its Ray Train run; the workers reserve their own resources
    trial_resources = ({"cpu": 0.01} if res.workers_per_trial > 1 or cfg.checkpoints else
                       {"cpu": res.cpus_per_trial, "gpu": res.gpus_per_trial})
    trainable = tune.with_resources(_trainable, trial_resources)
    storage = (folder / "ray").resolve()
    console = Console(trials, queue_name, echo)
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"  # probe scores arrive later than the first reports
    # a resumed sweep runs the trials that have not ended, each from its own latest checkpoint (sweep/recovery.py)
    todo = trials_to_run(client, experiment_id, parent_id, list(trials), rerun_failed=mode == "rerun-failed")
    if resuming:
        echo(f"[musicssl] resuming: {len(todo)} of {len(trials)} trials still to run (the others ended)")
    attempt = len(list(storage.glob("tune*")))  # each run of the sweep gets a fresh Tune experiment folder
    tuner = None if not todo else tune.Tuner(
        trainable,
        param_space={"trial": tune.grid_search(todo), "context": context},
        tune_config=tune.TuneConfig(max_concurrent_trials=cfg.resources.max_concurrent_trials,
                                    scheduler=build_scheduler(sweep),
                                    trial_dirname_creator=lambda tr: tr.config["trial"],
                                    trial_name_creator=lambda tr: tr.config["trial"]),
        run_config=tune.RunConfig(name=f"tune-{attempt}" if attempt else "tune", storage_path=str(storage),
                                  verbose=0, callbacks=[console],
                                  failure_config=tune.FailureConfig(max_failures=cfg.max_failures)),
    )
    cluster = ray.cluster_resources()
    echo(f"[musicssl] {len(sweep.trials)} trials ({len({t.cell for t in sweep.trials})} variants x "
         f"{len(cfg.seeds)} seeds) on Ray {cluster.get('CPU', 0):g} CPU / {cluster.get('GPU', 0):g} GPU; probe jobs "
         f"of {cfg.probe.cpus:g} CPU / {cfg.probe.gpus:g} GPU, at most {cfg.probe.max_concurrent} at once")
    grid: Any = None
    with graceful_sigint() as sigint:
        try:
            grid = tuner.fit() if tuner is not None else []
        except KeyboardInterrupt:  # a second Ctrl-C: Tune stopped without its last state save
            grid = None
    if sigint["count"] or grid is None:  # Ctrl-C: leave a resumable sweep
        cut = close_interrupted(client, experiment_id, parent_id, {k: trials[k] for k in todo})
        return SweepResult(cfg.name, uri, experiment_id, parent_id, len(sweep.trials), trials_dir=trials_dir,
                           interrupted=cut or ["(no trial had started)"])

    # 6. the sweep ends when every probe job has ended too
    echo(f"[musicssl] pretraining done; waiting for probe jobs ({console.probe_summary()})")
    drained = _drain(queue, console)
    console.poll()
    stopped = _close_stopped_trials(client, experiment_id, parent_id, grid, trials, trials_dir, sweep)

    # 7. close the parent run and write the report
    errors = failed_trials(client, experiment_id, parent_id)  # this run's and earlier runs' (not rerun)
    probe_failures = [f"{f['job']}: {f['error']}" for f in drained["failed"]]
    result = SweepResult(cfg.name, uri, experiment_id, parent_id, len(sweep.trials), errors, probe_failures,
                         trials_dir=trials_dir, stopped_early=stopped)
    if report_path is not None:
        from musicssl.dashboards.report import build_report

        result.report = build_report(uri, report_path, parent_run_id=parent_id)
        client.log_artifact(parent_id, str(result.report))
    log_tags(client, parent_id, {"musicssl.failed_trials": len(errors), "musicssl.failed_probe_jobs":
                                 len(probe_failures), "musicssl.stopped_early": len(stopped)})
    client.set_terminated(parent_id, "FAILED" if errors else "FINISHED")
    ray.kill(queue)
    return result


def _start_parent(client: MlflowClient, experiment_id: str, sweep: Sweep, state_dir: Path) -> str:
    """The sweep's parent run: tags, params, and the resolved sweep file as an artifact."""
    cfg = sweep.cfg
    parent_id = start_run(client, experiment_id, cfg.name, {
        "musicssl.kind": "sweep", "musicssl.sweep": cfg.name, "musicssl.factors": json.dumps(sweep.factors),
        "musicssl.source": sweep.source, "mlflow.note.content": cfg.description, "musicssl.smoke": str(sweep.smoke),
        "musicssl.baseline": cfg.baseline or "", "musicssl.variants": json.dumps(list(cfg.variants)),
        **git_tags()})
    log_params(client, parent_id, {"grid": cfg.grid, "seeds": cfg.seeds, "num_trials": len(sweep.trials),
                                   "variants": cfg.variants, "baseline": cfg.baseline,
                                   "probe": cfg.probe.model_dump(mode="json"),
                                   "scheduler": cfg.scheduler.model_dump(mode="json")})
    resolved = state_dir / "sweeps" / cfg.name / "resolved" / f"{cfg.name}.resolved.yaml"
    resolved.parent.mkdir(parents=True, exist_ok=True)
    resolved.write_text(f"# {sweep.source}{' --smoke' if sweep.smoke else ''}, as run (overrides applied)\n"
                        + yaml.safe_dump(sweep.raw, sort_keys=False))
    client.log_artifact(parent_id, str(resolved))
    return parent_id


def build_scheduler(sweep: Sweep) -> Any:
    """ASHA on the newest finished probe score (`probe_metric`), in pretraining steps; None = run every trial out."""
    cfg = sweep.cfg.scheduler
    if cfg.type == "none":
        return None
    from ray.tune.schedulers import ASHAScheduler

    longest = max(t.experiment.pretrain.max_steps for t in sweep.trials)
    return ASHAScheduler(time_attr="step", metric="probe_metric", mode="max", max_t=longest,
                         grace_period=cfg.grace_steps, reduction_factor=cfg.reduction_factor,
                         stop_last_trials=False)  # a trial that reaches max_steps ends on its own (FINISHED)


def _drain(queue: Any, console: Console) -> dict[str, Any]:
    """Wait for the probe queue to empty, printing probe results as they come."""
    import ray

    ref = queue.drain.remote()
    while True:
        ready, _ = ray.wait([ref], timeout=1.0)
        console.poll()
        if ready:
            return dict(ray.get(ref))


def _close_stopped_trials(client: MlflowClient, experiment_id: str, parent_id: str, grid: Any,
                          trials: dict[str, dict[str, Any]], trials_dir: Path, sweep: Sweep) -> list[str]:
    """Trials the scheduler stopped end as KILLED runs tagged `musicssl.stopped_early=<step>`; every trial's
    checkpoints are pruned to keep-last-N plus best now that no probe job holds them."""
    from musicssl.pretrain.checkpoint import prune_checkpoints
    from musicssl.tracking.mlflow import find_child_run

    stopped = []
    for r in grid:
        info = trials[r.config["trial"]]
        run_id = find_child_run(client, experiment_id, parent_id, info["key"])
        run = client.get_run(run_id) if run_id is not None else None
        if r.error is None and run is not None and run_id is not None and (run.info.status == "RUNNING" or (
                run.info.status == "KILLED" and not {"musicssl.stopped_early", INTERRUPTED_TAG} & set(run.data.tags))):
            step = (r.metrics or {}).get("step", 0)
            log_tags(client, run_id, {"musicssl.stopped_early": step})
            client.set_terminated(run_id, "KILLED")
            stopped.append(f"{info['variant']} seed {info['seed']} at step {step}")
        keep = ExperimentConfig.model_validate(info["experiment"]).pretrain.keep_last
        if (trials_dir / info["key"] / "checkpoints").exists():
            prune_checkpoints(trials_dir / info["key"], keep)
    return stopped


def _trainable(config: dict[str, Any]) -> None:
    context = dict(config["context"])
    trial = dict(context.pop("trials")[config["trial"]])
    context |= {"corpus_dir": trial.pop("corpus_dir"), "manifest": trial.pop("manifest"), "labels": trial.pop("labels")}
    run_trial({"trial": trial, "context": context})
