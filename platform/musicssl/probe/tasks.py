"""The probe task registry: a plain dict filled in this file; one entry (+ its adapter) per task.

An adapter turns a dataset root into `Example`s (audio path, split, target). Targets are class indices
(multiclass), 0/1 vectors (multilabel) or float vectors (regression).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Literal

import numpy as np

from musicssl.data.realmusic import COMPOSERS as REALMUSIC_COMPOSERS
from musicssl.data.synth import TAG_NAMES, TIMBRE_NAMES
from musicssl.probe import metrics as M

Kind = Literal["multiclass", "multilabel", "regression", "beat"]
"""`beat`: frame-level targets (beat times in seconds), probed by probe/beat.py."""
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Example:
    """One labelled clip: a whole audio file, or the frames `start:stop` of one.

    A segment stands for a chunk file that MARBLE's preprocessing writes (VocalSet's 3 s chunks): it is read
    on its own and standardised on its own (zero mean, unit sample std) before the usual feature extraction.
    """

    path: Path
    split: str
    target: Any
    start: int | None = None
    """First frame of the segment, in the file's own sample rate; None = the whole file."""
    stop: int | None = None
    """Frame after the segment's last (exclusive); set together with `start`."""

    @property
    def segment(self) -> tuple[int, int] | None:
        """(start, stop) frames, or None for the whole file."""
        if self.start is None or self.stop is None:
            return None
        return self.start, self.stop


@dataclass(frozen=True)
class TaskSpec:
    """What a probe task is: its kind, outputs, metrics and how its data is found."""

    name: str
    kind: Kind
    classes: tuple[Any, ...]
    """Class labels (multiclass / multilabel) or output names (regression)."""
    metrics: tuple[str, ...]
    """Metric names computed on valid and test; the first is the monitor for early stopping."""
    score: Callable[[dict[str, float]], float]
    """The task's number in the paper's tables (metrics averaged within the task)."""
    load: Callable[[Path, TaskSpec], list[Example]]
    """Adapter: dataset root -> examples with splits."""
    synthetic: bool = False
    """True for built-in tasks that need no dataset root: the embedded synthetic corpus's (root = the corpus folder)
    and the real-music ones built from installed packages beside it (data/realmusic.py)."""
    window_seconds: float | None = None
    """The window of MARBLE's task base config (the MERT-v1 runs: 5 s for EMO and VocalSet), used only under
    probe.protocol=mert_base; None = probe.window_seconds. See `windowing`."""
    extra: dict[str, Any] = field(default_factory=dict)
    lr: float | None = None
    """The task's published probe learning rate (MARBLE: 5e-3 for GTZAN); it replaces probe.lr only while
    probe.lr is at its default, so a sweep or tuning trial that sets probe.lr still wins. None = probe.lr."""
    max_epochs: int | None = None
    """The task's epoch cap (MARBLE: 50 for NSynth); the probe trains at most min(this, probe.max_epochs)."""
    lr_patience: int | None = None
    """The task's ReduceLROnPlateau patience (MARBLE: GTZAN 6, VocalSet/EMO/GS 5); used while probe.lr_patience
    is at its default. None = probe.lr_patience."""
    early_stop_patience: int | None = None
    """The task's early-stopping patience (MARBLE: 20 for GTZAN, EMO, GS, VocalSet singer); used while
    probe.early_stop_patience is at its default."""
    layers: str | int | None = None
    """The task's hidden-state choice (MARBLE: layer 7 for MTG genre); used while probe.layers is at its default."""
    crop_seconds: float | None = None
    """Keep only the first this-many seconds of each clip before windowing, as MARBLE's task base config does
    (EMO and VocalSet: 30 s); used only under probe.protocol=mert_base. None = whole clip. See `windowing`."""
    ensemble: bool = False
    """Choose how window outputs combine per clip (mean logit, mean probability, max logit, vote) by the
    validation metric, as MARBLE's GiantSteps key protocol does; False = mean logit."""

    @property
    def num_outputs(self) -> int:
        return len(self.classes)

    def windowing(self, protocol: str, window_seconds: float) -> tuple[float, float | None]:
        """(window, crop) in seconds for feature extraction under `protocol` (probe.protocol).

        `music2vec` (MARBLE's configs/music2vec/*.yaml, the paper's runs): `window_seconds` (probe.window_seconds,
        30 s) for every task, no crop. `mert_base` (MARBLE's benchmark/tasks/*/*_base_config.yaml, the MERT-v1
        runs): the task's own window and crop where it has them (EMO, VocalSet: 5 s windows of the first 30 s).
        """
        if protocol == "music2vec":
            return window_seconds, None
        if protocol == "mert_base":
            return self.window_seconds or window_seconds, self.crop_seconds
        raise ValueError(f"unknown probe protocol {protocol!r}; known: music2vec, mert_base")


