"""The published numbers of "On the effectiveness of speech self-supervised learning for music" (Ma et al., 2023).

Tables 1, 2 and 3 of the paper transcribed row by row, in percent as printed, under musicssl's task and metric
names, so a report can show them beside a sweep's own scores. Task scores and averages are computed with the
task registry's own `TaskSpec.score` (metrics averaged within a task), the formula the paper uses for its
"Average Score" column (then the plain mean over tasks).

Paper column -> (task, metric): MTT ROC/AP -> mtt roc_auc/ap; GS key refined acc -> giantsteps_key
weighted_score; GTZAN genre acc -> gtzan_genre acc; EMO EmoV/EmoA -> emo r2_valence/r2_arousal; Nsynth instr ->
nsynth_instrument acc; Nsynth pitch -> nsynth_pitch acc; VocalSet tech -> vocalset_technique acc; VocalSet singer
-> vocalset_singer acc; GTZAN rhythm F1 (beat) -> gtzan_beat beat_f; MTG instrument/moodtheme/genre/top50 ROC/AP
-> mtg_instrument/mtg_moodtheme/mtg_genre/mtg_top50 roc_auc/ap.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from musicssl.probe.tasks import get_task

Column = tuple[str, str]
"""(task, metric) in musicssl's names."""


@dataclass(frozen=True)
class PublishedRow:
    """One printed row of the paper's Tables 1-3."""

    table: int
    """1, 2 or 3."""
    label: str
    """The row's label as printed, e.g. "k=500 MFCC dim=60"."""
    paradigm: str | None
    """"music2vec" or "musichubert"; None for the speech models and SOTA."""
    metrics: dict[Column, float]
    """(task, metric) -> value in percent, as printed."""
    notes: dict[Column, str] = field(default_factory=dict)
    """(task, metric) -> the citation printed after the value (SOTA row only), e.g. "[40]"."""
    published_average: float | None = None
    """The printed "Average Score" (Tables 2 and 3 only)."""
    variant: str | None = None
    """The matching variant of this repository's sweep files (see `sweep`); None where none matches."""
    sweep: str | None = None
    """The stem of a sweep file under sweeps/ that holds `variant` ("vanilla" is in every music2vec_*.yaml)."""


TABLE1_TASKS: tuple[str, ...] = (
    "mtt", "giantsteps_key", "gtzan_genre", "emo", "nsynth_instrument", "nsynth_pitch", "vocalset_technique",
    "vocalset_singer", "gtzan_beat", "mtg_instrument", "mtg_moodtheme", "mtg_genre", "mtg_top50",
)  # fmt: skip
"""The 13 tasks of Table 1, in the paper's column order."""
TABLE_TASKS: tuple[str, ...] = TABLE1_TASKS[:9]
"""The 9 tasks of Tables 2 and 3 (MTG-Jamendo left out), in the paper's column order."""

TABLE1_COLUMNS: tuple[Column, ...] = (
    ("mtt", "roc_auc"), ("mtt", "ap"), ("giantsteps_key", "weighted_score"), ("gtzan_genre", "acc"),
    ("emo", "r2_valence"), ("emo", "r2_arousal"), ("nsynth_instrument", "acc"), ("nsynth_pitch", "acc"),
    ("vocalset_technique", "acc"), ("vocalset_singer", "acc"), ("gtzan_beat", "beat_f"),
    ("mtg_instrument", "roc_auc"), ("mtg_instrument", "ap"), ("mtg_moodtheme", "roc_auc"), ("mtg_moodtheme", "ap"),
    ("mtg_genre", "roc_auc"), ("mtg_genre", "ap"), ("mtg_top50", "roc_auc"), ("mtg_top50", "ap"),
)  # fmt: skip
"""Table 1's 19 metric columns, in printed order."""
TABLE23_COLUMNS: tuple[Column, ...] = TABLE1_COLUMNS[:11]
"""The 11 metric columns of Tables 2 and 3 (before "Average Score"), in printed order."""


def _row(
    table: int,
    label: str,
    values: Sequence[float],
    paradigm: str | None = None,
    average: float | None = None,
    variant: str | None = None,
    sweep: str | None = None,
    notes: dict[Column, str] | None = None,
) -> PublishedRow:
    """A row from its printed values, in the column order of its table."""
    columns = TABLE1_COLUMNS if table == 1 else TABLE23_COLUMNS
    if len(values) != len(columns):
        raise ValueError(f"Table {table} row {label!r}: {len(values)} values, expected {len(columns)}")
    return PublishedRow(
        table, label, paradigm, dict(zip(columns, values, strict=True)), notes or {}, average, variant, sweep
    )


