"""A quiet console for a sweep: one line per trial start, checkpoint, probe result and end, and a progress summary.

Ray Tune's own status tables (every trial's whole configuration) are turned off (`verbose=0`); this callback,
running in the driver, prints instead, and polls the probe queue for the results of probe jobs.
"""

from __future__ import annotations

import time
import types
from collections.abc import Callable
from typing import Any

import ray
from ray import tune


class Console(tune.Callback):
    """Driver-side progress lines; `echo` prints them (tests pass a collector)."""

    def __init__(self, trials: dict[str, dict[str, Any]], queue_name: str, echo: Callable[[str], object] | None = None,
                 summary_every_s: float = 30.0) -> None:
        # Tune pickles its callbacks with the experiment (and unpickles them on resume): keep names, not handles
        self.trials, self.queue_name, self.summary_every_s = trials, queue_name, summary_every_s
        self._echo = None if echo is None or isinstance(echo, types.BuiltinFunctionType) else echo
        self.seen_events, self.last_summary, self.last_poll = 0, time.monotonic(), 0.0
        self.state: dict[str, str] = {}

    def echo(self, line: str) -> None:
        (self._echo or print)(line)

    @property
    def queue(self) -> Any:
        return ray.get_actor(self.queue_name)

    def _name(self, trial: Any) -> str:
        info = self.trials.get(trial.config.get("trial"), {})
        return f"{info.get('variant', trial.trial_id)} seed {info.get('seed', '?')}"

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = "running"
        self.echo(f"[musicssl] start  {self._name(trial)}")

    def on_trial_result(self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any],
                        **info: Any) -> None:
        if "loss" not in result:  # a probe result reported between checkpoints
            return
        probe = (f", newest probe {100 * result['probe_metric']:.1f} (step {result['probe_metric_step']})"
                 if "probe_metric" in result else "")
        self.echo(f"[musicssl] ckpt   {self._name(trial)} step {result['step']}: loss {result['loss']:.4f}{probe}")

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = "done"
        self.echo(f"[musicssl] end    {self._name(trial)}")

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = "error"
        self.echo(f"[musicssl] ERROR  {self._name(trial)} (traceback on its MLflow run, tag musicssl.traceback)")

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self.state[trial.trial_id] = "running"
        self.echo(f"[musicssl] RETRY  {self._name(trial)} failed (attempt {trial.run_metadata.num_failures}); it "
                  "starts again from its latest checkpoint, in the same MLflow run")

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last_poll >= 1.0:
            self.last_poll = now
            self.poll()
        if now - self.last_summary >= self.summary_every_s:
            self.last_summary = now
            counts = {s: sum(1 for t in trials if t.status == s) for s in ("RUNNING", "PENDING", "TERMINATED", "ERROR")}
            self.echo(f"[musicssl] trials: {counts['RUNNING']} running, {counts['PENDING']} waiting, "
                      f"{counts['TERMINATED']} done, {counts['ERROR']} failed; {self.probe_summary()}")

    def poll(self) -> None:
        """Print probe results that arrived since the last poll."""
        for line in ray.get(self.queue.events.remote(self.seen_events)):
            self.seen_events += 1
            self.echo(f"[musicssl] {line}")

    def probe_summary(self) -> str:
        s = ray.get(self.queue.status.remote())
        return (f"probe jobs: {s['running']} running, {s['waiting']} waiting, {s['done']} done, "
                f"{s['failed']} failed")