def compute_metrics(task: TaskSpec, outputs: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Every metric of `task` from clip-level outputs (logits or regression values)."""
    fns: dict[str, Callable[[], float]] = {
        "acc": lambda: M.accuracy(outputs, targets),
        "weighted_score": lambda: M.mean_key_score(outputs, targets, task.classes),
        "roc_auc": lambda: M.macro_roc_auc(outputs, targets),
        "ap": lambda: M.macro_average_precision(outputs, targets),
        "r2": lambda: M.r2(outputs, targets),
    }
    if task.kind == "regression":  # r2_<output>: R² of one output (EMO reports arousal and valence apart)
        fns |= {f"r2_{name}": partial(M.r2, outputs[:, i], targets[:, i]) for i, name in enumerate(task.classes)}
    return {name: fns[name]() for name in task.metrics}


def _synthetic_loader(root: Path, task: TaskSpec) -> list[Example]:
    from musicssl.data.corpus import probe_task_dir

    task_dir = probe_task_dir(root, task.name)
    if not task_dir.is_dir():
        raise FileNotFoundError(f"{task_dir}: synthetic task {task.name!r} not generated in corpus {root}")
    return _labelled_examples(task_dir, task)


def _realmusic_loader(root: Path, task: TaskSpec) -> list[Example]:
    """Real-music tasks, built (once, ~40 s of CPU) beside the synthetic corpus `root` and cached there."""
    from musicssl.data.realmusic import build_realmusic, task_dir

    return _labelled_examples(task_dir(build_realmusic(root.parent), task.name), task)


def _labelled_examples(task_dir: Path, task: TaskSpec) -> list[Example]:
    """Examples of a task folder in the synthetic corpus's layout (`labels.jsonl` + `audio/`)."""
    from musicssl.data.corpus import load_labels

    examples = []
    for row in load_labels(task_dir):
        label = row["label"]
        if task.kind == "multiclass":
            target: Any = task.classes.index(label)
        elif task.kind == "multilabel":
            target = np.isin(np.arange(task.num_outputs), label).astype(np.float32)
        else:
            target = np.atleast_1d(np.asarray(label, dtype=np.float32))
        examples.append(Example(task_dir / row["path"], row["split"], target))
    return examples


KEYS = tuple(f"{t} {m}" for m in ("major", "minor") for t in M.PITCH_CLASSES)

TASKS: dict[str, TaskSpec] = {}


def register(spec: TaskSpec) -> TaskSpec:
    """Add a task; a duplicate name is an error."""
    if spec.name in TASKS:
        raise ValueError(f"probe task {spec.name!r} is registered twice")
    TASKS[spec.name] = spec
    return spec


def get_task(name: str) -> TaskSpec:
    """Look a task up by name; an unknown name lists the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown probe task {name!r}; known: {', '.join(sorted(TASKS))}") from None


def _first(metric: str) -> Callable[[dict[str, float]], float]:
    return lambda m: m[metric]


def _mean_of(*names: str) -> Callable[[dict[str, float]], float]:
    return lambda m: float(np.mean([m[n] for n in names]))


register(TaskSpec("synth_pitch", "multiclass", tuple(range(12)), ("acc",), _first("acc"), _synthetic_loader,
                  synthetic=True))
register(TaskSpec("synth_key", "multiclass", KEYS, ("weighted_score", "acc"), _first("weighted_score"),
                  _synthetic_loader, synthetic=True))
register(TaskSpec("synth_instrument", "multiclass", tuple(range(len(TIMBRE_NAMES))), ("acc",), _first("acc"), _synthetic_loader,
                  synthetic=True))
register(TaskSpec("synth_tags", "multilabel", tuple(range(len(TAG_NAMES))), ("roc_auc", "ap"), _mean_of("roc_auc", "ap"),
                  _synthetic_loader, synthetic=True))
register(TaskSpec("synth_tempo", "regression", ("bpm",), ("r2",), _first("r2"), _synthetic_loader,
                  synthetic=True))
# Real music that needs no download (data/realmusic.py): music21's scores rendered with a General MIDI soundfont
register(TaskSpec("music21_key", "multiclass", KEYS, ("weighted_score", "acc"), _first("weighted_score"),
                  _realmusic_loader, synthetic=True))
register(TaskSpec("music21_composer", "multiclass", REALMUSIC_COMPOSERS, ("acc",), _first("acc"), _realmusic_loader,
                  synthetic=True))
BEAT_METRICS = ("beat_f", "beat_precision", "beat_recall", "beat_f_track_mean")
register(TaskSpec("synth_beat", "beat", ("beat",), BEAT_METRICS, _first("beat_f"), _synthetic_loader, synthetic=True))


# Real datasets (MARBLE v1 / the paper's clip-level tasks); adapters in probe/datasets/, imported on first use.


def _adapter(module: str, function: str = "load") -> Callable[[Path, TaskSpec], list[Example]]:
    """`musicssl.probe.datasets.<module>.<function>`, imported when called (the adapters import this file)."""
    def load(root: Path, task: TaskSpec) -> list[Example]:
        return getattr(importlib.import_module(f"musicssl.probe.datasets.{module}"), function)(root, task)

    load.__qualname__ = load.__name__ = f"{module}.{function}"
    return load


register(TaskSpec("gtzan_beat", "beat", ("beat",), BEAT_METRICS, _first("beat_f"), _adapter("gtzan_rhythm"),
                  extra={"train_crop_seconds": 10.0}, lr_patience=6, early_stop_patience=20))
TAGGING = ("roc_auc", "ap")
_tags = _mean_of(*TAGGING)
register(TaskSpec("mtt", "multilabel", tuple(range(50)), TAGGING, _tags, _adapter("mtt")))
register(TaskSpec("gtzan_genre", "multiclass", ("blues", "classical", "country", "disco", "hiphop", "jazz", "metal",
                                                "pop", "reggae", "rock"),
                  ("acc",), _first("acc"), _adapter("gtzan"), lr=5e-3, lr_patience=6, early_stop_patience=20))
register(TaskSpec("giantsteps_key", "multiclass", KEYS, ("weighted_score", "acc"), _first("weighted_score"),
                  _adapter("giantsteps"), lr_patience=5, early_stop_patience=20, ensemble=True))
register(TaskSpec("emo", "regression", ("arousal", "valence"), ("r2", "r2_arousal", "r2_valence"),
                  _mean_of("r2_arousal", "r2_valence"), _adapter("emomusic"), window_seconds=5.0, lr_patience=5,
                  early_stop_patience=20, crop_seconds=30.0))
register(TaskSpec("nsynth_instrument", "multiclass", ("bass", "brass", "flute", "guitar", "keyboard", "mallet", "organ",
                                                      "reed", "string", "synth_lead", "vocal"),
                  ("acc",), _first("acc"), _adapter("nsynth", "load_instrument"), max_epochs=50))
register(TaskSpec("nsynth_pitch", "multiclass", tuple(range(128)), ("acc",), _first("acc"),
                  _adapter("nsynth", "load_pitch"), max_epochs=50))
register(TaskSpec("vocalset_singer", "multiclass",
                  tuple(f"female{i}" for i in range(1, 10)) + tuple(f"male{i}" for i in range(1, 12)),
                  ("acc",), _first("acc"), _adapter("vocalset", "load_singer"), window_seconds=5.0, lr_patience=5,
                  early_stop_patience=20, crop_seconds=30.0))
register(TaskSpec("vocalset_technique", "multiclass", ("belt", "breathy", "inhaled", "lip_trill", "spoken", "straight",
                                                       "trill", "trillo", "vibrato", "vocal_fry"),
                  ("acc",), _first("acc"), _adapter("vocalset", "load_technique"), window_seconds=5.0, lr_patience=5,
                  early_stop_patience=10, crop_seconds=30.0))
# MTG-Jamendo split-0: outputs = the subset's tags in sorted order (datasets.mtg_jamendo.tag_vocabulary names them)
for _name, _subset, _count in (("mtg_instrument", "instrument", 40), ("mtg_moodtheme", "moodtheme", 56),
                               ("mtg_genre", "genre", 87), ("mtg_top50", "top50tags", 50)):
    register(TaskSpec(_name, "multilabel", tuple(range(_count)), TAGGING, _tags, _adapter("mtg_jamendo"),
                      extra={"subset": _subset}, layers=7 if _subset == "genre" else None))