# fmt: off
# The SOTA row's citations, as printed: one after a value, none where the paper printed none (EmoV and the MTG
# ROC columns carry none; the citation printed after the AP / EmoA value may cover both values of the task).
_SOTA_NOTES: dict[Column, str] = {
    ("mtt", "roc_auc"): "[40]", ("mtt", "ap"): "[6]", ("giantsteps_key", "weighted_score"): "[28]",
    ("gtzan_genre", "acc"): "[41]", ("emo", "r2_arousal"): "[6]", ("nsynth_instrument", "acc"): "[20]",
    ("nsynth_pitch", "acc"): "[23]", ("vocalset_technique", "acc"): "[36]", ("vocalset_singer", "acc"): "[42]",
    ("gtzan_beat", "beat_f"): "[43]", ("mtg_instrument", "ap"): "[44]", ("mtg_moodtheme", "ap"): "[23]",
    ("mtg_genre", "ap"): "[44]", ("mtg_top50", "ap"): "[23]",
}

_TABLE1 = (
    _row(1, "HuBERT base", (89.8, 36.4, 15.0, 64.8, 31.0, 57.5, 68.2, 79.4, 61.0, 58.8, 83.5,
                            73.2, 17.0, 74.0, 11.6, 85.0, 16.3, 81.8, 26.5)),
    _row(1, "MusicHuBERT base", (90.2, 37.7, 14.7, 70.0, 42.1, 66.5, 69.3, 77.4, 65.9, 75.3, 88.6,
                                 75.5, 17.8, 76.0, 13.9, 86.5, 18.0, 82.4, 28.1),
         "musichubert", variant="k2000_mfcc39", sweep="musichubert_clusters"),
    _row(1, "data2vec audio base", (88.4, 33.6, 15.5, 60.7, 23.0, 49.6, 69.3, 77.7, 64.9, 74.6, 36.4,
                                    73.1, 16.9, 73.3, 11.0, 83.5, 14.5, 80.6, 24.8)),
    _row(1, "Music2vec vanilla", (89.1, 35.1, 19.0, 59.7, 38.5, 61.9, 69.4, 88.9, 68.3, 69.5, 33.5,
                                  73.1, 16.3, 74.3, 12.2, 85.2, 16.5, 81.4, 26.2),
         "music2vec", variant="vanilla", sweep="music2vec_mask"),
    _row(1, "SOTA", (92.0, 41.4, 74.3, 82.1, 61.7, 72.1, 78.2, 89.2, 65.6, 80.3, 80.6,
                     78.8, 20.2, 78.6, 16.1, 87.7, 20.3, 84.3, 32.1), notes=_SOTA_NOTES),
)

_MH = "musichubert"
_TABLE2 = (
    _row(2, "HuBERT", (89.8, 36.4, 15.0, 64.8, 31.0, 57.5, 68.2, 79.4, 61.0, 58.8, 83.5), average=59.8),
    _row(2, "k=2000 MFCC dim=39", (90.2, 37.7, 14.7, 70.0, 42.1, 66.5, 69.3, 77.4, 65.9, 75.3, 88.6), _MH, 64.4,
         "k2000_mfcc39", "musichubert_clusters"),
    _row(2, "k=2000 iter2", (90.4, 37.5, 13.8, 68.3, 43.3, 67.4, 70.0, 80.3, 63.6, 70.4, 88.8), _MH, 63.8,
         "k2000_iter2", "musichubert_iter2"),
    _row(2, "k=500 MFCC dim=39", (89.6, 36.1, 15.7, 64.5, 41.0, 67.7, 66.7, 76.8, 60.5, 72.3, 87.5), _MH, 62.4,
         "k500_mfcc39", "musichubert_clusters"),
    _row(2, "k=500 MFCC dim=60", (90.3, 38.0, 17.6, 69.7, 40.8, 67.5, 70.3, 79.0, 66.2, 75.5, 88.6), _MH, 65.0,
         "k500_mfcc60", "musichubert_clusters"),
)

