"""The typed sections of a sweep file (`sweep/spec.py` reads, merges, validates and expands it): the sweep itself,
its probe schedule, its early-stopping scheduler, per-trial resources, the MLflow target and the iteration-1
checkpoint a MusicHuBERT iteration 2 clusters.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from musicssl.config import _Cfg

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_+-]*$"


class ResourcesConfig(_Cfg):
    """What one trial reserves on the Ray cluster."""

    workers_per_trial: int = Field(1, ge=1)
    """Data-parallel workers per trial: >1 trains through Ray Train (TorchTrainer, gloo on CPU, NCCL on GPU),
    each worker on its shard of the batches, gradients summed (e.g. 8 to run the paper's 8-GPU setup)."""
    cpus_per_trial: float = Field(1.0, gt=0)
    """CPUs per trial, or per worker when workers_per_trial > 1 (also the torch thread count)."""
    gpus_per_trial: float = Field(0.0, ge=0)
    """GPUs per trial, or per worker when workers_per_trial > 1 (fractions share a GPU logically; nothing
    isolates memory)."""
    max_concurrent_trials: int | None = Field(None, ge=1)
    """Cap on trials running at once; None = as many as resources allow."""


class TrackingConfig(_Cfg):
    """Where runs are recorded."""

    uri: str | None = None
    """MLflow tracking URI; None = $MLFLOW_TRACKING_URI, else sqlite in the state folder."""
    experiment: str = "musicssl"
    """MLflow experiment name."""


class ProbeScheduleConfig(_Cfg):
    """Which checkpoints are probed, on which tasks, and how the probe jobs are scheduled on Ray.

    Every checkpoint on the schedule (and always the final one) becomes one probe job per task: a Ray task with
    its own resources, outside the trial's reservation, so pretraining never waits for a probe.
    """

    tasks: tuple[str, ...] | None = None
    """Probe tasks by registry name; None = base.probe.tasks. Real tasks need `probe.data_roots.<task>`."""
    data_roots: dict[str, str] = {}
    """Dataset root per real task, e.g. `probe.data_roots.gtzan_genre=/data/GTZAN` (merged over base.probe.data_roots)."""
    every_steps: int | None = Field(None, ge=1)
    """Probe every this many pretraining steps (a checkpoint is written at each); None = only `at_steps` + final."""
    at_steps: tuple[int, ...] = ()
    """Probe at these pretraining steps as well (steps past a trial's max_steps are skipped for that trial)."""
    cpus: float = Field(1.0, gt=0)
    """CPUs per probe job (also its torch thread count)."""
    gpus: float = Field(0.0, ge=0)
    """GPUs per probe job; fractions share a GPU (e.g. 0.25: four probes on one GPU)."""
    max_concurrent: int = Field(4, ge=1)
    """Probe jobs running at once, over the whole sweep."""
    max_retries: int = Field(2, ge=0)
    """Retries of a failed probe job (an error, or its node lost); it never fails its trial."""

    @field_validator("at_steps")
    @classmethod
    def _positive(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        bad = [s for s in v if s < 1]
        if bad:
            raise ValueError(f"steps must be >= 1, got {bad}")
        return tuple(sorted(set(v)))


class SchedulerConfig(_Cfg):
    """Early stopping of trials (Ray Tune's ASHA) on probe results, which arrive while the trials train."""

    type: Literal["none", "asha"] = "none"
    """`none` = every trial runs to the end; `asha` = asynchronous successive halving on `metric`."""
    metric: str = "average"
    """`average` (the paper's Average column over the probe tasks) or one probe task's score."""
    grace_steps: int = Field(1, ge=1)
    """Pretraining steps before a trial can be stopped."""
    reduction_factor: float = Field(2.0, gt=1)
    """ASHA's reduction factor: 1/reduction_factor of the trials go on at each rung."""


class LabelModelRef(_Cfg):
    """MusicHuBERT iteration 2: the iteration-1 checkpoint to cluster, named by sweep, variant, seed and step."""

    sweep: str = Field(pattern=NAME_PATTERN)
    """Name of the iteration-1 sweep (run in the same state folder)."""
    variant: str
    """Variant of that sweep (e.g. its baseline)."""
    seed: int = 0
    """Seed of that variant's trial."""
    step: int | Literal["final"] = "final"
    """Pretraining step of the checkpoint, or `final`."""


class SweepConfig(_Cfg):
    """A sweep file."""

    name: str = Field(pattern=NAME_PATTERN, max_length=100)
    """Sweep name: names the Ray experiment, the MLflow parent run and the report."""
    description: str = ""
    """What the sweep asks (shown in the report)."""
    base: dict[str, Any] = {}
    """Experiment overrides shared by every trial (dotted structure of ExperimentConfig)."""
    variants: dict[str, dict[str, Any]] = {}
    """Named changes from `base` (dotted keys -> values); the baseline has none. Empty = one implicit variant."""
    baseline: str | None = None
    """The variant every other one is compared with (it must change nothing); required with `variants`."""
    grid: dict[str, list[Any]] = {}
    """Ablation factors: dotted experiment key -> list of values; combined with every variant (cartesian)."""
    seeds: list[int] = Field(default_factory=lambda: [0], min_length=1)
    """Pretraining seeds; each variant x grid point runs once per seed."""
    checkpoints: dict[str, str | None] = {}
    """Probe-only sweep: imported checkpoints by name (Hugging Face folder or fairseq .pt path); no pretraining."""
    label_model: LabelModelRef | None = None
    """MusicHuBERT iteration 2: sets base.model.hubert.label_model to this iteration-1 checkpoint."""
    probe: ProbeScheduleConfig = ProbeScheduleConfig()
    """Probe schedule and probe-job resources."""
    scheduler: SchedulerConfig = SchedulerConfig()
    """Early stopping on probe results."""
    resources: ResourcesConfig = ResourcesConfig()
    """Per-trial resources."""
    tracking: TrackingConfig = TrackingConfig()
    """MLflow target."""
    max_failures: int = Field(1, ge=0)
    """Retries of a failed trial from its latest checkpoint."""
    smoke: dict[str, Any] = {}
    """Extra overrides of this file applied only under `--smoke` (after the generic shrinking)."""
