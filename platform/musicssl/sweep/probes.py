"""Probe jobs per checkpoint: Ray tasks with their own resources, beside the pretraining, never blocking it.

The story of one checkpoint on the probe schedule:
1. the trial pins the checkpoint once per task (`checkpoints/pins/`, the job's spec as the pin's payload), so
   keep-last-N cannot delete it first, and hands the jobs to the sweep's `ProbeQueue` without waiting;
2. the queue (one Ray actor per sweep, created by the driver, outside every trial's placement group) runs at
   most `probe.max_concurrent` jobs as Ray tasks of `probe.cpus` / `probe.gpus`; Ray retries a failed job
   `probe.max_retries` times (an exception, or its node lost);
3. the job probes one task, logs a child run of the trial's MLflow run (kind=probe: the validation curve per
   epoch, the learned layer weights, wall time, device, attempts) and the scores on the trial's run at the
   checkpoint's step, writes its result file beside the trial's checkpoints, and unpins the checkpoint; the job
   that completes a checkpoint's set of tasks logs `probe/average` at that step.
An interrupted sweep submits the jobs of every pin left on disk again. Features are extracted once per
(checkpoint, task) and shared under a file lock (probe/features.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import traceback
from collections import deque
from pathlib import Path
from typing import Any

import ray

RESULTS = "probes"


def job_spec(ctx: dict[str, Any], trial: dict[str, Any], run_id: str, checkpoint: Path, step: int, task: str,
             run_dir: Path) -> dict[str, Any]:
    """Everything a probe job needs, as plain JSON (it is also the payload of the checkpoint's pin)."""
    return {"id": f"{trial['key']}/{step:09d}/{task}", "trial_key": trial["key"], "variant": trial["variant"],
            "seed": trial["seed"], "step": step, "task": task, "tasks": trial["experiment"]["probe"]["tasks"],
            "checkpoint": str(checkpoint), "run_dir": str(run_dir), "run_id": run_id,
            "tracking_uri": ctx["tracking_uri"], "experiment_id": ctx["experiment_id"], "sweep": ctx["sweep"],
            "probe": trial["experiment"]["probe"], "synthetic_root": ctx["corpus_dir"], "cache_dir": ctx["cache_dir"],
            "threads": max(1, int(ctx["probe_cpus"])), "pinned": trial.get("checkpoint") is None}


def submit_probes(ctx: dict[str, Any], trial: dict[str, Any], run_id: str, checkpoint: Path, step: int,
                  run_dir: Path) -> None:
    """One job per probe task of the trial for `checkpoint`: pin it for each job and hand the jobs to the queue
    (returns at once; a job whose result exists is skipped, a job id the queue has seen is ignored)."""
    from musicssl.checkpoints import pin_checkpoint

    queue = ray.get_actor(ctx["probe_queue"])
    for task in trial["experiment"]["probe"]["tasks"]:
        job = job_spec(ctx, trial, run_id, checkpoint, step, task, run_dir)
        if result_path(job).exists():
            continue
        job |= {"submitted_at": time.time()}
        if job["pinned"]:
            pin_checkpoint(checkpoint, f"probe-{task}", job)
        queue.submit.remote(job)


def resubmit_on_resume(ctx: dict[str, Any], trial: dict[str, Any], run_id: str, run_dir: Path,
                       probe_steps: set[int]) -> int:
    """A retried trial (its node lost, say) hands over again the probe jobs its earlier attempt may have lost: the
    pinned ones without a result, and those of its latest checkpoint if that step is on the probe schedule (it
    died between writing the checkpoint and submitting them). The queue ignores a job id it has seen.

    Returns:
        How many jobs were handed over.
    """
    from musicssl.checkpoints import latest_checkpoint

    latest = latest_checkpoint(run_dir)
    if latest is None:
        return 0
    jobs = pending_jobs(run_dir.parent, trial=run_dir.name)
    queue = ray.get_actor(ctx["probe_queue"])
    for job in jobs:
        queue.submit.remote(job)
    step = json.loads((latest / "state.json").read_text())["step"]
    if step in probe_steps:
        submit_probes(ctx, trial, run_id, latest, step, run_dir)
    return len(jobs)


def result_path(job: dict[str, Any]) -> Path:
    """`<trial>/probes/step_<step>/<task>.json`: a finished job's result."""
    return Path(job["run_dir"]) / RESULTS / f"step_{job['step']:09d}" / f"{job['task']}.json"


def latest_result(run_dir: Path, metric: str) -> tuple[int, float] | None:
    """(step, value) of the newest checkpoint whose `metric` (`average` or a task) has finished probing."""
    name = "average.json" if metric == "average" else f"{metric}.json"
    found = sorted((run_dir / RESULTS).glob(f"step_*/{name}"))
    if not found:
        return None
    data = json.loads(found[-1].read_text())
    return int(data["step"]), float(data["score"])


def pending_jobs(trials_dir: Path, include_failed: bool = False, trial: str = "*") -> list[dict[str, Any]]:
    """Job specs of every pin left on disk by an interrupted sweep (jobs that never finished), of every trial or of
    the one keyed ``trial``; jobs that failed for good only with ``include_failed`` (their failure records are then
    removed: they run again)."""
    from musicssl.checkpoints import pins

    jobs = []
    for root in sorted(trials_dir.glob(f"{trial}/checkpoints")):
        for payloads in pins(root).values():
            for job in payloads:
                if "id" not in job or result_path(job).exists():
                    continue
                if failure_path(job).exists():
                    if not include_failed:
                        continue
                    failure_path(job).unlink()
                jobs.append(job)
    return jobs


@ray.remote(num_cpus=0)
class ProbeQueue:
    """The sweep's probe jobs: at most `max_concurrent` running, the rest waiting; events for the console."""

    def __init__(self, max_concurrent: int, cpus: float, gpus: float, max_retries: int) -> None:
        self.max_concurrent, self.cpus, self.gpus, self.max_retries = max_concurrent, cpus, gpus, max_retries
        self.waiting: deque[dict[str, Any]] = deque()
        self.running: dict[str, float] = {}
        self.known: set[str] = set()
        self.done: list[dict[str, Any]] = []
        self.failed: list[dict[str, Any]] = []
        self.log: list[str] = []

    async def submit(self, job: dict[str, Any]) -> bool:
        """Queue a job (a job id seen before is ignored); False if it was a duplicate."""
        if job["id"] in self.known:
            return False
        self.known.add(job["id"])
        self.waiting.append(job)
        self._pump()
        return True

    def _pump(self) -> None:
        while self.waiting and len(self.running) < self.max_concurrent:
            job = self.waiting.popleft()
            ref = run_probe_job.options(num_cpus=self.cpus, num_gpus=self.gpus, max_retries=self.max_retries,
                                        retry_exceptions=True).remote(job)
            self.running[job["id"]] = time.time()
            asyncio.get_running_loop().create_task(self._watch(ref, job))

    async def _watch(self, ref: Any, job: dict[str, Any]) -> None:
        where = f"{job['variant']} seed {job['seed']} step {job['step']} {job['task']}"
        try:
            result = await ref
            self.done.append(result)
            self.log.append(f"probe  {where}: score {100 * result['score']:.1f} "
                            f"({result['wall_s']:.0f} s, attempt {result['attempts']})")
        except Exception as exc:  # failed for good after its retries: recorded, never fatal to the trial
            error = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
            self.failed.append({"id": job["id"], "job": where, "error": error})
            self.log.append(f"probe  {where}: FAILED after {self.max_retries + 1} attempts: {error}")
            _give_up(job, error)
        finally:
            self.running.pop(job["id"], None)
            self._pump()

    async def events(self, since: int) -> list[str]:
        """Console lines logged since index `since`."""
        return self.log[since:]

    async def status(self) -> dict[str, int]:
        return {"waiting": len(self.waiting), "running": len(self.running), "done": len(self.done),
                "failed": len(self.failed)}

    async def drain(self) -> dict[str, Any]:
        """Wait until no job is waiting or running; return the finished and failed jobs."""
        while self.waiting or self.running:
            await asyncio.sleep(0.2)
        return {"done": self.done, "failed": self.failed}


def _give_up(job: dict[str, Any], error: str) -> None:
    """A job that failed for good: its failure recorded beside the results. Its checkpoint stays pinned so that
    `musicssl sweep FILE --rerun-failed` can run the job again (a fresh run of the sweep does not need it)."""
    path = failure_path(job)
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_json(path, {"id": job["id"], "error": error})


def failure_path(job: dict[str, Any]) -> Path:
    """`<trial>/probes/step_<step>/<task>.failed.json`: a job that failed for good."""
    return result_path(job).with_suffix(".failed.json")


def failure_records(trials_dir: Path, trial: str = "*") -> list[Path]:
    """The failure records (`failure_path`) of the probe jobs that failed for good, of every trial or of one."""
    return sorted(trials_dir.glob(f"{trial}/{RESULTS}/step_*/*.failed.json"))


@ray.remote(max_retries=0)
def run_probe_job(job: dict[str, Any]) -> dict[str, Any]:
    """One probe job: probe `job['task']` on the frozen encoder of `job['checkpoint']`, log, write the result."""
    import torch
    from mlflow.tracking import MlflowClient

    from musicssl.checkpoints import unpin_checkpoint
    from musicssl.config import ProbeConfig
    from musicssl.probe.run import load_encoder, probe_task
    from musicssl.tracking.mlflow import MlflowSink, log_tags

    torch.set_num_threads(job["threads"])
    client = MlflowClient(job["tracking_uri"])
    run_id, attempts = _probe_run(client, job)
    sink = MlflowSink(client, run_id, flush_every=50)
    t0 = time.perf_counter()
    device = torch.device("cuda" if torch.cuda.is_available() and ray.get_gpu_ids() else "cpu")
    try:
        _maybe_fail(job, attempts)
        encoder, digest, normalize = load_encoder(Path(job["checkpoint"]))
        result = probe_task(encoder, digest, normalize, job["task"], ProbeConfig.model_validate(job["probe"]),
                            synthetic_root=Path(job["synthetic_root"]), cache_dir=Path(job["cache_dir"]),
                            device=device, on_epoch=lambda epoch, value: sink.log({"valid/monitor": value}, epoch))
    except BaseException as exc:
        sink.flush()
        log_tags(client, run_id, {f"musicssl.error.{attempts}": f"{type(exc).__name__}: {exc}"[:4000],
                                  "musicssl.traceback": traceback.format_exc()[-7000:]})
        client.set_terminated(run_id, "FAILED")
        raise
    wall = time.perf_counter() - t0
    sink.log({f"test/{k}": v for k, v in result.test.items()} | {"score": result.score, "epochs": result.epochs,
                                                                  "wall_s": wall, "best_valid": result.best_valid},
             step=job["step"])
    for state, weight in result.layer_weights.items():  # the learned layer weights: a curve over states
        sink.log({"layer_weight": weight}, step=state)
    sink.flush()
    log_tags(client, run_id, {"musicssl.device": f"{device.type} ({socket.gethostname()})", "musicssl.ensemble":
                              result.ensemble, "musicssl.layer_weights": json.dumps(result.layer_weights)})
    client.set_terminated(run_id, "FINISHED")
    task, step = job["task"], job["step"]
    trial = MlflowSink(client, job["run_id"])
    trial.log({f"probe/{task}/{k}": v for k, v in result.test.items()}
              | {f"probe/{task}/score": result.score, f"probe_epochs/{task}": float(result.epochs)}, step=step)
    record = {"id": job["id"], "task": task, "step": step, "score": result.score, "test": result.test,
              "epochs": result.epochs, "layer_weights": result.layer_weights, "wall_s": wall,
              "device": device.type, "attempts": attempts, "probe_run_id": run_id}
    _write_json(result_path(job), record)
    _maybe_average(job, trial)
    if job["pinned"]:
        unpin_checkpoint(Path(job["checkpoint"]), f"probe-{task}")
    return record


def _probe_run(client: Any, job: dict[str, Any]) -> tuple[str, int]:
    """The job's MLflow child run (found again on a retry) and this attempt's number."""
    from musicssl.tracking.mlflow import log_tags, start_run

    runs = client.search_runs([job["experiment_id"]], filter_string=(
        f"tags.`mlflow.parentRunId` = '{job['run_id']}' and tags.`musicssl.probe_job` = '{job['id']}'"), max_results=1)
    if runs:
        run_id = runs[0].info.run_id
        attempts = int(runs[0].data.tags.get("musicssl.attempts", "0")) + 1
        client.update_run(run_id, status="RUNNING")
    else:
        attempts = 1
        run_id = start_run(client, job["experiment_id"], f"probe {job['task']} @ {job['step']}", {
            "musicssl.kind": "probe", "musicssl.task": job["task"], "musicssl.step": str(job["step"]),
            "musicssl.checkpoint": job["checkpoint"], "musicssl.probe_job": job["id"], "musicssl.sweep": job["sweep"],
            "musicssl.variant": job["variant"], "musicssl.seed": str(job["seed"])}, parent_run_id=job["run_id"])
    log_tags(client, run_id, {"musicssl.attempts": attempts, "musicssl.submitted_at": job.get("submitted_at", "")})
    return run_id, attempts


def _maybe_average(job: dict[str, Any], trial_sink: Any) -> None:
    """If every task of this checkpoint has its result, log `probe/average` once (an exclusive file create)."""
    from musicssl.probe.metrics import average_score

    folder = result_path(job).parent
    results = {t: folder / f"{t}.json" for t in job["tasks"]}
    if not all(p.exists() for p in results.values()):
        return
    scores = {t: json.loads(p.read_text())["score"] for t, p in results.items()}
    average = average_score(scores)
    try:
        fd = os.open(folder / "average.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        json.dump({"step": job["step"], "score": average, "tasks": scores}, f)
    trial_sink.log({"probe/average": average}, step=job["step"])


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from musicssl.checkpoints import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data))


FAULTS_ENV = "MUSICSSL_FAIL_PROBE"
"""Fault injection for tests: `<task>@<step>:<n>` makes the first n attempts of that job raise."""


def _maybe_fail(job: dict[str, Any], attempt: int) -> None:
    spec = os.environ.get(FAULTS_ENV, "")
    for item in filter(None, spec.split(",")):
        where, _, count = item.partition(":")
        task, _, step = where.partition("@")
        if task == job["task"] and (not step or int(step) == job["step"]) and attempt <= int(count or 1):
            raise RuntimeError(f"injected probe failure ({FAULTS_ENV}={spec}), attempt {attempt}")