_M2V = "music2vec"
_TABLE3 = (
    _row(3, "data2vec", (88.4, 33.6, 15.5, 60.7, 23.0, 49.6, 69.3, 77.7, 64.9, 74.6, 36.4), average=55.2),
    _row(3, "vanilla", (89.1, 35.1, 19.0, 59.7, 38.5, 61.9, 69.4, 88.9, 68.3, 69.5, 33.5), _M2V, 57.8,
         "vanilla", "music2vec_mask"),
    _row(3, "span=5", (87.3, 32.0, 15.7, 47.6, 22.7, 41.2, 64.2, 84.8, 56.7, 53.8, 33.2), _M2V, 49.7,
         "span5", "music2vec_mask"),
    _row(3, "span=15", (88.7, 34.3, 16.4, 56.6, 39.0, 58.8, 67.1, 88.1, 63.1, 61.9, 33.1), _M2V, 55.2,
         "span15", "music2vec_mask"),
    _row(3, "prob=50", (88.5, 34.0, 23.7, 59.3, 40.6, 55.0, 66.8, 87.7, 64.9, 61.7, 33.9), _M2V, 56.3,
         "prob50", "music2vec_mask"),
    _row(3, "prob=80", (88.2, 33.9, 18.4, 50.3, 36.7, 55.7, 67.9, 88.9, 64.2, 65.2, 33.7), _M2V, 55.1,
         "prob80", "music2vec_mask"),
    _row(3, "step=800k", (87.7, 32.7, 20.3, 54.5, 34.9, 47.3, 66.9, 87.5, 65.6, 65.1, 33.4), _M2V, 55.0,
         "step800k", "music2vec_steps"),
    _row(3, "target=12", (89.7, 35.2, 26.5, 64.5, 41.7, 64.2, 71.1, 89.2, 71.0, 73.2, 34.1), _M2V, 60.6,
         "target12", "music2vec_target"),
    _row(3, "crop5s", (90.0, 36.6, 18.5, 76.6, 53.4, 71.6, 68.3, 88.9, 71.3, 72.4, 33.9), _M2V, 61.8,
         "crop5s", "music2vec_crop"),
)

# fmt: on

PUBLISHED: tuple[PublishedRow, ...] = _TABLE1 + _TABLE2 + _TABLE3
"""Every row of Tables 1, 2 and 3, in paper order."""

INCONSISTENT_AVERAGES: frozenset[tuple[int, str]] = frozenset(
    {
        # Table 3 crop5s: the printed values give (63.3 + 18.5 + 76.6 + 62.5 + 68.3 + 88.9 + 71.3 + 72.4 + 33.9) / 9
        # = 61.744..., printed as 61.8 (should read 61.7); the row's values are as printed, so is the published 61.8.
        (3, "crop5s"),
    }
)
"""(table, label) of the rows whose printed "Average Score" the paper's own values do not reproduce."""


def task_score(row: PublishedRow, task: str) -> float | None:
    """The row's number for `task` in percent, by the task's own `TaskSpec.score`; None if the row lacks it.

    Raises:
        KeyError: `task` is not a registered probe task.
        ValueError: the row has some but not all of the metrics the task's score needs.
    """
    spec = get_task(task)
    values = {metric: value / 100 for (t, metric), value in row.metrics.items() if t == task}
    if not values:
        return None
    try:
        return 100 * float(spec.score(values))
    except KeyError as missing:
        raise ValueError(
            f"Table {row.table} row {row.label!r}: task {task!r} lacks metric {missing} "
            f"for its score (has {', '.join(sorted(values))})"
        ) from None


def average(row: PublishedRow, tasks: Iterable[str]) -> float | None:
    """The plain mean of `task_score` over `tasks` (the paper's "Average Score"); None if any task is missing."""
    scores = [task_score(row, task) for task in tasks]
    present = [score for score in scores if score is not None]
    if not scores or len(present) < len(scores):
        return None
    return float(np.mean(present))


def reference_rows(tasks: Sequence[str], paradigms: Iterable[str]) -> list[PublishedRow]:
    """The published rows to show beside a sweep probing `tasks` with models of `paradigms`.

    Empty when no task of `tasks` is a published (real-dataset) task. Otherwise Table 1's rows, plus Table 2's
    when "musichubert" is among `paradigms` and Table 3's when "music2vec" is, keeping only rows that have at
    least one of `tasks`, in paper order.
    """
    wanted = set(tasks) & set(TABLE1_TASKS)
    if not wanted:
        return []
    paradigms = set(paradigms)
    tables = (
        {1} | ({2} if "musichubert" in paradigms else set()) | ({3} if "music2vec" in paradigms else set())
    )
    return [
        row for row in PUBLISHED if row.table in tables and any(task in wanted for task, _ in row.metrics)
    ]
